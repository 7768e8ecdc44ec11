"""The smtp/lmtp delivery agent end to end: the test DNS server gives MX records that point at
Postfix's smtp-sink on 127.0.0.x; requests come in the queue manager's form."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from peers.loopback import SMTP_SINK, free_port, start_smtp_sink, wait_until
from pyfastmta.dns import DnsResolver
from pyfastmta.qmgr.delivery import DeliveryRequest
from pyfastmta.queue.envelope import Envelope, Recipient
from pyfastmta.smtp.agent import ConnectionCache, SmtpDeliveryAgent
from pyfastmta.smtp.client import ClientTimeouts

DNS_SERVER = Path(__file__).resolve().parent.parent / "peers" / "dnsserver.py"
SINK_ADDRESS = "127.0.0.61"
DOWN_ADDRESS = "127.0.0.62"  # nothing listens here
OWN_ADDRESS = "127.0.0.64"  # the agent's "own" address in the mail-loop tests; nothing listens
PORT25_ADDRESS = "127.0.0.65"  # an smtp-sink on port 25 that calls itself LOOP_NAME
LOOP_NAME = "mx.loop.test"


@pytest.fixture(scope="module")
def world():
    """A DNS server, an smtp-sink, and a port shared by every MX host of the zone."""
    directory = Path(tempfile.mkdtemp(prefix="pyfastmta-agent-"))
    directory.chmod(0o755)
    port = free_port(SINK_ADDRESS)
    zone = {
        "relay.test": {"MX": ["10 mx.relay.test"]},
        "mx.relay.test": {"A": [SINK_ADDRESS]},
        "backup.test": {"MX": ["10 down.backup.test", "20 up.backup.test"]},
        "down.backup.test": {"A": [DOWN_ADDRESS]},
        "up.backup.test": {"A": [SINK_ADDRESS]},
        "nullmx.test": {"MX": ["0 ."]},
        "loop.test": {"MX": ["10 me.loop.test", "20 backup.loop.test"]},
        "me.loop.test": {"A": [OWN_ADDRESS]},
        "backup.loop.test": {"A": [SINK_ADDRESS]},
        "better.test": {"MX": ["5 first.better.test", "10 me.loop.test"]},
        "first.better.test": {"A": [PORT25_ADDRESS]},
        "xn--bcher-kva.test": {"MX": ["10 mx.relay.test"]},
    }
    (directory / "zone.json").write_text(json.dumps(zone))
    dns = subprocess.Popen([sys.executable, str(DNS_SERVER), "--listen", "127.0.0.1:0",
                            "--zone", str(directory / "zone.json")], stdout=subprocess.PIPE, text=True)
    dns_port = int(dns.stdout.readline().split()[1].rpartition(":")[2])
    dump = directory / "dump"
    dump.mkdir()
    dump.chmod(0o777)
    sink = start_smtp_sink(SINK_ADDRESS, port, "-d", f"{dump}/%H%M%S.")
    lmtp_socket = directory / "lmtp.sock"
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    lmtp = subprocess.Popen([SMTP_SINK, *user, "-L", "-d", f"{dump}/%H%M%S.", f"unix:{lmtp_socket}", "50"])
    assert wait_until(lmtp_socket.exists, 10), "smtp-sink did not start in LMTP mode"
    yield {"port": port, "dns_port": dns_port, "dump": dump, "lmtp_socket": str(lmtp_socket),
           "directory": directory}
    for process in (dns, sink, lmtp):
        process.kill()
        process.wait()
    dns.stdout.close()
    shutil.rmtree(directory, ignore_errors=True)


def stored_message(directory: Path, body: str) -> tuple[str, int, int]:
    """A message in the queue's wire form inside a file, as a segment holds it."""
    content = (f"Subject: agent test\r\n\r\n{body}\r\n..dot line\r\n").encode()
    path = directory / f"segment-{time.monotonic_ns()}"
    path.write_bytes(b"record header bytes" + content + b"next record")
    return str(path), len(b"record header bytes"), len(content)


def request(world, nexthop: str, recipients: list[str], body: str = "hello") -> DeliveryRequest:
    envelope = Envelope(queue_id="ABCDEF0123456", sender="sender@example.org",
                        recipients=[Recipient(address) for address in recipients],
                        arrival_time=time.time())
    return DeliveryRequest(queue_id=envelope.queue_id, envelope=envelope,
                           recipients=list(range(len(recipients))), transport="smtp",
                           nexthop=nexthop, content=stored_message(world["directory"], body))


def agent(world, *, lmtp: bool = False, cache: bool = True, **loop_detection) -> SmtpDeliveryAgent:
    dns = DnsResolver([("127.0.0.1", world["dns_port"])], timeout=3.0)
    timeouts = ClientTimeouts.for_lmtp() if lmtp else ClientTimeouts.for_smtp(smtp_connect_timeout=3.0)
    return SmtpDeliveryAgent(dns=dns, helo_name="client.example.org", timeouts=timeouts, lmtp=lmtp,
                             cache=ConnectionCache(reuse_time_limit=300, reuse_count_limit=0) if cache else None,
                             **loop_detection)


def test_mx_delivery_and_connection_reuse(world, run):
    async def scenario():
        smtp = agent(world)
        first = await smtp.deliver(request(world, f"relay.test:{world['port']}", ["a@relay.test", "b@relay.test"]))
        second = await smtp.deliver(request(world, f"relay.test:{world['port']}", ["c@relay.test"]))
        await smtp.cache.close_all()
        return first, second

    first, second = run(scenario())
    relay = f"mx.relay.test[{SINK_ADDRESS}]:{world['port']}"
    assert [(o.index, o.status, o.relay) for o in first] == [(0, "sent", relay), (1, "sent", relay)]
    assert all(o.reason.startswith("250") for o in first)
    assert [(o.status, o.relay) for o in second] == [("sent", relay)]
    assert second[0].conn_use > first[0].conn_use  # the cached connection carried the second one


