"""$name expansion, checked against Postfix's own postconf on the same main.cf text."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfastmta.cli import postconf
from pyfastmta.config import ConfigError, load_config
from pyfastmta.config.errors import ExpansionError
from pyfastmta.config.expansion import expand, referenced_names

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
needs_postfix = pytest.mark.skipif(not os.environ.get("CI") and not Path(POSTCONF).exists(), reason="Postfix's postconf is not installed")

# A parameter Postfix knows but pyfastmta does not: referring to the user-defined names from it
# makes Postfix treat them as used, so that it prints their values.
ANCHOR = "proxy_read_maps"

SNIPPETS = [
    ("a = 1\nb = $a$a\nc = ${a}x$(a)\n", ["b", "c"]),
    ("a = 1\nempty =\nc = ${a?set}|${a:unset}|${empty?set}|${empty:unset}|${nothing?set}|${nothing:unset}\n",
     ["c"]),
    ("a = 1\nempty =\nc = ${a?{yes}:{no}} ${empty?{yes}:{no}} ${a?{ spaced }} ${empty:{ spaced }}\n", ["c"]),
    ("empty =\nx = $empty\ny = ${x?written-not-empty}\n", ["y"]),
    ("a = 1\nc = $$a $$$a ${a?$$}\n", ["c"]),
    ("c = before $nothing after\nd = ${ nothing }.x\n", ["c", "d"]),
    ("a = one\n# a comment does not end the value\n  two\n\n\tthree\nb   =   x  \n", ["a", "b"]),
    ("a = first\nb = $a\na = second\n", ["a", "b"]),
    ("a = 10\nb = 9\nc = ${{$a} < {$b} ? {lt} : {ge}} ${{$a} > {$b}?{gt}:{le}} ${{x} == {x} ? {eq}}\n", ["c"]),
    ("a = abc\nc = ${{$a} != {abd} ? {ne} : {eq}} ${{$a} >= {abd} ? {ge} : {lt}} ${{b} <= {a} : {gt}}\n",
     ["c"]),
    ("c = ${{3.6} <level {3.10} ? {older} : {newer}} ${{2} >=level {2.0} ? {same}}\n", ["c"]),
    ("a = 1\nb = ${a?{${a?{$a$a}}}}\nc = ${b?{[$b]}:{none}}\n", ["b", "c"]),
    ("mail_name = Mailer\nc = $myhostname|$mydomain|$myorigin|$mail_name\n", ["c", "myhostname", "mydomain"]),
    ("mydomain = example.org\nc = $myhostname $myorigin\n", ["c", "myhostname"]),
    ("myhostname = mx.example.net\nc = $mydomain\n", ["c", "mydomain"]),
    ("myhostname = host-without-dot\nc = $mydomain\n", ["c"]),
    ("a = x y , z\nb = ${a}\n", ["b"]),
    ("a = { braces stay }\nb = $a\n", ["b"]),
]


def postfix_values(tmp_path: Path, main_cf: str, names: list[str]) -> dict[str, str]:
    """What Postfix's postconf -x says these names expand to in this main.cf."""
    user_names = " ".join(f"${name}" for name in names)
    (tmp_path / "main.cf").write_text(f"{main_cf}{ANCHOR} = {user_names}\n")
    (tmp_path / "master.cf").write_text("")
    # Postfix waits for a file modified less than a second ago to settle; date them back.
    for name in ("main.cf", "master.cf"):
        os.utime(tmp_path / name, (time.time() - 10, time.time() - 10))
    result = subprocess.run([POSTCONF, "-c", str(tmp_path), "-x", *names],
                            capture_output=True, text=True, check=True)
    values = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(" =")
        values[name] = value[1:]
    return values


