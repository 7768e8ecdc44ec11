"""postmap's source format as Postfix reads it, against Postfix itself.

Generated source files full of the lines Postfix is lenient about (an indented first line, keys
without a value, unbalanced quotes, "\\r", "\\v" and "\\f" as white space, NUL bytes, non-UTF-8
bytes, backslashes, duplicates that differ in case) are read by Postfix's `postmap -q -
texthash:FILE` and by pyfastmta's texthash: table: every key gets the same answer, and the
warnings name the same lines with the same text (Postfix writes "file, line N:", pyfastmta
"file:N:"; Postfix's warning about an indented first line names no line).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfastmta.maps.registry import TableOptions, open_table
from pyfastmta.maps.source import (
    fold_key,
    logical_lines,
    printable,
    read_logical_lines,
    split_entry,
)
from pyfastmta.maps.table import TableError

POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
needs_postmap = pytest.mark.skipif(not os.path.exists(POSTMAP) and not os.environ.get("CI"),
                                   reason="Postfix's postmap is not installed")


@pytest.fixture(scope="module")
def postfix_dirs(tmp_path_factory):
    """Private Postfix configuration directories (postmap never reads /etc/postfix), with
    smtputf8_enable on and off."""
    dirs = {}
    for utf8 in (True, False):
        path = tmp_path_factory.mktemp("postfix-utf8" if utf8 else "postfix-ascii")
        (path / "main.cf").write_text(
            "compatibility_level = 3.6\n" f"smtputf8_enable = {'yes' if utf8 else 'no'}\n")
        dirs[utf8] = path
    return dirs


def age(path: Path) -> None:
    # Postfix reads a texthash: file again (and again) while it was modified within the last
    # second; an old modification time lets it read the file once.
    past = time.time() - 10
    os.utime(path, (past, past))


_NUMBERED = re.compile(rb"^postmap: warning: (.*?), line (\d+): (.*)$")
_UNNUMBERED = re.compile(rb"^postmap: warning: (.*?): (logical line must not start with whitespace: .*)$")


def postfix_texthash(config: Path, path: Path, queries: list[bytes]) -> tuple[dict[bytes, bytes], list]:
    """Postfix's answers ({query: value} for the found ones) and its warnings about the file, as
    (line or None, text)."""
    result = subprocess.run([POSTMAP, "-c", str(config), "-q", "-", f"texthash:{path}"],
                            input=b"".join(query + b"\n" for query in queries),
                            capture_output=True, timeout=60, check=False)
    assert result.returncode in (0, 1), result.stderr
    answers = {}
    for line in result.stdout.split(b"\n"):
        if line:
            key, _, value = line.partition(b"\t")  # queries hold no tab
            answers[key] = value
    warnings = []
    prefix = f"postmap: warning: {path}".encode()
    for line in result.stderr.split(b"\n"):
        if m := _NUMBERED.match(line):
            assert m.group(1) == str(path).encode(), line
            warnings.append((int(m.group(2)), m.group(3).decode("utf-8", "surrogateescape")))
        elif m := _UNNUMBERED.match(line):
            assert m.group(1) == str(path).encode(), line
            warnings.append((None, m.group(2).decode("utf-8", "surrogateescape")))
        else:
            assert not line.startswith(prefix), f"a warning this test does not know: {line!r}"
    return answers, warnings


def ours_texthash(path: Path, queries: list[bytes], utf8: bool) -> tuple[dict[bytes, bytes], list]:
    table = open_table(f"texthash:{path}", TableOptions(smtputf8_enable=utf8))
    answers = {}
    for query in queries:
        value = table.get(query.decode("utf-8", "surrogateescape"))
        if value is not None:
            answers[query] = value.encode("utf-8", "surrogateescape")
    warnings = []
    for warning in table.warnings:
        assert warning.startswith(f"{path}:"), warning
        line, _, text = warning[len(str(path)) + 1:].partition(": ")
        warnings.append((int(line), text))
    return answers, warnings


def assert_same_as_postfix(config: Path, path: Path, data: bytes, queries: list[bytes], utf8: bool) -> None:
    path.write_bytes(data)
    age(path)
    queries = list(dict.fromkeys(q for q in queries if q and b"\t" not in q and b"\n" not in q
                                 and b"\0" not in q))
    theirs, their_warnings = postfix_texthash(config, path, queries)
    ours, our_warnings = ours_texthash(path, queries, utf8)
    assert ours == theirs
    # Same warnings in the same order; where Postfix names no line, only the text is compared.
    assert len(our_warnings) == len(their_warnings), (our_warnings, their_warnings)
    for (our_line, our_text), (their_line, their_text) in zip(our_warnings, their_warnings):
        assert our_text == their_text
        assert their_line is None or our_line == their_line


# --------------------------------------------------------------------------- hand-made files

ODD_FILE = (
    b"  orphan first line\n   its continuation, long enough to be cut\n"
    b"key1 v1\n"
    b"novalue\n"
    b"trailing   \t\n"
    b'"unbal key v\n'
    b'k\\"ey2 v2\n'
    b'"q k" qv\n'
    b'"tab\tin" quoted\n'
    b"key3\rval3\n"
    b"key4 v4\r\n"
    b"\r\n"
    b"key5 v5\n\x0bcont5\n\x0c# comment between\n cont6 \r\n"
    b"key6:  x\n"
    b"KEY1 dup\n"
    b"KEY7 a\x00b\n"
    b"\x00nul v\n"
    b"key8 \xff\n"
    b"\xc3 v\n"
    b"caf\xc3\xa9 latin\n"
    b"CAF\xc3\x89 dup\n"
    b"stra\xc3\x9fe sz\n"
    b"STRASSE ss\n"
    b"back\\ slash b\n"
    b"endslash\\\n"
    b"tab\tsep\ttab\tin\tvalue\n"
    b"  \n#last comment\n"
    b"nonewline at end"
)
ODD_QUERIES = [
    b"key1", b"KEY1", b"novalue", b"trailing", b'k\\"ey2', b'"q k"', b'"Q K"', b"key3", b"key3\rval3",
    b"key4", b"key5", b"key6:", b"key6", b"key7", b"nul", b"key8", b"caf\xc3\xa9", b"CAF\xc3\x89",
    b"stra\xc3\x9fe", b"strasse", b"STRASSE", b"back\\ slash", b"endslash\\", b"tab", b"nonewline",
    b"orphan", b"absent", b"\xff", b"\xc3",
]


@needs_postmap
@pytest.mark.parametrize("utf8", [True, False])
def test_odd_lines_as_postfix_reads_them(postfix_dirs, tmp_path, utf8):
    assert_same_as_postfix(postfix_dirs[utf8], tmp_path / "table", ODD_FILE, ODD_QUERIES, utf8)


@needs_postmap
@pytest.mark.parametrize("utf8", [True, False])
@pytest.mark.parametrize("data", [
    b"",
    b"\n\n# only comments\n   \n",
    b"   \n# comment\n\t indented first\nnext ok\n",
    b" \xc3\xa9t\xc3\xa9 \x01\ttab and a long line past thirty bytes\nok v\n",
    b" exactly-thirty-bytes-long-xx\nok v\n",
    b" 30 bytes then a cut char: \xe2\x82\xacx\nok v\n",
    b" nul\x00 hides the rest of the line from the warning\nok v\n",
    b"key value\r",
    b"a 1\nb\x0b2\nc\x0c3\nd\r4\n",
    b'"" empty-quoted\n"a\\"b" x\n"a \\" b" y\n',
    b'\\" lone\n',
])
def test_small_files_as_postfix_reads_them(postfix_dirs, tmp_path, utf8, data):
    words = re.split(rb"[ \t\n\r\x0b\x0c]+", data)
    queries = words + [b"ok", b"key", b"a", b"b", b"c", b"d", b'""', b'"a\\"b"', b'\\"']
    assert_same_as_postfix(postfix_dirs[utf8], tmp_path / "table", data, queries, utf8)


# --------------------------------------------------------------------------- generated files

SPACE = st.sampled_from([b" ", b"\t", b"\x0b", b"\x0c", b"\r", b"  "])
KEY_BYTES = st.sampled_from([b"a", b"B", b"z", b"0", b".", b"@", b"-", b'"', b"\\", b":", b" ", b"#",
                             "é".encode(), "É".encode(), "ß".encode(), "ẞ".encode(), "ǅ".encode(),
                             "\u212a".encode(), b"\xff", b"\xc3", b"\x00"])
VALUE_BYTES = st.sampled_from([b"smtp", b":", b"[x]", b"Y", b" ", b"\t", b"\r", b'"', b"\\", b"#",
                               "é".encode(), b"\xfe", b"\x00", b"$1"])


@st.composite
def source_files(draw):
    """(file bytes, queries): logical lines of every kind Postfix accepts or skips, with line
    endings "\\n" or "\\r\\n" and sometimes no final newline."""
    lines: list[bytes] = []
    keys: list[bytes] = []
    if draw(st.booleans()):
        lines.append(draw(SPACE) + b"indented first " + draw(st.binary(max_size=40)).replace(b"\n", b""))
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["entry", "entry", "entry", "novalue", "comment", "blank"]))
        if kind == "comment":
            indent = draw(st.sampled_from([b"", b" ", b"\t"]))
            lines.append(indent + b"# " + draw(st.binary(max_size=8)).replace(b"\n", b""))
            continue
        if kind == "blank":
            lines.append(b"".join(draw(st.lists(SPACE, max_size=3))))
            continue
        key = b"".join(draw(st.lists(KEY_BYTES, min_size=1, max_size=6)))
        if key[:1] in (b" ", b"#"):
            key = b"k" + key
        keys.append(key)
        if kind == "novalue":
            lines.append(key + b"".join(draw(st.lists(SPACE, max_size=2))))
            continue
        value = b"".join(draw(st.lists(VALUE_BYTES, min_size=1, max_size=5)))
        lines.append(key + draw(SPACE) + value)
        for _ in range(draw(st.integers(0, 2))):
            # A continuation line: white space first, then more of the value.
            lines.append(draw(SPACE) + b"".join(draw(st.lists(VALUE_BYTES, min_size=1, max_size=3))))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = ending.join(lines) + (ending if draw(st.booleans()) else b"")
    queries = []
    for key in keys:
        head = re.split(rb"[ \t\n\r\x0b\x0c]", key)[0]
        text = key.decode("utf-8", "surrogateescape")
        queries += [key, head, text.upper().encode("utf-8", "surrogateescape"),
                    text.swapcase().encode("utf-8", "surrogateescape"),
                    fold_key(text).encode("utf-8", "surrogateescape")]
    return data, queries + [b"absent"]


@needs_postmap
@pytest.mark.parametrize("utf8", [True, False])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=source_files())
def test_generated_files_as_postfix_reads_them(postfix_dirs, tmp_path, utf8, case):
    data, queries = case
    assert_same_as_postfix(postfix_dirs[utf8], tmp_path / "table", data, queries, utf8)


# --------------------------------------------------------------------------- the pieces

def test_logical_lines_join_continuations_and_keep_carriage_returns():
    warnings: list[str] = []
    data = b"# c\n  lead\n  more\nfirst\n# note\n  cont\n\t\ttab\n\nsecond\r\nthird\0cut\n  after nul\nlast"
    assert read_logical_lines(data, "f", warnings) == [
        (4, b"first  cont\t\ttab"), (9, b"second\r"), (10, b"third"), (12, b"last")]
    # One warning for the indented logical line (both physical lines), on its first line.
    assert warnings == ['f:2: logical line must not start with whitespace: "  lead  more"']


def test_indented_first_line_warning_shows_thirty_bytes():
    warnings: list[str] = []
    read_logical_lines(b" " + b"x" * 29 + b"\n", "f", warnings)
    read_logical_lines(b" " + b"x" * 30 + b"\n", "f", warnings)
    assert warnings == ['f:1: logical line must not start with whitespace: " ' + "x" * 29 + '"',
                        'f:1: logical line must not start with whitespace: " ' + "x" * 29 + '..."']


def test_only_ascii_white_space_counts():
    # U+00A0 and U+2028 are not white space to Postfix: they stay inside the key.
    warnings: list[str] = []
    lines = read_logical_lines("a\u00a0b v\n\u2028c v\n".encode(), "f", warnings)
    assert [text for _, text in lines] == ["a\u00a0b v".encode(), "\u2028c v".encode()]
    assert split_entry("a\u00a0b v".encode()) == ("a\u00a0b".encode(), b"v")
    assert not warnings


def test_split_entry_quotes_and_backslashes():
    assert split_entry(b'"a b" c d ') == (b'"a b"', b"c d")
    assert split_entry(b"a\\ b c") == (b"a\\ b", b"c")
    assert split_entry(b'a\\"b c') == (b'a\\"b', b"c")
    assert split_entry(b"end\\") == (b"end\\", b"")
    assert split_entry(b"key\x0bvalue\r") == (b"key", b"value")
    assert split_entry(b'"open c') is None


def test_printable_as_postfix_logs():
    assert printable(b"plain text") == "plain text"
    assert printable(b"a\tb\x01\xff") == "a?b??"
    assert printable("é€".encode()) == "é€"
    assert printable("é".encode(), utf8=False) == "??"
    # A character cut short still passes as UTF-8 to Postfix's lenient check.
    assert printable(b"\xe2\x82") == b"\xe2\x82".decode("utf-8", "surrogateescape")


def test_fold_key_ascii_fast_path_is_the_ascii_fold():
    every = "".join(chr(c) for c in range(128))
    lowered = every.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))
    assert fold_key(every) == fold_key(every, False) == lowered
    assert fold_key("STRAẞE") == "strasse"
    assert fold_key("STRAẞE", False) == "straẞe"
    assert fold_key("\u212a") == "k" and fold_key("\u212a", False) == "\u212a"  # KELVIN SIGN


def test_text_logical_lines_warn_or_raise():
    source = b"  indented\nname = value\n"
    warnings: list[str] = []
    assert list(logical_lines(source, "cfg", warnings)) == [(2, "name = value")]
    assert warnings[0].startswith("cfg:1: logical line must not start with whitespace")
    # A caller with nowhere to put a warning gets an error instead of a silently dropped line.
    with pytest.raises(TableError, match="^cfg:1: logical line must not start with whitespace"):
        list(logical_lines(source, "cfg"))
