"""TransportTable against Postfix's own `postmap -q - texthash:FILE` on generated tables and keys,
and transport(5)'s search order on tables written by hand."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfastmta.config.errors import ConfigError
from pyfastmta.resolve import TransportTable, transport_lookup

POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"
needs_postmap = pytest.mark.skipif(
    not os.path.exists(POSTMAP) and not os.environ.get("CI"), reason="Postfix's postmap is not installed")

# Letters whose case folding differs between ASCII and full Unicode folding, and quotes.
KEY_CHARS = st.sampled_from(list("abcXYZ019.-+@*_\"") + ["ß", "ẞ", "É", "é", "ǅ", "K", "ﬁ"])
VALUE_WORDS = st.text(st.sampled_from(list("smtp:[]lmtpXY.0-9#\\\"")), min_size=1, max_size=8)


@st.composite
def tables(draw):
    """(file text, keys to query): entries with duplicates, comments and continuation lines."""
    keys = draw(st.lists(st.text(KEY_CHARS, min_size=1, max_size=6).filter(lambda k: k.count('"') % 2 == 0),
                         min_size=1, max_size=12))
    lines = []
    for key in keys:
        words = draw(st.lists(VALUE_WORDS, min_size=1, max_size=3))
        if draw(st.booleans()):
            lines.append("# " + draw(VALUE_WORDS))
        gap = draw(st.sampled_from([" ", "\t", "   "]))
        lines.append(f"{key}{gap}{words[0]}")
        for word in words[1:]:
            # A continuation line keeps its leading whitespace in the value.
            lines.append(draw(st.sampled_from([" ", "\t ", "  "])) + word + draw(st.sampled_from(["", " "])))
    queries = keys + [key.upper() for key in keys] + [key.swapcase() for key in keys] + ["absent", "*"]
    return "\n".join(lines) + "\n", [query for query in queries if '"' not in query or query in keys]


def postmap_answers(path: Path, queries: list[str], config: Path) -> dict[str, str]:
    result = subprocess.run([POSTMAP, "-q", "-", f"texthash:{path}"], input="\n".join(queries) + "\n",
                            capture_output=True, text=True, env={**os.environ, "MAIL_CONFIG": str(config)},
                            check=False)
    assert result.returncode in (0, 1), result.stderr
    answers = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("\t")
        answers[key] = value
    return answers


@needs_postmap
@pytest.mark.parametrize("smtputf8_enable", [True, False])
@settings(max_examples=100, deadline=None)
@given(case=tables())
def test_table_matches_postmap(smtputf8_enable, case):
    text, queries = case
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory)
        # compatibility_level 3.6 turns smtputf8_enable on, and with it full Unicode case folding.
        level = "3.6" if smtputf8_enable else "0"
        (config / "main.cf").write_text(f"compatibility_level = {level}\n")
        (config / "master.cf").write_text("")
        path = config / "transport"
        path.write_text(text)
        # postmap waits for files modified within the last second or two to settle; age them.
        for written in config.iterdir():
            os.utime(written, (time.time() - 10, time.time() - 10))
        expected = postmap_answers(path, queries, config)
        table = TransportTable.from_file(str(path), smtputf8_enable=smtputf8_enable)
        found = {query: table.get(query) for query in queries if table.get(query) is not None}
        assert found == expected


@pytest.mark.parametrize("text, line, reason", [
    ("key\n", 1, "expected format: key whitespace value"),
    ("# c\n\nok v\nlonely   \n", 4, "expected format"),
    ('"open key value\n', 1, "unbalanced"),
    ("  first v\n", 1, "must not start with whitespace"),
])
def test_malformed_lines_name_path_and_line(tmp_path, text, line, reason):
    path = tmp_path / "transport"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        TransportTable.from_file(str(path))
    assert str(caught.value).startswith(f"{path}:{line}: ") and reason in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        TransportTable.from_file(str(tmp_path / "nowhere"))


def test_duplicate_keeps_first_and_warns(tmp_path):
    path = tmp_path / "transport"
    path.write_text("a.example smtp:one\nA.EXAMPLE smtp:two\n")
    table = TransportTable.from_file(str(path))
    assert table.get("a.example") == "smtp:one"
    assert table.warnings == [f'{path}:2: duplicate entry "a.example" ignored; the first one is used']


def table(**entries: str) -> TransportTable:
    return TransportTable({key.replace("_", "."): value for key, value in entries.items()})


def test_search_order_full_address_then_stripped_then_domain():
    entries = {"u+x@d.example": "smtp:full", "u@d.example": "smtp:stripped", "d.example": "smtp:domain",
               ".example": "smtp:parent", "*": "smtp:wild"}
    t = TransportTable(entries)
    assert t.lookup("u+x@d.example", recipient_delimiter="+") == ("smtp", "full")
    assert t.lookup("U+Y@D.Example", recipient_delimiter="+") == ("smtp", "stripped")
    assert t.lookup("U+Y@D.Example") == ("smtp", "domain")
    assert t.lookup("v@d.example") == ("smtp", "domain")
    assert t.lookup("v@e.d.example") == ("smtp", "parent")
    assert t.lookup("v@other") == ("smtp", "wild")


def test_parent_style_looks_up_parent_names_without_dot():
    t = TransportTable({"example.com": "smtp:parent", ".example.com": "smtp:dotted"})
    assert t.lookup("u@a.b.example.com") == ("smtp", "dotted")
    assert t.lookup("u@a.b.example.com", parent_domain_matches_subdomains=["transport_maps"]) == ("smtp", "parent")
    assert t.lookup("u@example.com") == ("smtp", "parent")
    assert t.lookup("u@example.org") is None


def test_each_key_tries_every_table_before_the_next_key():
    first = TransportTable({"example.com": "smtp:first-domain"})
    second = TransportTable({"u@example.com": "smtp:second-address", "*": "smtp:second-wild"})
    assert transport_lookup([first, second], "u@example.com") == ("smtp", "second-address")
    assert transport_lookup([first, second], "v@example.com") == ("smtp", "first-domain")
    assert transport_lookup([], "v@example.com") is None


@pytest.mark.parametrize("local, delimiter, stripped", [
    ("postmaster+x", "+", None), ("MAILER-DAEMON+x", "+", None), ("double-bounce-x", "-", None),
    ("owner-list", "-", None), ("list-request", "-", None), ("owner-list+x", "+", "owner-list"),
    ("a+b+c", "+", "a"), ("a-b+c", "+-", "a"),
])
def test_extension_stripping_rules(local, delimiter, stripped):
    t = TransportTable({"d": "smtp:domain", **({f"{stripped}@d": "x:stripped"} if stripped else {})})
    expected = ("x", "stripped") if stripped else ("smtp", "domain")
    assert t.lookup(f"{local}@d", recipient_delimiter=delimiter) == expected


def test_result_parts():
    t = TransportTable({"a": ":", "b": "smtp", "c": ":[gw]:25", "d": "error:no: not here"})
    assert t.lookup("u@a") == ("", "")
    assert t.lookup("u@b") == ("smtp", "")
    assert t.lookup("u@c") == ("", "[gw]:25")
    assert t.lookup("u@d") == ("error", "no: not here")