def our_values(tmp_path: Path, names: list[str]) -> dict[str, str]:
    """What `pyfastmta postconf -x -h` prints for these names."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()):
        assert postconf.run(["-x", "-h", *names], str(tmp_path)) == 0
    return dict(zip(names, output.getvalue().splitlines()))


@needs_postfix
@pytest.mark.parametrize("main_cf, names", SNIPPETS)
def test_expansion_matches_postfix(tmp_path, main_cf, names):
    expected = postfix_values(tmp_path, main_cf, names)
    assert set(expected) == set(names)
    assert our_values(tmp_path, names) == expected


# Random expressions over four names: set, set to a $reference, set but empty, and never set.
DEFINED = "a = alpha\nr = $a-ref\nempty =\n"
NAMES = ["a", "r", "empty", "unset"]
plain_text = st.text(alphabet="xyz .,-", max_size=6)
name = st.sampled_from(NAMES)


def _expressions():
    leaf = st.one_of(
        plain_text,
        name.map(lambda n: f"${n}"),
        name.map(lambda n: f"${{{n}}}"),
        name.map(lambda n: f"$({n})"),
        st.just("$$"),
    )

    def extend(inner):
        braced = inner.map(lambda text: "{" + text + "}")
        return st.one_of(
            st.tuples(inner, inner).map("".join),
            st.tuples(name, st.sampled_from("?:"), inner.filter(lambda t: not t.lstrip().startswith("{")))
            .map(lambda p: f"${{{p[0]}{p[1]}{p[2]}}}"),
            st.tuples(name, braced, braced).map(lambda p: f"${{{p[0]}?{p[1]}:{p[2]}}}"),
            st.tuples(braced, st.sampled_from(["==", "!=", "<", ">=", "<=", ">"]), braced, braced, braced)
            .map(lambda p: f"${{{p[0]} {p[1]} {p[2]} ? {p[3]} : {p[4]}}}"),
        )

    return st.recursive(leaf, extend, max_leaves=8)


@needs_postfix
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=_expressions())
def test_random_expressions_match_postfix(tmp_path, expression):
    main_cf = f"{DEFINED}probe = {expression}\n"
    expected = postfix_values(tmp_path, main_cf, ["probe"])
    assert our_values(tmp_path, ["probe"]) == expected


class Table:
    """A resolver over a dict, for tests that need no files."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.missing: list[str] = []

    def raw_value(self, name):
        return self.values.get(name)

    def expanded_value(self, name):
        raw = self.values.get(name)
        return None if raw is None else expand(raw, self)

    def undefined(self, name):
        self.missing.append(name)


@given(st.text())
def test_doubled_dollars_give_the_text_back(text):
    assert expand(text.replace("$", "$$"), Table({})) == text


def test_undefined_reference_is_reported_and_empty():
    table = Table({"a": "1"})
    assert expand("$a$nothing.$a", table) == "1.1"
    assert table.missing == ["nothing"]


@pytest.mark.parametrize("text", ["x$", "$ x", "${a", "$(a", "${}", "${a-b}", "${{1} ~ {2} ? {x}}",
                                  "${{1} == {2} x}", "${{a} <level {3} ? {x}}"])
def test_bad_syntax_is_refused(text):
    with pytest.raises(ExpansionError):
        expand(text, Table({"a": "1"}))


def test_referenced_names_include_every_branch():
    assert referenced_names("$a ${b?$c} $(d) $$e ${{$f} == {1} ? {$g}}") == {"a", "b", "c", "d", "f", "g"}


def test_loop_is_refused_with_file_and_line(tmp_path):
    (tmp_path / "main.cf").write_text("a = $b\nb = x $a\nsmtpd_banner = $a\n")
    (tmp_path / "master.cf").write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value).startswith(f"{tmp_path}/main.cf:")
    assert "refers to itself" in str(caught.value)


def test_bad_syntax_names_the_line(tmp_path):
    (tmp_path / "main.cf").write_text("# comment\nsmtpd_banner = costs 5$\n")
    (tmp_path / "master.cf").write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value).startswith(f"{tmp_path}/main.cf:2: cannot expand smtpd_banner:")
