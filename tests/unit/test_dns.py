"""DNS for delivery against a real authoritative server on loopback (tests/peers/dnsserver.py).

Query counts come from the server's --stats file, so caching and sharing are observed from the
server's side, not from inside the resolver.
"""

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyfastmta.dns import Destination, DnsError, DnsResolver, MxHost
from pyfastmta.dns.cache import TtlCache
from pyfastmta.dns.resolver import parse_inet_protocols

SERVER = Path(__file__).resolve().parent.parent / "peers" / "dnsserver.py"

ZONE = {
    "$ttl": 300,
    "$negative_ttl": 300,
    "spread.test": {"MX": ["5 first.spread.test", "10 b1.spread.test", "10 b2.spread.test",
                           "10 b3.spread.test", "20 last.spread.test"]},
    "order.test": {"MX": ["20 mx-b.order.test.", "10 mx-a.order.test."], "A": ["127.0.0.29"]},
    "mx-a.order.test": {"A": ["127.0.0.21"]},
    "mx-b.order.test": {"A": ["127.0.0.22", "127.0.0.23"]},
    "implicit.test": {"A": ["127.0.0.30"]},
    "xn--bcher-kva.test": {"A": ["127.0.0.33"]},
    "xn--fa-hia.test": {"A": ["127.0.0.34"]},
    "alias.test": {"CNAME": ["implicit.test."]},
    "nullmx.test": {"MX": ["0 ."]},
    "broken.test": "SERVFAIL",
    "refused.test": "REFUSED",
    "silent.test": "TIMEOUT",
    "short.test": {"A": {"ttl": 1, "data": ["127.0.0.31"]}},
    "long.test": {"A": {"ttl": 3600, "data": ["127.0.0.32"]}},
    "noaddr.test": {},
    "dual.test": {"A": ["127.0.0.41", "127.0.0.42"], "AAAA": ["::41", "::42"]},
    "v4only.test": {"A": ["127.0.0.43"]},
    "dualmx.test": {"MX": ["10 dual.test", "10 v4only.test", "20 backup.dualmx.test"]},
    "backup.dualmx.test": {"AAAA": ["::44"]},
    "halfbroken.test": {"A": ["127.0.0.45"], "AAAA": "SERVFAIL"},
    "slow.test": {"MX": {"data": ["10 mx.slow.test"], "delay": 0.3}},
    "mx.slow.test": {"A": {"data": ["127.0.0.50"], "delay": 0.2}},
    "somebad.test": {"MX": ["10 missing.somebad.test", "20 good.somebad.test"]},
    "good.somebad.test": {"A": ["127.0.0.51"]},
    "allbad.test": {"MX": ["10 missing.allbad.test", "20 empty.allbad.test"]},
    "empty.allbad.test": {},
    "tempbad.test": {"MX": ["10 missing.tempbad.test", "20 broken.tempbad.test"]},
    "broken.tempbad.test": "SERVFAIL",
    "big.test": {"A": [f"127.0.2.{i}" for i in range(1, 61)]},
}


