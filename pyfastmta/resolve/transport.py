"""transport_maps: `texthash:` tables in postmap's text format, searched as transport(5) says.

File format, as postmap reads it: a logical line is `key whitespace value`; a line starting with
whitespace continues the previous one (the physical lines are joined as they are); blank lines
and lines whose first non-blank character is "#" are skipped and do not end a logical line. A key
may hold whitespace inside double quotes. Keys are case-folded (full Unicode folding when
smtputf8_enable is on, ASCII otherwise); values keep their case. A repeated key keeps its first
value, with a warning.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from pyfastmta.config.errors import ConfigError
from pyfastmta.config.maincf import read_lines

# Postfix's default for parent_domain_matches_subdomains.
DEFAULT_PARENT_DOMAIN_MATCHES_SUBDOMAINS = (
    "debug_peer_list", "fast_flush_domains", "mynetworks", "permit_mx_backup_networks",
    "qmqpd_authorized_clients", "relay_domains", "smtpd_access_maps",
)

# Local parts that are never split at recipient_delimiter (as Postfix's split_addr does).
_UNSPLIT_LOCAL_PARTS = ("postmaster", "mailer-daemon")


def fold_key(text: str, smtputf8_enable: bool) -> str:
    if smtputf8_enable and not text.isascii():
        return text.casefold()
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class TransportTable:
    """One texthash: table, read once; to pick up changes, build a new one.

    entries maps keys (folded here; of keys that fold alike the first wins) to values.
    """

    __slots__ = ("_entries", "path", "smtputf8_enable", "warnings")

    def __init__(self, entries: dict[str, str], *, path: str = "", smtputf8_enable: bool = True,
                 warnings: Sequence[str] = ()) -> None:
        self.path = path
        self.smtputf8_enable = smtputf8_enable
        self.warnings = list(warnings)
        self._entries: dict[str, str] = {}
        for key, value in entries.items():
            self._entries.setdefault(fold_key(key, smtputf8_enable), value)

    @classmethod
    def from_file(cls, path: str, *, smtputf8_enable: bool = True) -> TransportTable:
        """Read path; a line postmap would skip is a ConfigError naming path:line."""
        entries: dict[str, str] = {}
        warnings: list[str] = []
        for number, text in _logical_lines(read_lines(path), path):
            key, value = _split_entry(text, path, number)
            key = fold_key(key, smtputf8_enable)
            if key in entries:
                warnings.append(f'{path}:{number}: duplicate entry "{key}" ignored; the first one is used')
                continue
            entries[key] = value
        return cls(entries, path=path, smtputf8_enable=smtputf8_enable, warnings=warnings)

    def get(self, key: str) -> str | None:
        """The value stored under key (case-insensitive), as `postmap -q key texthash:path` prints it."""
        return self._entries.get(fold_key(key, self.smtputf8_enable))

    def lookup(self, address: str, *, recipient_delimiter: str = "",
               parent_domain_matches_subdomains: Sequence[str] = DEFAULT_PARENT_DOMAIN_MATCHES_SUBDOMAINS,
               double_bounce_sender: str = "double-bounce") -> tuple[str, str] | None:
        """(transport, nexthop) for a user@domain address, "" for a part that keeps its default."""
        return transport_lookup((self,), address, recipient_delimiter=recipient_delimiter,
                                parent_domain_matches_subdomains=parent_domain_matches_subdomains,
                                double_bounce_sender=double_bounce_sender)

    def __repr__(self) -> str:
        return f"TransportTable(texthash:{self.path}, {len(self._entries)} entries)"


def transport_lookup(tables: Sequence[TransportTable], address: str, *, recipient_delimiter: str = "",
                     parent_domain_matches_subdomains: Sequence[str] = DEFAULT_PARENT_DOMAIN_MATCHES_SUBDOMAINS,
                     double_bounce_sender: str = "double-bounce") -> tuple[str, str] | None:
    """Search the tables in transport(5) order; each search key is tried in every table, in order,
    before the next key: the address, the address without its extension, the domain, its parent
    domains (as "parent" when parent_domain_matches_subdomains lists transport_maps, else as
    ".parent"), and last "*"."""
    if not tables:
        return None
    local, at, domain = address.rpartition("@")
    if not at:
        raise ValueError(f'transport lookup needs a user@domain address, not "{address}"')
    for key in _search_keys(local, domain, recipient_delimiter,
                            "transport_maps" in parent_domain_matches_subdomains, double_bounce_sender):
        for table in tables:
            value = table.get(key)
            if value is not None:
                transport, _, nexthop = value.partition(":")
                return transport, nexthop
    return None


def _search_keys(local: str, domain: str, delimiters: str, parent_style: bool,
                 double_bounce_sender: str) -> Iterable[str]:
    yield f"{local}@{domain}"
    stripped = _strip_extension(local, delimiters, double_bounce_sender)
    if stripped != local:
        yield f"{stripped}@{domain}"
    yield domain
    if not domain.startswith("["):
        dot = domain.find(".", 1)
        while dot >= 0:
            yield domain[dot + 1:] if parent_style else domain[dot:]
            dot = domain.find(".", dot + 1)
    yield "*"


def _strip_extension(local: str, delimiters: str, double_bounce_sender: str) -> str:
    """local without its address extension, under Postfix's rules for which names keep theirs."""
    if not delimiters:
        return local
    lowered = local.lower()
    if lowered in _UNSPLIT_LOCAL_PARTS or lowered == double_bounce_sender.lower():
        return local
    # Old-style mailing list names stay whole when "-" is a delimiter.
    if "-" in delimiters and (lowered.startswith("owner-") or (len(lowered) > 8 and lowered.endswith("-request"))):
        return local
    for position, char in enumerate(local):
        if char in delimiters:
            return local[:position]
    return local


def _logical_lines(lines: list[str], path: str) -> Iterable[tuple[int, str]]:
    start = 0
    parts: list[str] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if not parts:
                raise ConfigError(path, number, "a table's first line must not start with whitespace "
                                  "(whitespace at the start of a line continues the previous line)")
            parts.append(line)
            continue
        if parts:
            yield start, "".join(parts).rstrip()
        start, parts = number, [line]
    if parts:
        yield start, "".join(parts).rstrip()


def _split_entry(text: str, path: str, line: int) -> tuple[str, str]:
    """Split `key value`; the key ends at the first whitespace outside double quotes."""
    quoted = escaped = False
    end = len(text)
    for position, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char.isspace():
            end = position
            break
    if quoted:
        raise ConfigError(path, line, f"unbalanced '\"' in '{text}'; close the quoted key")
    key, value = text[:end], text[end:].strip()
    if not value:
        raise ConfigError(path, line, f'expected format: key whitespace value, found only "{key}"')
    return key, value
