"""Envelope address rewriting, as Postfix's cleanup and trivial-rewrite do it.

For the sender: the local rewriting context (trivial-rewrite), then sender_canonical_maps and
canonical_maps (each when its *_classes has envelope_sender), then masquerading. For each
recipient: the local context, recipient_canonical_maps and canonical_maps (envelope_recipient),
masquerading (when masquerade_classes has envelope_recipient), then virtual_alias_maps, which
may turn one recipient into many.

The local context (trivial-rewrite's rewrite_tree): a source route "@a,@b:user@c" loses its route;
an address without "@" has "site!user" swapped to "user@site" (swap_bangpath), else its last "%"
made an "@" (allow_percent_hack), else "@$myorigin" appended (append_at_myorigin); a domain
without a dot gets ".$mydomain" (append_dot_mydomain); one trailing dot is removed. Quoted parts
of the local part are left alone.

Headers (HeaderRewriter): the addresses of sender headers (From, Sender, Reply-To, ...) and
recipient headers (To, Cc, Bcc, ...) go through the same steps with header_sender and
header_recipient in the *_classes parameters, in the "local" context for clients that
local_header_rewrite_clients names and in the "remote" context (remote_header_rewrite_domain;
empty: headers from such clients are not touched at all) for the others. A header none of whose
addresses changed is kept byte for byte; a changed one is written again in Postfix's form.
"""

from __future__ import annotations

import re

from collections.abc import Callable

from pyfastmta._ext.address import (fold_address_header, parse_address_list, quote_local,
                                    requote_local, rewrite_address, unquote_local)
from pyfastmta.maps.addresses import AddressSearch, find_unquoted
from pyfastmta.maps.registry import parameter_maps
from pyfastmta.maps.table import Maps

# cleanup_map11's limit on a canonical mapping of a mapping.
_CANONICAL_NESTING = 10
# Longest address a virtual alias may expand to (Postfix's virtual_alias_address_length_limit).
_VIRTUAL_ADDRESS_LIMIT = 1000


class AliasExpansionError(Exception):
    """A virtual alias nested or expanded beyond its limits: the message is not accepted now
    (451 4.6.0), as Postfix defers it."""


class LocalContext:
    """trivial-rewrite's "local" rule set."""

    def __init__(self, *, myorigin: str, mydomain: str, swap_bangpath: bool = True,
                 allow_percent_hack: bool = True, append_at_myorigin: bool = True,
                 append_dot_mydomain: bool = False) -> None:
        self.myorigin = myorigin
        self.mydomain = mydomain
        self.swap_bangpath = swap_bangpath
        self.allow_percent_hack = allow_percent_hack
        self.append_at_myorigin = append_at_myorigin
        self.append_dot_mydomain = append_dot_mydomain

    def rewrite(self, address: str) -> str:
        """The address (external form) after the local rules, quoted as Postfix quotes it: table
        keys and the addresses written out are in that form."""
        if not address:
            return address
        if address == "@":
            return ""
        address = requote_local(address)
        if address.startswith("@"):
            colon = find_unquoted(address, ":")
            if 0 < colon < len(address) - 1:
                address = address[colon + 1:]
        if find_unquoted(address, "@", last=True) < 0:
            bang = find_unquoted(address, "!")
            percent = find_unquoted(address, "%", last=True)
            if self.swap_bangpath and bang >= 0:
                address = f"{address[bang + 1:]}@{address[:bang]}"
            elif self.allow_percent_hack and percent >= 0:
                address = f"{address[:percent]}@{address[percent + 1:]}"
            elif self.append_at_myorigin and self.myorigin:
                address = f"{address}@{self.myorigin}"
        at = find_unquoted(address, "@", last=True)
        if self.append_dot_mydomain and self.mydomain and 0 <= at < len(address) - 1:
            domain = address[at + 1:]
            if "." not in domain and not domain.startswith("["):
                address = f"{address}.{self.mydomain}"
        if address.endswith(".") and len(address) > 1 and address[-2] not in ".@":
            address = address[:-1]
        return address


