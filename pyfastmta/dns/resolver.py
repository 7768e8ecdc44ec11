"""Next-hop lookups for the SMTP and LMTP clients: MX, then addresses, as Postfix's smtp(8) does.

- A domain's mail exchangers are tried in preference order; hosts of equal preference in random
  order, so the load spreads over them. A domain without MX records is its own mail exchanger
  (RFC 5321 section 5.1, the implicit MX). A domain whose only MX is "0 ." (RFC 7505) takes no
  mail at all: that bounces at once.
- A nexthop written `[host]` skips the MX lookup; `[192.0.2.1]` and `[IPv6:2001:db8::1]` are
  addresses already.
- Answers are cached per (name, type) for their TTL, negative answers for the SOA's negative TTL,
  both capped by cache_max_ttl; a lookup that is already out is shared by everyone who asks for
  the same name meanwhile. Failures (SERVFAIL, timeouts) are never cached: the next delivery
  attempt asks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from .cache import TtlCache

INET_PROTOCOLS = ("ipv4", "ipv6")
ADDRESS_PREFERENCES = ("any", "ipv4", "ipv6")
_FAMILY_TYPE = {"ipv4": dns.rdatatype.A, "ipv6": dns.rdatatype.AAAA}


class DnsError(Exception):
    """A lookup that gave no usable answer.

    temporary: try again later (the message is deferred); otherwise the recipients bounce.
    dsn: the RFC 3463 status code for the recipients' delivery status.
    reason: the text for the log line and the DSN, without the status code.
    """

    def __init__(self, temporary: bool, dsn: str, reason: str):
        super().__init__(reason)
        self.temporary = temporary
        self.dsn = dsn
        self.reason = reason

    def __repr__(self) -> str:
        return f"DnsError(temporary={self.temporary}, dsn={self.dsn!r}, reason={self.reason!r})"


class MxHost(NamedTuple):
    preference: int
    hostname: str


class Destination(NamedTuple):
    """One address to connect to; hostname is what the log shows as relay=hostname[address].
    preference is the MX preference of the host (0 without an MX lookup)."""
    hostname: str
    address: str
    port: int
    preference: int = 0


class Negative(NamedTuple):
    """A "no such name" (nxdomain=True) or "no records of this type" answer."""
    nxdomain: bool


def parse_inet_protocols(value: str) -> tuple[str, ...]:
    """inet_protocols as Postfix writes it ("all", "ipv4", "ipv4, ipv6" ...) -> the families."""
    words = value.replace(",", " ").lower().split()
    if words == ["all"]:
        return INET_PROTOCOLS
    bad = [w for w in words if w not in INET_PROTOCOLS]
    if bad or not words:
        raise ValueError(f"inet_protocols = {value}: expected all, ipv4, ipv6 or \"ipv4, ipv6\"")
    return tuple(f for f in INET_PROTOCOLS if f in words)


def address_literal(text: str) -> str | None:
    """The address in `192.0.2.1`, `[192.0.2.1]`, `[IPv6:2001:db8::1]` or `2001:db8::1`, else None."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def ascii_domain(name: str) -> str:
    """A UTF-8 domain in its A-label form (IDNA 2008 with UTS #46 mapping, as Postfix converts
    it); an ASCII name as it is. Raises DnsError for a name IDNA refuses."""
    if name.isascii():
        return name
    try:
        return dns.name.from_text(name).to_text(omit_final_dot=True)
    except (dns.exception.DNSException, UnicodeError) as e:
        raise DnsError(False, "5.1.2", f"Malformed host or domain name {name!r}: {e}") from None


