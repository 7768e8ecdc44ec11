"""What restriction checks ask of the world: DNS record sets and policy servers' answers.

A restriction needs an answer that is not at hand: it raises Pending with every question it
could not answer, the check stops there (restrictions.py), the session asks them (all at once),
puts the answers in the check's Answers and resumes the check, which runs that restriction
again. An answer the worker's
DNS cache already holds is at hand at once, so a DNS list that every client is checked against
costs a dictionary lookup, not a query, for as long as its answers' TTL allows.

Questions:
  ("dns", name, rdtype)               a record set, through the worker's DnsResolver
  ("policy", service spec, request)   a policy server's action for one request (the request's
                                      text is part of the question: a different request is a
                                      different question)
"""

from __future__ import annotations

import asyncio
import ipaddress

import dns.rdatatype

from pyfastmta.dns import DnsError, Negative

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
MX = dns.rdatatype.MX
NS = dns.rdatatype.NS
TXT = dns.rdatatype.TXT


class Pending(Exception):
    """Raised by a check that needs answers it does not have."""

    def __init__(self, questions: list[tuple]) -> None:
        super().__init__(questions)
        self.questions = questions


class Answers:
    """The answers one check has gathered, on top of the worker's DNS cache. Failures are kept
    here too (the cache keeps none), so that the check sees the failure when it runs again."""

    __slots__ = ("resolver", "known", "requests")

    def __init__(self, resolver) -> None:
        self.resolver = resolver
        self.known: dict[tuple, object] = {}
        self.requests: dict[str, bytes] = {}

    def records(self, name: str, rdtype: int) -> tuple | Negative:
        """The record set, or a Negative; raises DnsError (a failed lookup) or Pending."""
        answer = self.record_sets([(name, rdtype)])[0]
        if isinstance(answer, DnsError):
            raise answer
        return answer

    def record_sets(self, wanted: list[tuple[str, int]]) -> list[tuple | Negative | DnsError]:
        """Several record sets at once: a failure comes back as its DnsError; everything that is
        not at hand is asked for in one Pending."""
        found: list = []
        missing: list[tuple] = []
        for name, rdtype in wanted:
            question = ("dns", name.lower().rstrip("."), rdtype)
            answer = self.known.get(question)
            if answer is None:
                answer = self.resolver.cached_records(name, rdtype)
            if answer is None:
                missing.append(question)
            found.append(answer)
        if missing:
            raise Pending(missing)
        return found

    def policy_request(self, spec: str, build) -> bytes:
        """The request text for a policy service, built once per check: the restriction runs
        again with the same facts once the answer is in."""
        text = self.requests.get(spec)
        if text is None:
            text = self.requests[spec] = build()
        return text

    def policy(self, spec: str, request: bytes) -> str:
        answer = self.known.get(("policy", spec, request))
        if answer is None:
            raise Pending([("policy", spec, request)])
        return answer

    async def fetch(self, questions: list[tuple], policy_client) -> None:
        """Asks every question at once. policy_client(spec) gives the worker's client of a
        policy service."""
        async def answer(question: tuple) -> None:
            if question[0] == "dns":
                try:
                    self.known[question] = await self.resolver.records(question[1], question[2])
                except DnsError as error:
                    self.known[question] = error
            else:
                self.known[question] = await policy_client(question[1]).query_text(question[2])

        if len(questions) == 1:
            await answer(questions[0])
        else:
            await asyncio.gather(*(answer(question) for question in dict.fromkeys(questions)))


# ---- DNS lists -------------------------------------------------------------------------------

class ReplyFilter:
    """A DNS list's `=pattern`: which A records count as listed. Each of the four octets is a
    number or a bracketed list of numbers and ranges: 127.0.0.2, 127.0.0.[2..11],
    127.0.[0..1].[2;4;9..11]."""

    __slots__ = ("octets",)

    def __init__(self, text: str) -> None:
        parts: list[str] = []
        position = 0
        while position <= len(text):
            if text.startswith("[", position):
                end = text.find("]", position)
                if end < 0:
                    raise ValueError(f'DNS list reply filter "{text}": missing "]"')
                end += 1
            else:
                end = text.find(".", position)
                end = len(text) if end < 0 else end
            parts.append(text[position:end])
            if end < len(text) and text[end] != ".":
                raise ValueError(f'DNS list reply filter "{text}": expected "." after "{text[position:end]}"')
            position = end + 1
        if len(parts) != 4:
            raise ValueError(f'DNS list reply filter "{text}": expected four octets')
        self.octets = [self._octet(text, part) for part in parts]

    @staticmethod
    def _octet(text: str, part: str) -> frozenset[int]:
        if part.startswith("[") and part.endswith("]"):
            items = part[1:-1].split(";")
        else:
            items = [part]
        values: set[int] = set()
        for item in items:
            low, dots, high = item.partition("..")
            try:
                first, last = int(low), int(high if dots else low)
            except ValueError:
                raise ValueError(f'DNS list reply filter "{text}": bad octet "{part}"') from None
            if not (0 <= first <= last <= 255) or not low.isdigit() or (dots and not high.isdigit()):
                raise ValueError(f'DNS list reply filter "{text}": bad octet "{part}"')
            values.update(range(first, last + 1))
        return frozenset(values)

    def matches(self, address: str) -> bool:
        parts = address.split(".")
        return len(parts) == 4 and all(int(value) in allowed for value, allowed in zip(parts, self.octets))


def split_dnsxl(argument: str) -> tuple[str, ReplyFilter | None]:
    """`domain` or `domain=filter` -> (domain, filter). Raises ValueError."""
    domain, equals, pattern = argument.partition("=")
    if not domain:
        raise ValueError(f'"{argument}": no DNS list domain')
    return domain, ReplyFilter(pattern) if equals else None


def reversed_address_name(address: str, domain: str) -> str:
    """The DNS list name of a client address: octets (IPv4) or nibbles (IPv6), reversed."""
    if ":" not in address:
        return ".".join(reversed(address.split("."))) + "." + domain
    return ".".join(reversed(ipaddress.ip_address(address).exploded.replace(":", ""))) + "." + domain


def domain_list_name(what: str, domain: str) -> str | None:
    """The right-hand-side list name of a domain (of an address or a host name), or None when
    it has none to ask about: an address literal, an empty name, a name ending in a number."""
    name = what[what.rfind("@") + 1:]
    if not name or name.startswith("["):
        return None
    if name.rpartition(".")[2].isdigit():
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return f"{name}.{domain}"


def listed(answers: Answers, query: str, reply_filter: ReplyFilter | None):
    """(None, None) when not listed; (addresses, text) when listed; DnsError when the list
    cannot be asked (Postfix then gives the client the benefit of the doubt)."""
    records = answers.records(query, A)
    if isinstance(records, Negative):
        return None, None
    if reply_filter is not None and not any(reply_filter.matches(address) for address in records):
        return None, None
    txt = answers.record_sets([(query, TXT)])[0]
    text = ""
    if not isinstance(txt, (Negative, DnsError)):
        text = " / ".join(txt)[:500]
    return records, text
