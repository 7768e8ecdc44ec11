"""bench/postfix_instance.py's PostfixInstance for the tests: a private Postfix on loopback
(bench/ holds programs, not a package, so it is loaded from its file)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_BENCH = Path(__file__).resolve().parent.parent.parent / "bench"


def _load():
    spec = importlib.util.spec_from_file_location("postfix_instance", _BENCH / "postfix_instance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_module = _load()
PostfixInstance = _module.PostfixInstance
PostfixInstanceError = _module.PostfixInstanceError
