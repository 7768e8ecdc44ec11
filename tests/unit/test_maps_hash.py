"""hash: tables against Postfix: the same source compiled by Postfix's postmap (Berkeley DB) and by
ours (ext/hashtable), the same keys asked of both with `postmap -q -`, the same answers. Also the
file format's defences: a damaged file gives an error naming it, never a crash."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfastmta._ext.hashtable import HashFile, HashFileError, HashWriter, bench_lookups
from pyfastmta.maps import Maps, TableError, open_table
from pyfastmta.maps.aliases import compile_aliases
from pyfastmta.maps.hashfile import compile_source, database_path, open_hash
from pyfastmta.maps.registry import TableOptions

POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
POSTALIAS = shutil.which("postalias", path="/usr/sbin:/usr/bin") or "/usr/sbin/postalias"


def postfix_dir(root, smtputf8=True):
    """A private Postfix configuration, so that Postfix never reads /etc/postfix."""
    directory = os.path.join(root, f"postfix-{'utf8' if smtputf8 else 'ascii'}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "main.cf"), "w") as handle:
        handle.write(f"compatibility_level = 3.6\nsmtputf8_enable = {'yes' if smtputf8 else 'no'}\n")
    # Postfix waits while main.cf is younger than a second or so; an old time stamp spares that.
    old = time.time() - 60
    os.utime(os.path.join(directory, "main.cf"), (old, old))
    return directory


def postfix_answers(program, config, spec, keys):
    """What Postfix's postmap/postalias -q - finds for keys: {key: value}."""
    separator = ":\t" if program == POSTALIAS else "\t"
    data = "".join(key + "\n" for key in keys).encode("utf-8", "surrogateescape")
    result = subprocess.run([program, "-c", config, "-q", "-", spec], input=data,
                            capture_output=True, check=False)
    assert result.returncode in (0, 1), result.stderr
    answers = {}
    for line in result.stdout.decode("utf-8", "surrogateescape").split("\n"):
        if line:
            key, _, value = line.partition(separator)
            answers[key] = value
    return answers


def our_answers(spec, keys, smtputf8=True):
    table = open_table(spec, TableOptions(smtputf8_enable=smtputf8))
    try:
        return {key: value for key in keys if (value := table.get(key)) is not None}
    finally:
        table.close()


def compile_both(tmp, text, smtputf8=True):
    """The source in two directories (Postfix's .db and ours must not share a name space)."""
    paths = []
    for side in ("postfix", "ours"):
        os.makedirs(os.path.join(tmp, side), exist_ok=True)
        path = os.path.join(tmp, side, "table")
        with open(path, "wb") as handle:
            handle.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        paths.append(path)
    config = postfix_dir(tmp, smtputf8)
    subprocess.run([POSTMAP, "-c", config, f"hash:{paths[0]}"], check=True, capture_output=True)
    compile_source(paths[1], smtputf8=smtputf8, sync=False)
    return config, paths


def variants(key):
    """The key as written, and as a client might ask for it."""
    return {key, key.upper(), key.lower(), key.title(), key.swapcase(), key + "x", key[:-1]}


EDGE_SOURCE = (
    "# comment\n"
    "Foo   bar  baz  \n"
    '"a b"  quoted value\n'
    '"x\\"y"  esc\n'
    '"a\\\\b"  bs\n'
    "  # indented comment\n"
    "cont  first\n"
    "  second\n"
    " third\n"
    "\n"
    "nokey\n"
    "dup 1\n"
    "DUP 2\n"
    "Ünï  utf\n"
    "key:  colon\n"
    '"unterminated  v\n'
    'a"b  mid\n'
    '"q"x  tail\n'
    "a\\ b v1\n"
    'a"b c"d v2\n'
    "k1\tv1\r\n"
    "k2 v2\r\n"
    "\x0bk3 v3\n"
    "k4\x0bv4\n"
    "Kß v8\n"
    "ẞ v9\n"
    '"" empty\n'
    "k3\\  v3\n"
    "k4\\\n"
    "user+ext@Example.COM  relay:[mx.example.net]:2525\n"
    "@example.org  OK\n"
    "192.168.1  REJECT\n"
    "2001:db8::1  DUNNO\n"
    "İstanbul  city\n"
)


