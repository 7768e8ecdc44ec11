"""parse_nexthop: every destination form of smtp(8) and lmtp(8), errors, and a Hypothesis round
trip from generated parts to text and back."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyfastmta.resolve import Nexthop, parse_nexthop, parse_nexthops


@pytest.mark.parametrize("text, expected", [
    ("example.com", Nexthop("inet", "example.com", None, True)),
    ("Example.COM:2525", Nexthop("inet", "example.com", 2525, True)),
    ("[mail.example.com]", Nexthop("inet", "mail.example.com", None, False)),
    ("[mail.example.com]:587", Nexthop("inet", "mail.example.com", 587, False)),
    ("[192.0.2.1]", Nexthop("inet", "192.0.2.1", None, False)),
    ("[192.0.2.1]:26", Nexthop("inet", "192.0.2.1", 26, False)),
    ("[ipv6:2001:db8::1]:25", Nexthop("inet", "2001:db8::1", 25, False)),
    ("[IPv6:2001:DB8:0::1]", Nexthop("inet", "2001:db8::1", None, False)),
    ("[2001:db8::1]:24", Nexthop("inet", "2001:db8::1", 24, False)),
    ("192.0.2.1:25", Nexthop("inet", "192.0.2.1", 25, False)),
    ("inet:lmtp.example:24", Nexthop("inet", "lmtp.example", 24, False)),
    ("inet:[192.0.2.9]", Nexthop("inet", "192.0.2.9", None, False)),
    ("unix:/var/run/dovecot/lmtp", Nexthop("unix", "", None, False, "/var/run/dovecot/lmtp")),
    ("unix:private/dovecot-lmtp", Nexthop("unix", "", None, False, "private/dovecot-lmtp")),
    ("mx.example:smtp", Nexthop("inet", "mx.example", 25, True)),
    ("  spaced.example  ", Nexthop("inet", "spaced.example", None, True)),
])
def test_forms(text, expected):
    assert parse_nexthop(text) == expected


def test_default_port_applies_only_without_a_port():
    assert parse_nexthop("[h]", default_port=24).port == 24
    assert parse_nexthop("[h]:2424", default_port=24).port == 2424
    assert parse_nexthop("unix:/s", default_port=24).port is None


@pytest.mark.parametrize("text, reason", [
    ("", "empty next-hop"),
    ("unix:", "needs a socket path"),
    ("[host", 'missing "]"'),
    ("[host]x", "unexpected"),
    ("2001:db8::1", "in brackets"),
    ("host:", "missing port"),
    ("host:0", "out of range"),
    ("host:65536", "out of range"),
    ("host:no-such-service", "unknown service"),
    ("[ipv6:zz]", "not an IPv6 address"),
    ("bad host", "not a host name"),
    ("a..b", "not a host name"),
    (":25", "missing host name"),
])
def test_errors_say_what_is_wrong(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_nexthop(text)


def test_lists():
    assert parse_nexthops("[a.example]:587, b.example  c.example:26") == [
        Nexthop("inet", "a.example", 587, False), Nexthop("inet", "b.example", None, True),
        Nexthop("inet", "c.example", 26, True)]
    with pytest.raises(ValueError, match="empty"):
        parse_nexthops(" , ")


LABEL = st.from_regex(r"[a-z0-9_][a-z0-9_-]{0,10}", fullmatch=True)
HOSTNAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(
    lambda name: not all(part.isdigit() for part in name.split(".")))


@given(host=st.one_of(HOSTNAME, st.ip_addresses().map(str)), port=st.none() | st.integers(1, 65535),
       bracketed=st.booleans(), inet_prefix=st.booleans())
def test_round_trip(host, port, bracketed, inet_prefix):
    is_address = ":" in host or all(part.isdigit() for part in host.split("."))
    if ":" in host:
        bracketed = True  # IPv6 needs brackets
    text = (f"[{host}]" if bracketed else host) + (f":{port}" if port is not None else "")
    if inet_prefix:
        text = "inet:" + text
    parsed = parse_nexthop(text)
    expected_host = str(ipaddress.ip_address(host)) if is_address else host
    assert parsed == Nexthop("inet", expected_host, port, not (bracketed or inet_prefix or is_address))
