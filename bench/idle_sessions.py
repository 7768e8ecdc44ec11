"""Memory of concurrent idle SMTP sessions: a private pyfastmta on loopback, N clients that
connect, read the banner, say EHLO and then wait; the resident memory of the whole process
tree (master and workers) is read from /proc before the clients come, with all of them
connected, and after they have gone. While all N are connected, one more client must still get
a message accepted.

    .venv/bin/python bench/idle_sessions.py [--sessions 10000] [--hold 5]

The clients connect from 127.0.0.2 up to 127.0.0.201, fifty to an address, so that no single
client address holds thousands of connections. Everything stops by itself: the clients close
after --hold seconds and the server is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accept_race import PyfastmtaInstance, default_pyfastmta_command, describe_machine  # noqa: E402
from postfix_instance import process_tree  # noqa: E402

PER_ADDRESS = 50


def tree_rss_kib(master_pid: int) -> tuple[int, int]:
    """(summed VmRSS in KiB, process count) of the master and everything below it."""
    total = count = 0
    for pid in process_tree(master_pid):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        count += 1
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total, count


async def idle_client(host: str, port: int, source: str, ready: asyncio.Event,
                      connected: list[int], release: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        banner = await reader.readline()
        if not banner.startswith(b"220"):
            raise RuntimeError(f"banner {banner!r}")
        writer.write(b"EHLO idle.example\r\n")
        while True:
            line = await reader.readline()
            if not line.startswith(b"250"):
                raise RuntimeError(f"EHLO reply {line!r}")
            if line[3:4] == b" ":
                break
        connected[0] += 1
        if connected[0] == connected[1]:
            ready.set()
        await release.wait()
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def one_message(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    replies = []
    try:
        await reader.readline()
        for command in (b"HELO probe.example", b"MAIL FROM:<probe@example.com>",
                        b"RCPT TO:<someone@localhost>", b"DATA"):
            writer.write(command + b"\r\n")
            replies.append(await reader.readline())
        writer.write(b"Subject: probe\r\n\r\nwhile many sessions idle\r\n.\r\n")
        replies.append(await reader.readline())
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()
    if not replies[-1].startswith(b"250"):
        raise RuntimeError(f"the probe message was not accepted: {replies!r}")
    return replies[-1].strip()


async def run(instance: PyfastmtaInstance, sessions: int, hold: float) -> dict:
    master = int((instance.queue_directory / "pid" / "master.pid").read_text().split()[0])
    before, processes = tree_rss_kib(master)
    ready, release = asyncio.Event(), asyncio.Event()
    connected = [0, sessions]
    tasks = []
    start = time.perf_counter()
    for index in range(sessions):
        source = f"127.0.0.{2 + index // PER_ADDRESS}"
        tasks.append(asyncio.ensure_future(
            idle_client(instance.host, instance.port, source, ready, connected, release)))
        if index % 500 == 499:
            await asyncio.sleep(0)  # let the first connections get their banners meanwhile
    waiter = asyncio.ensure_future(ready.wait())
    # Done when all are up, or as soon as one client fails (none ends otherwise before release).
    await asyncio.wait([waiter, *tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        failed = [task.exception() for task in tasks if task.done() and task.exception()]
        release.set()
        raise RuntimeError(f"{connected[0]} of {sessions} sessions up; first error: "
                           f"{failed[0] if failed else 'none (timed out)'}")
    connect_seconds = time.perf_counter() - start
    await asyncio.sleep(hold / 2)
    during, processes_during = tree_rss_kib(master)
    probe = await one_message(instance.host, instance.port)
    await asyncio.sleep(hold / 2)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1)
    after, _ = tree_rss_kib(master)
    return {"sessions": sessions, "connect s": connect_seconds, "processes": processes_during,
            "RSS before MiB": before / 1024, "RSS with sessions MiB": during / 1024,
            "RSS after MiB": after / 1024, "KiB per session": (during - before) / sessions,
            "probe": probe.decode(errors="replace"), "idle processes": processes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=5.0)
    options = parser.parse_args()
    if options.sessions > PER_ADDRESS * 200:
        parser.error(f"at most {PER_ADDRESS * 200} sessions (200 client addresses)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = options.sessions + 200
    if soft < wanted:
        if hard < wanted:
            parser.error(f"needs {wanted} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    machine = describe_machine(Path("/tmp"))
    print(", ".join(f"{key}: {value}" for key, value in machine.items()), flush=True)
    instance = PyfastmtaInstance(default_pyfastmta_command().split())
    # Client names would come from the system resolver: nothing but loopback is asked here.
    instance.main_cf_extra = "smtpd_peername_lookup = no\n"
    try:
        instance.start()
        result = asyncio.run(run(instance, options.sessions, options.hold))
    finally:
        instance.stop()
        instance.remove()
    print(" | ".join(f"{name} {value:,.1f}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