def edge_keys():
    keys = set()
    for line in EDGE_SOURCE.splitlines():
        word = line.split(" ")[0].split("\t")[0].split("\x0b")[0].strip()
        if word and not word.startswith("#"):
            keys |= variants(word)
    keys |= {'"a b"', "a b", 'x"y', "a\\ b", "ss", "kss", "KSS", "k3\\ ", "k4\\", "nope", ""}
    return sorted(k for k in keys if "\n" not in k and "\t" not in k and k)


@pytest.mark.parametrize("smtputf8", [True, False])
def test_edge_cases_match_postfix(tmp_path, smtputf8):
    source = EDGE_SOURCE.encode() + b"k5 \xff\xfe\n\xc3\xa9\xff v6\n  lead value\n"
    config, (theirs, ours) = compile_both(str(tmp_path), b"  lead\n" + source, smtputf8)
    keys = edge_keys()
    expected = postfix_answers(POSTMAP, config, f"hash:{theirs}", keys)
    assert our_answers(f"hash:{ours}", keys, smtputf8) == expected
    assert len(expected) > 20  # the comparison covered real entries, not only misses


@pytest.mark.parametrize("smtputf8", [True, False])
def test_nul_bytes_end_a_line_as_in_postfix(tmp_path, smtputf8):
    """postmap reads each line as a C string: a NUL ends it (and its UTF-8 check still sees the
    rest of the line unless the text before the NUL is plain ASCII)."""
    source = (b"a\0b value1\nkey2 val\0ue2\n\0lead x\nplain v\nutf\xc3\xa9 \xff\0x\n"
              b"ok\0\xff tail\nmore\xc3\xa9 v\0\xff\n")
    config, (theirs, ours) = compile_both(str(tmp_path), source, smtputf8)
    keys = ["a", "key2", "plain", "utf\u00e9", "lead", "ok", "more\u00e9", "b"]
    expected = postfix_answers(POSTMAP, config, f"hash:{theirs}", keys)
    assert our_answers(f"hash:{ours}", keys, smtputf8) == expected
    assert "key2" in expected


def test_thousands_of_generated_keys_match_postfix(tmp_path):
    rng = random.Random(4)
    words = ["alice", "Bob", "postmaster", "ÉLISE", "straße", "info", "x"]
    domains = ["example.com", "Example.ORG", "sub.example.net", "bücher.de", "[10.0.0.1]"]
    lines, keys = [], []
    for i in range(4000):
        shape = rng.randrange(5)
        if shape == 0:
            key = f"{rng.choice(words)}{i}@{rng.choice(domains)}"
        elif shape == 1:
            key = f"@{i}.{rng.choice(domains)}"
        elif shape == 2:
            key = f"{rng.choice(words)}+ext{i}"
        elif shape == 3:
            key = f"10.{i % 256}.{i // 256}"
        else:
            key = f"{rng.choice(domains)}{i}"
        value = rng.choice(["OK", "REJECT no", "smtp:[relay.example.net]:25", f"value {i}  spaced"])
        lines.append(f"{key}\t{value}")
        if rng.random() < 0.2:
            lines.append(f"  continued{i}")
        if rng.random() < 0.05:
            lines.append("# a comment between")
        keys.extend(variants(key))
    keys.extend(f"missing{i}@example.com" for i in range(2000))
    config, (theirs, ours) = compile_both(str(tmp_path), "\n".join(lines) + "\n")
    expected = postfix_answers(POSTMAP, config, f"hash:{theirs}", keys)
    assert len(expected) >= 4000
    assert our_answers(f"hash:{ours}", keys) == expected


