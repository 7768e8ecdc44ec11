"""mynetworks as a match list: networks, "!" exclusions, /file includes and lookup tables (a
cidr: table matches networks, another table the address as text)."""

import ipaddress

import pytest

from pyfastmta.maps import TableError
from pyfastmta.maps.matchlist import NetworkList


def test_networks_exclusions_and_files(tmp_path):
    listing = tmp_path / "networks"
    listing.write_text("# ours\n192.0.2.0/24 [2001:db8::]/32\n")
    networks = NetworkList("mynetworks", ["!192.0.2.7", str(listing), "10.1.2.3"])
    assert networks.matches("192.0.2.1") and networks.matches("2001:db8::5")
    assert networks.matches(ipaddress.ip_address("10.1.2.3"))
    assert not networks.matches("192.0.2.7")
    assert not networks.matches("198.51.100.1")
    assert networks.matches("::ffff:192.0.2.9")  # an IPv4 client seen on an IPv6 socket
    assert not networks.has_tables


def test_cidr_and_texthash_tables(tmp_path):
    cidr = tmp_path / "clients.cidr"
    cidr.write_text("203.0.113.0/25 OK\n2001:db8:1::/48 OK\n")
    exact = tmp_path / "clients"
    exact.write_text("198.51.100.7 OK\n")
    networks = NetworkList("mynetworks", [f"cidr:{cidr}", f"texthash:{exact}"])
    assert networks.has_tables
    assert networks.matches("203.0.113.100") and not networks.matches("203.0.113.200")
    assert networks.matches("2001:db8:1::42") and not networks.matches("2001:db8:2::1")
    assert networks.matches("198.51.100.7") and not networks.matches("198.51.100.8")


def test_a_bad_entry_names_the_parameter():
    with pytest.raises(TableError, match='mynetworks: "not-a-network" is neither a network nor a type:table'):
        NetworkList("mynetworks", ["not-a-network"])
