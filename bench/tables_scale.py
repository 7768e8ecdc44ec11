"""Compile time, open time, lookups/s and peak RSS of hash: tables at 1M and 10M entries.

    .venv/bin/python bench/tables_scale.py [--entries 1000000 10000000] [--lookups 2000000] [--rounds 5]

The source is generated into a temporary directory under /tmp and removed at the end. Each
compile runs in a child process, so its peak RSS is its own. Lookups use keys drawn at random
from the whole table (a tenth absent), in mixed case; the first pass over them faults the mapped
pages in and is reported apart ("cold"). The warm rates are the median of --rounds passes: on a
shared virtual machine single passes vary by a third. "2M-mapped MB" is how much of the file the
kernel mapped in 2 MiB pages (FilePmdMapped): with 4 KiB pages almost every search of a 1 GB
table also misses the TLB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import tempfile
import time


def generate(path: str, entries: int) -> None:
    with open(path, "w") as handle:
        chunk = []
        for i in range(entries):
            chunk.append(f"user{i}@example{i % 1000}.com\tsmtp:[relay{i % 97}.example.net]:25\n")
            if len(chunk) == 100_000:
                handle.write("".join(chunk))
                chunk = []
        handle.write("".join(chunk))


def compile_child(path: str, queue) -> None:
    from pyfastmta.maps.hashfile import compile_source

    start = time.perf_counter()
    count, _ = compile_source(path)
    seconds = time.perf_counter() - start
    queue.put((count, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def huge_mapped_mb() -> float:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("FilePmdMapped:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(directory: str, entries: int, lookups: int, rounds: int) -> dict:
    from pyfastmta._ext.hashtable import HashFile, bench_lookups
    from pyfastmta.maps.hashfile import database_path

    path = os.path.join(directory, f"table{entries}")
    start = time.perf_counter()
    generate(path, entries)
    generated = time.perf_counter() - start
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=compile_child, args=(path, queue))
    child.start()
    count, compile_seconds, compile_rss = queue.get()
    child.join()
    start = time.perf_counter()
    table = HashFile(database_path(path))
    open_ms = (time.perf_counter() - start) * 1000
    rng = random.Random(entries)
    ids = [rng.randrange(entries * 10 // 9) for _ in range(lookups)]
    keys = [f"User{i}@Example{i % 1000}.com" for i in ids]
    get = table.get
    start = time.perf_counter()
    for key in keys:
        get(key)
    cold = lookups / (time.perf_counter() - start)

    def rate(run) -> float:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            run()
            samples.append(lookups / (time.perf_counter() - start))
        return statistics.median(samples)

    def python_pass() -> None:
        for key in keys:
            get(key)

    python = rate(python_pass)
    cython = rate(lambda: bench_lookups(table, keys))
    batched = rate(lambda: bench_lookups(table, keys, 1, 16))
    result = {
        "entries": count, "source MB": os.path.getsize(path) / 2**20,
        "db MB": os.path.getsize(database_path(path)) / 2**20, "generate s": generated,
        "compile s": compile_seconds, "compile peak RSS MB": compile_rss, "open ms": open_ms,
        "python cold/s": cold, "python/s": python, "cython/s": cython, "cython batch16/s": batched,
        "2M-mapped MB": huge_mapped_mb(),
    }
    table.close()
    os.unlink(path)
    os.unlink(database_path(path))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--lookups", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="pyfastmta-tables-", dir="/tmp")
    try:
        for entries in args.entries:
            result = measure(directory, entries, args.lookups, args.rounds)
            print(" | ".join(f"{name} {value:,.2f}" if isinstance(value, float) else
                             f"{name} {value:,}" for name, value in result.items()), flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