class EnvelopeRewriter:
    """What cleanup does to the envelope of one message, with one configuration."""

    def __init__(self, *, local: LocalContext, search: AddressSearch,
                 canonical: Maps | None = None, sender_canonical: Maps | None = None,
                 recipient_canonical: Maps | None = None,
                 canonical_classes: frozenset[str] = frozenset(),
                 sender_canonical_classes: frozenset[str] = frozenset(),
                 recipient_canonical_classes: frozenset[str] = frozenset(),
                 masquerade_domains: list[str] | None = None, masquerade_exceptions: frozenset[str] = frozenset(),
                 masquerade_classes: frozenset[str] = frozenset(),
                 virtual_alias: Maps | None = None, virtual_alias_recursion_limit: int = 1000,
                 virtual_alias_expansion_limit: int = 1000,
                 propagate_unmatched_extensions: frozenset[str] = frozenset({"canonical", "virtual"}),
                 warn: Callable[[str], None] | None = None) -> None:
        self.local = local
        self.search = search
        self.canonical = canonical
        self.sender_canonical = sender_canonical
        self.recipient_canonical = recipient_canonical
        self.canonical_classes = canonical_classes
        self.sender_canonical_classes = sender_canonical_classes
        self.recipient_canonical_classes = recipient_canonical_classes
        self.masquerade_domains = [d.lower() for d in (masquerade_domains or [])]
        self.masquerade_exceptions = frozenset(e.lower() for e in masquerade_exceptions)
        self.masquerade_classes = masquerade_classes
        self.virtual_alias = virtual_alias
        self.virtual_alias_recursion_limit = virtual_alias_recursion_limit
        self.virtual_alias_expansion_limit = virtual_alias_expansion_limit
        self.propagate = propagate_unmatched_extensions
        self._warn = warn

    # -- the two envelope parts ------------------------------------------------------------------

    def sender(self, address: str) -> str:
        if not address:
            return address
        address = self.local.rewrite(address)
        if self.sender_canonical and "envelope_sender" in self.sender_canonical_classes:
            address = self._map11(self.sender_canonical, address, "sender_canonical_maps")
        if self.canonical and "envelope_sender" in self.canonical_classes:
            address = self._map11(self.canonical, address, "canonical_maps")
        if "envelope_sender" in self.masquerade_classes:
            address = self.masquerade(address)
        return address

    def recipient(self, address: str) -> list[str]:
        """The recipients one envelope recipient becomes (one, unless virtual aliases expand it).
        Raises AliasExpansionError past the virtual alias limits."""
        address = self.local.rewrite(address)
        if self.recipient_canonical and "envelope_recipient" in self.recipient_canonical_classes:
            address = self._map11(self.recipient_canonical, address, "recipient_canonical_maps")
        if self.canonical and "envelope_recipient" in self.canonical_classes:
            address = self._map11(self.canonical, address, "canonical_maps")
        if "envelope_recipient" in self.masquerade_classes:
            address = self.masquerade(address)
        if not self.virtual_alias:
            return [address]
        return self._map1n(self.virtual_alias, address)

    # -- the mappings ----------------------------------------------------------------------------

    def map_address(self, maps: Maps, address: str, propagate: bool) -> list[str] | None:
        """One table lookup (Postfix's mail_addr_map): the addresses the result names, each put
        through the local context; "@domain" keeps the user; an extension the lookup had to cut
        off is put back when propagate is set."""
        found = self.search.find(maps, address)
        if found is None:
            return None
        value, extension = found
        if value.startswith("@"):
            at = find_unquoted(address, "@", last=True)
            user = unquote_local(address[:at] if at >= 0 else address)
            if extension:
                user = user[:len(user) - len(extension)]
            value = quote_local(user + value)
        results = []
        for item in _split_addresses(value):
            item = self.local.rewrite(item)
            if propagate and extension:
                item = unquote_local(item)
                at = find_unquoted(item, "@", last=True)
                item = quote_local(item[:at] + extension + item[at:] if at >= 0 else item + extension)
            results.append(item)
        if not results and self._warn is not None:
            self._warn(f'lookup of {address} returns non-address result "{value}"')
        return results or None

    def _map11(self, maps: Maps, address: str, title: str) -> str:
        propagate = "canonical" in self.propagate
        for _ in range(_CANONICAL_NESTING):
            mapped = self.map_address(maps, address, propagate)
            if mapped is None:
                return address
            if len(mapped) > 1 and self._warn is not None:
                self._warn(f"multi-valued {title} entry for {address}")
            previous, address = address, mapped[0]
            if previous.lower() == address.lower():
                return address
        if self._warn is not None:
            self._warn(f"unreasonable {title} map nesting for {address}")
        return address

    def _map1n(self, maps: Maps, original: str) -> list[str]:
        propagate = "virtual" in self.propagate
        addresses = [original]
        expanded_to_self: set[str] = set()
        position = 0
        while position < len(addresses):
            if len(addresses) > self.virtual_alias_expansion_limit:
                raise AliasExpansionError(f"unreasonable virtual_alias_maps map expansion size for {original}")
            count = 0
            while addresses[position].lower() not in expanded_to_self:
                if count >= self.virtual_alias_recursion_limit:
                    raise AliasExpansionError(f"unreasonable virtual_alias_maps map nesting for {original}")
                lhs = addresses[position]
                mapped = self.map_address(maps, lhs, propagate)
                if mapped is None:
                    break
                for index, item in enumerate(mapped):
                    if len(item) > _VIRTUAL_ADDRESS_LIMIT:
                        raise AliasExpansionError(f"unreasonable virtual_alias_maps result {item[:300]}...")
                    if index == 0:
                        addresses[position] = item
                    else:
                        addresses.append(item)
                    if item.lower() == lhs.lower():
                        expanded_to_self.add(lhs.lower())
                count += 1
            position += 1
        return addresses

    def masquerade(self, address: str) -> str:
        """Strip subdomains of masquerade_domains (a "!domain" entry keeps its subdomains), unless
        the user is in masquerade_exceptions."""
        if not self.masquerade_domains:
            return address
        at = find_unquoted(address, "@", last=True)
        if at < 0:
            return address
        user, domain = address[:at], address[at + 1:]
        if user.lower() in self.masquerade_exceptions:
            return address
        masqueraded = _masquerade_domain(domain, self.masquerade_domains)
        return address if masqueraded is None else f"{user}@{masqueraded}"