class DnsServer:
    def __init__(self, directory: Path):
        self.zone = directory / "zone.json"
        self.zone.write_text(json.dumps(ZONE))
        self.stats_file = directory / "stats.json"
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "--listen", "127.0.0.1:0", "--zone", str(self.zone),
             "--stats", str(self.stats_file)], stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().split()
        if line[:1] != ["ready"]:
            self.stop()
            raise RuntimeError(f"dnsserver did not start: {line}")
        self.port = int(line[1].rpartition(":")[2])

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_file.read_text())
        except FileNotFoundError:
            return {"total": 0, "tcp": 0, "queries": {}}

    def count(self, name: str, rdtype: str) -> int:
        return self.stats()["queries"].get(f"{name} {rdtype}", 0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.process.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dns_server = DnsServer(tmp_path_factory.mktemp("dns"))
    yield dns_server
    dns_server.stop()


@pytest.fixture
def resolver(server):
    def make(**options) -> DnsResolver:
        options.setdefault("timeout", 3.0)
        return DnsResolver([("127.0.0.1", server.port)], **options)

    return make


def test_mx_sorted_by_preference_and_shuffled_within_one_preference(server, run, resolver):
    before = server.count("spread.test", "MX")

    async def many():
        dns = resolver()
        return [await dns.mx_hosts("spread.test") for _ in range(600)]

    results = run(many())
    assert server.count("spread.test", "MX") - before == 1  # the other 599 came from the cache
    firsts = collections.Counter()
    orders = set()
    for hosts in results:
        assert [h.preference for h in hosts] == [5, 10, 10, 10, 20]
        assert hosts[0] == MxHost(5, "first.spread.test") and hosts[4] == MxHost(20, "last.spread.test")
        middle = tuple(h.hostname for h in hosts[1:4])
        assert sorted(middle) == ["b1.spread.test", "b2.spread.test", "b3.spread.test"]
        firsts[middle[0]] += 1
        orders.add(middle)
    # each of 3 hosts first about 200 times of 600 (sd about 11.5); all 6 orders occur
    assert all(140 < n < 260 for n in firsts.values()), firsts
    assert len(orders) == 6


def test_destinations_follow_mx_preference_then_addresses(run, resolver):
    destinations = run(resolver(inet_protocols="ipv4").destinations("order.test", port=2525))
    assert destinations[0] == Destination("mx-a.order.test", "127.0.0.21", 2525, 10)
    assert sorted(destinations[1:]) == [Destination("mx-b.order.test", "127.0.0.22", 2525, 20),
                                        Destination("mx-b.order.test", "127.0.0.23", 2525, 20)]


def test_utf8_domain_is_asked_for_by_its_a_label(server, run, resolver):
    # IDNA 2008 with UTS #46 (non-transitional): "ß" stays a letter of its own, and case folds.
    assert run(resolver(inet_protocols="ipv4").destinations("ORDER.test", port=25))[0].address == "127.0.0.21"
    assert run(resolver(inet_protocols="ipv4").destinations("BÜCHER.test")) == [
        Destination("xn--bcher-kva.test", "127.0.0.33", 25)]
    assert run(resolver(inet_protocols="ipv4").destinations("[faß.test]")) == [
        Destination("xn--fa-hia.test", "127.0.0.34", 25)]
    assert server.count("xn--bcher-kva.test", "MX") >= 1
    with pytest.raises(DnsError) as info:
        run(resolver().destinations("bad\u2028name.test".encode().decode("unicode_escape")))
    assert not info.value.temporary and info.value.dsn == "5.1.2"


def test_domain_without_mx_is_its_own_mail_exchanger(run, resolver):
    assert run(resolver().mx_hosts("implicit.test")) == []
    assert run(resolver().destinations("implicit.test")) == [
        Destination("implicit.test", "127.0.0.30", 25)]
    # a CNAME is followed, and the name asked for stays the host that is shown
    assert run(resolver().destinations("alias.test")) == [Destination("alias.test", "127.0.0.30", 25)]


def test_bracketed_host_skips_the_mx_lookup(server, run, resolver):
    before = server.count("order.test", "MX")
    expected = [Destination("order.test", "127.0.0.29", 26)]
    assert run(resolver(inet_protocols="ipv4").destinations("[order.test]", port=26)) == expected
    assert run(resolver(inet_protocols="ipv4").destinations("order.test", mx=False, port=26)) == expected
    assert server.count("order.test", "MX") == before


def test_address_literals_need_no_lookup(server, run, resolver):
    before = server.stats()["total"]
    dns = resolver()
    assert run(dns.destinations("[192.0.2.1]")) == [Destination("192.0.2.1", "192.0.2.1", 25)]
    assert run(dns.destinations("[IPv6:2001:DB8::1]", port=24)) == [
        Destination("2001:db8::1", "2001:db8::1", 24)]
    assert run(dns.addresses("127.0.0.7")) == ["127.0.0.7"]
    assert server.stats()["total"] == before
    with pytest.raises(DnsError) as info:
        run(resolver(inet_protocols="ipv4").destinations("[IPv6:2001:db8::1]"))
    assert info.value.temporary and "inet_protocols" in info.value.reason


def test_null_mx_bounces_at_once(run, resolver):
    for call in (lambda d: d.mx_hosts("nullmx.test"), lambda d: d.destinations("nullmx.test")):
        with pytest.raises(DnsError) as info:
            run(call(resolver()))
        assert (info.value.temporary, info.value.dsn) == (False, "5.1.10")
        assert "nullmx.test does not accept mail" in info.value.reason


@pytest.mark.parametrize("nexthop", ["nowhere.test", "[nowhere.test]"])
def test_nxdomain_is_permanent(run, resolver, nexthop):
    with pytest.raises(DnsError) as info:
        run(resolver().destinations(nexthop))
    assert (info.value.temporary, info.value.dsn) == (False, "5.1.2")
    assert "name=nowhere.test" in info.value.reason and "NXDOMAIN" in info.value.reason


def test_name_without_addresses_is_permanent(run, resolver):
    with pytest.raises(DnsError) as info:
        run(resolver().destinations("noaddr.test"))
    assert (info.value.temporary, info.value.dsn) == (False, "5.4.4")


@pytest.mark.parametrize("domain", ["broken.test", "refused.test"])
def test_server_failure_is_temporary_and_not_cached(server, run, resolver, domain):
    before = server.count(domain, "MX")

    async def twice():
        dns = resolver()
        errors = []
        for _ in range(2):
            with pytest.raises(DnsError) as info:
                await dns.destinations(domain)
            errors.append(info.value)
        return errors

    for error in run(twice()):
        assert (error.temporary, error.dsn) == (True, "4.4.3")
        assert f"name={domain} type=MX" in error.reason
    assert server.count(domain, "MX") - before >= 2


def test_timeout_is_temporary(run, resolver):
    started = time.monotonic()
    with pytest.raises(DnsError) as info:
        run(resolver(timeout=0.5).destinations("silent.test"))
    assert time.monotonic() - started < 2.5
    assert (info.value.temporary, info.value.dsn) == (True, "4.4.3")
    assert "0.5 s" in info.value.reason


def test_answers_are_cached_for_their_ttl(server, run, resolver):
    async def scenario():
        dns = resolver(inet_protocols="ipv4")
        before = server.count("short.test", "A")
        assert await dns.addresses("short.test") == ["127.0.0.31"]
        assert await dns.addresses("short.test") == ["127.0.0.31"]
        assert server.count("short.test", "A") - before == 1
        await asyncio.sleep(1.2)
        await dns.addresses("short.test")
        assert server.count("short.test", "A") - before == 2

    run(scenario())


def test_cache_max_ttl_caps_long_ttls(server, run, resolver):
    async def scenario():
        dns = resolver(inet_protocols="ipv4", cache_max_ttl=0.5)
        before = server.count("long.test", "A")
        await dns.addresses("long.test")
        await dns.addresses("long.test")
        assert server.count("long.test", "A") - before == 1
        await asyncio.sleep(0.7)
        await dns.addresses("long.test")
        assert server.count("long.test", "A") - before == 2

    run(scenario())


@pytest.mark.parametrize("name, dsn", [("absent.test", "5.1.2"), ("noaddr.test", "5.4.4")])
def test_negative_answers_are_cached_for_the_soa_minimum_capped(server, run, resolver, name, dsn):
    async def lookups(dns, times):
        for _ in range(times):
            with pytest.raises(DnsError) as info:
                await dns.addresses(name)
            assert info.value.dsn == dsn

    async def scenario():
        before = server.count(name, "A")
        await lookups(resolver(inet_protocols="ipv4"), 3)  # zone: negative TTL 300 s
        assert server.count(name, "A") - before == 1
        capped = resolver(inet_protocols="ipv4", cache_max_ttl=0.4)
        await lookups(capped, 2)
        assert server.count(name, "A") - before == 2
        await asyncio.sleep(0.6)
        await lookups(capped, 1)
        assert server.count(name, "A") - before == 3

    run(scenario())


def test_inet_protocols_and_address_preference(run, resolver):
    v4, v6 = {"127.0.0.41", "127.0.0.42"}, {"::41", "::42"}
    assert set(run(resolver(inet_protocols="ipv4").addresses("dual.test"))) == v4
    assert set(run(resolver(inet_protocols="ipv6").addresses("dual.test"))) == v6
    prefer6 = run(resolver(smtp_address_preference="ipv6").addresses("dual.test"))
    assert set(prefer6[:2]) == v6 and set(prefer6[2:]) == v4
    prefer4 = run(resolver(smtp_address_preference="ipv4").addresses("dual.test"))
    assert set(prefer4[:2]) == v4 and set(prefer4[2:]) == v6

    async def firsts():
        dns = resolver()
        return collections.Counter([(await dns.addresses("dual.test"))[0] for _ in range(200)])

    assert set(run(firsts())) == v4 | v6  # "any": every address comes first now and then


def test_address_preference_holds_within_one_mx_preference_only(run, resolver):
    destinations = run(resolver(smtp_address_preference="ipv6").destinations("dualmx.test"))
    addresses = [d.address for d in destinations]
    # preference 10: dual.test's IPv6 first, then the IPv4 of both hosts; preference 20 last
    assert set(addresses[:2]) == {"::41", "::42"}
    assert set(addresses[2:5]) == {"127.0.0.41", "127.0.0.42", "127.0.0.43"}
    assert destinations[5] == Destination("backup.dualmx.test", "::44", 25, 20)


def test_one_family_failing_leaves_the_other(run, resolver):
    assert run(resolver().addresses("halfbroken.test")) == ["127.0.0.45"]


def test_mx_hosts_without_addresses(run, resolver):
    assert run(resolver().destinations("somebad.test")) == [
        Destination("good.somebad.test", "127.0.0.51", 25, 20)]
    with pytest.raises(DnsError) as info:
        run(resolver().destinations("allbad.test"))
    assert (info.value.temporary, info.value.dsn) == (False, "5.4.4")
    assert "missing.allbad.test" in info.value.reason
    with pytest.raises(DnsError) as info:
        run(resolver().destinations("tempbad.test"))
    assert (info.value.temporary, info.value.dsn) == (True, "4.4.3")


def test_concurrent_lookups_share_one_query(server, run, resolver):
    before = (server.count("slow.test", "MX"), server.count("mx.slow.test", "A"))

    async def together():
        dns = resolver(inet_protocols="ipv4")
        return await asyncio.gather(*(dns.destinations("slow.test") for _ in range(50)))

    results = run(together())
    assert all(r == [Destination("mx.slow.test", "127.0.0.50", 25, 10)] for r in results)
    after = (server.count("slow.test", "MX"), server.count("mx.slow.test", "A"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_cancelled_waiter_does_not_cancel_the_shared_query(run, resolver):
    async def scenario():
        dns = resolver(inet_protocols="ipv4", cache_max_ttl=0)
        first = asyncio.ensure_future(dns.mx_hosts("slow.test"))
        second = asyncio.ensure_future(dns.mx_hosts("slow.test"))
        await asyncio.sleep(0.05)
        first.cancel()
        assert await second == [MxHost(10, "mx.slow.test")]
        assert first.cancelled()

    run(scenario())


def test_large_answer_comes_over_tcp(server, run, resolver):
    tcp_before = server.stats()["tcp"]
    addresses = run(resolver(inet_protocols="ipv4").addresses("big.test"))
    assert sorted(addresses) == sorted(f"127.0.2.{i}" for i in range(1, 61))
    assert server.stats()["tcp"] > tcp_before


def test_cache_stays_bounded_and_keeps_fresh_entries(run):
    async def scenario():
        cache = TtlCache(max_entries=100)

        async def fetch(value):
            return value, 60

        for i in range(1000):
            assert await cache.get(i, lambda i=i: fetch(i)) == i
        assert len(cache) <= 100
        assert await cache.get(999, lambda: fetch("refetched")) == 999

    run(scenario())


def test_bad_settings_say_what_is_accepted():
    assert parse_inet_protocols("all") == ("ipv4", "ipv6")
    assert parse_inet_protocols("ipv6, ipv4") == ("ipv4", "ipv6")
    assert parse_inet_protocols("IPv4") == ("ipv4",)
    with pytest.raises(ValueError, match="inet_protocols = ipv5: expected"):
        DnsResolver([("127.0.0.1", 53)], inet_protocols="ipv5")
    with pytest.raises(ValueError, match="smtp_address_preference = both: expected one of"):
        DnsResolver([("127.0.0.1", 53)], smtp_address_preference="both")


def test_server_reloads_its_zone_on_sighup(tmp_path, run):
    zone = tmp_path / "zone.json"
    zone.write_text(json.dumps({"reload.test": {"A": {"ttl": 0, "data": ["127.0.0.60"]}}}))
    process = subprocess.Popen([sys.executable, str(SERVER), "--listen", "127.0.0.1:0", "--zone",
                                str(zone)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline().split()[1].rpartition(":")[2])
        dns = DnsResolver([("127.0.0.1", port)], inet_protocols="ipv4", timeout=3)
        assert run(dns.addresses("reload.test")) == ["127.0.0.60"]
        zone.write_text(json.dumps({"reload.test": {"A": {"ttl": 0, "data": ["127.0.0.61"]}}}))
        os.kill(process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while run(dns.addresses("reload.test")) != ["127.0.0.61"]:
            assert time.monotonic() < deadline, "the zone was not reloaded"
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def test_failure_shared_by_waiters_and_not_kept(run):
    async def scenario():
        cache = TtlCache()
        calls = []

        async def failing():
            calls.append(1)
            await asyncio.sleep(0.05)
            raise DnsError(True, "4.4.3", "try again")

        outcomes = await asyncio.gather(*(cache.get("k", failing) for _ in range(5)),
                                        return_exceptions=True)
        assert all(isinstance(o, DnsError) for o in outcomes) and len(calls) == 1
        with pytest.raises(DnsError):
            await cache.get("k", failing)
        assert len(calls) == 2

    run(scenario())
