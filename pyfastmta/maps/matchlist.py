"""Postfix's match lists: parameters whose value is a list of patterns, files and lookup tables
(mydestination, relay_domains, virtual_mailbox_domains, mynetworks), read in order; the first
pattern that matches decides, "!pattern" deciding "no".

Entries: a name or network; "/file/name" (its contents, as further entries); "type:table" (a
domain matches when the table has it, as a key; the value is not used); "!" before any of these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from pyfastmta.maps.registry import open_table, split_table_list
from pyfastmta.maps.table import Maps, Table, TableError

Opener = Callable[[str], Table]


def _is_table(body: str) -> bool:
    # "[...]" address literals and IPv6 networks hold colons too.
    return ":" in body and not body.startswith("[") and body.partition(":")[0].isalpha()


def _read_list_file(parameter: str, path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as error:
        raise TableError(f'{parameter}: cannot read "{path}": {error.strerror}') from None
    items: list[str] = []
    for line in lines:
        if not line.lstrip().startswith("#"):
            items.extend(split_table_list(line))
    return items


class _MatchList:
    def __init__(self, parameter: str, entries: Iterable[str], opener: Opener | None = None) -> None:
        self.name = parameter
        self._opener = opener or open_table
        self._entries: list[tuple[bool, object]] = []
        self.has_tables = False
        for entry in entries:
            self._add(entry)

    def _add(self, entry: str) -> None:
        negated = entry.startswith("!")
        body = entry[1:] if negated else entry
        if body.startswith("/"):
            for item in _read_list_file(self.name, body):
                self._add(f"!{item}" if negated and not item.startswith("!") else item)
            return
        if _is_table(body):
            self.has_tables = True
            self._entries.append((negated, Maps(self.name, [body], self._opener)))
            return
        self._entries.append((negated, self._pattern(body)))

    def _pattern(self, body: str) -> object:
        raise NotImplementedError


class DomainList(_MatchList):
    """Domains. How a name pattern and a table match depends on the list, as in Postfix:
      "exact"   the name only (mydestination and virtual_mailbox_domains are string lists);
      "dotted"  the name, and ".name" matches its subdomains (a table is asked for the name,
                then for ".parent" of each parent domain);
      "parent"  the name and its subdomains (the list is in parent_domain_matches_subdomains; a
                table is asked for the name, then for each parent domain); a ".name" pattern then
                matches nothing.
    """

    def __init__(self, name: str, patterns: Iterable[str], matching: str, opener: Opener | None = None) -> None:
        self.matching = matching
        super().__init__(name, patterns, opener)

    def _pattern(self, body: str) -> str:
        return body.lower().rstrip(".")

    def matches(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        for negated, pattern in self._entries:
            if isinstance(pattern, Maps):
                found = pattern.find(self._table_keys(domain)) is not None
            else:
                found = domain == pattern or (
                    self.matching == "dotted" and pattern.startswith(".") and domain.endswith(pattern)) or (
                    self.matching == "parent" and domain.endswith("." + pattern))
            if found:
                return not negated
        return False

    def _table_keys(self, domain: str) -> list[str]:
        keys = [domain]
        if self.matching != "exact" and not domain.startswith("["):
            dot = domain.find(".", 1)
            while dot >= 0:
                keys.append(domain[dot + 1:] if self.matching == "parent" else domain[dot:])
                dot = domain.find(".", dot + 1)
        return keys


class NetworkList(_MatchList):
    """Client addresses (mynetworks): networks such as 10.0.0.0/8 or [2001:db8::]/32, single
    addresses, and tables asked for the address as text (a cidr: table matches networks)."""

    def _pattern(self, body: str):
        text = body.strip()
        if text.startswith("[") and "]" in text:
            # Postfix writes IPv6 networks as [::1]/128.
            text = text[1:text.index("]")] + text[text.index("]") + 1:]
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise TableError(f'{self.name}: "{body}" is neither a network nor a type:table') from None

    def matches(self, address) -> bool:
        """address: an ipaddress address, or its text."""
        if isinstance(address, str):
            address = ipaddress.ip_address(address)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        text = str(address)
        for negated, pattern in self._entries:
            if isinstance(pattern, Maps):
                found = pattern.get(text) is not None
            else:
                found = address.version == pattern.version and address in pattern
            if found:
                return not negated
        return False