# Characters that make postmap's source syntax interesting: quotes, backslashes, white space,
# case, non-ASCII letters with and without a simple lower case.
KEY_ALPHABET = st.sampled_from(list("aAbBzZ09@.-+_:\"\\ éÉßẞÜüåÅçΣσς") + ["\t", "#"])
VALUE_ALPHABET = st.sampled_from(list("aZ09 @.:[]-,\"\\é#"))


@st.composite
def sources(draw):
    entries = draw(st.lists(st.tuples(st.text(KEY_ALPHABET, min_size=1, max_size=8),
                                      st.text(VALUE_ALPHABET, max_size=10),
                                      st.sampled_from(["", "\n  cont", "\n#c\n more", "\r"])),
                            min_size=1, max_size=25))
    lines = []
    for key, value, tail in entries:
        separator = draw(st.sampled_from([" ", "\t", "  "]))
        lines.append(f"{key}{separator}{value}{tail}")
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "# comment", "   ", "\t# indented"])))
    return "\n".join(lines) + "\n", [key for key, _, _ in entries]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sources())
def test_generated_sources_match_postfix(tmp_path_factory, generated):
    text, written = generated
    tmp = str(tmp_path_factory.mktemp("hyp"))
    config, (theirs, ours) = compile_both(tmp, text)
    keys = set()
    for key in written:
        keys |= variants(key)
        keys |= {key.split(" ")[0], key.strip('"')}
    keys = sorted(k for k in keys if k and "\n" not in k and "\t" not in k)
    expected = postfix_answers(POSTMAP, config, f"hash:{theirs}", keys)
    assert our_answers(f"hash:{ours}", keys) == expected


ALIASES = """\
# aliases
postmaster: root
root:  alice,  bob ,
   carol
Root2 : x
"a b": y
"c d" : z
:novalue
nocolon value
empty:
q"x y": w
key:with: colon
owner-list: me
list: :include:/etc/list
  ,
\tfoo
a2: user@example.com
a4: a , b ,c
a5: "|/usr/bin/cmd arg"
a6: |/usr/bin/cmd
a8: /var/mail/file
a9: a b
a10: (comment) user
a11: Name <user@x>
a12: a,,b
a13: a,
a14: "quoted local"@example.com
a15: user@[1.2.3.4]
a17: a . b
a18: \\root
a19: "a\\"b"
a21:x
a22: a;b
a23: é@ü.de
a25 : a : b
a26: <>
a27: "x" y
a28: 'a b'
a31: a(c)b
a32: :include: /etc/list
"a33"x: v
a\\35: v
a@36: v
a%37: v
a38: "a
a39: a\\ b
a40: a\tb
a41: "|exec /x/y"  ,  z
Dup: first
dup: second
"""


def test_postalias_matches_postfix(tmp_path):
    paths = []
    for side in ("postfix", "ours"):
        os.makedirs(tmp_path / side)
        path = str(tmp_path / side / "aliases")
        with open(path, "w") as handle:
            handle.write(ALIASES)
        paths.append(path)
    config = postfix_dir(str(tmp_path))
    subprocess.run([POSTALIAS, "-c", config, f"hash:{paths[0]}"], check=True, capture_output=True)
    _, warnings = compile_aliases(paths[1])
    names = set()
    for line in ALIASES.splitlines():
        if ":" in line and not line[0].isspace():
            names |= variants(line.partition(":")[0].strip().strip('"'))
    names |= {"@", "a 24", "q x y", "a33 x", "a35", "key", "list"}
    keys = sorted(k for k in names if k and "\t" not in k)
    expected = postfix_answers(POSTALIAS, config, f"hash:{paths[0]}", keys)
    assert our_answers(f"hash:{paths[1]}", keys) == expected
    assert len(expected) > 30
    assert any("name must be local" in warning for warning in warnings)
    assert any('duplicate entry: "dup"' in warning for warning in warnings)


