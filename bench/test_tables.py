"""Lookup tables: the compiled hash: table from Cython and through the Python API, against a plain
dict and against texthash: (the same entries read into a dict behind the Table interface).

Run: .venv/bin/pytest -p no:cacheprovider --benchmark-enable bench/test_tables.py
Compile time, open time and RSS at 1M and 10M entries: bench/tables_scale.py.
"""

from __future__ import annotations

import random

import pytest

from pyfastmta._ext.hashtable import bench_lookups
from pyfastmta.maps import open_table
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
