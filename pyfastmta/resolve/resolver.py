"""Resolving a recipient to (address class, transport, nexthop), as trivial-rewrite(8) does.

Address classes, tried in this order:
  local    the domain is in mydestination, or is [addr] of this host: local_transport (by
           default local:$myhostname), nexthop the domain when local_transport names none;
  virtual  the domain is in virtual_mailbox_domains: virtual_transport, nexthop the domain;
  relay    the domain is in relay_domains: relay_transport, nexthop from relay_transport, else
           relayhost, else the domain;
  default  anything else: default_transport, nexthop from default_transport, else relayhost,
           else the domain.
transport_maps then override the transport and/or nexthop as transport(5) says. An address
Postfix would flag as malformed resolves to transport "error" with nexthop
"5.1.3 bad address syntax", so it bounces through the same path as an `error:` table entry.
A domain used as nexthop is lowercased, so one destination is one queue whatever its spelling.
"""
from __future__ import annotations

import functools

from collections.abc import Sequence
from dataclasses import dataclass

from pyfastmta.config.interfaces import LocalDomains, literal_address
from pyfastmta.maps import Maps
from pyfastmta.maps.addresses import AddressSearch, find_unquoted
from pyfastmta.maps.matchlist import DomainList
from pyfastmta.resolve.transport import (
    DEFAULT_PARENT_DOMAIN_MATCHES_SUBDOMAINS,
    transport_lookup,
)

BAD_SYNTAX = "5.1.3 bad address syntax"


@dataclass(frozen=True, slots=True)
class Resolution:
    address_class: str  # "local", "virtual", "relay" or "default"
    transport: str  # the master.cf service qmgr dispatches to
    nexthop: str  # where that transport delivers, in its own syntax (for "error": the reason)
    recipient: str  # the address as it is passed on (qualified, trailing dots removed)


