"""pyfastmta as a relay, end to end: clients send to it, its queue manager resolves MX records at
the test DNS server and delivers to Postfix's smtp-sink; refused mail comes back as a notice."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from peers.loopback import SMTP_SINK, free_port, start_smtp_sink, wait_until

DNS_SERVER = Path(__file__).resolve().parent.parent / "peers" / "dnsserver.py"
SMTP_SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-source"
ACCEPTING = "127.0.0.71"
REFUSING = "127.0.0.72"
DOWN = "127.0.0.74"  # nothing listens here


class Peers:
    """The test DNS server and two smtp-sinks on one port: one accepts, one refuses recipients."""

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="pyfastmta-relay-"))
        self.directory.chmod(0o755)
        self.port = free_port(ACCEPTING)
        zone = {
            "accept.test": {"MX": ["10 mx.accept.test"]},
            "mx.accept.test": {"A": [ACCEPTING]},
            "refuse.test": {"MX": ["10 mx.refuse.test"]},
            "mx.refuse.test": {"A": [REFUSING]},
            "nullmx.test": {"MX": ["0 ."]},
            "down.test": {"MX": ["10 mx.down.test"]},
            "mx.down.test": {"A": [DOWN]},
        }
        (self.directory / "zone.json").write_text(json.dumps(zone))
        self.processes = []
        dns = self._start([sys.executable, str(DNS_SERVER), "--listen", "127.0.0.1:0",
                           "--zone", str(self.directory / "zone.json")], stdout=subprocess.PIPE, text=True)
        self.dns_port = int(dns.stdout.readline().split()[1].rpartition(":")[2])
        self.dump = self.directory / "dump"
        self.dump.mkdir()
        self.dump.chmod(0o777)
        self.sink(ACCEPTING, self.port, "-d", f"{self.dump}/%H%M%S.")
        self.sink(REFUSING, self.port, "-f", "RCPT")

    def _start(self, argv, **options) -> subprocess.Popen:
        process = subprocess.Popen(argv, **options)
        self.processes.append(process)
        return process

    def sink(self, host: str, port: int, *options: str) -> subprocess.Popen:
        """An smtp-sink that lives as long as these peers (or until the test kills it)."""
        process = start_smtp_sink(host, port, *options, backlog=100)
        self.processes.append(process)
        return process

    def delivered(self) -> list[bytes]:
        return [path.read_bytes() for path in self.dump.rglob("*") if path.is_file()]

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
            if process.stdout:
                process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def peers():
    started = Peers()
    yield started
    started.stop()


@pytest.fixture
def relay(make_mta, peers):
    """pyfastmta relaying for its clients, MX lookups at the test DNS server, port of the sinks."""
    return make_mta({
        "default_transport": "smtp",
        "relay_transport": "relay",
        "dns_nameservers": f"127.0.0.1:{peers.dns_port}",
        "smtp_connect_timeout": "5s",
    }, start=False)


def start_relay(mta, peers, extra: dict[str, str] | None = None, table: str | None = None) -> None:
    """Starts the relay with a transport map: by default every domain goes to its MX hosts, but
    on the sinks' port."""
    if table is None:
        table = f"accept.test smtp:accept.test:{peers.port}\nrefuse.test smtp:refuse.test:{peers.port}\n"
    (mta.dir / "transport").write_text(table)
    table = mta.dir / "transport"
    text = (mta.dir / "main.cf").read_text()
    text += f"transport_maps = texthash:{table}\n"
    for name, value in (extra or {}).items():
        text += f"{name} = {value}\n"
    (mta.dir / "main.cf").write_text(text)
    mta.start()


