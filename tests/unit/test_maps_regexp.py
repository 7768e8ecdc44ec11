"""regexp: and pcre: tables against Postfix's own postmap.

The golden tables in tests/golden/maps/ (features.* use every part of the syntax, errors.* hold
rules Postfix skips) are opened by pyfastmta and by `postmap -q - type:file` from Postfix, with a
private configuration directory; thousands of keys (a fixed product of local parts, domains and
case variants, then Hypothesis batches) must get the same answer from both, key for key, and the
warnings about skipped rules must name the same lines with the same text.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfastmta.maps.regexp import logical_lines, parse_replacement
from pyfastmta.maps.registry import TableOptions, open_table
from pyfastmta.maps.table import Maps, TableError

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "maps"
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin") or "/usr/sbin/postconf"

# Postfix is a test dependency (make test installs it); only a developer machine without it
# may skip, never CI.
pytestmark = pytest.mark.skipif(not os.path.exists(POSTMAP) and not os.environ.get("CI"),
                                reason="Postfix's postmap is not installed")


@pytest.fixture(scope="module")
def postfix_dirs(tmp_path_factory):
    """Private Postfix configuration directories, so postmap never reads /etc/postfix: one with
    smtputf8_enable = yes (Postfix's default), one with it off."""
    dirs = {}
    for utf8 in (True, False):
        path = tmp_path_factory.mktemp("postfix-utf8" if utf8 else "postfix-ascii")
        (path / "main.cf").write_text(
            "compatibility_level = 3.6\n" f"smtputf8_enable = {'yes' if utf8 else 'no'}\n")
        dirs[utf8] = str(path)
    return dirs


def postfix_has_pcre(config: str) -> bool:
    types = subprocess.run([POSTCONF, "-c", config, "-m"], check=False, capture_output=True, text=True).stdout
    return "pcre" in types.split()


def postfix_answers(config: str, spec: str, keys: list[str]) -> tuple[dict[str, str], str]:
    """What `postmap -q - spec` answers for each key (keys without an answer are absent), and its
    warnings. Keys travel as UTF-8, with surrogate escapes for bytes that are not."""
    data = b"".join(key.encode("utf-8", "surrogateescape") + b"\n" for key in keys)
    result = subprocess.run([POSTMAP, "-c", config, "-q", "-", spec], check=False, input=data,
                            capture_output=True, timeout=60)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode in (0, 1), f"postmap failed: {stderr}"
    answers = {}
    for line in result.stdout.split(b"\n"):
        if line:
            key, _, value = line.partition(b"\t")
            answers[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return answers, stderr


def postfix_query(config: str, spec: str, key: str) -> tuple[int, str, str]:
    """`postmap -q key spec`: exit status, answer, warnings (for keys that cannot go through
    stdin, such as ones holding a newline)."""
    result = subprocess.run([POSTMAP, "-c", config, "-q", key, spec], check=False, capture_output=True,
                            text=True, timeout=30)
    return result.returncode, result.stdout.rstrip("\n"), result.stderr


def assert_same_answers(config: str, kind: str, path: str, keys: list[str], utf8: bool = True):
    keys = list(dict.fromkeys(keys))
    expected, _ = postfix_answers(config, f"{kind}:{path}", keys)
    table = open_table(f"{kind}:{path}", TableOptions(smtputf8_enable=utf8))
    mismatches = []
    for key in keys:
        ours = table.get(key)
        theirs = expected.get(key)
        if ours != theirs:
            mismatches.append((key, theirs, ours))
    assert not mismatches, f"{len(mismatches)} keys differ (key, postfix, ours): {mismatches[:20]}"
    # Each run must reach rules beyond the first few, or it compares little.
    return sum(1 for key in keys if expected.get(key) is not None)


_MAP_WARNING = re.compile(r"^postmap: warning: (?:regexp|pcre|cidr) map (.*?), line (\d+): (.*)$")
_PATH_WARNING = re.compile(r"^postmap: warning: (.*?): (logical line must not start with whitespace.*)$")
_PLAIN_WARNING = re.compile(r"^postmap: warning: ((?:truncated macro reference|empty macro name).*)$")


def postfix_warnings(stderr: str, path: str) -> list[tuple[int | None, str]]:
    found = []
    for line in stderr.splitlines():
        if m := _MAP_WARNING.match(line):
            assert m.group(1) == path
            found.append((int(m.group(2)), m.group(3)))
        elif m := _PATH_WARNING.match(line):
            found.append((None, m.group(2)))
        elif m := _PLAIN_WARNING.match(line):
            found.append((None, m.group(1)))
    return found


def assert_same_warnings(config: str, kind: str, path: str) -> None:
    _, stderr = postfix_answers(config, f"{kind}:{path}", ["x"])
    theirs = postfix_warnings(stderr, path)
    table = open_table(f"{kind}:{path}")
    ours = []
    for warning in table.warnings:
        assert warning.startswith(path + ":"), warning
        line, _, text = warning[len(path) + 1:].partition(": ")
        ours.append((int(line), text))
    assert theirs, "the error table should make Postfix warn"
    # Postfix names no line for a few warnings (those come from shared helpers); the texts match.
    assert sorted(text for _, text in ours) == sorted(text for _, text in theirs)
    numbered = {(line, text) for line, text in theirs if line is not None}
    assert numbered <= set(ours)


# --------------------------------------------------------------------------- keys

LOCALS = [
    "postmaster", "PostMaster", "abuse", "CaseSensitive", "casesensitive", "bre", "breaaa+12",
    "brea+1", "bre+99", "list-foo", "list-foo-request", "list-x-request", "owner-x", "owner-list",
    "double", "user+ext", "User+Tag+More", "a+", "optx", "opty", "optxyy-abc", "opt-abc", "optyy-Q",
    "12345", "7", "word", "a word here", "swordfish", "aa", "ab", "aab", "abcd", "abc", "x", "xxx",
    "xx", "pipe|sign", "path/to", "percent", "continued", "empty", "é", "É", "ée", "日本", "Üñï",
    "ab1", "zz", "a.b", "b", "c", "bob", "carol", "alice", "nest", "nestdeeperx", "nesty", "ny",
    "a-outgoing", "owner-a-outgoing", "list-outgoing", "x+tag", "x+t_1", "123", "9999",
    "a.b*c", "a.bc", "abc=12", "Abc=7", "MiXeDx", "mixedx", "spacedhere", "spaced here", "anchored",
    "xanchored", "dollar", "aaa", "a", "extra", "cost", "\u00e9\u00e9", "opt-", "optx-w_1",
    "ab\\cd", "$1", "a$b",
]
DOMAINS = [
    "example.com", "EXAMPLE.ORG", "example.org", "example.net", "Example.Net", "sub.example",
    "sub.example.com", "sub.other", "utf8.test", "idn.test", "IDN.TEST", "longest", "alpha.test",
    "abc.test", "lazy.test", "ungreedy", "end", "end\u00e9", "bücher.de", "x", "", "sub.",
]
CASES = [str, str.upper, str.swapcase]


def product_keys() -> list[str]:
    keys = [case(f"{local}@{domain}") for local, domain, case in
            itertools.product(LOCALS, DOMAINS, CASES)]
    keys += LOCALS + DOMAINS + ["@", "", " ", "no at sign", "a@b@c", "x@y@sub.z"]
    return keys


ALPHABET = st.sampled_from(list("abcdexyzABXY0129@.+-_=|/%*$ ()[]\\") + ["é", "É", "ü", "ß", "日", "\u0130"])
addresses = st.one_of(
    st.builds(lambda local, domain, case: case(f"{local}@{domain}"),
              st.sampled_from(LOCALS) | st.text(ALPHABET, max_size=10),
              st.sampled_from(DOMAINS) | st.text(ALPHABET, max_size=10),
              st.sampled_from(CASES)),
    st.text(ALPHABET, max_size=20),
)


# --------------------------------------------------------------------------- regexp:

def test_regexp_features_match_postfix(postfix_dirs):
    found = assert_same_answers(postfix_dirs[True], "regexp", str(GOLDEN / "features.regexp"),
                                product_keys())
    assert found > 1000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(addresses, min_size=20, max_size=120))
def test_regexp_generated_keys_match_postfix(postfix_dirs, keys):
    assert_same_answers(postfix_dirs[True], "regexp", str(GOLDEN / "features.regexp"), keys)


def test_regexp_errors_match_postfix(postfix_dirs):
    path = str(GOLDEN / "errors.regexp")
    assert_same_warnings(postfix_dirs[True], "regexp", path)
    keys = [f"{name}@x" for name in ("good1", "good2", "good3", "leading-space", "bad-open(",
                                     "bad-flag", "no-close", "bad-index", "bad-zero", "bad-name",
                                     "trunc", "dollar", "neg", "other", "if-extra", "unclosed",
                                     "interval")]
    assert_same_answers(postfix_dirs[True], "regexp", path, keys)


def test_regexp_without_smtputf8(postfix_dirs):
    """With smtputf8_enable = no, keys that are not UTF-8 are searched too, and a $number may
    hand back such bytes; with it on, such a key is not found."""
    path = str(GOLDEN / "features.regexp")
    raw = [b"\xff@idn.test", b"\xc3@idn.test", b"a\xe9@sub.example", b"\xe9\xe9@x", b"pr\xfc@y"]
    keys = [key.decode("utf-8", "surrogateescape") for key in raw] + product_keys()[:400]
    assert_same_answers(postfix_dirs[False], "regexp", path, keys, utf8=False)
    assert_same_answers(postfix_dirs[True], "regexp", path, keys, utf8=True)


def test_regexp_result_cut_inside_a_character_is_an_error(postfix_dirs, tmp_path):
    # A byte-wise group can end inside a UTF-8 character; Postfix then fails the lookup.
    source = tmp_path / "cut.regexp"
    source.write_text("/^(.)/ [$1]\n")
    status, _, stderr = postfix_query(postfix_dirs[True], f"regexp:{source}", "é")
    assert status != 0 and "non-UTF-8 value" in stderr
    with pytest.raises(TableError, match="non-UTF-8 value"):
        open_table(f"regexp:{source}").get("é")
    assert open_table(f"regexp:{source}", TableOptions(smtputf8_enable=False)).get("é") == "[\udcc3]"


INLINE_CASES = [
    ("regexp:{ {/^line2$/m multi-line}, {/^l.*1.line2$/ dot matches newline} }", ["line1\nline2", "x\nline2x", "line1"]),
    ("regexp:{ { /^(L.*)$/m first [$1] }, {/b/ b} }", ["a\nLx\nb", "Lb", "ab"]),
    ("regexp:{{/^A/i case}, , {!/^A/ other}}", ["A", "a", "b"]),
    ("pcre:{ {/^line2$/m multi-line}, {/^line1.line2$/s dotall toggled off} }", ["line1\nline2", "line1\nline3"]),
    ("pcre:{ {/^x$/ x-dollar}, {/^y$/E y-endonly}, {/^z/ z} }", ["x\n", "y\n", "y", "z\n"]),
]


@pytest.mark.parametrize("spec,keys", INLINE_CASES)
def test_inline_tables_and_newlines_match_postfix(postfix_dirs, spec, keys):
    if spec.startswith("pcre:") and not postfix_has_pcre(postfix_dirs[True]) and not os.environ.get("CI"):
        pytest.skip("Postfix's pcre: type (postfix-pcre) is not installed")
    table = open_table(spec)
    for key in keys:
        status, answer, stderr = postfix_query(postfix_dirs[True], spec, key)
        assert status in (0, 1), stderr
        assert table.get(key) == (answer if status == 0 else None), (spec, key)


def test_inline_syntax_errors():
    with pytest.raises(TableError, match="no '{' at start of text"):
        open_table("regexp:{ {/a/ b}, x }")
    with pytest.raises(TableError, match="syntax error after '}'"):
        open_table("pcre:{ {/a/ b}x }")
    assert open_table("regexp:{ , }").get("a") is None


def test_no_regsub_refuses_number_rules(tmp_path):
    """Tables whose answers must not carry text from the key (Postfix's no_regsub, used for
    transport_maps and mailbox_command_maps) skip $number rules with a warning."""
    from pyfastmta.maps.regexp import open_pcre, open_regexp

    source = tmp_path / "t"
    source.write_text("/^(a)/ smtp:[$1]\n/^b/ smtp:[b$$]\n")
    for opener in (open_regexp, open_pcre):
        table = opener(str(source), TableOptions(), no_regsub=True)
        assert table.get("a") is None and table.get("b") == "smtp:[b$]"
        assert any("substitution is not allowed" in w for w in table.warnings)
        assert opener(str(source), TableOptions()).get("a") == "smtp:[a]"


def test_changed_file_is_picked_up(tmp_path):
    source = tmp_path / "t.regexp"
    source.write_text("/^a/ one\n")
    maps = Maps("test_maps", [f"regexp:{source}"], open_table)
    assert maps.get("a") == "one"
    source.write_text("/^a/ two, longer\n")
    table = maps.tables[0]
    assert table.changed()
    maps._next_check = 0  # skip the once-a-second wait
    assert maps.get("a") == "two, longer"


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(TableError, match="No such file"):
        open_table(f"regexp:{tmp_path}/absent")


def test_pattern_tables_see_whole_keys(tmp_path):
    source = tmp_path / "t"
    source.write_text("/^user@/ found\n")
    table = open_table(f"pcre:{source}")
    assert table.pattern and not table.fold
    maps = Maps("p", [f"pcre:{source}"], open_table)
    # Pattern tables get the whole address only, never the user or @domain pieces.
    assert maps.find(["other@x", "user@", "@x"]) is None
    assert maps.find(["user@x", "user"]) == "found"


def test_logical_lines_follow_readllines():
    warnings: list[str] = []
    data = b"  lead\n  more\nfirst\n# note\n  cont\n\t\ttab\n\nsecond\r\nthird\0cut\n"
    lines = logical_lines(data, "f", warnings)
    assert lines == [(3, b"first  cont\t\ttab"), (8, b"second\r"), (9, b"third")]
    assert warnings and warnings[0].startswith("f:1: logical line must not start with whitespace")


def test_replacement_pieces():
    complaints: list[str] = []
    assert parse_replacement(b"a$1${2}$(3)$$x", complaints.append) == ([b"a", 1, 2, 3, b"$x"], 3)
    assert parse_replacement(b"plain $$ text", complaints.append) == ([b"plain $ text"], 0)
    assert not complaints


# --------------------------------------------------------------------------- pcre:

@pytest.fixture(scope="module")
def pcre_config(postfix_dirs):
    if not postfix_has_pcre(postfix_dirs[True]):
        if os.environ.get("CI"):
            pytest.fail("Postfix's pcre: type is missing: install the Debian package postfix-pcre")
        pytest.skip("Postfix's pcre: type (postfix-pcre) is not installed")
    return postfix_dirs[True]


def test_pcre_features_match_postfix(pcre_config):
    found = assert_same_answers(pcre_config, "pcre", str(GOLDEN / "features.pcre"), product_keys())
    assert found > 1000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(addresses, min_size=20, max_size=120))
def test_pcre_generated_keys_match_postfix(pcre_config, keys):
    assert_same_answers(pcre_config, "pcre", str(GOLDEN / "features.pcre"), keys)


def test_pcre_errors_match_postfix(pcre_config):
    path = str(GOLDEN / "errors.pcre")
    assert_same_warnings(pcre_config, "pcre", path)
    keys = [f"{name}@x" for name in ("good1", "good2", "good3", "bad-open(", "bad-flag", "no-close",
                                     "bad-index", "bad-zero", "bad-name", "bad-two", "neg",
                                     "no-result", "unclosed", "other")]
    assert_same_answers(pcre_config, "pcre", path, keys)


def test_pcre_without_smtputf8(postfix_dirs, pcre_config):
    path = str(GOLDEN / "features.pcre")
    raw = [b"\xe9@x", b"\xff@idn.test", b"a\xe9+b@c", b"\xc3\xa9@x"]
    keys = [key.decode("utf-8", "surrogateescape") for key in raw] + product_keys()[:400]
    assert_same_answers(postfix_dirs[False], "pcre", path, keys, utf8=False)
    assert_same_answers(pcre_config, "pcre", path, keys, utf8=True)
