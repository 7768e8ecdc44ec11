"""STARTTLS on the SMTP client side against real peers: a private Postfix whose smtpd offers TLS
with a self-signed certificate and holds what it accepts (so its Received: header and its log
show, from the peer's side, whether the session was encrypted), Postfix's smtp-sink (no STARTTLS)
and a peer that offers STARTTLS but breaks the handshake. Every test runs on uvloop and asyncio."""

from __future__ import annotations

import os
import random
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from peers.certificates import self_signed_certificate
from peers.loopback import run_on_loop, free_port, start_smtp_sink, wait_until
from peers.privatepostfix import PostfixInstance
from pyfastmta.queue.envelope import Envelope, Recipient
from pyfastmta.smtp import ClientTimeouts, ContentSource, DeliveryError, SmtpConnection

POSTCAT = shutil.which("postcat", path="/usr/sbin:/usr/bin") or "/usr/sbin/postcat"

# CI runs as root with Postfix installed: there these tests must run, never skip.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (
        os.geteuid() != 0 or shutil.which("postfix", path="/usr/sbin:/usr/bin") is None),
    reason="a private Postfix needs root (`postfix start`) and Postfix installed (make sysdeps)",
)


class TlsPostfix:
    """A private Postfix on 127.0.0.1 whose smtpd offers STARTTLS and holds every message."""

    def __init__(self):
        tls_directory = Path(tempfile.mkdtemp(prefix="pyfastmta-tls-"))
        self.tls_directory = tls_directory
        cert_file, key_file = self_signed_certificate(tls_directory)
        self.instance = PostfixInstance(hold_queue=True, main_cf={
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(cert_file),
            "smtpd_tls_key_file": str(key_file),
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            # No reverse lookup of the client's address: no query may reach the host's resolver.
            "smtpd_peername_lookup": "no",
        })
        try:
            self.instance.start()
        except BaseException:
            self.instance.remove()
            shutil.rmtree(tls_directory, ignore_errors=True)
            raise

    @property
    def port(self) -> int:
        return self.instance.port

    def stop(self) -> None:
        try:
            self.instance.stop()
        finally:
            self.instance.remove()
            shutil.rmtree(self.tls_directory, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.instance.maillog_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def headers(self, queue_id: str) -> list[str]:
        """The queued message's header fields, unfolded, as postcat shows them."""
        shown = subprocess.run([POSTCAT, "-c", str(self.instance.config_directory), "-h", "-q", queue_id],
                               check=False, capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        fields: list[str] = []
        for line in shown.stdout.splitlines():
            if line.startswith("*** "):
                continue
            if line[:1] in (" ", "\t") and fields:
                fields[-1] += " " + line.strip()
            elif line:
                fields.append(line)
        return fields

    def body(self, queue_id: str) -> bytes:
        shown = subprocess.run([POSTCAT, "-c", str(self.instance.config_directory), "-b", "-q", queue_id],
                               check=False, capture_output=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    def received(self, queue_id: str) -> str:
        """The Received: header this Postfix's smtpd put on top of the message."""
        return next(field for field in self.headers(queue_id) if field.startswith("Received: "))

    def session_before(self, queue_id: str, timeout: float = 10) -> str:
        """What the smtpd process that queued the message last logged about its session before
        that: "connect from ..." for a plaintext session, the TLS line for an encrypted one."""
        pattern = re.compile(r"postfix/smtpd\[(\d+)\]: " + queue_id + r": client=")
        assert wait_until(lambda: pattern.search(self.log_text()), timeout), self.log_text()[-3000:]
        text = self.log_text()
        pid = pattern.search(text).group(1)
        before = text[:pattern.search(text).start()]
        return [line for line in before.splitlines() if f"postfix/smtpd[{pid}]: " in line
                and ("connect from " in line or "TLS connection established from " in line)][-1]


@pytest.fixture(scope="module")
def tls_postfix():
    peer = TlsPostfix()
    yield peer
    peer.stop()


def wire_message(subject: str) -> bytes:
    lines = [b"From: Alice <alice@example.org>", b"To: bob@example.net",
             b"Subject: " + subject.encode(), b"Message-ID: <%d@example.org>" % random.randrange(1 << 40),
             b"", b"a body line", b"..a line that starts with a dot"]
    return b"\r\n".join(lines) + b"\r\n"


def content_in_segment(tmp_path: Path, wire: bytes) -> ContentSource:
    """The message between other records, as it sits in a queue segment."""
    path = tmp_path / f"segment{random.randrange(1 << 30)}"
    before = os.urandom(321)
    path.write_bytes(before + wire + b"\x00NEXT RECORD")
    return ContentSource(str(path), len(before), len(wire))


def envelope(*addresses: str) -> Envelope:
    return Envelope(queue_id="4ABCDEF", sender="alice@example.org",
                    recipients=[Recipient(a) for a in addresses], arrival_time=time.time(), size=0)


def queued_as(reply: str) -> str:
    return re.search(r"queued as ([0-9A-Za-z]+)", reply).group(1)


# A stalled transfer fails in seconds, not after Postfix's 180 s default.
TIMEOUTS = ClientTimeouts.for_smtp(smtp_data_xfer_timeout=10, smtp_data_done_timeout=10)


async def deliver_one(host: str, address: str, port: int, level: str, wire: ContentSource):
    connection = await SmtpConnection.open(host, address, port, helo_name="client.example",
                                           tls_security_level=level, timeouts=TIMEOUTS)
    results = await connection.deliver(envelope("bob@example.net"), wire, [0])
    await connection.close()
    return connection, results


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_starttls_to_postfix_encrypts_the_session(tls_postfix, tmp_path, event_loop_name, level):
    wire = content_in_segment(tmp_path, wire_message(f"tls {level} {event_loop_name}"))
    connection, results = run_on_loop(event_loop_name, deliver_one(
        "tls-peer.example.test", "127.0.0.1", tls_postfix.port, level, wire))
    assert connection.tls
    assert "STARTTLS" not in connection.extensions  # the EHLO after the handshake no longer offers it
    assert (results[0].status, results[0].dsn) == ("sent", "2.0.0"), results
    queue_id = queued_as(results[0].reply)
    # The peer's own account of the session: its Received: header and its log.
    received = tls_postfix.received(queue_id)
    assert re.search(r"\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)", received), received
    assert " with ESMTPS id " + queue_id in received, received
    assert "from client.example (unknown [127.0.0.1])" in received
    session = tls_postfix.session_before(queue_id)
    assert re.search(r"Anonymous TLS connection established from unknown\[127\.0\.0\.1\]: "
                     r"TLSv1\.[23] with cipher ", session), session
    assert f"Subject: tls {level} {event_loop_name}" in tls_postfix.headers(queue_id)


def test_message_of_many_chunks_over_tls(tls_postfix, tmp_path, event_loop_name):
    """Content goes over TLS in several writes, each waiting for the transport to drain: all of
    it must reach the peer, and the end of data with it."""
    lines = [b"body line %07d " % number + b"x" * 60 for number in range(25_000)]
    wire = wire_message(f"big over tls {event_loop_name}") + b"\r\n".join(lines) + b"\r\nthe end\r\n"
    assert len(wire) > 4 * 256 * 1024
    connection, results = run_on_loop(event_loop_name, deliver_one(
        "tls-peer.example.test", "127.0.0.1", tls_postfix.port, "encrypt",
        content_in_segment(tmp_path, wire)))
    assert connection.tls
    assert (results[0].status, results[0].dsn) == ("sent", "2.0.0"), results
    queue_id = queued_as(results[0].reply)
    assert re.search(r"\(using TLSv1\.[23] with cipher ", tls_postfix.received(queue_id))
    body = tls_postfix.body(queue_id).splitlines()
    assert body[-1] == b"the end" and body.count(lines[-1]) == 1 and body.count(lines[0]) == 1
    assert sum(1 for line in body if line.startswith(b"body line ")) == len(lines)


def test_level_none_stays_plaintext_to_the_same_postfix(tls_postfix, tmp_path, event_loop_name):
    """The control for the test above: the same peer, seen from its side, without STARTTLS."""
    wire = content_in_segment(tmp_path, wire_message(f"plain {event_loop_name}"))
    connection, results = run_on_loop(event_loop_name, deliver_one(
        "tls-peer.example.test", "127.0.0.1", tls_postfix.port, "none", wire))
    assert not connection.tls and "STARTTLS" in connection.extensions
    assert results[0].status == "sent"
    queue_id = queued_as(results[0].reply)
    received = tls_postfix.received(queue_id)
    assert "using TLS" not in received and " with ESMTP id " + queue_id in received, received
    assert tls_postfix.session_before(queue_id).endswith("connect from unknown[127.0.0.1]")


def test_may_without_starttls_delivers_in_plaintext(tmp_path, event_loop_name):
    """smtp-sink offers no STARTTLS: "may" delivers in the clear, where "encrypt" would defer."""
    directory = Path(tempfile.mkdtemp(prefix="pyfastmta-sink-"))
    directory.chmod(0o755)
    dump = directory / "dump"
    dump.mkdir()
    dump.chmod(0o777)  # smtp-sink drops to nobody when started as root
    host = f"127.0.0.{random.randint(2, 250)}"
    port = free_port(host)
    sink = start_smtp_sink(host, port, "-d", f"{dump}/%H%M%S.")
    try:
        wire = content_in_segment(tmp_path, wire_message("may in plaintext"))
        connection, results = run_on_loop(event_loop_name, deliver_one("sink.example", host, port, "may", wire))
        assert not connection.tls and "STARTTLS" not in connection.extensions
        assert (results[0].status, results[0].dsn) == ("sent", "2.0.0"), results
        assert wait_until(lambda: any(p.is_file() for p in dump.rglob("*")), 5)
        time.sleep(0.05)  # smtp-sink closes a dump after it replied
        dumped = b"".join(p.read_bytes() for p in dump.rglob("*") if p.is_file())
        assert b"Subject: may in plaintext" in dumped and b"X-Client-Proto: ESMTP" in dumped
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_relay_with_encrypt_in_main_cf_reaches_postfix_encrypted(tls_postfix, make_mta, tmp_path):
    transport = tmp_path / "transport"
    transport.write_text(f"tls.test smtp:[127.0.0.1]:{tls_postfix.port}\n")
    mta = make_mta({
        "default_transport": "smtp",
        "relay_transport": "relay",
        "transport_maps": f"texthash:{transport}",
        "smtp_tls_security_level": "encrypt",
        "smtp_data_xfer_timeout": "10s",
    })
    subject = f"relayed over tls {mta.event_loop}"
    with smtplib.SMTP(mta.host, mta.port, timeout=30) as client:
        client.sendmail("sender@example.test", ["user@tls.test"],
                        f"From: sender@example.test\r\nTo: user@tls.test\r\nSubject: {subject}\r\n\r\nhi\r\n")
    sent = re.compile(r": to=<user@tls\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*"
                      r"dsn=2\.0\.0, status=sent \((250 .*)\)$", re.MULTILINE)
    assert wait_until(lambda: sent.search(mta.log_text()), 20), mta.log_text()[-3000:]
    queue_id = queued_as(sent.search(mta.log_text()).group(1))
    assert f"Subject: {subject}" in tls_postfix.headers(queue_id)
    received = tls_postfix.received(queue_id)
    assert re.search(r"\(using TLSv1\.[23] with cipher ", received), received
    assert received.startswith("Received: from mx.example.test (unknown [127.0.0.1])"), received
    assert "Anonymous TLS connection established" in tls_postfix.session_before(queue_id)


class BrokenTlsPeer:
    """An SMTP server that offers STARTTLS, says 220 to it and then does not speak TLS: it sends
    bytes that are no TLS record ("garbage") or hangs up ("close"). It records every connection
    and the commands it saw on it."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.host = f"127.0.0.{random.randint(2, 250)}"
        self.listener = socket.create_server((self.host, 0))
        self.listener.settimeout(0.05)  # accept() wakes up to see `stopping`
        self.port = self.listener.getsockname()[1]
        self.sessions: list[list[str]] = []
        self.messages = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                commands: list[str] = []
                self.sessions.append(commands)
                try:
                    self._session(conn, commands)
                except OSError:
                    pass

    def _session(self, conn: socket.socket, commands: list[str]) -> None:
        conn.settimeout(10)
        conn.sendall(b"220 broken.example ESMTP\r\n")
        reader = conn.makefile("rb")
        for raw in reader:
            command = raw.decode("ascii", "replace").strip()
            commands.append(command)
            verb = command.split(" ")[0].upper()
            if verb == "EHLO":
                conn.sendall(b"250-broken.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
            elif verb == "STARTTLS":
                conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                if self.behaviour == "garbage":
                    conn.sendall(b"this is no TLS record at all\r\n" * 4)
                return
            elif verb == "QUIT":
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            elif verb == "DATA":
                conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                for line in reader:
                    if line == b".\r\n":
                        break
                self.messages += 1
                conn.sendall(b"250 2.0.0 Ok: queued in plaintext\r\n")
            else:
                conn.sendall(b"250 2.0.0 Ok\r\n")

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def broken_peer():
    started: list[BrokenTlsPeer] = []

    def start(behaviour: str) -> BrokenTlsPeer:
        started.append(BrokenTlsPeer(behaviour))
        return started[-1]

    yield start
    for peer in started:
        peer.stop()


@pytest.mark.parametrize("behaviour", ["garbage", "close"])
@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_failed_handshake_defers_without_plaintext_retry(broken_peer, event_loop_name, behaviour, level):
    """Postfix at level may defers a young message when STARTTLS fails (TLS_README: it retries in
    plaintext only once the message waited minimal_backoff_time); SmtpConnection reports the failure
    as a temporary one of the starttls stage, on that one connection, at both levels."""
    peer = broken_peer(behaviour)
    timeouts = ClientTimeouts.for_smtp(smtp_starttls_timeout=10)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        run_on_loop(event_loop_name, SmtpConnection.open("broken.example", peer.host, peer.port,
                                                 helo_name="client.example", timeouts=timeouts,
                                                 tls_security_level=level))
    elapsed = time.monotonic() - started
    error = caught.value
    assert elapsed < 5, "the failure is seen at once, not when the STARTTLS time limit runs out"
    assert error.temporary and error.dsn == "4.7.5" and error.stage == "starttls"
    assert error.reason.startswith(
        f"Cannot start TLS: handshake failure with broken.example[{peer.host}]"), error.reason
    assert not error.reason.endswith(": ") and not error.reason.endswith("timed out")
    time.sleep(0.2)  # a retry in plaintext would open a second connection now
    assert peer.sessions == [["EHLO client.example", "STARTTLS"]]


def relay_one_to(peer: BrokenTlsPeer, make_mta, tmp_path, **settings: str):
    """A pyfastmta at smtp_tls_security_level = may that relays broken.test to the peer, and one
    message to user@broken.test sent through it."""
    transport = tmp_path / "transport"
    transport.write_text(f"broken.test smtp:[{peer.host}]:{peer.port}\n")
    mta = make_mta({
        "default_transport": "smtp",
        "relay_transport": "relay",
        "transport_maps": f"texthash:{transport}",
        "smtp_tls_security_level": "may",
        **settings,
    })
    with smtplib.SMTP(mta.host, mta.port, timeout=30) as client:
        client.sendmail("sender@example.test", ["user@broken.test"],
                        "From: sender@example.test\r\nSubject: broken tls\r\n\r\nhi\r\n")
    return mta


def test_relay_at_level_may_defers_when_the_handshake_fails(broken_peer, make_mta, tmp_path):
    """Through the whole MTA, as Postfix does on a message's first attempt: the delivery is
    deferred with the handshake failure as the reason, after one connection that never got past
    STARTTLS."""
    peer = broken_peer("garbage")
    mta = relay_one_to(peer, make_mta, tmp_path)
    deferred = re.compile(r"([0-9A-F]+): to=<user@broken\.test>, relay=.*, dsn=4\.7\.5, status=deferred "
                          r"\(Cannot start TLS: handshake failure with " + re.escape(f"{peer.host}[{peer.host}]"))
    assert wait_until(lambda: deferred.search(mta.log_text()), 20), mta.log_text()[-3000:]
    queue_id = deferred.search(mta.log_text()).group(1)
    assert queue_id in {message["queue_id"] for message in mta.queue_json()}
    assert peer.sessions == [["EHLO mx.example.test", "STARTTLS"]]


def test_relay_at_level_may_falls_back_to_plaintext_once_the_message_waited(broken_peer, make_mta, tmp_path):
    """Postfix's rule: after a failed handshake at level may, a message that has waited
    minimal_backoff_time goes to the same server in plaintext, on a new connection."""
    peer = broken_peer("garbage")
    mta = relay_one_to(peer, make_mta, tmp_path, minimal_backoff_time="1s")
    assert wait_until(lambda: "status=deferred (Cannot start TLS" in mta.log_text(), 20), mta.log_text()[-3000:]
    assert peer.messages == 0
    time.sleep(1.2)
    mta.cli("postqueue", "-f")
    sent = re.compile(r"to=<user@broken\.test>, relay=.*, dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: queued in plaintext")
    assert wait_until(lambda: sent.search(mta.log_text()), 20), mta.log_text()[-3000:]
    assert peer.messages == 1
    assert peer.sessions[-2] == ["EHLO " + peer.sessions[-2][0].split()[1], "STARTTLS"]
    assert [c.split()[0] for c in peer.sessions[-1]][:4] == ["EHLO", "MAIL", "RCPT", "DATA"]
