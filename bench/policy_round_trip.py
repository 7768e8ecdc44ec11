"""What one policy server round trip costs the asking process, one request at a time.

pyfastmta's policy client (pyfastmta/smtpd/policy.py, the one the workers use) asks
bench/policy_server.py, its own process, --requests times in a row over a kept connection, first
on TCP over loopback, then on a unix-domain socket; then the same loop with the answer given
in-process, which is what the client's event loop costs by itself. For each it prints the wall
time and the asking thread's CPU time per request (time.thread_time: the process's own work,
its system calls, and waking and being woken by the kernel).

    python bench/policy_round_trip.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from pyfastmta.smtpd.policy import PolicyClient, PolicyService, request_text

POLICY_SERVER = Path(__file__).resolve().parent / "policy_server.py"

REQUEST = request_text({
    "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
    "client_address": "127.0.0.1", "client_name": "localhost", "helo_name": "bench.example.com",
    "sender": "bench@example.com", "recipient": "bench@localhost", "instance": "1a2b.3c4d.0",
    "size": "2000", "policy_context": "", "server_address": "127.0.0.1", "server_port": "25",
})


def service(transport: str, address: str) -> PolicyService:
    return PolicyService(transport=transport, address=address, timeout=100, max_idle=300,
                         max_ttl=1000, try_limit=1, retry_delay=1, default_action="DEFER_IF_PERMIT",
                         request_limit=0, policy_context="")


async def ask(client: PolicyClient | None, requests: int) -> tuple[float, float]:
    """Wall and CPU seconds per request; client None answers in-process."""
    loop = asyncio.get_running_loop()
    if client is not None and await client.query_text(REQUEST) != "DUNNO":  # opens the connection
        raise SystemExit("policy_round_trip: the policy server did not answer DUNNO")
    started, cpu = time.perf_counter(), time.thread_time()
    for _ in range(requests):
        answer = loop.create_future()
        if client is None:
            loop.call_soon(answer.set_result, "DUNNO")
        elif not client.try_ask(REQUEST, answer.set_result):
            raise SystemExit("policy_round_trip: the kept connection was not free")
        if await answer != "DUNNO":
            raise SystemExit("policy_round_trip: the policy server did not answer DUNNO")
    return (time.perf_counter() - started) / requests, (time.thread_time() - cpu) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="policy-round-trip-") as directory:
        for label, listen in (("TCP over loopback", "127.0.0.1:0"),
                              ("unix-domain socket", f"unix:{directory}/policy.sock")):
            server = subprocess.Popen([sys.executable, str(POLICY_SERVER), "--listen", listen],
                                      stdout=subprocess.PIPE, text=True)
            try:
                where = server.stdout.readline().split()[1]
                transport, address = (("unix", where[len("unix:"):]) if where.startswith("unix:")
                                      else ("inet", where))
                client = PolicyClient(service(transport, address))
                wall, cpu = uvloop.run(ask(client, options.requests))
            finally:
                server.terminate()
                server.wait()
            print(f"{label:<20} {1e6 * wall:6.1f} µs per request, {1e6 * cpu:6.1f} µs of the "
                  f"asking thread's CPU", flush=True)
    wall, cpu = uvloop.run(ask(None, options.requests))
    print(f"{'answered in-process':<20} {1e6 * wall:6.1f} µs per request, {1e6 * cpu:6.1f} µs of the "
          f"asking thread's CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