def _masquerade_domain(domain: str, masquerade_domains: list[str]) -> str | None:
    """The masquerade_domains entry (lower case, as Postfix writes it) that replaces `domain`, or
    None. Entries are tried in order; a domain equal to an entry stays; each "!" in front of an
    entry flips it between stripping and keeping the subdomains."""
    lowered = domain.lower()
    for entry in masquerade_domains:
        name = entry.lstrip("!")
        if not name:
            continue
        strip = (len(entry) - len(name)) % 2 == 0
        if lowered == name:
            return None
        if lowered.endswith("." + name):
            return name if strip else None
    return None


_NEEDS_SPLITTING = re.compile(r'[",<\s\\]')


def _split_addresses(value: str) -> list[str]:
    """The addresses of a table result: comma- or space-separated, with quotes and <> kept
    intact (an RFC 822 address list in Postfix)."""
    if _NEEDS_SPLITTING.search(value) is None:
        return [value]
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
            current.append(char)
            continue
        if char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and (char == "," or char.isspace()):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    return [item[1:-1] if item.startswith("<") and item.endswith(">") else item for item in items]


def envelope_rewriter(config, is_local: Callable[[str], bool],
                      warn: Callable[[str], None] | None = None) -> EnvelopeRewriter:
    """The rewriter of a configuration; is_local(domain): the domain is $mydestination or one of
    this host's address literals (its users are also looked up without the domain)."""
    get = config.get

    def maps(parameter: str) -> Maps | None:
        found = parameter_maps(config, parameter, warn)
        return found if found else None

    local = LocalContext(myorigin=get("myorigin"), mydomain=get("mydomain"),
                         swap_bangpath=get("swap_bangpath"), allow_percent_hack=get("allow_percent_hack"),
                         append_at_myorigin=get("append_at_myorigin"),
                         append_dot_mydomain=get("append_dot_mydomain"))
    search = AddressSearch(recipient_delimiter=get("recipient_delimiter"), myorigin=get("myorigin"),
                           is_local=is_local, double_bounce_sender=get("double_bounce_sender"))
    return EnvelopeRewriter(
        local=local, search=search, canonical=maps("canonical_maps"),
        sender_canonical=maps("sender_canonical_maps"), recipient_canonical=maps("recipient_canonical_maps"),
        canonical_classes=frozenset(get("canonical_classes")),
        sender_canonical_classes=frozenset(get("sender_canonical_classes")),
        recipient_canonical_classes=frozenset(get("recipient_canonical_classes")),
        masquerade_domains=list(get("masquerade_domains")),
        masquerade_exceptions=frozenset(get("masquerade_exceptions")),
        masquerade_classes=frozenset(get("masquerade_classes")),
        virtual_alias=maps("virtual_alias_maps"),
        virtual_alias_recursion_limit=get("virtual_alias_recursion_limit"),
        virtual_alias_expansion_limit=get("virtual_alias_expansion_limit"),
        propagate_unmatched_extensions=frozenset(get("propagate_unmatched_extensions")),
        warn=warn)


# Postfix's header classes (header_opts): sender headers and recipient headers, by lower-case name.
SENDER_HEADERS = frozenset({
    b"disposition-notification-to", b"errors-to", b"from", b"mail-followup-to", b"reply-to",
    b"resent-from", b"resent-sender", b"return-path", b"return-receipt-to", b"sender",
})
RECIPIENT_HEADERS = frozenset({
    b"apparently-to", b"bcc", b"cc", b"resent-bcc", b"resent-cc", b"resent-reply-to", b"resent-to",
    b"to",
})


