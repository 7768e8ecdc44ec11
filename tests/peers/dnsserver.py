"""A small authoritative DNS server for tests, over UDP and TCP on one address and port.

    python tests/peers/dnsserver.py --listen 127.0.0.1:PORT --zone ZONE.json [--stats FILE]

PORT 0 picks a free port. Once both sockets listen, the server prints one line on stdout,
`ready HOST:PORT`, and flushes it. SIGTERM or SIGINT stops it; SIGHUP re-reads the zone file.

Zone file (JSON): an object whose keys are domain names (with or without the final dot, any
case) and two optional settings:

    {
      "$ttl": 300,                 TTL of record sets written without one (default 300)
      "$negative_ttl": 60,         TTL and MINIMUM of the SOA sent with NXDOMAIN and no-data
                                   answers, so resolvers cache negative answers that long (default 60)
      "example.test": {
        "MX": {"ttl": 120, "data": ["10 mx1.example.test.", "20 mx2.example.test."]},
        "A": ["127.0.0.10"],                       a list alone: the data, with $ttl
        "AAAA": {"data": ["::1"], "delay": 0.3}    "delay": seconds to wait before answering
      },
      "mx1.example.test": {"A": ["127.0.0.11"], "AAAA": "SERVFAIL"},
      "alias.example.test": {"CNAME": ["mx1.example.test."]},
      "broken.test": "SERVFAIL",
      "nullmx.test": {"MX": ["0 ."]},
      "silent.test": "TIMEOUT",
      "empty.test": {}
    }

Record data is in zone-file presentation form, one string per record (names in the data are
relative to the root, so write them with or without the final dot). A record type may be given a
behaviour string instead of data, and a name may be given one for every type:

    "SERVFAIL"   answer SERVFAIL
    "REFUSED"    answer REFUSED
    "NXDOMAIN"   answer NXDOMAIN (any name absent from the zone gets this too)
    "NODATA"     answer NOERROR with no records (a type absent from a present name gets this too)
    "TIMEOUT"    never answer

A CNAME at a name answers every type with the CNAME and, when its target is in the zone, the
target's records of the asked type. A UDP answer larger than the client's EDNS payload size (512
bytes without EDNS) is sent truncated, so the client repeats the query over TCP.

--stats FILE: after every query (before its answer is sent), FILE is replaced atomically by a JSON
object {"total": N, "queries": {"name TYPE": count, ...}, "tcp": M} where names are lower case
without the final dot. A client that has its answer can read the file and find its query counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

BEHAVIOURS = {"SERVFAIL", "REFUSED", "NXDOMAIN", "NODATA", "TIMEOUT"}
MAX_CNAME_CHAIN = 8


class ZoneError(Exception):
    pass


class RecordSet:
    __slots__ = ("ttl", "rdatas", "delay", "behaviour")

    def __init__(self, ttl: int, rdatas: list, delay: float = 0.0, behaviour: str | None = None):
        self.ttl = ttl
        self.rdatas = rdatas
        self.delay = delay
        self.behaviour = behaviour


class Zone:
    """Names (dns.name.Name) mapped to a behaviour string or to {rdatatype: RecordSet}."""

    def __init__(self, path: str):
        self.path = path
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ZoneError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ZoneError(f"{path}: the zone must be a JSON object of names")
        self.ttl = int(data.pop("$ttl", 300))
        self.negative_ttl = int(data.pop("$negative_ttl", 60))
        self.names: dict[dns.name.Name, str | dict[int, RecordSet]] = {}
        for key, value in data.items():
            name = dns.name.from_text(key)
            if isinstance(value, str):
                self.names[name] = self._behaviour(key, value)
                continue
            if not isinstance(value, dict):
                raise ZoneError(f"{path}: {key}: expected a behaviour string or an object of types")
            self.names[name] = {dns.rdatatype.from_text(t): self._record_set(key, t, v)
                                for t, v in value.items()}

    def _behaviour(self, where: str, value: str) -> str:
        if value.upper() not in BEHAVIOURS:
            raise ZoneError(f"{self.path}: {where}: unknown behaviour {value!r}; "
                            f"use one of {', '.join(sorted(BEHAVIOURS))}")
        return value.upper()

    def _record_set(self, name: str, rdtype: str, value) -> RecordSet:
        if isinstance(value, str):
            return RecordSet(self.ttl, [], behaviour=self._behaviour(f"{name} {rdtype}", value))
        if isinstance(value, list):
            value = {"data": value}
        try:
            rdatas = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text,
                                          origin=dns.name.root, relativize=False)
                      for text in value.get("data", [])]
        except dns.exception.DNSException as e:
            raise ZoneError(f"{self.path}: {name} {rdtype}: bad record data: {e}") from None
        return RecordSet(int(value.get("ttl", self.ttl)), rdatas, float(value.get("delay", 0)),
                         self._behaviour(f"{name} {rdtype}", value["behaviour"])
                         if "behaviour" in value else None)

    def soa(self, qname: dns.name.Name) -> dns.rrset.RRset:
        # Owned by the query's top-level domain: an ancestor of the name, as resolvers require
        # before they take the SOA's MINIMUM as the negative TTL.
        owner = dns.name.Name(qname.labels[-2:]) if len(qname.labels) > 1 else dns.name.root
        return dns.rrset.from_text(owner, self.negative_ttl, "IN", "SOA",
                                   f"ns.{owner} hostmaster.{owner} 1 3600 600 86400 "
                                   f"{self.negative_ttl}")


class Server:
    def __init__(self, zone_path: str, stats_path: str | None):
        self.zone_path = zone_path
        self.zone = Zone(zone_path)
        self.stats_path = stats_path
        self.counts: dict[str, int] = {}
        self.total = 0
        self.tcp = 0

    def reload(self) -> None:
        try:
            self.zone = Zone(self.zone_path)
        except (OSError, ZoneError, dns.exception.DNSException) as e:
            print(f"dnsserver: zone not reloaded, the old one stays: {e}", file=sys.stderr, flush=True)

    def count(self, query: dns.message.Message, tcp: bool) -> None:
        self.total += 1
        self.tcp += tcp
        for q in query.question:
            key = f"{q.name.to_text(omit_final_dot=True).lower() or '.'} {dns.rdatatype.to_text(q.rdtype)}"
            self.counts[key] = self.counts.get(key, 0) + 1
        if self.stats_path:
            temporary = self.stats_path + ".tmp"
            with open(temporary, "w") as f:
                json.dump({"total": self.total, "tcp": self.tcp, "queries": self.counts}, f)
            os.replace(temporary, self.stats_path)

    async def answer(self, wire: bytes, tcp: bool) -> dns.message.Message | None:
        """The response to one query, or None when it must go unanswered."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        self.count(query, tcp)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        for _ in range(MAX_CNAME_CHAIN):
            entry = self.zone.names.get(name)
            if entry is None:
                if name != question.name:
                    return response  # a CNAME out of the zone: the client follows it itself
                behaviour, sets = "NXDOMAIN", {}
            elif isinstance(entry, str):
                behaviour, sets = entry, {}
            else:
                behaviour, sets = None, entry
            chosen = sets.get(rdtype) or sets.get(dns.rdatatype.CNAME)
            if chosen is not None:
                if chosen.delay:
                    await asyncio.sleep(chosen.delay)
                behaviour = chosen.behaviour
                if behaviour is None and not chosen.rdatas:
                    behaviour = "NODATA"
            elif behaviour is None:
                behaviour = "NODATA"
            if behaviour == "TIMEOUT":
                return None
            if behaviour in ("SERVFAIL", "REFUSED"):
                response.set_rcode(dns.rcode.from_text(behaviour))
                return response
            if behaviour in ("NXDOMAIN", "NODATA"):
                if behaviour == "NXDOMAIN" and name == question.name:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self.zone.soa(question.name))
                return response
            rrset = dns.rrset.from_rdata_list(name, chosen.ttl, chosen.rdatas)
            response.answer.append(rrset)
            if rrset.rdtype != dns.rdatatype.CNAME or rdtype == dns.rdatatype.CNAME:
                return response
            name = rrset[0].target
        return response