def make_table(tmp_path, text="alpha 1\nBeta 2\ngamma three words\n"):
    path = str(tmp_path / "table")
    with open(path, "w") as handle:
        handle.write(text)
    compile_source(path, sync=False)
    return path


def test_missing_database_says_how_to_make_it(tmp_path):
    with pytest.raises(TableError, match="run pyfastmta postmap hash:"):
        open_table(f"hash:{tmp_path}/none")


def test_source_newer_than_database_warns(tmp_path):
    path = make_table(tmp_path)
    os.utime(database_path(path), ns=(1_000_000_000, 1_000_000_000))
    table = open_table(f"hash:{path}")
    assert table.warnings == [f"database {path}.pfm is older than source file {path}"]
    assert table.get("BETA") == "2"


def test_replaced_database_is_picked_up(tmp_path, monkeypatch):
    path = make_table(tmp_path)
    maps = Maps("transport_maps", [f"hash:{path}"], open_table)
    assert maps.get("alpha") == "1"
    with open(path, "w") as handle:
        handle.write("alpha changed\n")
    compile_source(path, sync=False)
    assert maps.tables[0].changed()
    import pyfastmta.maps.table as table_module

    monkeypatch.setattr(table_module, "_CHECK_INTERVAL", 0.0)
    maps._next_check = 0
    assert maps.get("alpha") == "changed"


def header_check(header):
    """The header's check value: ext/hashtable.pxd's pfm_hash of its first 56 bytes, seed 0."""
    mask = (1 << 64) - 1

    def mix(a, b):
        product = a * b
        return (product & mask) ^ (product >> 64)

    def load(at, size):
        return int.from_bytes(header[at:at + size], "little")

    k0, k1, k2, k3 = (0xa0761d6478bd642f, 0xe7037ed1a0b428db, 0x8ebc6af09c88c6e3,
                      0x589965cc75374cc3)
    h = mix(k0, k1)
    at, left = 0, 56
    while left > 16:
        h = mix(load(at, 8) ^ k1, load(at + 8, 8) ^ h)
        at, left = at + 16, left - 16
    a, b = load(at, 8), load(at + left - 8, 8)  # 8 < left <= 16 for 56 bytes
    return mix(k1 ^ 56, mix(a ^ k1, b ^ h ^ k2) ^ k3).to_bytes(8, "little")


def test_old_format_says_rebuild(tmp_path):
    path = make_table(tmp_path)
    db = database_path(path)
    data = bytearray(open(db, "rb").read())
    assert data[56:64] == header_check(data[:56])
    data[8:12] = (1).to_bytes(4, "little")
    data[56:64] = header_check(data[:56])
    with open(db, "wb") as handle:
        handle.write(data)
    with pytest.raises(TableError, match=f"{db}: hash table file format version 1, this program "
                       "reads version 2: rebuild it with pyfastmta postmap"):
        open_table(f"hash:{path}")


# One entry too long for its cell, so that the data area has a record to damage.
DAMAGE_SOURCE = "alpha 1\nBeta 2\ngamma " + "long value " * 10 + "\n"


@pytest.mark.parametrize("damage", ["empty", "truncated", "magic", "header", "extended", "cell",
                                    "record", "distance"])