def _family_of(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


def _shuffled_by_preference(hosts: list[MxHost]) -> list[MxHost]:
    hosts = list(hosts)
    random.shuffle(hosts)
    hosts.sort(key=lambda h: h.preference)  # stable: equal preferences keep the random order
    return hosts


def configured_nameservers(config) -> list[tuple[str, int]] | None:
    """dns_nameservers as [(address, port)]; None (the system's resolv.conf) when it is empty."""
    servers = []
    for entry in config.get("dns_nameservers"):
        host, port = entry, 53
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif entry.count(":") == 1:
            host, _, text = entry.partition(":")
            port = int(text)
        servers.append((host, port))
    return servers or None


class DnsResolver:
    """MX and address lookups through dnspython's asyncio resolver, with a shared TTL cache.

    nameservers: [(address, port), ...]; None reads the system's /etc/resolv.conf.
    timeout: seconds one lookup may take over all its retries before it fails temporarily.
    inet_protocols, smtp_address_preference: as Postfix's parameters (the LMTP client passes its
    lmtp_address_preference).
    """

    def __init__(self, nameservers: list[tuple[str, int]] | None = None, *, timeout: float = 10.0,
                 inet_protocols: str = "all", smtp_address_preference: str = "any",
                 cache_max_ttl: float = 3600.0):
        self.families = parse_inet_protocols(inet_protocols)
        if smtp_address_preference not in ADDRESS_PREFERENCES:
            raise ValueError(f"smtp_address_preference = {smtp_address_preference}: "
                             f"expected one of {', '.join(ADDRESS_PREFERENCES)}")
        self.smtp_address_preference = smtp_address_preference
        self.timeout = timeout
        self.cache_max_ttl = cache_max_ttl
        self._cache: TtlCache[tuple[str, int], tuple | Negative] = TtlCache()
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._config_problem: str | None = None
        if nameservers is None:
            try:
                self._resolver.read_resolv_conf("/etc/resolv.conf")
            except dns.resolver.NoResolverConfiguration:
                self._config_problem = ("no name server is configured: /etc/resolv.conf is missing "
                                        "or lists no nameserver; add a nameserver line")
        else:
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)
                                          for address, port in nameservers]
        self._resolver.lifetime = timeout

    async def mx_hosts(self, domain: str) -> list[MxHost]:
        """The domain's mail exchangers, by preference, equal preferences in random order.

        [] when the domain exists without MX records (the caller falls back to its addresses).
        """
        answer = await self.records(domain, dns.rdatatype.MX)
        if isinstance(answer, Negative):
            if answer.nxdomain:
                raise DnsError(False, "5.1.2", f"Host or domain name not found: name={domain} "
                                               f"type=MX: no such domain (NXDOMAIN)")
            return []
        hosts = [MxHost(preference, exchange) for preference, exchange in answer if exchange]
        if not hosts:  # every record is "." (RFC 7505 allows exactly one, "0 .")
            raise DnsError(False, "5.1.10", f"Domain {domain} does not accept mail (null MX)")
        return _shuffled_by_preference(hosts)

    async def addresses(self, hostname: str) -> list[str]:
        """The host's IPv4/IPv6 addresses allowed by inet_protocols, preferred family first."""
        literal = address_literal(hostname)
        if literal is not None:
            if _family_of(literal) not in self.families:
                raise DnsError(True, "4.4.4", f"Address {literal} cannot be used: its protocol is "
                                              f"not enabled in inet_protocols")
            return [literal]
        lookups = [self.records(hostname, _FAMILY_TYPE[f]) for f in self.families]
        outcomes = await asyncio.gather(*lookups, return_exceptions=True)
        found: list[str] = []
        errors: list[DnsError] = []
        nxdomain = False
        for outcome in outcomes:
            if isinstance(outcome, DnsError):
                errors.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            elif isinstance(outcome, Negative):
                nxdomain = nxdomain or outcome.nxdomain
            else:
                found.extend(outcome)
        if found:
            return self._ordered(found)
        if errors:  # a family failed temporarily and the other one had nothing
            raise errors[0]
        types = "/".join(dns.rdatatype.to_text(_FAMILY_TYPE[f]) for f in self.families)
        if nxdomain:
            raise DnsError(False, "5.1.2", f"Host or domain name not found: name={hostname} "
                                           f"type={types}: no such domain (NXDOMAIN)")
        raise DnsError(False, "5.4.4", f"Host {hostname} has no address: name={hostname} "
                                       f"type={types}: the name exists but has no record of this type")

    async def host_names(self, address: str) -> list[str]:
        """The names the address's PTR records give ([] when there are none)."""
        answer = await self.records(dns.reversename.from_address(address).to_text(), dns.rdatatype.PTR)
        return [] if isinstance(answer, Negative) else list(answer)

    async def destinations(self, domain: str, *, mx: bool = True, port: int = 25) -> list[Destination]:
        """The addresses to try for a nexthop, in order; `[host]` and mx=False skip the MX lookup."""
        if domain.startswith("[") and domain.endswith("]"):
            domain, mx = domain[1:-1], False
            if domain[:5].lower() == "ipv6:":
                domain = domain[5:]
        if address_literal(domain) is not None:
            return [Destination(a, a, port) for a in await self.addresses(domain)]
        domain = ascii_domain(domain)
        if not mx:
            return [Destination(domain, a, port) for a in await self.addresses(domain)]
        hosts = await self.mx_hosts(domain)
        if not hosts:
            return [Destination(domain, a, port) for a in await self.addresses(domain)]
        outcomes = await asyncio.gather(*(self.addresses(h.hostname) for h in hosts),
                                        return_exceptions=True)
        result: list[Destination] = []
        seen: set[str] = set()
        errors: list[DnsError] = []
        start = 0
        for i, (host, outcome) in enumerate(zip(hosts, outcomes)):
            if isinstance(outcome, DnsError):
                errors.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                result.extend(Destination(host.hostname, a, port, host.preference)
                              for a in outcome if a not in seen)
                seen.update(outcome)
            last_of_group = i + 1 == len(hosts) or hosts[i + 1].preference != host.preference
            if last_of_group:
                # The family preference holds among equal MX preferences only (stable sort keeps
                # the random host order inside each family).
                if self.smtp_address_preference != "any":
                    first = self.smtp_address_preference
                    result[start:] = sorted(result[start:], key=lambda d: _family_of(d.address) != first)
                start = len(result)
        if result:
            return result
        names = ", ".join(h.hostname for h in hosts)
        temporary = [e for e in errors if e.temporary]
        if temporary:
            raise DnsError(True, "4.4.3", f"No address found for the mail exchangers of {domain} "
                                          f"({names}) for now: {temporary[0].reason}")
        raise DnsError(False, "5.4.4", f"No address found for any mail exchanger of {domain} "
                                       f"({names}): {errors[0].reason}")

    def _ordered(self, addresses: list[str]) -> list[str]:
        random.shuffle(addresses)  # spreads load over a host's addresses; cached lists stay intact
        if self.smtp_address_preference != "any":
            first = self.smtp_address_preference
            addresses.sort(key=lambda a: _family_of(a) != first)
        return addresses

    async def records(self, name: str, rdtype: int) -> tuple | Negative:
        """Records of one type as a tuple, or a Negative: MX as (preference, hostname), A and
        AAAA as addresses, PTR, NS and CNAME as names, TXT as the record's strings joined."""
        qname = self._qname(name)
        return await self._cache.get((name.lower().rstrip("."), rdtype), lambda: self._query(qname, rdtype))

    def cached_records(self, name: str, rdtype: int) -> tuple | Negative | None:
        """What records() would answer from the cache, without waiting; None when it would ask."""
        return self._cache.peek((name.lower().rstrip("."), rdtype))

    @staticmethod
    def _qname(name: str) -> dns.name.Name:
        try:
            return dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as e:
            raise DnsError(False, "5.1.2", f"Malformed host or domain name {name!r}: {e}") from None

    async def _query(self, qname: dns.name.Name, rdtype: int) -> tuple[tuple | Negative, float]:
        name = qname.to_text(omit_final_dot=True)
        type_text = dns.rdatatype.to_text(rdtype)
        if self._config_problem:
            raise DnsError(True, "4.3.5", f"Cannot look up name={name} type={type_text}: "
                                          f"{self._config_problem}")
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN as e:
            return Negative(True), self._negative_ttl(e.response(qname), qname)
        except dns.resolver.LifetimeTimeout:
            raise DnsError(True, "4.4.3", f"Host or domain name lookup failed, will try again: "
                                          f"name={name} type={type_text}: no answer from the name "
                                          f"server within {self.timeout:g} s") from None
        except dns.resolver.NoNameservers:
            raise DnsError(True, "4.4.3", f"Host or domain name lookup failed, will try again: "
                                          f"name={name} type={type_text}: name server failure "
                                          f"(SERVFAIL or refused)") from None
        except dns.exception.DNSException as e:
            raise DnsError(True, "4.4.3", f"Host or domain name lookup failed, will try again: "
                                          f"name={name} type={type_text}: {e}") from None
        if answer.rrset is None:
            return Negative(False), self._negative_ttl(answer.response, qname)
        if rdtype == dns.rdatatype.MX:
            records = tuple((r.preference, "" if r.exchange == dns.name.root
                             else r.exchange.to_text(omit_final_dot=True)) for r in answer.rrset)
        elif rdtype in (dns.rdatatype.PTR, dns.rdatatype.NS, dns.rdatatype.CNAME):
            records = tuple(r.target.to_text(omit_final_dot=True) for r in answer.rrset)
        elif rdtype == dns.rdatatype.TXT:
            records = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset)
        else:
            records = tuple(r.address for r in answer.rrset)
        # the CNAME chain's TTLs count too: the answer is only as fresh as its shortest link
        return records, min(answer.chaining_result.minimum_ttl, self.cache_max_ttl)

    def _negative_ttl(self, response, qname: dns.name.Name) -> float:
        """RFC 2308: the smaller of the SOA record's TTL and its MINIMUM; 0 (no caching) without SOA."""
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and qname.is_subdomain(rrset.name):
                return min(rrset.ttl, rrset[0].minimum, self.cache_max_ttl)
        return 0.0