def udp_limit(wire: bytes) -> int:
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return 512
    return max(512, query.payload) if query.edns >= 0 else 512


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: Server):
        self.server = server
        self.transport = None
        self.pending: set[asyncio.Task] = set()  # answers being prepared, kept from the collector

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        task = asyncio.ensure_future(self.reply(data, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def reply(self, data: bytes, addr) -> None:
        response = await self.server.answer(data, tcp=False)
        if response is None:
            return
        try:
            wire = response.to_wire(max_size=udp_limit(data))
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        self.transport.sendto(wire, addr)


async def serve_tcp(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while True:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
            response = await server.answer(await reader.readexactly(length), tcp=True)
            if response is None:
                continue
            wire = response.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"dnsserver: --listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5353")
    return host.strip("[]"), int(port)


async def main() -> None:
    parser = argparse.ArgumentParser(description="Authoritative DNS server for tests (UDP and TCP).")
    parser.add_argument("--listen", required=True, help="HOST:PORT; port 0 picks a free one")
    parser.add_argument("--zone", required=True, help="zone file in JSON (see the module docstring)")
    parser.add_argument("--stats", help="file rewritten with query counts after every query")
    args = parser.parse_args()
    host, port = parse_listen(args.listen)
    try:
        server = Server(args.zone, args.stats)
    except (OSError, ZoneError, dns.exception.DNSException) as e:
        raise SystemExit(f"dnsserver: {e}")
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # With port 0 the UDP socket picks the port and TCP must get the same one; another program
    # may hold it for TCP, so try a few times.
    for _ in range(20):
        udp, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(server),
                                                     local_addr=(host, port), family=family)
        bound = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(lambda r, w: serve_tcp(server, r, w), host, bound,
                                             family=family, reuse_address=True)
            break
        except OSError:
            udp.close()
            if port:
                raise
    else:
        raise SystemExit(f"dnsserver: no port free for both UDP and TCP on {host}")
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"ready {shown}:{bound}", flush=True)
    await stop.wait()
    tcp.close()
    udp.close()


if __name__ == "__main__":
    asyncio.run(main())