def test_damaged_file_is_a_clean_error(tmp_path, damage):
    path = make_table(tmp_path, DAMAGE_SOURCE)
    db = database_path(path)
    data = bytearray(open(db, "rb").read())
    cells = int.from_bytes(data[32:40], "little")
    if damage == "empty":
        data = bytearray()
    elif damage == "truncated":
        data = data[:-3]
    elif damage == "magic":
        data[0:8] = b"NOTAHASH"
    elif damage == "header":
        data[16] ^= 1  # the entry count, caught by the header check
    elif damage == "extended":
        data += b"\0" * 100
    else:
        for index in range(cells):
            at = 64 + index * 64
            if damage == "distance":  # every cell claims to be 254 cells from its home
                data[at] = 255
            elif data[at] and data[at + 1] != 255 and damage == "cell":
                data[at + 2] = 200  # a value running past the end of its cell
            elif data[at] and data[at + 1] == 255 and damage == "record":
                data[at + 12:at + 20] = (1 << 40).to_bytes(8, "little")  # past the data area
    with open(db, "wb") as handle:
        handle.write(data)
    if damage == "distance":
        # A search stops within 255 cells or at the last one, and finds no entry at its own
        # distance.
        table = open_table(f"hash:{path}")
        assert [table.get(key) for key in ("alpha", "beta", "nothing")] == [None, None, None]
        return
    if damage in ("cell", "record"):
        # The header is sound, so the file opens; the lookups that land on the damage fail.
        table = open_table(f"hash:{path}")
        with pytest.raises(HashFileError, match=db):
            for key in ("alpha", "beta", "gamma"):
                table.get(key)
        with pytest.raises(HashFileError, match=db):
            list(table.items())
        return
    with pytest.raises(TableError, match=db):
        open_table(f"hash:{path}")


def test_c_level_search_and_its_lifetime(tmp_path):
    path = make_table(tmp_path)
    file = HashFile(database_path(path))
    keys = ["alpha", "BETA", "gamma", "delta"] * 50
    assert bench_lookups(file, keys) == 150
    assert bench_lookups(file, keys, 2, 16) == 300
    capsule = file.view_capsule()
    file.close()
    with pytest.raises(HashFileError, match="closed"):
        file.get("alpha")
    del capsule  # the mapping goes with the last capsule; nothing left to crash on


# Lengths around the file's limits: an entry of up to 60 key and value bytes lives in its cell,
# a longer one in the data area with its key's first 44 bytes in the cell; key lengths of 255
# and more do not fit the cell's length byte.
BOUNDARY_ENTRIES = [
    (b"", b"empty key"), (b"k", b""), (b"a" * 60, b""), (b"b" * 59, b"v"), (b"c" * 30, b"v" * 30),
    (b"d" * 30, b"v" * 31), (b"e" * 44, b"v" * 20), (b"f" * 45, b"v" * 20), (b"g" * 61, b""),
    (b"h" * 254, b"x"), (b"i" * 255, b"y"), (b"j" * 256, b"z"), (b"k" * 5000, b"w" * 70000),
]


def test_entries_of_every_length(tmp_path):
    writer = HashWriter("warn", "label")
    for key, value in BOUNDARY_ENTRIES:
        writer.add(key, value)
    path = str(tmp_path / "lengths.pfm")
    assert writer.write(path, 0o600, False) == len(BOUNDARY_ENTRIES)
    file = HashFile(path, False)
    try:
        for key, value in BOUNDARY_ENTRIES:
            assert file.get_bytes(key) == value.decode()
            # The same length and first bytes, another last byte: found by no search.
            if key:
                assert file.get_bytes(key[:-1] + b"#") is None
            assert file.get_bytes(key + b"#") is None
        assert sorted(file.records()) == sorted(BOUNDARY_ENTRIES)
        keys = [key.decode() for key, _ in BOUNDARY_ENTRIES if len(key) <= 512]
        keys += [key + "#" for key in keys]
        assert bench_lookups(file, keys) == len(keys) // 2
        assert bench_lookups(file, keys, 1, 5) == len(keys) // 2
    finally:
        file.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.binary(max_size=70), st.binary(max_size=70), max_size=300),
       st.lists(st.binary(max_size=70), max_size=50))
