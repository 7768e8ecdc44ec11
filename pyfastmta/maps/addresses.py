"""Address searches in lookup tables, in Postfix's order (mail_addr_find): what canonical_maps,
virtual_alias_maps and relocated_maps are asked, and which extension had to be cut off.

For user+ext@domain (recipient_delimiter "+") the keys are, in order:
    user+ext@domain   (every table, pattern tables too: the one whole-address key)
    user@domain
    user+ext, user    (only when domain is $myorigin or local: $mydestination, inet/proxy_interfaces)
    @domain
An address without a domain is its own first key, then user without the extension.

Addresses and keys are in external form, quoted as Postfix quotes them ("john doe"@domain); an
extension is cut from the unquoted local part, and is returned unquoted.
"""

from __future__ import annotations

from collections.abc import Callable

from pyfastmta._ext.address import quote_local, unquote_local
from pyfastmta.maps.table import Maps

# Local parts that are never split at recipient_delimiter (as Postfix's split_addr does).
_UNSPLIT_LOCAL_PARTS = ("postmaster", "mailer-daemon")


def split_extension(local: str, delimiters: str, double_bounce_sender: str = "double-bounce") -> tuple[str, str]:
    """(local part without its extension, the extension with its delimiter), under Postfix's
    rules for which names keep theirs; ("local", "") when nothing is cut."""
    if not delimiters:
        return local, ""
    # The first delimiter after the first character, found at C speed (most addresses have none).
    position = -1
    for delimiter in delimiters:
        found = local.find(delimiter, 1)
        if found > 0 and (position < 0 or found < position):
            position = found
    if position < 0:
        return local, ""
    lowered = local.lower()
    if lowered in _UNSPLIT_LOCAL_PARTS or lowered == double_bounce_sender.lower():
        return local, ""
    # Old-style mailing list names stay whole when "-" is a delimiter.
    if "-" in delimiters and (lowered.startswith("owner-") or (len(lowered) > 8 and lowered.endswith("-request"))):
        return local, ""
    return local[:position], local[position:]


class AddressSearch:
    """The keys for an address, and the search over a Maps list."""

    def __init__(self, *, recipient_delimiter: str = "", myorigin: str = "",
                 is_local: Callable[[str], bool] = lambda domain: False,
                 double_bounce_sender: str = "double-bounce") -> None:
        self.recipient_delimiter = recipient_delimiter
        self.myorigin = myorigin.lower()
        self.is_local = is_local
        self.double_bounce_sender = double_bounce_sender

    def keys(self, address: str) -> list[tuple[str, str]]:
        """(key, extension cut off to get it) in search order."""
        split = find_unquoted(address, "@", last=True)
        if split < 0:
            local, at, domain = address, "", ""
        else:
            local, at, domain = address[:split], "@", address[split + 1:]
        if '"' in local or "\\" in local:
            base, extension = split_extension(unquote_local(local), self.recipient_delimiter,
                                              self.double_bounce_sender)
            base = quote_local(base)
        else:
            base, extension = split_extension(local, self.recipient_delimiter, self.double_bounce_sender)
        keys = [(address, "")]
        if at:
            if extension:
                keys.append((f"{base}@{domain}", extension))
            if domain.lower() == self.myorigin or self.is_local(domain):
                keys.append((local, ""))
                if extension:
                    keys.append((base, extension))
            keys.append((f"@{domain}", ""))
        elif extension:
            keys.append((base, extension))
        return keys

    def find(self, maps: Maps, address: str) -> tuple[str, str] | None:
        """(value, extension that was cut off) for the first key any table has, or None."""
        keys = self.keys(address)
        found = maps.search([key for key, _extension in keys])
        if found is None:
            return None
        position, value = found
        return value, keys[position][1]


def find_unquoted(text: str, wanted: str, last: bool = False) -> int:
    """Position of the first (or last) `wanted` outside double quotes and backslash escapes."""
    if '"' not in text and "\\" not in text:
        return text.rfind(wanted) if last else text.find(wanted)
    found = -1
    quoted = escaped = False
    for position, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == wanted and not quoted:
            if not last:
                return position
            found = position
    return found
