"""Builds the Cython modules in ext/ into pyfastmta._ext.

A missing compiler or Cython is an error here, never a silent fallback to slower code.
"""
import os
import sys

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - depends on the build environment
    sys.exit("pyfastmta: Cython is required to build ext/ (pip install cython)")

EXT_MODULES = ["smtpproto", "smtpreply", "headers", "datasync", "hashtable", "cidr", "address", "anvil"]

compile_args = ["-O2"]
link_args = []
if os.environ.get("PYFASTMTA_SANITIZE"):
    # AddressSanitizer/UBSan build for `make sanitize`.
    compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    link_args = ["-fsanitize=address,undefined"]

extensions = [
    Extension(
        f"pyfastmta._ext.{name}",
        [f"ext/{name}.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for name in EXT_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["ext"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
