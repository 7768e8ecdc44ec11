"""The SMTP/LMTP client connection against real servers: Postfix's smtp-sink (SMTP and LMTP, on
TCP and a UNIX socket, told to fail chosen commands) and pyfastmta's own smtpd (SIZE, recipients
refused one by one). Every test runs with the client on uvloop and on asyncio's own loop."""

from __future__ import annotations

import email
import email.policy
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from peers.loopback import run_on_loop, free_port
from pyfastmta.queue.envelope import Envelope, Recipient
from pyfastmta.smtp import ClientTimeouts, ContentSource, DeliveryError, SmtpConnection

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def loopback_host() -> str:
    return f"127.0.0.{random.randint(2, 250)}"


class Sink:
    """One smtp-sink process that dumps every message it receives into its own directory."""

    def __init__(self, options: list[str], unix: bool = False):
        # smtp-sink drops to nobody when started as root: its directory must be reachable.
        directory = Path(tempfile.mkdtemp(prefix="pyfastmta-sink-"))
        directory.chmod(0o755)
        self.directory = directory
        self.dump = directory / "dump"
        self.dump.mkdir()
        self.dump.chmod(0o777)
        if unix:
            self.host, self.address, self.port = "lmtp.example", str(directory / "lmtp.sock"), 0
            endpoint = f"unix:{self.address}"
        else:
            self.host = self.address = loopback_host()
            self.port = free_port(self.address)
            endpoint = f"{self.address}:{self.port}"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen([SMTP_SINK, *user, "-d", f"{self.dump}/%H%M%S.", *options,
                                         endpoint, "50"], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"smtp-sink did not start: {self.process.stderr.read()!r}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        family = socket.AF_UNIX if self.port == 0 else socket.AF_INET
        with socket.socket(family) as probe:
            try:
                probe.connect(self.address if self.port == 0 else (self.address, self.port))
                return True
            except OSError:
                return False

    def messages(self, count: int, timeout: float = 5) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(p for p in self.dump.rglob("*") if p.is_file())
            if len(files) >= count or time.monotonic() > deadline:
                time.sleep(0.05)  # smtp-sink closes a dump after it replied
                return [p.read_bytes() for p in files]
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def sink():
    started = []

    def start(*options: str, unix: bool = False) -> Sink:
        started.append(Sink(list(options), unix=unix))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def wire_message(body_lines: int = 20, extra: bytes = b"") -> bytes:
    lines = [b"From: Alice <alice@example.org>", b"To: bob@example.net", b"Subject: client test",
             b"Message-ID: <1@example.org>", b""]
    for n in range(body_lines):
        lines.append(b"..a line that starts with a dot %d" % n if n % 7 == 0 else b"line %d" % n)
    return b"\r\n".join(lines) + b"\r\n" + extra


def content_in_segment(tmp_path: Path, wire: bytes) -> ContentSource:
    """The message between other records, as it sits in a queue segment."""
    path = tmp_path / f"segment{random.randrange(1 << 30)}"
    before = os.urandom(1234)
    path.write_bytes(before + wire + b"\x00NEXT RECORD")
    return ContentSource(str(path), len(before), len(wire))


def envelope(*addresses: str, **fields) -> Envelope:
    return Envelope(queue_id="4ABCDEF", sender="alice@example.org",
                    recipients=[Recipient(a) for a in addresses], arrival_time=time.time(),
                    size=0, **fields)


def dumped_body(dump: bytes) -> bytes:
    """What smtp-sink received after its own three-line Received header, in its LF form."""
    return dump.split(b"\n", dump.split(b"\n").index(b"Received: from client.example "
                                                    b"([%s])" % dump.split(b"X-Client-Addr: ")[1]
                                                    .split(b"\n")[0]) + 3)[-1]


def unstuffed_lf(wire: bytes) -> bytes:
    lines = wire.split(b"\r\n")[:-1]
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\n" for line in lines)


async def open_to(sink: Sink, lmtp: bool = False, **kwargs) -> SmtpConnection:
    return await SmtpConnection.open(sink.host, sink.address, sink.port,
                                     helo_name="client.example", lmtp=lmtp, **kwargs)


def test_pipelined_delivery_streams_the_stored_bytes(sink, tmp_path, event_loop_name):
    server = sink()
    small = wire_message()
    large = wire_message(body_lines=120_000)  # several sendfile chunks
    async def scenario():
        connection = await open_to(server)
        assert "PIPELINING" in connection.extensions and connection.peer.endswith(f":{server.port}")
        first = await connection.deliver(envelope("bob@example.net", "carol@example.net"),
                                         content_in_segment(tmp_path, small), [0, 1])
        assert await connection.reset()
        second = await connection.deliver(envelope("dave@example.net"),
                                          content_in_segment(tmp_path, large), [0])
        assert connection.reuse_count == 2
        await connection.close()
        return first, second

    first, second = run_on_loop(event_loop_name, scenario())
    assert [(r.index, r.status, r.dsn) for r in first] == [(0, "sent", "2.0.0"), (1, "sent", "2.0.0")]
    assert first[0].reply.startswith("250 2.0.0")
    assert second[0].status == "sent"
    dumps = server.messages(2)
    assert len(dumps) == 2
    received = sorted(dumps, key=len)
    for dump, wire in zip(received, [small, large]):
        assert b"X-Rcpt-Args: <bob@example.net>" in dump or b"X-Rcpt-Args: <dave@example.net>" in dump
        body = dumped_body(dump)
        assert body.startswith(unstuffed_lf(wire))
        parsed = email.message_from_bytes(body, policy=email.policy.default)
        assert parsed["Subject"] == "client test"


def test_without_pipelining_many_recipients(sink, tmp_path, event_loop_name):
    server = sink("-p")
    addresses = [f"user{n}@example.net" for n in range(60)]
    async def scenario():
        connection = await open_to(server)
        assert "PIPELINING" not in connection.extensions
        results = await connection.deliver(envelope(*addresses, body_type="8BITMIME"),
                                           content_in_segment(tmp_path, wire_message()),
                                           list(range(60)))
        await connection.close()
        return results

    results = run_on_loop(event_loop_name, scenario())
    assert [r.status for r in results] == ["sent"] * 60
    dump = server.messages(1)[0]
    assert dump.count(b"X-Rcpt-Args: ") == 60
    assert b"X-Mail-Args: <alice@example.org> BODY=8BITMIME" in dump


def test_dsn_parameters_are_passed_on_xtext_encoded(sink, tmp_path, event_loop_name):
    server = sink()
    env = Envelope(queue_id="4ABCDEF", sender="alice@example.org", arrival_time=time.time(),
                   recipients=[Recipient("bob@example.net", orcpt="rfc822;Bob+x=y@example.net",
                                         notify="SUCCESS,FAILURE")],
                   envid="id 42+", ret="HDRS")
    async def scenario():
        connection = await open_to(server)
        await connection.deliver(env, content_in_segment(tmp_path, wire_message()), [0])
        await connection.close()

    run_on_loop(event_loop_name, scenario())
    dump = server.messages(1)[0]
    assert b"X-Mail-Args: <alice@example.org> RET=HDRS ENVID=id+2042+2B" in dump
    assert (b"X-Rcpt-Args: <bob@example.net> NOTIFY=SUCCESS,FAILURE "
            b"ORCPT=rfc822;Bob+2Bx+3Dy@example.net") in dump


@pytest.mark.parametrize("option, command, status, dsn, in_reply_to", [
    ("-r", "mail", "deferred", "4.3.0", "MAIL FROM"),
    ("-f", "mail", "bounced", "5.3.0", "MAIL FROM"),
    ("-r", "rcpt", "deferred", "4.3.0", "RCPT TO"),
    ("-f", "rcpt", "bounced", "5.3.0", "RCPT TO"),
    ("-r", "data", "deferred", "4.3.0", "DATA"),
    ("-f", "data", "bounced", "5.3.0", "DATA"),
    ("-r", ".", "deferred", "4.3.0", "end of DATA"),
    ("-f", ".", "bounced", "5.3.0", "end of DATA"),
])
def test_refusals_at_each_stage(sink, tmp_path, event_loop_name, option, command, status, dsn,
                                in_reply_to):
    server = sink(option, command)  # -r/-f also turn PIPELINING off
    async def scenario():
        connection = await open_to(server)
        results = await connection.deliver(envelope("bob@example.net", "carol@example.net"),
                                           content_in_segment(tmp_path, wire_message()), [0, 1])
        reusable = await connection.reset()
        await connection.close()
        return results, reusable

    results, reusable = run_on_loop(event_loop_name, scenario())
    assert reusable
    for result in results:
        assert (result.status, result.dsn) == (status, dsn)
        assert result.reply == (f"host {server.host}[{server.address}] said: {dsn[0]}{'50' if dsn[0] == '4' else '00'} "
                                f"{dsn} Error: command failed (in reply to {in_reply_to} command)")


@pytest.mark.parametrize("option, temporary", [("-r", True), ("-f", False)])
def test_refused_greeting(sink, event_loop_name, option, temporary):
    server = sink(option, "connect")
    with pytest.raises(DeliveryError) as caught:
        run_on_loop(event_loop_name, open_to(server))
    assert caught.value.temporary is temporary and caught.value.stage == "greeting"
    assert caught.value.reason.startswith(f"host {server.host}[{server.address}] refused to talk to me: ")


def test_ehlo_refused_falls_back_to_helo(sink, tmp_path, event_loop_name):
    server = sink("-f", "ehlo")
    async def scenario():
        connection = await open_to(server)
        results = await connection.deliver(envelope("bob@example.net"),
                                           content_in_segment(tmp_path, wire_message()), [0])
        await connection.close()
        return connection.extensions, results

    extensions, results = run_on_loop(event_loop_name, scenario())
    assert extensions == {} and results[0].status == "sent"
    assert b"X-Client-Proto: SMTP" in server.messages(1)[0]


@pytest.mark.parametrize("command, doing", [("rcpt", "sending RCPT TO"),
                                            (".", "sending end of data -- message may be sent more than once")])
def test_hang_up_defers_what_is_not_final(sink, tmp_path, event_loop_name, command, doing):
    server = sink("-q", command)
    async def scenario():
        connection = await open_to(server)
        with pytest.raises(DeliveryError) as caught:
            await connection.deliver(envelope("bob@example.net", "carol@example.net"),
                                     content_in_segment(tmp_path, wire_message()), [0, 1])
        assert not await connection.reset()
        return caught.value

    error = run_on_loop(event_loop_name, scenario())
    assert error.temporary and error.dsn == "4.4.2"
    assert error.reason == f"lost connection with {server.host}[{server.address}] while {doing}"
    assert [(r.index, r.status, r.reply) for r in error.results] == [
        (0, "deferred", error.reason), (1, "deferred", error.reason)]


def test_timeout_of_one_stage(sink, tmp_path, event_loop_name):
    server = sink("-p", "-w", "3")
    timeouts = ClientTimeouts.for_smtp(smtp_data_init_timeout=0.3)
    async def scenario():
        connection = await open_to(server, timeouts=timeouts)
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            await connection.deliver(envelope("bob@example.net"),
                                     content_in_segment(tmp_path, wire_message()), [0])
        return caught.value, time.monotonic() - started

    error, elapsed = run_on_loop(event_loop_name, scenario())
    assert elapsed < 2
    assert error.reason == f"conversation with {server.host}[{server.address}] timed out while sending DATA command"
    assert error.results[0].status == "deferred"


def test_connection_refused_and_tls_required(sink, event_loop_name):
    host = loopback_host()
    with pytest.raises(DeliveryError) as caught:
        run_on_loop(event_loop_name, SmtpConnection.open("mx.example", host, free_port(host),
                                                 helo_name="client.example"))
    assert caught.value.reason.startswith(f"connect to mx.example[{host}]:")
    assert caught.value.reason.endswith(": Connection refused")
    assert caught.value.temporary and caught.value.stage == "connect"
    server = sink()
    with pytest.raises(DeliveryError) as caught:
        run_on_loop(event_loop_name, open_to(server, tls_security_level="encrypt"))
    assert caught.value.temporary and caught.value.dsn == "4.7.4"
    assert caught.value.reason == f"TLS is required, but was not offered by host {server.host}[{server.address}]"


@pytest.mark.parametrize("unix", [False, True])
def test_lmtp_one_reply_per_recipient(sink, tmp_path, event_loop_name, unix):
    server = sink("-L", unix=unix)
    rejected = sink("-L", "-r", ".", unix=unix)
    async def scenario(server):
        connection = await open_to(server, lmtp=True)
        results = await connection.deliver(envelope("bob@example.net", "carol@example.net", "dan@x"),
                                           content_in_segment(tmp_path, wire_message()), [2, 0, 1])
        await connection.close()
        return connection.peer, results

    peer, results = run_on_loop(event_loop_name, scenario(server))
    assert peer == (f"{server.host}[{server.address}]" if unix else f"{server.host}[{server.address}]:{server.port}")
    assert [(r.index, r.status) for r in results] == [(2, "sent"), (0, "sent"), (1, "sent")]
    assert b"X-Client-Proto: LMTP" in server.messages(1)[0]
    _, results = run_on_loop(event_loop_name, scenario(rejected))
    assert [(r.status, r.dsn) for r in results] == [("deferred", "4.3.0")] * 3
    assert results[0].reply.endswith("(in reply to end of DATA command)")


def test_against_pyfastmta_size_limit_and_refused_recipients(make_mta, tmp_path, event_loop_name):
    # Relay only for 127.0.0.2: mail from 127.0.0.1 reaches example.test, nowhere else.
    mta = make_mta({"mynetworks": "127.0.0.2/32", "message_size_limit": "4000"})
    async def scenario():
        connection = await SmtpConnection.open("mx.example.test", mta.host, mta.port,
                                               helo_name="client.example")
        assert connection.size_limit == 4000
        too_big = await connection.deliver(envelope("bob@example.test"),
                                           content_in_segment(tmp_path, wire_message(400)), [0])
        mixed = await connection.deliver(
            envelope("bob@example.test", "eve@elsewhere.example", "carol@example.test"),
            content_in_segment(tmp_path, wire_message()), [0, 1, 2])
        await connection.close()
        return too_big, mixed

    too_big, mixed = run_on_loop(event_loop_name, scenario())
    assert (too_big[0].status, too_big[0].dsn) == ("bounced", "5.3.4")
    assert too_big[0].reply.startswith("message size ") and too_big[0].reply.endswith(
        f"exceeds size limit 4000 of server mx.example.test[{mta.host}]")
    # Postfix's default smtpd_relay_restrictions defer an unauthorized destination (454 4.7.1).
    assert [r.status for r in mixed] == ["sent", "deferred", "sent"]
    assert "(in reply to RCPT TO command)" in mixed[1].reply and mixed[1].dsn == "4.7.1"
    queued = mta.queue_json()
    assert [sorted(r["address"] for r in m["recipients"]) for m in queued] == [
        ["bob@example.test", "carol@example.test"]]
