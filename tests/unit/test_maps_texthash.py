"""texthash: tables against Postfix's own `postmap -q - texthash:FILE` on generated tables and keys,
transport(5)'s search order over a list of tables, and a Maps list picking up an edited file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfastmta.maps import Maps, TableError, open_table
from pyfastmta.maps.registry import TableOptions
from pyfastmta.resolve import transport_lookup

POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"
PYFASTMTA = os.path.join(os.path.dirname(sys.executable), "pyfastmta")  # the installed command
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
        table = open_table(f"texthash:{path}", TableOptions(smtputf8_enable=smtputf8_enable))
        found = {query: table.get(query) for query in queries if table.get(query) is not None}
        assert found == expected


@pytest.mark.parametrize("text, line, reason", [
    ("key\n", 1, "expected format: key whitespace value -- ignoring this line"),
    ("# c\n\nlonely   \n", 3, "expected format: key whitespace value -- ignoring this line"),
    ('"open key value\n', 1, "unbalanced '\"' in '\"open key value' -- ignoring this line"),
    ("  first v\n", 1, 'logical line must not start with whitespace: "  first v"'),
])
def test_malformed_lines_are_skipped_with_a_warning(tmp_path, text, line, reason):
    """As Postfix's texthash: does: the line is left out, the rest of the table is used."""
    path = tmp_path / "transport"
    path.write_text(text + "good.example smtp:good\n")
    table = open_table(f"texthash:{path}")
    assert table.warnings == [f"{path}:{line}: {reason}"]
    assert dict(table.items()) == {"good.example": "smtp:good"}


def test_missing_file_is_a_table_error(tmp_path):
    with pytest.raises(TableError, match="file not found"):
        open_table(f"texthash:{tmp_path / 'nowhere'}")


def test_duplicate_keeps_first_and_warns(tmp_path):
    path = tmp_path / "transport"
    path.write_text("a.example smtp:one\nA.EXAMPLE smtp:two\n")
    table = open_table(f"texthash:{path}")
    assert table.get("a.example") == "smtp:one"
    # Postfix names the key as the file spells it.
    assert table.warnings == [f'{path}:2: duplicate entry: "A.EXAMPLE"']


def test_duplicate_fails_the_table_in_a_daemon(tmp_path):
    # Postfix's daemons refuse such a table (postmap -q only warns): here the configuration
    # is refused at start, naming the parameter, the file and the line.
    from pyfastmta.config import ConfigError, load_config
    from pyfastmta.maps.registry import parameter_maps

    table = tmp_path / "transport"
    table.write_text("a.example smtp:one\nb.example smtp:two\nA.EXAMPLE smtp:three\n")
    (tmp_path / "main.cf").write_text(f"transport_maps = texthash:{table}\n")
    (tmp_path / "master.cf").write_text("")
    config = load_config(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        parameter_maps(config, "transport_maps")
    assert f'transport_maps: {table}:3: duplicate entry: "A.EXAMPLE"' in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path}/main.cf")


