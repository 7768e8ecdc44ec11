"""unionmap: and pipemap: against Postfix's own `postmap -q`, over parts made of inline:, static:
and texthash: tables; the first part's kind deciding how the composite is searched; an edited
part file picked up through a Maps list."""
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

from pyfastmta.maps import Maps, TableError, open_table
from pyfastmta.maps.registry import TableOptions

POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
needs_postmap = pytest.mark.skipif(
    not os.path.exists(POSTMAP) and not os.environ.get("CI"), reason="Postfix's postmap is not installed")


def aged(path: Path) -> None:
    # postmap waits for files modified within the last second or so to settle.
    old = time.time() - 10
    os.utime(path, (old, old))


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[bool, Path]:
    """A private Postfix configuration per smtputf8_enable setting (never /etc/postfix)."""
    made = {}
    for smtputf8_enable in (True, False):
        directory = tmp_path_factory.mktemp(f"postfix-utf8-{smtputf8_enable}")
        (directory / "main.cf").write_text(
            f"compatibility_level = 3.6\nsmtputf8_enable = {'yes' if smtputf8_enable else 'no'}\n")
        aged(directory / "main.cf")
        made[smtputf8_enable] = directory
    return made


def postmap_many(config: Path, spec: str, keys: list[str]) -> tuple[int, dict[str, str], str]:
    result = subprocess.run([POSTMAP, "-c", str(config), "-q", "-", spec],
                            input="".join(f"{key}\n" for key in keys), capture_output=True,
                            text=True, check=False)
    answers = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("\t")
        answers[key] = value
    return result.returncode, answers, result.stderr


def assert_same(config: Path, spec: str, keys: list[str], smtputf8_enable: bool) -> None:
    _, expected, stderr = postmap_many(config, spec, keys)
    assert "fatal" not in stderr, stderr
    table = open_table(spec, TableOptions(smtputf8_enable=smtputf8_enable))
    try:
        found = {key: value for key in keys if (value := table.get(key)) is not None}
    finally:
        table.close()
    assert found == expected, (spec, stderr)


# A small alphabet, so that one table's results are other tables' keys and pipelines go deep.
WORD = st.text(st.sampled_from(list("abAB") + ["é", "É"]), min_size=1, max_size=2)


@st.composite
def parts(draw, directory: Path):
    """One part's spec: an inline table (some values with commas and spaces), a static value,
    or a texthash file (whose keys may hold commas, as joined union results do)."""
    kind = draw(st.sampled_from(["inline", "inline", "texthash", "static"]))
    if kind == "static":
        return "static:{" + draw(WORD) + "}"
    pairs = draw(st.lists(st.tuples(WORD, st.lists(WORD, min_size=1, max_size=2)), min_size=1,
                          max_size=5))
    if kind == "inline":
        entries = []
        for key, values in pairs:
            if len(values) > 1:
                entries.append("{ " + key + " = " + ", ".join(values) + " }")
            else:
                entries.append(f"{key}={values[0]}")
        return "inline:{" + ", ".join(entries) + "}"
    path = directory / f"part{draw(st.integers(0, 10**9))}"
    path.write_text("".join(f"{key if draw(st.booleans()) else key + ',' + key} {','.join(values)}\n"
                            for key, values in pairs))
    aged(path)
    return f"texthash:{path}"


@needs_postmap
@pytest.mark.parametrize("smtputf8_enable", [True, False])
@pytest.mark.parametrize("kind", ["unionmap", "pipemap"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_generated_composites_match_postmap(configs, smtputf8_enable, kind, data):
    with tempfile.TemporaryDirectory() as directory:
        pieces = data.draw(st.lists(parts(Path(directory)), min_size=1, max_size=4))
        separator = data.draw(st.sampled_from([", ", " ", ",", "\t"]))
        spec = f"{kind}:{{{separator.join(pieces)}}}"
        keys = ["a", "b", "A", "B", "aa", "ab", "AB", "Ab", "é", "É", "éa", "ÉA", "ba", "bb",
                "a,a", "A,A", "ab,ab", "zz"]
        assert_same(configs[smtputf8_enable], spec, keys, smtputf8_enable)


@needs_postmap
@pytest.mark.parametrize("spec", [
    "unionmap:{inline:{a=1}, static:{two words}, inline:{A=3, b=4}}",
    "unionmap:{inline:{a=}, inline:{a=2}}",           # an empty first result leaves no comma
    "unionmap:{inline:{a=1}, inline:{a=}, inline:{a=3}}",   # an empty later one leaves two
    "unionmap:{inline:{a=}, inline:{a=}}",            # nothing but empty results: not found
    "pipemap:{inline:{a=B}, inline:{b=C}, inline:{c=done}}",
    "pipemap:{inline:{a=b}, static:{fixed}}",
    "pipemap:{unionmap:{inline:{a=1}, inline:{a=2}}, inline:{{1,2=joined}}}",
    "unionmap:{pipemap:{inline:{a=b}, inline:{b=c}}, inline:{a=direct}}",
    "pipemap:{inline:{a=}, inline:{{=from empty}}}",
])
@pytest.mark.parametrize("smtputf8_enable", [True, False])
def test_edge_cases_match_postmap(configs, spec, smtputf8_enable):
    assert_same(configs[smtputf8_enable], spec, ["a", "A", "b", "c", "x", "zz"], smtputf8_enable)


REJECTED = [
    "unionmap:{}",
    "unionmap:{ }",
    "pipemap:{ , }",
    "unionmap:{inline:{a=1} nocolon}",
    "pipemap:{inline:{a=1}}x",
    "pipemap:inline:{a=1}",
    "unionmap:{inline:{a=1}",
    "unionmap:{nosuchtype:x}",
    "pipemap:{inline:{a}}",
    "unionmap:{{inline:{a=1}}}",            # a braced part is not a table
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


def test_first_part_decides_pattern_and_folding():
    options = TableOptions()
    fixed = open_table("unionmap:{inline:{a=1}, static:x}", options)
    assert (fixed.pattern, fixed.fold) == (False, True)
    # Opening a socketmap does not connect: nothing needs to listen on port 9.
    pattern = open_table("pipemap:{socketmap:inet:127.0.0.1:9:m, inline:{a=1}}", options)
    assert (pattern.pattern, pattern.fold) == (True, False)
    pattern.close()


def test_edited_part_is_picked_up(tmp_path):
    part = tmp_path / "part"
    part.write_text("a first\n")
    spec = f"unionmap:{{inline:{{a=inline}}, texthash:{part}}}"
    maps = Maps("test_maps", [spec], lambda s: open_table(s, TableOptions()))
    assert maps.get("a") == "inline,first"
    part.write_text("a second, and longer\n")
    deadline = time.monotonic() + 5
    while maps.get("a") != "inline,second, and longer" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert maps.get("a") == "inline,second, and longer"
    maps.close()
