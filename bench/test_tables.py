"""Lookup tables: the compiled hash: table from Cython and through the Python API, against a plain
dict and against texthash: (the same entries read into a dict behind the Table interface); and
envelope recipient rewriting through a chain of three hash: tables (recipient_canonical_maps,
canonical_maps, virtual_alias_maps), KEYS addresses per round.

Run: .venv/bin/pytest -p no:cacheprovider --benchmark-enable bench/test_tables.py
Compile time, open time and RSS at 1M and 10M entries: bench/tables_scale.py.
"""

from __future__ import annotations

import random

import pytest

from pyfastmta._ext.hashtable import bench_lookups
from pyfastmta.cleanup.rewrite import EnvelopeRewriter, LocalContext
from pyfastmta.maps import Maps, open_table
from pyfastmta.maps.addresses import AddressSearch
from pyfastmta.maps.hashfile import compile_source

ENTRIES = 200_000
KEYS = 10_000


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tables")
    path = str(directory / "table")
    with open(path, "w") as handle:
        for i in range(ENTRIES):
            handle.write(f"user{i}@example{i % 1000}.com\tsmtp:[relay{i % 97}.example.net]:25\n")
    compile_source(path, sync=False)
    rng = random.Random(1)
    # Mixed case, as addresses arrive; a tenth of them absent from the table.
    keys = [f"User{n}@Example{n % 1000}.com" for n in (rng.randrange(ENTRIES * 10 // 9)
                                                       for _ in range(KEYS))]
    hashed = open_table(f"hash:{path}")
    texthash = open_table(f"texthash:{path}")
    plain = {f"user{i}@example{i % 1000}.com": f"smtp:[relay{i % 97}.example.net]:25"
             for i in range(ENTRIES)}
    yield hashed, texthash, plain, keys
    hashed.close()


def loop(get, keys):
    for key in keys:
        get(key)


def test_hash_python_api(benchmark, tables):
    hashed, _, _, keys = tables
    benchmark(loop, hashed.get, keys)


def test_hash_cython(benchmark, tables):
    hashed, _, _, keys = tables
    benchmark(bench_lookups, hashed.file, keys)


def test_hash_cython_batched(benchmark, tables):
    hashed, _, _, keys = tables
    benchmark(bench_lookups, hashed.file, keys, 1, 16)


def test_texthash(benchmark, tables):
    _, texthash, _, keys = tables
    benchmark(loop, texthash.get, keys)


def test_plain_dict_with_folding(benchmark, tables):
    # What a dict needs to answer the same question: the key folded first.
    _, _, plain, keys = tables
    get = plain.get
    benchmark(loop, lambda key: get(key.lower()), keys)


def test_plain_dict(benchmark, tables):
    _, _, plain, keys = tables
    folded = [key.lower() for key in keys]
    benchmark(loop, plain.get, folded)


@pytest.fixture(scope="module")
def rewriter(tmp_path_factory):
    # user → staff (recipient_canonical_maps) → first.last (canonical_maps) → mailbox
    # (virtual_alias_maps); a third of the addresses are in none of the tables.
    directory = tmp_path_factory.mktemp("rewrite")
    chain = {"recipient_canonical": ("user{i}@example{m}.com", "staff{i}@corp.example"),
             "canonical": ("staff{i}@corp.example", "first.last{i}@corp.example"),
             "virtual": ("first.last{i}@corp.example", "mailbox{i}@mail.example")}
    maps = {}
    for name, (key, value) in chain.items():
        path = str(directory / name)
        with open(path, "w") as handle:
            for i in range(ENTRIES):
                handle.write(key.format(i=i, m=i % 1000) + " " + value.format(i=i) + "\n")
        compile_source(path, sync=False)
        maps[name] = Maps(f"{name}_maps", [f"hash:{path}"], open_table)
    every = frozenset({"envelope_sender", "envelope_recipient", "header_sender", "header_recipient"})
    rewriter = EnvelopeRewriter(
        local=LocalContext(myorigin="mx.example", mydomain="example"),
        search=AddressSearch(recipient_delimiter="+", myorigin="mx.example"),
        recipient_canonical=maps["recipient_canonical"], recipient_canonical_classes=every,
        canonical=maps["canonical"], canonical_classes=every, virtual_alias=maps["virtual"])
    rng = random.Random(2)
    addresses = [f"User{n}@Example{n % 1000}.com" for n in (rng.randrange(ENTRIES * 3 // 2)
                                                            for _ in range(KEYS))]
    expected = sum(1 for address in addresses if int(address[4:address.index("@")]) < ENTRIES)
    assert sum(rewriter.recipient(a)[0].startswith("mailbox") for a in addresses) == expected
    yield rewriter, addresses
    for table_list in maps.values():
        table_list.close()


def test_rewrite_recipients_three_tables(benchmark, rewriter):
    rewrite, addresses = rewriter
    benchmark(loop, rewrite.recipient, addresses)