def test_any_entries_found_as_a_dict_finds_them(tmp_path_factory, entries, others):
    writer = HashWriter("warn", "label")
    for key, value in entries.items():
        writer.add(key, value)
    path = str(tmp_path_factory.mktemp("any") / "table.pfm")
    assert writer.write(path, 0o600, False) == len(entries)
    file = HashFile(path, False)
    try:
        for key in list(entries) + others:
            expected = entries.get(key)
            assert file.get_bytes(key) == (None if expected is None else
                                           expected.decode("utf-8", "surrogateescape"))
        assert dict(file.records()) == entries and len(file) == len(entries)
    finally:
        file.close()


# Letters and the bytes beside A-Z and a-z ("@", "[", "`", "{"), which folding must leave alone.
FOLD_ALPHABET = "aAzZmM@[`{09.-_"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(FOLD_ALPHABET, max_size=130), max_size=120, unique_by=str.lower),
       st.lists(st.text(FOLD_ALPHABET, max_size=130), max_size=40), st.randoms())
def test_folding_search_finds_keys_in_any_case(tmp_path_factory, keys, others, rng):
    # The search lower-cases A-Z while it hashes and compares, with no folded copy: in any
    # case, at every length (in the cell, in the data area, past the 44-byte prefix), one key
    # at a time and in batches, it finds exactly what a lookup of the lower-cased key finds.
    writer = HashWriter("warn", "label")
    entries = {key.lower(): f"value of {key.lower()}" + "v" * (len(key) % 50) for key in keys}
    for key, value in entries.items():
        writer.add(key.encode(), value.encode())
    path = str(tmp_path_factory.mktemp("fold") / "table.pfm")
    writer.write(path, 0o600, False)
    file = HashFile(path)
    try:
        queries = ["".join(c.upper() if rng.random() < 0.5 else c for c in key)
                   for key in list(entries) + others]
        for query in queries:
            assert file.get(query) == entries.get(query.lower())
        present = sum(query.lower() in entries for query in queries)
        assert bench_lookups(file, queries) == present
        assert bench_lookups(file, queries, 1, 7) == present
    finally:
        file.close()


def test_many_entries_with_long_runs(tmp_path):
    # Enough entries for runs of many cells (Robin Hood moves), found again from Cython one key
    # at a time and in batches, every present key and as many absent ones.
    writer = HashWriter("warn", "label")
    for i in range(50_000):
        writer.add(f"user{i}@example{i % 7}.com".encode(), b"x" * (i % 90))
    path = str(tmp_path / "many.pfm")
    assert writer.write(path, 0o600, False) == 50_000
    file = HashFile(path)
    try:
        assert file.cell_count > 50_000
        keys = [f"User{i}@Example{i % 7}.com" for i in range(0, 100_000, 3)]
        present = sum(1 for i in range(0, 100_000, 3) if i < 50_000)
        assert bench_lookups(file, keys) == present
        assert bench_lookups(file, keys, 1, 16) == present
        assert all(file.get(f"USER{i}@EXAMPLE{i % 7}.COM") == "x" * (i % 90)
                   for i in range(0, 50_000, 7))
    finally:
        file.close()


def test_writer_duplicates_and_large_keys(tmp_path):
    for mode, expected in (("warn", "first"), ("ignore", "first"), ("replace", "last")):
        writer = HashWriter(mode, "label")
        writer.add(b"k", b"first", 1)
        writer.add(b"k", b"last", 2)
        long_key = b"k" * 5000
        writer.add(long_key, b"long")
        path = str(tmp_path / f"{mode}.pfm")
        assert writer.write(path, 0o600, False) == 2
        assert bool(writer.warnings) == (mode == "warn")
        file = HashFile(path)
        assert file.get("K") == expected
        assert file.get("K" * 5000) == "long"
        assert len(file) == 2
        file.close()


def test_empty_table(tmp_path):
    path = make_table(tmp_path, "# nothing\n")
    table = open_hash(path, TableOptions())
    assert len(table) == 0 and table.get("x") is None and list(table.items()) == []