def _text(address: bytes) -> str:
    return address.decode("utf-8", "surrogateescape")


def _bytes(address: str) -> bytes:
    return address.encode("utf-8", "surrogateescape")


class HeaderRewriter:
    """Address rewriting in message headers, as Postfix's cleanup does it (cleanup_rewrite_sender
    and cleanup_rewrite_recip): each address is rewritten in external (quoted) form by the
    client's rewriting context, then by the canonical tables and masquerading that the *_classes
    parameters name for header_sender or header_recipient."""

    def __init__(self, envelope: EnvelopeRewriter, remote_domain: str = "") -> None:
        self.envelope = envelope
        local = envelope.local
        self._local = (local.myorigin, local.mydomain)
        self._remote = (remote_domain, remote_domain) if remote_domain else None
        self._flags = (local.swap_bangpath, local.allow_percent_hack, local.append_at_myorigin,
                       local.append_dot_mydomain)
        self._steps = {True: self._class_steps("header_sender", envelope.sender_canonical,
                                               envelope.sender_canonical_classes, "sender_canonical_maps"),
                       False: self._class_steps("header_recipient", envelope.recipient_canonical,
                                                envelope.recipient_canonical_classes,
                                                "recipient_canonical_maps")}
        self._masquerade = {
            True: bool(envelope.masquerade_domains) and "header_sender" in envelope.masquerade_classes,
            False: bool(envelope.masquerade_domains) and "header_recipient" in envelope.masquerade_classes,
        }

    def _class_steps(self, address_class: str, own: Maps | None, own_classes: frozenset[str],
                     own_title: str) -> list[tuple[Maps, str]]:
        steps = []
        if own and address_class in own_classes:
            steps.append((own, own_title))
        if self.envelope.canonical and address_class in self.envelope.canonical_classes:
            steps.append((self.envelope.canonical, "canonical_maps"))
        return steps

    def context(self, local_client: bool) -> tuple[str, str] | None:
        """(origin, domain) of the client's rewriting context; None: headers are left alone
        (a remote client while remote_header_rewrite_domain is empty)."""
        return self._local if local_client else self._remote

    def rewrite_value(self, value: bytes, sender: bool, context: tuple[str, str]) -> bytes | None:
        """The header value as Postfix writes it after rewriting (a newline after each comma,
        for fold_address_header), or None when no address changed."""
        addresses = parse_address_list(value)
        count = len(addresses)
        if not count:
            return None
        origin, domain = context
        swap_bangpath, percent_hack, append_at, append_dot = self._flags
        steps = self._steps[sender]
        masquerade = self._masquerade[sender]
        changed = False
        results: list[bytes] = []
        for index in range(count):
            external = addresses.address(index)
            rewritten = rewrite_address(external, origin, domain, swap_bangpath, percent_hack,
                                        append_at, append_dot)
            if rewritten != external:
                changed = True
            if steps or masquerade:
                text = _text(rewritten)
                for maps, title in steps:
                    mapped = self.envelope._map11(maps, text, title)
                    if mapped != text:
                        changed = True
                        text = mapped
                if masquerade:
                    masqueraded = self._masquerade_external(text)
                    if masqueraded is not None:
                        changed = True
                        text = masqueraded
                rewritten = _bytes(text)
            results.append(rewritten)
        if not changed:
            return None
        return addresses.externalize(results)

    def _masquerade_external(self, external: str) -> str | None:
        """Masquerading of an external-form address: the local part as written (quotes and all)
        is what masquerade_exceptions is compared with."""
        at = external.rfind("@")
        if at < 0:
            return None
        if external[:at].lower() in self.envelope.masquerade_exceptions:
            return None
        masqueraded = _masquerade_domain(external[at + 1:], self.envelope.masquerade_domains)
        if masqueraded is None:
            return None
        return f"{external[:at + 1]}{masqueraded}"

    def rewrite_field(self, name: bytes, value: bytes, sender: bool,
                      context: tuple[str, str]) -> bytes | None:
        """The whole rewritten field (CRLF lines) for header `name` with the still folded
        `value`, or None when it stays as it is."""
        text = self.rewrite_value(value.replace(b"\r\n", b"\n"), sender, context)
        if text is None:
            return None
        return fold_address_header(name, text)

    def envelope_sender_external(self, sender: str) -> str:
        """The rewritten envelope sender in external form, as a From: header that cleanup adds
        carries it ("MAILER-DAEMON" for the null sender)."""
        if not sender:
            return "MAILER-DAEMON"
        return self.envelope.sender(sender)


def header_rewriter(config, envelope: EnvelopeRewriter) -> HeaderRewriter:
    return HeaderRewriter(envelope, config.get("remote_header_rewrite_domain"))
