"""Client names (smtpd_peername_lookup) from /etc/hosts and from the configured DNS server only:
a name counts when it resolves back to the client's address."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyfastmta.dns import DnsResolver
from pyfastmta.smtpd.peername import PeernameCache

DNS_SERVER = Path(__file__).resolve().parent.parent / "peers" / "dnsserver.py"

ZONE = {
    # named, and the name resolves back
    "2.0.0.127.in-addr.arpa": {"PTR": ["client.example.test."]},
    "client.example.test": {"A": ["127.0.0.2"]},
    # a name that points elsewhere: not believed
    "3.0.0.127.in-addr.arpa": {"PTR": ["liar.example.test."]},
    "liar.example.test": {"A": ["127.0.0.99"]},
    # a failing server for this one
    "4.0.0.127.in-addr.arpa": "SERVFAIL",
}


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory):
    zone = tmp_path_factory.mktemp("zone") / "zone.json"
    zone.write_text(json.dumps(ZONE))
    server = subprocess.Popen([sys.executable, str(DNS_SERVER), "--listen", "127.0.0.1:0",
                               "--zone", str(zone)], stdout=subprocess.PIPE, text=True)
    try:
        yield int(server.stdout.readline().split()[1].rpartition(":")[2])
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def test_names_from_dns_and_hosts_file(dns_port, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n127.0.0.5  fromfile.example.test alias\n::1 ip6-localhost\n")

    async def names():
        cache = PeernameCache(DnsResolver([("127.0.0.1", dns_port)], timeout=5), str(hosts))
        found = [(await cache.lookup(f"127.0.0.{n}")).name for n in (2, 3, 4, 5, 6)]
        return found, cache.cached("127.0.0.2").name

    found, cached = asyncio.run(names())
    assert found == ["client.example.test", "unknown", "unknown", "fromfile.example.test", "unknown"]
    assert cached == "client.example.test"


def test_name_status_as_postfix_keeps_it(dns_port, tmp_path):
    """reject_unknown_client_hostname answers 450 for a DNS failure and its reject code for a
    missing or forged name; the reverse name is what the PTR record says."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.5  fromfile.example.test\n")

    async def names():
        cache = PeernameCache(DnsResolver([("127.0.0.1", dns_port)], timeout=5), str(hosts))
        return [tuple(await cache.lookup(f"127.0.0.{n}")) for n in (2, 3, 4, 5, 6)]

    assert asyncio.run(names()) == [
        ("client.example.test", "ok", "client.example.test", "ok"),
        ("unknown", "permanent", "liar.example.test", "ok"),
        ("unknown", "temporary", "unknown", "temporary"),
        ("fromfile.example.test", "ok", "fromfile.example.test", "ok"),
        ("unknown", "permanent", "unknown", "permanent"),
    ]


def test_session_logs_the_dns_name(dns_port, make_mta, connect):
    mta = make_mta({"dns_nameservers": f"127.0.0.1:{dns_port}"})
    client = connect(mta, source="127.0.0.2")
    assert client.command("QUIT")[0] == 221
    assert mta.logged("connect from client.example.test[127.0.0.2]")