class AddressResolver:
    """Resolves recipients with one configuration; parameters are main.cf's, already expanded."""

    def __init__(self, *, myhostname: str, mydomain: str, myorigin: str, mydestination: Sequence[str],
                 relay_domains: Sequence[str], relayhost: str, transport_maps: Maps | None = None,
                 default_transport: str = "smtp", relay_transport: str = "relay",
                 local_transport: str | None = None,
                 parent_domain_matches_subdomains: Sequence[str] = DEFAULT_PARENT_DOMAIN_MATCHES_SUBDOMAINS,
                 recipient_delimiter: str = "", inet_interfaces_addresses: Sequence[str] = (),
                 virtual_mailbox_domains: Sequence[str] = (), virtual_transport: str = "virtual",
                 empty_address_recipient: str = "MAILER-DAEMON", allow_min_user: bool = False,
                 double_bounce_sender: str = "double-bounce", smtputf8_enable: bool = True,
                 relocated_maps: Maps | None = None, sender_dependent_relayhost_maps: Maps | None = None,
                 empty_address_relayhost_maps_lookup_key: str = "<>") -> None:
        """local_transport None means Postfix's default, local:$myhostname."""
        self.myhostname = myhostname
        self.mydomain = mydomain
        self.myorigin = myorigin
        self.relayhost = relayhost.strip()
        self.transport_maps = transport_maps
        self.default_transport = default_transport
        self.relay_transport = relay_transport
        self.local_transport = f"local:{myhostname}" if local_transport is None else local_transport
        self.virtual_transport = virtual_transport
        self.parent_domain_matches_subdomains = tuple(parent_domain_matches_subdomains)
        self.recipient_delimiter = recipient_delimiter
        self.empty_address_recipient = empty_address_recipient
        self.allow_min_user = allow_min_user
        self.double_bounce_sender = double_bounce_sender
        self.smtputf8_enable = smtputf8_enable
        relay_matching = "parent" if "relay_domains" in self.parent_domain_matches_subdomains else "dotted"
        self.mydestination = DomainList("mydestination", mydestination, "exact")
        self.relay_domains = DomainList("relay_domains", relay_domains, relay_matching)
        self.virtual_mailbox_domains = DomainList("virtual_mailbox_domains", virtual_mailbox_domains, "exact")
        self.local_domains = LocalDomains(self.mydestination, inet_interfaces_addresses)
        self.relocated_maps = relocated_maps
        self.sender_dependent_relayhost_maps = sender_dependent_relayhost_maps
        self.empty_address_relayhost_maps_lookup_key = empty_address_relayhost_maps_lookup_key
        self._relocated_search = AddressSearch(
            recipient_delimiter=recipient_delimiter, myorigin=myorigin, is_local=self.local_domains.matches,
            double_bounce_sender=double_bounce_sender)

    def _relayhost(self, sender: str) -> str:
        """relayhost, or what sender_dependent_relayhost_maps give for the sender (its address,
        then @domain; the null sender as empty_address_relayhost_maps_lookup_key). DUNNO there
        means: use relayhost."""
        maps = self.sender_dependent_relayhost_maps
        if maps:
            if sender:
                keys = [sender]
                at = sender.rfind("@")
                if at >= 0:
                    keys.append(sender[at:])
            else:
                keys = [self.empty_address_relayhost_maps_lookup_key]
            found = maps.find(keys)
            if found is not None and found.upper() != "DUNNO":
                return found
        return self.relayhost

    def resolve(self, recipient: str, sender: str | None = None) -> Resolution:
        address = recipient
        if not address:
            address = f"{self.empty_address_recipient}@{self.myhostname}"
        local, domain = _split_address(address)
        if domain is None:
            local, domain = address, self.myorigin
        domain = domain.rstrip(".")
        address = f"{local}@{domain}"
        literal = domain.startswith("[") and domain.endswith("]")
        valid = (_valid_literal(domain) if literal else valid_hostname(domain, self.smtputf8_enable))
        if not self.allow_min_user and recipient.startswith("-"):
            # An address that looks like a command-line option must never reach a command.
            valid = False

        if self.local_domains.matches(domain):
            address_class, transport, nexthop = "local", *_split_transport(self.local_transport)
            nexthop = nexthop or domain.lower()
        elif self.virtual_mailbox_domains.matches(domain):
            address_class, transport, nexthop = "virtual", *_split_transport(self.virtual_transport)
            nexthop = nexthop or domain.lower()
        elif self.relay_domains.matches(domain):
            address_class, transport, nexthop = "relay", *_split_transport(self.relay_transport)
            nexthop = nexthop or self._relayhost(sender or "") or domain.lower()
        else:
            address_class, transport, nexthop = "default", *_split_transport(self.default_transport)
            nexthop = nexthop or self._relayhost(sender or "") or domain.lower()

        if self.relocated_maps and valid:
            # Bounced here rather than by a delivery agent, so it works for every address class.
            moved = self._relocated_search.find(self.relocated_maps, address)
            if moved is not None:
                return Resolution(address_class, "error", f"5.1.6 User has moved to {moved[0]}", address)

        found = transport_lookup(self.transport_maps, address, recipient_delimiter=self.recipient_delimiter,
                                 parent_domain_matches_subdomains=self.parent_domain_matches_subdomains,
                                 double_bounce_sender=self.double_bounce_sender)
        if found is not None:
            table_transport, table_nexthop = found
            if table_transport:
                # A transport without a nexthop sends to the recipient domain (transport(5)).
                transport, nexthop = table_transport, table_nexthop or domain.lower()
            elif table_nexthop:
                nexthop = table_nexthop
        if not valid:
            transport, nexthop = "error", BAD_SYNTAX
        return Resolution(address_class, transport, nexthop, address)


def _split_transport(value: str) -> tuple[str, str]:
    transport, _, nexthop = value.partition(":")
    return transport.strip(), nexthop.strip()


def _split_address(address: str) -> tuple[str, str | None]:
    """(local part, domain) at the last "@" outside double quotes; domain None when there is none."""
    at = find_unquoted(address, "@", last=True)
    if at < 0:
        return address, None
    return address[:at], address[at + 1:]


def _valid_literal(domain: str) -> bool:
    return literal_address(domain) is not None


@functools.lru_cache(maxsize=4096)  # smtpd checks the same HELO names and domains over and over
def valid_hostname(domain: str, smtputf8_enable: bool) -> bool:
    """Postfix's host name rules: labels of 1 to 63 letters, digits, "-" or "_", no "-" at either
    end of a label, at most 255 characters, and not all digits and dots (a bare IP address)."""
    if not domain or len(domain) > 255:
        return False
    if not domain.isascii():
        if not smtputf8_enable:
            return False
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    labels = domain.split(".")
    for label in labels:
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not all(char.isalnum() or char in "-_" for char in label):
            return False
    return not all(label.isdigit() for label in labels)
