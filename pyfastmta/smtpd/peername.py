"""Client host names for log lines and Received: headers (smtpd_peername_lookup).

A name counts only when it resolves back to the client's address, as in Postfix; otherwise the
client is `unknown`. Names come from /etc/hosts first, then from DNS through the configured
resolver (dns_nameservers), as the host's "files dns" order would give them, so that no lookup
goes anywhere but where the configuration says. Answers are cached per worker so a busy client
costs one lookup a minute.
"""

from __future__ import annotations

import ipaddress
import time

from pyfastmta.dns import DnsError

CACHE_SECONDS = 60.0
HOSTS_FILE = "/etc/hosts"


def read_hosts(path: str = HOSTS_FILE) -> dict[str, str]:
    """The first name of each address in a hosts(5) file."""
    names: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as hosts:
            lines = hosts.read().splitlines()
    except OSError:
        return names
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        names.setdefault(address, fields[1])
    return names


class PeernameCache:
    def __init__(self, resolver, hosts_file: str = HOSTS_FILE):
        self._resolver = resolver
        self._hosts_names = read_hosts(hosts_file)
        self._names: dict[str, tuple[str, float]] = {}

    def cached(self, addr: str) -> str | None:
        entry = self._names.get(addr)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        return None

    async def lookup(self, addr: str) -> str:
        name = self._hosts_names.get(addr)
        if name is None:
            name = "unknown"
            try:
                for candidate in await self._resolver.host_names(addr):
                    if addr in await self._resolver.addresses(candidate):
                        name = candidate
                        break
            except DnsError:
                pass  # no name, or none that resolves back: the client stays "unknown"
        self._names[addr] = (name, time.monotonic() + CACHE_SECONDS)
        return name
