"""Golden cases in tests/golden/config/<case>/: main.cf and master.cf in, the expected
`pyfastmta postconf -n` (postconf-n.ref), `-n -x` (postconf-nx.ref) or error (error.ref) out.
<DIR> in a .ref file stands for the directory the case was copied to."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from pyfastmta.cli import postconf

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "config"
CASES = sorted(path.name for path in GOLDEN.iterdir() if path.is_dir())


def run_postconf(argv: list[str], directory: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = postconf.run(argv, str(directory))
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES)
def test_golden_case(case, tmp_path):
    directory = tmp_path / case
    shutil.copytree(GOLDEN / case, directory)
    expectations = {"postconf-n.ref": ["-n"], "postconf-nx.ref": ["-n", "-x"], "error.ref": ["-n"]}
    checked = 0
    for ref, argv in expectations.items():
        if not (GOLDEN / case / ref).exists():
            continue
        expected = (GOLDEN / case / ref).read_text().replace("<DIR>", str(directory))
        status, out, err = run_postconf(argv, directory)
        if ref == "error.ref":
            assert (status, out, err) == (1, "", expected)
        else:
            assert (status, out) == (0, expected)
        checked += 1
    assert checked, f"{case} has no .ref file"
