"""AddressResolver beyond the golden files: domain-list files and errors, defaults, and
properties over generated addresses."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyfastmta.maps import Maps, open_table
from pyfastmta.resolve import AddressResolver, DomainList


def resolver(**overrides) -> AddressResolver:
    settings = {"myhostname": "mx.example.net", "mydomain": "example.net", "myorigin": "example.net",
                "mydestination": ["mx.example.net", "localhost"], "relay_domains": [], "relayhost": "",
                "transport_maps": None}
    settings.update(overrides)
    return AddressResolver(**settings)


def test_domain_list_reads_file_patterns(tmp_path):
    listing = tmp_path / "domains"
    listing.write_text("# local names\none.example, two.example\n  three.example\n")
    domains = DomainList("mydestination", [str(listing), "four.example"], "exact")
    assert all(domains.matches(name) for name in ("one.example", "TWO.example", "three.example", "four.example"))
    assert not domains.matches("sub.one.example")


def test_domain_list_errors_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match='mydestination: lookup table "hash:/etc/x" is not supported'):
        resolver(mydestination=["hash:/etc/x"])
    with pytest.raises(ValueError, match="relay_domains: cannot read"):
        resolver(relay_domains=[str(tmp_path / "missing")])


def test_default_local_transport_is_local_myhostname():
    result = resolver().resolve("joe@localhost")
    assert (result.address_class, result.transport, result.nexthop) == ("local", "local", "mx.example.net")


def test_relayhost_list_passes_through_as_written():
    result = resolver(relayhost="mail1.example:587, mail2.example:587").resolve("joe@example.org")
    assert result.nexthop == "mail1.example:587, mail2.example:587"


def test_relay_domains_subdomains_follow_parent_style():
    dotted = resolver(relay_domains=["example.net", ".sub.example"], parent_domain_matches_subdomains=[])
    parent = resolver(relay_domains=["example.net", ".sub.example"])
    assert dotted.resolve("a@host.example.net").address_class == "default"
    assert dotted.resolve("a@host.sub.example").address_class == "relay"
    assert parent.resolve("a@host.example.net").address_class == "relay"
    assert parent.resolve("a@host.sub.example").address_class == "default"


def test_transport_maps_apply_to_every_class(tmp_path):
    path = tmp_path / "transport"
    path.write_text("localhost lmtp:unix:/run/lmtp\nexample.org error:5.7.1 no mail here\n")
    chosen = resolver(transport_maps=Maps("transport_maps", [f"texthash:{path}"], open_table))
    assert chosen.resolve("a@localhost").transport == "lmtp"
    assert chosen.resolve("a@localhost").nexthop == "unix:/run/lmtp"
    assert (chosen.resolve("a@example.org").transport, chosen.resolve("a@example.org").nexthop) == (
        "error", "5.7.1 no mail here")


LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=2, max_size=4).map(".".join)
LOCAL = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.+_]{0,10}", fullmatch=True)


@given(local=LOCAL, domain=DOMAIN, local_domains=st.lists(DOMAIN, max_size=3), relay=st.lists(DOMAIN, max_size=3))
def test_class_follows_the_lists(local, domain, local_domains, relay):
    result = resolver(mydestination=local_domains, relay_domains=relay).resolve(f"{local}@{domain.upper()}")
    assert result.recipient == f"{local}@{domain.upper()}"
    if domain in local_domains:
        assert (result.address_class, result.transport) == ("local", "local")
    elif domain in relay or any(domain.endswith("." + parent) for parent in relay):
        assert (result.address_class, result.transport, result.nexthop) == ("relay", "relay", domain)
    else:
        assert (result.address_class, result.transport, result.nexthop) == ("default", "smtp", domain)
