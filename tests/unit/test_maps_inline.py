"""inline: and static: tables against Postfix's own `postmap -q` (both types are built into
Postfix): generated tables and keys, syntax edge cases, and the errors Postfix rejects."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfastmta.maps import TableError, open_table
from pyfastmta.maps.registry import TableOptions

POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
needs_postmap = pytest.mark.skipif(
    not os.path.exists(POSTMAP) and not os.environ.get("CI"), reason="Postfix's postmap is not installed")


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[bool, Path]:
    """A private Postfix configuration per smtputf8_enable setting (never /etc/postfix)."""
    made = {}
    for smtputf8_enable in (True, False):
        directory = tmp_path_factory.mktemp(f"postfix-utf8-{smtputf8_enable}")
        (directory / "main.cf").write_text(
            f"compatibility_level = 3.6\nsmtputf8_enable = {'yes' if smtputf8_enable else 'no'}\n")
        # postmap waits for a configuration modified within the last second or so to settle.
        old = time.time() - 10
        os.utime(directory / "main.cf", (old, old))
        made[smtputf8_enable] = directory
    return made


def postmap_many(config: Path, spec: str, keys: list[str]) -> tuple[int, dict[str, str], str]:
    """Postfix's answers for many keys in one process: (exit status, {key: value}, stderr)."""
    result = subprocess.run([POSTMAP, "-c", str(config), "-q", "-", spec],
                            input="".join(f"{key}\n" for key in keys), capture_output=True,
                            text=True, check=False)
    answers = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("\t")
        answers[key] = value
    return result.returncode, answers, result.stderr


def ours(spec: str, keys: list[str], smtputf8_enable: bool) -> dict[str, str]:
    table = open_table(spec, TableOptions(smtputf8_enable=smtputf8_enable))
    return {key: value for key in keys if (value := table.get(key)) is not None}


def assert_same(configs, spec: str, keys: list[str], smtputf8_enable: bool = True) -> None:
    _, expected, stderr = postmap_many(configs[smtputf8_enable], spec, keys)
    assert "fatal" not in stderr, stderr
    assert ours(spec, keys, smtputf8_enable) == expected, (spec, stderr)


# Characters whose folding differs between ASCII-only and full Unicode case folding.
KEY_CHARS = st.sampled_from(list("abcXYZ019.-+@_<>!") + ["ß", "É", "é", "ǅ", "K", "Σ", "ς"])
VALUE_CHARS = st.sampled_from(list("smtp:[]lmtpXY.0-9#\\\"=") + ["ü"])


@st.composite
def inline_tables(draw):
    """(spec, keys to query): plain key=value entries and braced entries whose values hold
    whitespace, commas and balanced braces, with separators of every kind between them."""
    keys = draw(st.lists(st.text(KEY_CHARS, min_size=1, max_size=6), min_size=1, max_size=10))
    entries = []
    for key in keys:
        words = draw(st.lists(st.text(VALUE_CHARS, min_size=1, max_size=6), min_size=1, max_size=3))
        if draw(st.booleans()):
            pad = draw(st.sampled_from(["", " ", "  ", "\t"]))
            joiner = draw(st.sampled_from([" ", ", ", " {x, y} "]))
            inner = f"{pad}{key}{pad}={pad}{joiner.join(words)}{pad}"
            entries.append("{" + inner + "}")
        else:
            entries.append(f"{key}={words[0]}")
    separators = st.sampled_from([",", ", ", " ", ",,", "\t", " ,\n "])
    body = "".join(entry + draw(separators) for entry in entries)
    spec = "inline:{" + draw(st.sampled_from(["", " ", ","])) + body + "}"
    queries = keys + [key.upper() for key in keys] + [key.swapcase() for key in keys] + ["absent"]
    return spec, queries


@needs_postmap
@pytest.mark.parametrize("smtputf8_enable", [True, False])
@settings(max_examples=80, deadline=None)
@given(case=inline_tables())
def test_generated_inline_tables_match_postmap(configs, smtputf8_enable, case):
    spec, keys = case
    assert_same(configs, spec, keys, smtputf8_enable)


@needs_postmap
@pytest.mark.parametrize("spec", [
    "inline:{a=1, b=2,c=3}",
    "inline:{ { A = with space , and comma }, b=x }",
    "inline:{x=}",                          # an empty value is a value
    "inline:{{=empty key}, y=1}",           # so is an empty key
    "inline:{a=1=2, b==}",                  # only the first "=" separates
    "inline:{a=1, a=2, A=3}",               # the last of repeated keys wins
    "inline:{x={a b}, y={a b}c}",           # a brace group inside a plain entry stays whole
    "inline:{{ k = {nested {deep}} value }}",
    "inline:{x=1;y=2}",
    "inline:{{\tk\t=\tv w\t}}",
    "inline:{Straße=1, ΣΑΣ=2, K=kelvin}",
    "inline:{user@Example.COM=ok, @example.com=domain}",
    "static:value",
    "static:  padded",
    "static:{  braced and padded  }",
    "static:{ a {b} c }",
    "static:x}",
    "static:{}",
    "static:{ }",
])
@pytest.mark.parametrize("smtputf8_enable", [True, False])
def test_edge_cases_match_postmap(configs, spec, smtputf8_enable):
    keys = ["a", "A", "b", "c", "x", "X", "y", "k", "K", "", "absent", "straße", "STRASSE", "strasse",
            "σας", "σασ", "ΣΑΣ", "k", "user@example.com", "USER@EXAMPLE.COM", "@example.com"]
    assert_same(configs, spec, [key for key in keys if key], smtputf8_enable)


def test_empty_key_and_empty_value():
    # postmap -q cannot ask for "" on stdin; Postfix's table holds it all the same.
    table = open_table("inline:{{=empty key}, x=}", TableOptions())
    assert table.get("") == "empty key"
    assert table.get("X") == ""


REJECTED = [
    "inline:{}",                            # no table at all
    "inline:{ }",                           # an empty one
    "inline:{ , , }",
    "inline:{a}",                           # no "="
    "inline:{a =1}",                        # whitespace ends a plain entry
    "inline:{\tk\t=\tv}",
    "inline:{{ a b = c }}",                 # a name holds no whitespace
    "inline:{{ }}",                         # a braced entry without a name
    "inline:{{a=1}x}",                      # text after a braced entry
    "inline:{{a=1}",                        # braces that never close
    "inline:{a=1}}",
    "inline:{a=1}x",
    "inline:a=1",
    "static:{a",
    "static:{a} b",
]


@needs_postmap
def test_postfix_rejects_what_we_reject(configs):
    # Postfix pauses a second before it exits on a fatal error: ask about every spec at once.
    processes = {spec: subprocess.Popen([POSTMAP, "-c", str(configs[True]), "-q", "a", spec],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for spec in REJECTED}
    results = {spec: (process.communicate(timeout=30)[1], process.returncode)
               for spec, process in processes.items()}
    for spec, (stderr, status) in results.items():
        assert status == 1 and "fatal" in stderr, (spec, stderr)
        with pytest.raises(TableError) as error:
            open_table(spec, TableOptions())
        assert spec.partition(":")[0] in str(error.value)


def test_inline_and_static_are_fixed_tables():
    # Address searches hand fixed tables every piece (user@domain, user, @domain).
    for spec in ("inline:{a=1}", "static:x"):
        table = open_table(spec, TableOptions())
        assert table.pattern is False and table.fold is True
        assert table.changed() is False
