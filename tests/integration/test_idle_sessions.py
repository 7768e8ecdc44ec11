"""10,000 idle connections: every one gets its banner and an EHLO reply, and mail still flows
while they are all open. (Their memory is measured by bench/idle_sessions.py.)"""

from __future__ import annotations

import asyncio
import resource
import smtplib

import pytest

SESSIONS = 10_000
PER_ADDRESS = 50


@pytest.fixture
def open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SESSIONS + 500
    if hard < wanted:
        pytest.fail(f"the test needs {wanted} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def hold_sessions(host: str, port: int, while_open) -> int:
    """Opens SESSIONS connections, says EHLO on each, runs while_open() in a thread with all of
    them open, then closes them; returns how many were fully up."""
    up = 0
    release = asyncio.Event()

    async def idle(index: int) -> None:
        nonlocal up
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(f"127.0.0.{2 + index // PER_ADDRESS}", 0))
        try:
            assert (await reader.readline()).startswith(b"220")
            writer.write(b"EHLO idle.example\r\n")
            while (line := await reader.readline())[3:4] == b"-":
                pass
            assert line.startswith(b"250 ")
            up += 1
            await release.wait()
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(idle(index)) for index in range(SESSIONS)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while up < SESSIONS and loop.time() < deadline:
        failed = [task for task in tasks if task.done()]
        if failed:
            failed[0].result()
        await asyncio.sleep(0.1)
    count = up
    try:
        await loop.run_in_executor(None, while_open)
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return count


def test_ten_thousand_idle_sessions(make_mta, open_files):
    mta = make_mta({"smtpd_peername_lookup": "no"})

    def send_one() -> None:
        with smtplib.SMTP(mta.host, mta.port, timeout=30) as client:
            client.sendmail("sender@example.com", ["someone@localhost"],
                            b"Subject: while many sessions wait\r\n\r\nbody\r\n")

    assert asyncio.run(hold_sessions(mta.host, mta.port, send_one)) == SESSIONS
    assert mta.logged("from=<sender@example.com>, size=")