def send(mta, to: str, sender: str = "s@example.test", body: str = "relayed") -> str:
    """One message through swaks; its queue ID."""
    sent = subprocess.run(["swaks", "--server", f"{mta.host}:{mta.port}", "--from", sender, "--to", to,
                           "--body", body], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stdout
    return sent.stdout.split("queued as ")[1].split()[0]


def test_relayed_mail_reaches_the_sink_once_and_leaves_the_queue(relay, peers):
    start_relay(relay, peers)
    before = len(peers.delivered())
    count = 200
    result = subprocess.run([SMTP_SOURCE, "-s", "5", "-m", str(count), "-l", "3000",
                             "-f", "sender@example.test", "-t", "user@accept.test",
                             f"{relay.host}:{relay.port}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: relay.queue_json() == []), relay.queue_json()[:3]
    assert wait_until(lambda: len(peers.delivered()) - before >= count)
    time.sleep(0.3)
    assert len(peers.delivered()) - before == count  # each message exactly once
    log = relay.log_text()
    sent = re.findall(r"pyfastmta/smtp\[\d+\]: ([0-9A-F]+): to=<user@accept\.test>, "
                      r"relay=mx\.accept\.test\[127\.0\.0\.71\]:\d+, .*dsn=2\.0\.0, status=sent \(250 ", log)
    assert len(set(sent)) == count
    assert len(re.findall(r": removed$", log, re.M)) >= count


def test_refused_recipient_bounces_back_to_the_sender(relay, peers):
    start_relay(relay, peers)
    original = send(relay, "nobody@refuse.test", sender="sender@example.test", body="will bounce")
    assert wait_until(lambda: relay.logged(f"{original}: removed", timeout=0))
    log = relay.log_text()
    assert re.search(original + r": to=<nobody@refuse\.test>, relay=mx\.refuse\.test\[127\.0\.0\.72\]:\d+, "
                     r".*status=bounced \(host mx\.refuse\.test\[127\.0\.0\.72\] said: 5", log)
    notice = re.search(original + r": sender non-delivery notification: ([0-9A-F]+)", log).group(1)
    # The notice goes to the sender's domain, which is local here and has no local delivery yet.
    assert wait_until(lambda: notice in {m["queue_id"] for m in relay.queue_json()})
    queued = {m["queue_id"]: m for m in relay.queue_json()}
    assert queued[notice]["sender"] == "MAILER-DAEMON"
    assert [r["address"] for r in queued[notice]["recipients"]] == ["sender@example.test"]
    text = relay.cli("postcat", "-bh", "-q", notice).stdout
    assert "multipart/report" in text and "report-type=delivery-status" in text
    assert "Final-Recipient: rfc822; nobody@refuse.test" in text
    assert "Action: failed" in text


def test_deferred_mail_is_delivered_when_the_destination_recovers(relay, peers):
    """A downstream that answers 4xx, then one that accepts: postqueue -f delivers the mail."""
    mta = relay
    host = "127.0.0.73"
    port = free_port(host)
    start_relay(mta, peers, table=f"later.test smtp:[{host}]:{port}\n")
    deferring = peers.sink(host, port, "-r", "RCPT")
    queue_id = send(mta, "u@later.test", body="try again")
    assert wait_until(lambda: "status=deferred" in mta.log_text())
    assert re.search(queue_id + r": to=<u@later\.test>, relay=.*status=deferred \(host .* said: 4", mta.log_text())
    listing = mta.cli("postqueue", "-p").stdout
    assert queue_id in listing and "(host " in listing  # the deferral reason is listed
    deferring.kill()
    deferring.wait()
    peers.sink(host, port)
    mta.cli("postqueue", "-f")
    assert wait_until(lambda: relay_removed(mta, queue_id))
    assert re.search(queue_id + r": to=<u@later\.test>, .*status=sent \(250", mta.log_text())


def relay_removed(mta, queue_id: str) -> bool:
    return f"{queue_id}: removed" in mta.log_text()


def test_lmtp_transport_from_the_transport_map(relay, peers):
    mta = relay
    socket_dir = Path(tempfile.mkdtemp(prefix="pyfastmta-lmtp-"))
    socket_dir.chmod(0o777)
    lmtp_socket = socket_dir / "lmtp"
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    peers._start([SMTP_SINK, *user, "-L", f"unix:{lmtp_socket}", "10"])
    assert wait_until(lmtp_socket.exists, 10)
    start_relay(mta, peers, table=f"mailbox.test lmtp:unix:{lmtp_socket}\n")
    queue_id = send(mta, "one@mailbox.test,two@mailbox.test", body="to the store")
    assert wait_until(lambda: relay_removed(mta, queue_id))
    log = mta.log_text()
    for user_name in ("one", "two"):
        assert re.search(queue_id + rf": to=<{user_name}@mailbox\.test>, relay=.*\[{re.escape(str(lmtp_socket))}\]"
                         r".*status=sent \(250", log), log[-2000:]
    shutil.rmtree(socket_dir, ignore_errors=True)


def test_null_mx_bounces_at_once_and_a_down_destination_is_suspended(relay, peers):
    # A cohort is as many deliveries as the window: with a window of 1 one failure kills.
    start_relay(relay, peers, {"initial_destination_concurrency": "1"})
    nullmx_id = send(relay, "x@nullmx.test", sender="sender@example.test")
    assert wait_until(lambda: relay_removed(relay, nullmx_id))
    assert re.search(nullmx_id + r": to=<x@nullmx\.test>, .*dsn=5\.1\.10, status=bounced", relay.log_text())
    down_ids = [send(relay, f"d{number}@down.test", sender="sender@example.test") for number in range(3)]
    assert wait_until(lambda: all(f"{queue_id}: to=<" in relay.log_text() for queue_id in down_ids))
    log = relay.log_text()
    assert re.search(r"status=deferred \(connect to mx\.down\.test\[127\.0\.0\.74\]:\d+: Connection refused\)", log)
    # After the first failed cohort the destination is dead: the rest wait without a connection.
    assert "delivery temporarily suspended" in log
    queued = {m["queue_id"]: m for m in relay.queue_json()}
    assert set(down_ids) <= set(queued)
    assert all(queued[queue_id]["queue_name"] == "deferred" for queue_id in down_ids)


def test_postqueue_s_flushes_only_the_named_site(relay, peers):
    mta = relay
    host = "127.0.0.75"
    port = free_port(host)
    start_relay(mta, peers, table=f"one.test smtp:[{host}]:{port}\ntwo.test smtp:[{host}]:{port}\n")
    deferring = peers.sink(host, port, "-r", "RCPT")
    ids = {domain: send(mta, f"u@{domain}") for domain in ("one.test", "two.test")}
    assert wait_until(lambda: mta.log_text().count("status=deferred") >= 2)
    deferring.kill()
    deferring.wait()
    peers.sink(host, port)
    mta.cli("postqueue", "-s", "one.test")
    assert wait_until(lambda: relay_removed(mta, ids["one.test"]))
    time.sleep(0.5)
    assert not relay_removed(mta, ids["two.test"])
    assert ids["two.test"] in {m["queue_id"] for m in mta.queue_json()}
    mta.cli("postqueue", "-f")
    assert wait_until(lambda: relay_removed(mta, ids["two.test"]))


def test_a_literal_of_an_own_address_is_local(relay, peers):
    """user@[one of inet_interfaces] is this host's mail (no local delivery yet: it waits, with
    the reason); another literal is relayed like any destination."""
    start_relay(relay, peers, extra={"inet_interfaces": "127.0.0.1, 127.0.0.5",
                                     "default_transport": "retry:relayed here"})
    own = send(relay, "u@[127.0.0.5]")
    other = send(relay, "v@[192.0.2.9]")
    assert wait_until(lambda: relay.log_text().count("status=deferred") >= 2)
    log = relay.log_text()
    assert re.search(own + r": to=<u@\[127\.0\.0\.5\]>, .*status=deferred \(mail transport unavailable", log)
    assert re.search(other + r": to=<v@\[192\.0\.2\.9\]>, .*status=deferred \(relayed here\)", log)


def test_reload_changes_where_and_how_mail_is_delivered(relay, peers):
    """postfix reload semantics for delivery: a new transport map and a new smtp_helo_name take
    effect for the next message; a bad table leaves the running configuration in place."""
    mta = relay
    start_relay(mta, peers, table=f"moving.test smtp:[{ACCEPTING}]:{peers.port}\n")
    first = send(mta, "a@moving.test", body="before reload")
    assert wait_until(lambda: relay_removed(mta, first))
    assert re.search(first + rf": to=<a@moving\.test>, relay={ACCEPTING}\[{ACCEPTING}\]:\d+, .*status=sent",
                     mta.log_text())

    (mta.dir / "transport").write_text(f"moving.test smtp:[{REFUSING}]:{peers.port}\n")
    settings = (mta.dir / "main.cf").read_text()
    (mta.dir / "main.cf").write_text(settings + "smtp_helo_name = reloaded.example\n")
    mta.cli("reload")
    second = send(mta, "b@moving.test", body="after reload")
    assert wait_until(lambda: relay_removed(mta, second))
    assert re.search(second + rf": to=<b@moving\.test>, relay={REFUSING}\[{REFUSING}\]:\d+, .*status=bounced",
                     mta.log_text())

    (mta.dir / "transport").write_text(f"moving.test smtp:[{ACCEPTING}]:{peers.port}\n")
    mta.cli("reload")
    third = send(mta, "c@moving.test", body="helo after reload")
    assert wait_until(lambda: relay_removed(mta, third))
    dumped = next(d for d in peers.delivered() if b"helo after reload" in d)
    assert b"reloaded.example" in dumped

    (mta.dir / "main.cf").write_text(settings + "transport_maps = hash:/nonexistent/table\n")
    mta.cli("reload", check=False)
    fourth = send(mta, "d@moving.test", body="bad reload kept the old tables")
    assert wait_until(lambda: relay_removed(mta, fourth))
    assert re.search(fourth + rf": to=<d@moving\.test>, relay={ACCEPTING}\[", mta.log_text())
