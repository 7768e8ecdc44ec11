"""`pyfastmta postmap` / `postalias` / `newaliases` beside Postfix's postmap and postalias: the same
commands on copies of the same files give the same exit codes, the same output and the same
tables afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
POSTALIAS = shutil.which("postalias", path="/usr/sbin:/usr/bin") or "/usr/sbin/postalias"
# The installed console script, run from a temporary directory so the source tree is not imported.
PYFASTMTA = os.path.join(os.path.dirname(sys.executable), "pyfastmta")

SOURCE = "alpha 1\nBeta two words\n\"q k\" quoted\ngamma 3\n  continued\ndup first\nDUP second\n"
ALIASES = "postmaster: root\nRoot: alice, bob ,\n  carol\n\"Jane Doe\": jane\n"


@pytest.fixture
def sides(tmp_path):
    """Two directories holding the same files and a main.cf; run(side, argv, stdin) in each."""
    for side in ("postfix", "ours"):
        directory = tmp_path / side
        directory.mkdir()
        (directory / "table").write_text(SOURCE)
        (directory / "aliases").write_text(ALIASES)
        (directory / "main.cf").write_text(
            "compatibility_level = 3.6\nsmtputf8_enable = yes\n"
            f"alias_database = hash:{directory}/aliases\n")
        # Postfix waits while main.cf is younger than a second or so.
        old = time.time() - 60
        os.utime(directory / "main.cf", (old, old))

    def run(side, argv, stdin=b""):
        directory = tmp_path / side
        program, *rest = argv
        if side == "postfix":
            command = [POSTMAP if program == "postmap" else POSTALIAS, "-c", str(directory)]
        else:
            command = [PYFASTMTA, program, "-c", str(directory)]
        rest = [arg.replace("@D", str(directory)) for arg in rest]
        result = subprocess.run(command + rest, input=stdin, capture_output=True, cwd=directory,
                                timeout=30, check=False)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    run.root = tmp_path
    return run


def both(run, argv, stdin=b""):
    theirs, ours = run("postfix", argv, stdin), run("ours", argv, stdin)
    assert ours[0] == theirs[0], (argv, theirs, ours)
    return theirs, ours


def listing(run, side, program="postmap", name="table"):
    code, out, err = run(side, [program, "-s", f"hash:@D/{name}"])
    assert code == 0, err
    # Postfix's postalias adds NIS bookkeeping entries that mean nothing here.
    return sorted(line for line in out.splitlines() if not line.startswith("YP_"))


def test_create_query_and_list(sides):
    theirs, ours = both(sides, ["postmap", "hash:@D/table"])
    assert 'duplicate entry: "dup"' in ours[2]
    for key in ("alpha", "ALPHA", "beta", '"q k"', "q k", "gamma", "dup", "nope"):
        theirs, ours = both(sides, ["postmap", "-q", key, "hash:@D/table"])
        assert ours[1] == theirs[1]
    theirs, ours = both(sides, ["postmap", "-q", "-", "@D/table"], b"alpha\nnope\nGAMMA\n")
    assert ours[1] == theirs[1] == "alpha\t1\nGAMMA\t3  continued\n"
    both(sides, ["postmap", "-q", "-", "hash:@D/table"], b"nope\n")  # exit 1: none found
    assert listing(sides, "ours") == listing(sides, "postfix")


def test_delete_and_incremental(sides):
    both(sides, ["postmap", "hash:@D/table"])
    both(sides, ["postmap", "-d", "ALPHA", "hash:@D/table"])  # found: 0
    both(sides, ["postmap", "-d", "alpha", "hash:@D/table"])  # gone: 1
    both(sides, ["postmap", "-d", "-", "hash:@D/table"], b"nope\nbeta\n")
    both(sides, ["postmap", "-d", "-", "hash:@D/table"], b"nope\n")
    theirs, ours = both(sides, ["postmap", "-i", "hash:@D/table"], b"new 1\nGamma other\nbad\n")
    assert "duplicate entry" in ours[2] and "expected format" in ours[2]
    both(sides, ["postmap", "-i", "-r", "hash:@D/table"], b"gamma replaced\n")
    both(sides, ["postmap", "-i", "-w", "hash:@D/table"], b"new quietly ignored\n")
    assert listing(sides, "ours") == listing(sides, "postfix")
    both(sides, ["postmap", "-i", "hash:@D/fresh"], b"x 1\n")  # -i creates a missing table
    assert listing(sides, "ours", name="fresh") == listing(sides, "postfix", name="fresh")


def test_duplicate_modes_and_no_folding(sides):
    both(sides, ["postmap", "-r", "hash:@D/table"])
    assert listing(sides, "ours") == listing(sides, "postfix")
    both(sides, ["postmap", "-f", "hash:@D/table"])
    for argv in (["-f", "-q", "Beta"], ["-f", "-q", "beta"], ["-q", "alpha"]):
        theirs, ours = both(sides, ["postmap", *argv, "hash:@D/table"])
        assert ours[1] == theirs[1]


@pytest.mark.parametrize("argv", [
    ["postmap"],                                        # no table
    ["postmap", "-x", "hash:@D/table"],                 # unknown option
    ["postmap", "-q"],                                  # -q without a key
    ["postmap", "-q", "a", "-s", "hash:@D/table"],      # two actions
    ["postmap", "-q", "a", "hash:@D/none"],             # no database
    ["postmap", "hash:@D/none"],                        # no source
    ["postmap", "-s", "hash:@D/none"],
    ["postmap", "-q", "a", "nosuchtype:@D/table"],
    ["postmap", "texthash:@D/table"],                   # a type that cannot be created
])
def test_fatal_errors_exit_like_postfix(sides, argv):
    theirs, ours = both(sides, argv)
    assert ours[0] == 1 and ("fatal" in ours[2] or "usage" in ours[2])


def test_query_works_for_other_table_types(sides, tmp_path):
    for side in ("postfix", "ours"):
        (tmp_path / side / "re").write_text("/^a(.*)$/ matched $1\n")
    for key in ("abc", "xyz"):
        theirs, ours = both(sides, ["postmap", "-q", key, "regexp:@D/re"])
        assert ours[1] == theirs[1]
    theirs, ours = both(sides, ["postmap", "-q", "abc", "inline:{abc=1}"])
    assert ours[1] == theirs[1]


def test_postalias_and_newaliases(sides):
    both(sides, ["postalias", "hash:@D/aliases"])
    for key in ("root", "jane doe", "Postmaster", "@", "nope"):
        theirs, ours = both(sides, ["postalias", "-q", key, "hash:@D/aliases"])
        assert ours[1] == theirs[1]
    theirs, ours = both(sides, ["postalias", "-q", "-", "hash:@D/aliases"], b"root\nnope\n")
    assert ours[1] == theirs[1] == "root:\talice, bob, carol\n"
    assert listing(sides, "ours", "postalias", "aliases") == listing(sides, "postfix", "postalias", "aliases")
    both(sides, ["postalias", "-i", "hash:@D/aliases"], b"extra: x, y\n")
    assert listing(sides, "ours", "postalias", "aliases") == listing(sides, "postfix", "postalias", "aliases")
    # newaliases compiles $alias_database: the table answers afterwards.
    os.unlink(sides.root / "ours" / "aliases.pfm")
    code, _, err = sides("ours", ["newaliases"])
    assert code == 0, err
    assert sides("ours", ["postalias", "-q", "root", "hash:@D/aliases"])[1] == "alice, bob, carol\n"
