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
from typing import NamedTuple

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


class ClientNames(NamedTuple):
    """name: the verified name, or "unknown"; reverse_name: what the PTR record says, verified
    or not. Each status is "ok", "temporary" (the DNS failed for now) or "permanent"."""
    name: str
    status: str = "ok"
    reverse_name: str = "unknown"
    reverse_status: str = "permanent"


UNKNOWN = ClientNames("unknown", "permanent")


class PeernameCache:
    def __init__(self, resolver, hosts_file: str = HOSTS_FILE):
        self._resolver = resolver
        self._hosts_names = read_hosts(hosts_file)
        self._names: dict[str, tuple[ClientNames, float]] = {}

    def cached(self, addr: str) -> ClientNames | None:
        entry = self._names.get(addr)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        return None

    async def lookup(self, addr: str) -> ClientNames:
        name = self._hosts_names.get(addr)
        if name is not None:
            names = ClientNames(name, "ok", name, "ok")
        else:
            names = await self._from_dns(addr)
        self._names[addr] = (names, time.monotonic() + CACHE_SECONDS)
        return names

    async def _from_dns(self, addr: str) -> ClientNames:
        try:
            candidates = await self._resolver.host_names(addr)
        except DnsError as error:
            status = "temporary" if error.temporary else "permanent"
            return ClientNames("unknown", status, "unknown", status)
        if not candidates:
            return UNKNOWN
        reverse = candidates[0]
        status = "permanent"  # a name that does not resolve back to the address is forged
        for candidate in candidates:
            try:
                if addr in await self._resolver.addresses(candidate):
                    return ClientNames(candidate, "ok", reverse, "ok")
            except DnsError as error:
                if error.temporary:
                    status = "temporary"
        return ClientNames("unknown", status, reverse, "ok")