def test_next_mx_when_the_first_is_down(world, run):
    outcomes = run(agent(world, cache=False).deliver(
        request(world, f"backup.test:{world['port']}", ["x@backup.test"])))
    assert [(o.status, o.relay) for o in outcomes] == [
        ("sent", f"up.backup.test[{SINK_ADDRESS}]:{world['port']}")]


def test_bracketed_nexthop_skips_mx_and_a_down_host_defers(world, run):
    outcomes = run(agent(world, cache=False).deliver(
        request(world, f"[{DOWN_ADDRESS}]:{world['port']}", ["y@elsewhere.test", "z@elsewhere.test"])))
    assert [o.status for o in outcomes] == ["deferred", "deferred"]
    assert all(o.site_failure for o in outcomes)
    assert "Connection refused" in outcomes[0].reason


def test_null_mx_bounces(world, run):
    outcomes = run(agent(world, cache=False).deliver(request(world, "nullmx.test", ["n@nullmx.test"])))
    assert [(o.status, o.dsn) for o in outcomes] == [("bounced", "5.1.10")]


def test_lmtp_over_a_unix_socket(world, run):
    outcomes = run(agent(world, lmtp=True, cache=False).deliver(
        request(world, f"unix:{world['lmtp_socket']}", ["l1@lmtp.test", "l2@lmtp.test"], body="via lmtp")))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        dumps = [p.read_bytes() for p in world["dump"].rglob("*") if p.is_file()]
        if any(b"via lmtp" in d for d in dumps):
            break
        time.sleep(0.05)
    delivered = next(d for d in dumps if b"via lmtp" in d)
    assert b"\n.dot line" in delivered.replace(b"\r\n", b"\n")


def test_utf8_domain_is_looked_up_by_its_a_label(world, run):
    outcomes = run(agent(world, cache=False).deliver(
        request(world, f"bücher.test:{world['port']}", ["leser@example.net"])))
    assert [(o.status, o.relay) for o in outcomes] == [("sent", f"mx.relay.test[{SINK_ADDRESS}]:{world['port']}")]


def test_best_mx_host_is_this_host_bounces_as_a_mail_loop(world, run):
    outcomes = run(agent(world, cache=False, myhostname="relay.example",
                         own_addresses=[OWN_ADDRESS]).deliver(request(world, "loop.test", ["l@loop.test"])))
    assert [(o.status, o.dsn, o.reason, o.relay) for o in outcomes] == [
        ("bounced", "5.4.6", "mail for loop.test loops back to myself", "none")]


def test_loop_detection_is_for_port_25_only(world, run):
    # To another port (a content filter, say) this host's own address is a fine next hop.
    outcomes = run(agent(world, cache=False, myhostname="relay.example", own_addresses=[OWN_ADDRESS]).deliver(
        request(world, f"loop.test:{free_port(OWN_ADDRESS)}", ["l@loop.test"])))
    assert [o.status for o in outcomes] == ["deferred"]
    assert "Connection refused" in outcomes[0].reason


@pytest.fixture(scope="module")
def port25_sink(world):
    """smtp-sink on port 25 (loop detection only applies there) that says it is LOOP_NAME."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("binding port 25 needs root")
    sink = start_smtp_sink(PORT25_ADDRESS, 25, "-h", LOOP_NAME)
    yield
    sink.kill()
    sink.wait()


def test_server_that_answers_ehlo_with_my_name_is_a_mail_loop(world, port25_sink, run):
    logged = []
    looping = agent(world, cache=False, myhostname=LOOP_NAME.upper(), own_addresses=[OWN_ADDRESS],
                    log=lambda program, text: logged.append((program, text)))
    outcomes = run(looping.deliver(request(world, f"[{PORT25_ADDRESS}]", ["l@example.net"])))
    assert [(o.status, o.dsn, o.reason) for o in outcomes] == [
        ("bounced", "5.4.6", f"mail for [{PORT25_ADDRESS}] loops back to myself")]
    peer = f"{PORT25_ADDRESS}[{PORT25_ADDRESS}]:25"
    assert ("smtp", f"warning: host {peer} replied to HELO/EHLO with my own hostname {LOOP_NAME}") in logged
    assert ("smtp", f"warning: host {peer} greeted me with my own hostname {LOOP_NAME}") in logged


def test_mx_hosts_better_than_this_host_are_used(world, port25_sink, run):
    outcomes = run(agent(world, cache=False, myhostname="relay.example", own_addresses=[OWN_ADDRESS]).deliver(
        request(world, "better.test", ["b@better.test"])))
    assert [(o.status, o.relay) for o in outcomes] == [("sent", f"first.better.test[{PORT25_ADDRESS}]:25")]


def test_refused_rset_after_a_delivery_gives_up_the_connection_not_the_mail(world, run):
    """RSET goes out behind the end of data when the connection is to be reused; a server that
    refuses it keeps the message it accepted, and the next delivery opens a new connection."""
    address = "127.0.0.66"
    port = free_port(address)
    sink = start_smtp_sink(address, port, "-f", "RSET")
    try:
        async def scenario():
            smtp = agent(world)
            first = await smtp.deliver(request(world, f"[{address}]:{port}", ["a@example.net"]))
            second = await smtp.deliver(request(world, f"[{address}]:{port}", ["b@example.net"]))
            await smtp.cache.close_all()
            return first, second

        first, second = run(scenario())
        assert [(o.status, o.conn_use) for o in first] == [("sent", 1)]
        assert [(o.status, o.conn_use) for o in second] == [("sent", 1)]
    finally:
        sink.kill()
        sink.wait()
