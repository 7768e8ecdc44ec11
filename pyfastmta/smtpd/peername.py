"""Client host names for log lines and Received: headers (smtpd_peername_lookup).

A name counts only when it resolves back to the client's address, as in Postfix; otherwise the
client is `unknown`. Answers are cached per worker so a busy client costs one lookup a minute.
"""

from __future__ import annotations

import socket
import time

CACHE_SECONDS = 60.0


class PeernameCache:
    def __init__(self, loop):
        self._loop = loop
        self._names: dict[str, tuple[str, float]] = {}

    def cached(self, addr: str) -> str | None:
        entry = self._names.get(addr)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        return None

    async def lookup(self, addr: str) -> str:
        name = "unknown"
        try:
            host, _ = await self._loop.getnameinfo((addr, 0), socket.NI_NAMEREQD)
            infos = await self._loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            if any(info[4][0] == addr for info in infos):
                name = host
        except Exception:  # noqa: BLE001 - any failure to name the client leaves it "unknown"
            pass
        self._names[addr] = (name, time.monotonic() + CACHE_SECONDS)
        return name
