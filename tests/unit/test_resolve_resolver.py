"""AddressResolver beyond the golden files: domain-list files and errors, defaults, and
properties over generated addresses."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyfastmta.maps import Maps, TableError, open_table
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
    with pytest.raises(TableError, match=f"{tmp_path}/missing.table: file not found"):
        resolver(mydestination=[f"texthash:{tmp_path}/missing.table"])
    with pytest.raises(TableError, match="relay_domains: cannot read"):
        resolver(relay_domains=[str(tmp_path / "missing")])


@pytest.mark.parametrize("matching, found, missed", [
    ("exact", ["example.com", "dotted.org"], ["a.example.com", "b.a.example.com", "a.dotted.org"]),
    ("dotted", ["example.com", "a.dotted.org", "b.a.dotted.org"], ["a.example.com", "other.net"]),
    ("parent", ["example.com", "a.example.com", "b.a.example.com", "a.dotted.org"], ["other.net"]),
])
def test_domain_list_tables_follow_the_list_matching(tmp_path, matching, found, missed):
    """A table in a domain list is asked for the domain, then (dotted) for ".parent" or (parent)
    for "parent" of each parent domain; "!" before a name still decides first."""
    table = tmp_path / "domains"
    table.write_text("example.com OK\n.dotted.org OK\ndotted.org OK\nnever.example.com OK\n")
    domains = DomainList("relay_domains", ["!never.example.com", f"texthash:{table}"], matching)
    assert [name for name in found if not domains.matches(name)] == []
    assert [name for name in missed if domains.matches(name)] == []
    assert not domains.matches("never.example.com")


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