def sequence(argv: list[str]) -> list[bytes]:
    result = subprocess.run(argv, capture_output=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return sorted(result.stdout.splitlines())


@needs_postmap
@pytest.mark.parametrize("smtputf8_enable", [True, False])
def test_sequence_lists_what_postfix_lists(tmp_path, smtputf8_enable):
    """`pyfastmta postmap -s texthash:FILE` prints the entries Postfix's `postmap -s` prints
    (folded keys; Postfix's order is its hash table's, so both are compared sorted)."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "main.cf").write_text(
        f"compatibility_level = 3.6\nsmtputf8_enable = {'yes' if smtputf8_enable else 'no'}\n")
    path = tmp_path / "table"
    path.write_bytes('B.Example smtp:b\n"Q K" quoted value\nStraße sz\nSTRASSE ss\nÉté v\n'
                     "a\tv1\n  more\nnovalue\n".encode())
    for written in (path, config / "main.cf"):
        os.utime(written, (time.time() - 10, time.time() - 10))
    theirs = sequence([POSTMAP, "-c", str(config), "-s", f"texthash:{path}"])
    ours = sequence([PYFASTMTA, "postmap", "-c", str(config), "-s", f"texthash:{path}"])
    assert ours == theirs and len(ours) == (5 if smtputf8_enable else 6)


_TABLES = tempfile.TemporaryDirectory(prefix="pyfastmta-maps-")  # removed when the module goes


def maps(*tables: dict[str, str]) -> Maps:
    """A Maps list of texthash: tables written from the given entries."""
    directory = Path(tempfile.mkdtemp(dir=_TABLES.name))
    specs = []
    for number, entries in enumerate(tables):
        path = directory / f"table{number}"
        path.write_text("".join(f"{key} {value}\n" for key, value in entries.items()))
        specs.append(f"texthash:{path}")
    return Maps("transport_maps", specs, open_table)


def lookup(entries: dict[str, str], address: str, **options) -> tuple[str, str] | None:
    return transport_lookup(maps(entries), address, **options)


def test_search_order_full_address_then_stripped_then_domain():
    entries = {"u+x@d.example": "smtp:full", "u@d.example": "smtp:stripped", "d.example": "smtp:domain",
               ".example": "smtp:parent", "*": "smtp:wild"}
    t = maps(entries)
    assert transport_lookup(t, "u+x@d.example", recipient_delimiter="+") == ("smtp", "full")
    assert transport_lookup(t, "U+Y@D.Example", recipient_delimiter="+") == ("smtp", "stripped")
    assert transport_lookup(t, "U+Y@D.Example") == ("smtp", "domain")
    assert transport_lookup(t, "v@d.example") == ("smtp", "domain")
    assert transport_lookup(t, "v@e.d.example") == ("smtp", "parent")
    assert transport_lookup(t, "v@other") == ("smtp", "wild")


def test_parent_style_looks_up_parent_names_without_dot():
    t = maps({"example.com": "smtp:parent", ".example.com": "smtp:dotted"})
    assert transport_lookup(t, "u@a.b.example.com") == ("smtp", "dotted")
    assert transport_lookup(t, "u@a.b.example.com",
                            parent_domain_matches_subdomains=["transport_maps"]) == ("smtp", "parent")
    assert transport_lookup(t, "u@example.com") == ("smtp", "parent")
    assert transport_lookup(t, "u@example.org") is None


def test_each_key_tries_every_table_before_the_next_key():
    both = maps({"example.com": "smtp:first-domain"},
                {"u@example.com": "smtp:second-address", "*": "smtp:second-wild"})
    assert transport_lookup(both, "u@example.com") == ("smtp", "second-address")
    assert transport_lookup(both, "v@example.com") == ("smtp", "first-domain")
    assert transport_lookup(maps(), "v@example.com") is None


@pytest.mark.parametrize("local, delimiter, stripped", [
    ("postmaster+x", "+", None), ("MAILER-DAEMON+x", "+", None), ("double-bounce-x", "-", None),
    ("owner-list", "-", None), ("list-request", "-", None), ("owner-list+x", "+", "owner-list"),
    ("a+b+c", "+", "a"), ("a-b+c", "+-", "a"),
])
def test_extension_stripping_rules(local, delimiter, stripped):
    entries = {"d": "smtp:domain", **({f"{stripped}@d": "x:stripped"} if stripped else {})}
    expected = ("x", "stripped") if stripped else ("smtp", "domain")
    assert lookup(entries, f"{local}@d", recipient_delimiter=delimiter) == expected


def test_result_parts():
    t = maps({"a": ":", "b": "smtp", "c": ":[gw]:25", "d": "error:no: not here"})
    assert transport_lookup(t, "u@a") == ("", "")
    assert transport_lookup(t, "u@b") == ("smtp", "")
    assert transport_lookup(t, "u@c") == ("", "[gw]:25")
    assert transport_lookup(t, "u@d") == ("error", "no: not here")


def test_an_edited_table_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / "transport"
    path.write_text("example.com smtp:old\n")
    listed = Maps("transport_maps", [f"texthash:{path}"], open_table)
    assert listed.get("example.com") == "smtp:old"
    path.write_text("example.com smtp:new-and-longer\n")
    assert listed.get("example.com") == "smtp:old"  # looked at again after a second, not per lookup
    monkeypatch.setattr(time, "monotonic", lambda: 10.0 ** 9)
    assert listed.get("example.com") == "smtp:new-and-longer"


def test_a_broken_edit_keeps_the_last_good_table(tmp_path, monkeypatch):
    path = tmp_path / "transport"
    path.write_text("example.com smtp:good\n")
    warnings = []
    listed = Maps("transport_maps", [f"texthash:{path}"], open_table, warnings.append)
    path.unlink()  # a table that cannot be read at all
    monkeypatch.setattr(time, "monotonic", lambda: 10.0 ** 9)
    assert listed.get("example.com") == "smtp:good"
    assert len(warnings) == 1 and "file not found" in warnings[0]
    assert warnings[0].startswith("transport_maps: ")


def test_an_empty_result_is_a_table_error_not_a_match():
    """Postfix's map search refuses a table that answers "" (it must say "not found")."""
    listed = Maps("canonical_maps", ["inline:{empty=, full=value}"], open_table)
    assert listed.get("full") == "value"
    with pytest.raises(TableError, match="returns an empty string result"):
        listed.get("empty")


def test_skipped_lines_are_reported_through_the_parameter(tmp_path):
    path = tmp_path / "transport"
    path.write_text("good smtp:x\nlonely\n")
    warnings = []
    listed = Maps("transport_maps", [f"texthash:{path}"], open_table, warnings.append)
    assert listed.get("good") == "smtp:x"
    assert warnings == [f"transport_maps: {path}:2: expected format: key whitespace value -- ignoring this line"]


def test_transport_maps_refuse_key_text_in_regexp_results(tmp_path):
    """Postfix's no_regsub: $1 in a transport_maps result could let a recipient choose a next hop."""
    from types import SimpleNamespace

    from pyfastmta.maps.registry import parameter_maps

    table = tmp_path / "transport.regexp"
    table.write_text("/^(.*)@sub\\.example$/ smtp:[$1]\n/@fixed\\.example$/ smtp:[fixed]\n")
    config = SimpleNamespace(get=lambda name: True, config_dir=str(tmp_path), main_cf_path=str(tmp_path),
                             expanded=lambda name: f"regexp:{table}")
    transport = parameter_maps(config, "transport_maps")
    assert transport.get("u@fixed.example") == "smtp:[fixed]"
    assert transport.get("u@sub.example") is None
    canonical = parameter_maps(config, "canonical_maps")
    assert canonical.get("u@sub.example") == "smtp:[u]"
