"""transport_maps: transport(5)'s search order over a parameter's lookup tables (any type)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from pyfastmta.maps import Maps
from pyfastmta.maps.addresses import split_extension

# Postfix's default for parent_domain_matches_subdomains.
DEFAULT_PARENT_DOMAIN_MATCHES_SUBDOMAINS = (
    "debug_peer_list", "fast_flush_domains", "mynetworks", "permit_mx_backup_networks",
    "qmqpd_authorized_clients", "relay_domains", "smtpd_access_maps",
)

def transport_lookup(tables: Maps | None, address: str, *, recipient_delimiter: str = "",
                     parent_domain_matches_subdomains: Sequence[str] = DEFAULT_PARENT_DOMAIN_MATCHES_SUBDOMAINS,
                     double_bounce_sender: str = "double-bounce") -> tuple[str, str] | None:
    """Search the tables in transport(5) order; each search key is tried in every table, in order,
    before the next key: the address, the address without its extension, the domain, its parent
    domains (as "parent" when parent_domain_matches_subdomains lists transport_maps, else as
    ".parent"), and last "*". Pattern tables (regexp:, pcre:) see the full address only."""
    if not tables:
        return None
    local, at, domain = address.rpartition("@")
    if not at:
        raise ValueError(f'transport lookup needs a user@domain address, not "{address}"')
    value = tables.find(list(_search_keys(local, domain, recipient_delimiter,
                                          "transport_maps" in parent_domain_matches_subdomains,
                                          double_bounce_sender)))
    if value is None:
        return None
    transport, _, nexthop = value.partition(":")
    return transport, nexthop


def _search_keys(local: str, domain: str, delimiters: str, parent_style: bool,
                 double_bounce_sender: str) -> Iterable[str]:
    yield f"{local}@{domain}"
    stripped, _extension = split_extension(local, delimiters, double_bounce_sender)
    if stripped != local:
        yield f"{stripped}@{domain}"
    yield domain
    if not domain.startswith("["):
        dot = domain.find(".", 1)
        while dot >= 0:
            yield domain[dot + 1:] if parent_style else domain[dot:]
            dot = domain.find(".", dot + 1)
    yield "*"
