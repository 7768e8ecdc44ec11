"""A policy delegation server for benchmarks, run as its own process (Postfix's protocol: a
request is name=value lines and an empty line; the answer is `action=...` and an empty line).

    python bench/policy_server.py --listen 127.0.0.1:0 [--action DUNNO]
    python bench/policy_server.py --listen unix:/path/to/socket

Every request gets the same answer (default `DUNNO`: no opinion, the next restriction decides),
on connections kept open for as many requests as the client sends, as smtpd does between
requests. Once it listens it prints `ready HOST:PORT` (or `ready unix:PATH`; the socket is
made connectable by any user, as smtpd's workers drop privileges) on stdout. SIGUSR1 prints one JSON line of
counters on stdout, {"requests": N, "connections": M, "states": {"RCPT": N, ...}} (states counts
protocol_state); SIGTERM or SIGINT prints the same line and stops. It runs on uvloop when that
is installed, like the workers it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

# Longest request the server keeps reading before it gives up on the client (Postfix's requests
# are a few hundred bytes; a client that never sends the empty line must not grow the buffer).
REQUEST_LIMIT = 64 * 1024


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.states: dict[str, int] = {}

    def line(self) -> str:
        return json.dumps({"requests": self.requests, "connections": self.connections,
                           "states": self.states})


class PolicyProtocol(asyncio.Protocol):
    """One client connection: requests end at an empty line; each is answered at once."""

    def __init__(self, counters: Counters, answer: bytes) -> None:
        self.counters = counters
        self.answer = answer
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.counters.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                break
            request, self.buffer = self.buffer[:end + 1], self.buffer[end + 2:]
            self.count(request)
            answers += 1
        if answers:
            # Requests that arrived together (a client may pipeline) are answered in one write.
            self.transport.write(self.answer * answers)
        elif len(self.buffer) > REQUEST_LIMIT:
            self.transport.close()

    def count(self, request: bytes) -> None:
        self.counters.requests += 1
        start = request.find(b"protocol_state=")
        if start >= 0:
            start += len(b"protocol_state=")
            state = request[start:request.find(b"\n", start)].decode("ascii", "replace")
            self.counters.states[state] = self.counters.states.get(state, 0) + 1


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, or ("unix", 0) with the socket's path in place of the host."""
    if text.startswith("unix:") and len(text) > len("unix:"):
        return text[len("unix:"):], -1
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"policy_server: --listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:0")
    return host.strip("[]"), int(port)


async def serve(host: str, port: int, action: str) -> None:
    counters = Counters()
    answer = f"action={action}\n\n".encode()
    loop = asyncio.get_running_loop()
    if port < 0:  # a unix-domain socket at the path `host`
        server = await loop.create_unix_server(lambda: PolicyProtocol(counters, answer), host,
                                               backlog=1024)
        os.chmod(host, 0o666)
        where = f"unix:{host}"
    else:
        server = await loop.create_server(lambda: PolicyProtocol(counters, answer), host, port,
                                          reuse_address=True, backlog=1024)
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        where = f"{bound_host}:{bound_port}"
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(counters.line(), flush=True))
    print(f"ready {where}", flush=True)
    await stop.wait()
    server.close()
    print(counters.line(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="HOST:PORT (port 0 picks a free one) or unix:PATH")
    parser.add_argument("--action", default="DUNNO", help="the action every request gets")
    options = parser.parse_args()
    host, port = parse_listen(options.listen)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(host, port, options.action))
    else:
        uvloop.run(serve(host, port, options.action))


if __name__ == "__main__":
    sys.exit(main())
