"""LMTP into a real mail store: Debian's Dovecot LMTP server (dovecot-lmtpd), private instances
listening on a UNIX socket and on a loopback TCP port and delivering into Maildirs in a temporary
directory. Mail goes through a real pyfastmta whose transport map routes the domain to LMTP, and the
client connection is also driven directly. One Dovecot serves the module (mailboxes emptied per
test); the outage test has its own."""

from __future__ import annotations

import email
import email.policy
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from peers.loopback import free_port, wait_until
from pyfastmta.queue.envelope import Envelope, Recipient
from pyfastmta.smtp import ContentSource, SmtpConnection

DOVECOT = shutil.which("dovecot", path="/usr/sbin:/usr/bin") or "/usr/sbin/dovecot"
DOMAIN = "mailbox.test"
USERS = ("alice", "bob", "full")  # "full" has a quota smaller than any message


class Dovecot:
    """One private Dovecot running only its LMTP service, in the foreground, stopped by its pid.

    As root its own services run as the Debian package's dovecot/dovenull users and mail is
    written as nobody; as any other user everything runs as that user."""

    def __init__(self, host: str):
        self.dir = Path(tempfile.mkdtemp(prefix="pyfastmta-dovecot-"))
        self.dir.chmod(0o755)  # the auth process (user dovecot) reads the users file in here
        self.host = host
        self.port = free_port(host)
        self.socket = self.dir / "lmtp"
        self.mail = self.dir / "mail"
        self.mail.mkdir()
        self.log = self.dir / "dovecot.log"
        self.process: subprocess.Popen | None = None
        if os.geteuid() == 0:
            internal, internal_group, login = "dovecot", "dovecot", "dovenull"
            mail_user = pwd.getpwnam("nobody")
            os.chown(self.mail, mail_user.pw_uid, mail_user.pw_gid)
        else:
            mail_user = pwd.getpwuid(os.geteuid())
            internal = login = mail_user.pw_name
            internal_group = grp.getgrgid(os.getegid()).gr_name
        users = "".join(f"{name}:{{PLAIN}}secret::::::{self._extra(name)}\n" for name in USERS)
        (self.dir / "users").write_text(users)
        # The LMTP listener on the UNIX socket is world-writable: pyfastmta's workers may run as
        # another user than the tests. No chroot for anvil: a user other than root cannot.
        (self.dir / "dovecot.conf").write_text(f"""\
protocols = lmtp
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.log}
ssl = no
stats_writer_socket_path =
listen = {host}
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
mail_uid = {mail_user.pw_uid}
mail_gid = {mail_user.pw_gid}
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_plugins = $mail_plugins quota
postmaster_address = postmaster@{DOMAIN}
passdb {{
  driver = passwd-file
  args = username_format=%n {self.dir}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {self.dir}/users
  default_fields = home={self.mail}/%n
}}
plugin {{
  quota = maildir:User quota
}}
service anvil {{
  chroot =
}}
service lmtp {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = {host}
    port = {self.port}
  }}
}}
""")

    @staticmethod
    def _extra(name: str) -> str:
        return "userdb_quota_rule=*:storage=10B" if name == "full" else ""

    def start(self) -> None:
        # Output goes to a file: Dovecot's log process keeps it open for a while after the master
        # has exited.
        with (self.dir / "output").open("ab") as output:
            self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
                                            stdout=output, stderr=subprocess.STDOUT)
        if not wait_until(self._listening, 15):
            self.stop()
            output = (self.dir / "output").read_text(errors="replace")
            raise AssertionError(f"dovecot did not start:\n{output}\n{self.log_text()}")

    def _listening(self) -> bool:
        """Whether both listeners are there and an LMTP process has answered LHLO: a Dovecot
        stopped while its first processes still read their configuration takes seconds to exit."""
        if self.process.poll() is not None:
            return True  # start() reports the exit
        if not self.socket.exists():
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as probe:
                probe.sendall(b"LHLO probe.example\r\nQUIT\r\n")
                received = b""
                while b"\r\n221 " not in received:
                    chunk = probe.recv(4096)
                    if not chunk:
                        break
                    received += chunk
                return received.startswith(b"220 ") and b"\r\n250 " in received
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def empty(self) -> None:
        """Deletes every user's mail and index files; Dovecot makes them again on delivery."""
        for home in self.mail.iterdir():
            shutil.rmtree(home)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages(self, user: str) -> list[email.message.Message]:
        """What Dovecot stored in the user's INBOX, oldest first, as the email package reads it."""
        new = self.mail / user / "Maildir" / "new"
        paths = sorted(new.iterdir(), key=lambda path: path.name) if new.is_dir() else []
        return [email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32) for path in paths]


@pytest.fixture(scope="module")
def running_store():
    server = Dovecot("127.0.0.91")
    server.start()
    yield server
    server.remove()


@pytest.fixture
def store(running_store) -> Dovecot:
    """The module's Dovecot with empty mailboxes (emptied before each test, after the previous
    test's pyfastmta has stopped)."""
    running_store.empty()
    return running_store


@pytest.fixture
def stopped_store():
    """A Dovecot of the test's own, configured but not started."""
    server = Dovecot("127.0.0.92")
    yield server
    server.remove()


def start_mta(make_mta, route: str):
    """pyfastmta relaying for loopback clients, mailbox.test routed by its transport map."""
    mta = make_mta({"default_transport": "smtp", "relay_transport": "relay"}, start=False)
    (mta.dir / "transport").write_text(f"{DOMAIN} {route}\n")
    with (mta.dir / "main.cf").open("a") as main_cf:
        main_cf.write(f"transport_maps = texthash:{mta.dir / 'transport'}\n")
    mta.start()
    return mta


def send(mta, recipients: list[str], sender: str, subject: str, body: str) -> str:
    """One message through swaks; its queue ID."""
    sent = subprocess.run(["swaks", "--server", f"{mta.host}:{mta.port}", "--from", sender,
                           "--to", ",".join(recipients), "--header", f"Subject: {subject}",
                           "--body", body], capture_output=True, text=True, timeout=60, check=False)
    assert sent.returncode == 0, sent.stdout
    return sent.stdout.split("queued as ")[1].split()[0]


def removed(mta, queue_id: str) -> bool:
    return f"{queue_id}: removed" in mta.log_text()


def delivered_line(queue_id: str, user: str, relay: str, status: str) -> str:
    return (rf"{queue_id}: to=<{user}@mailbox\.test>, relay=[^,]*{re.escape(relay)}[^,]*, "
            rf".*status={status} ")


BODY = "Dear Bob,\n\nGrüße aus Zürich.\n.\n..a line that starts with two dots\n"


def test_mail_for_two_users_over_the_unix_socket_lands_in_both_maildirs(make_mta, store):
    mta = start_mta(make_mta, f"lmtp:unix:{store.socket}")
    queue_id = send(mta, [f"alice@{DOMAIN}", f"bob@{DOMAIN}"], "sender@example.org",
                    "to the store", BODY)
    assert wait_until(lambda: removed(mta, queue_id)), mta.log_text()[-2000:]
    log = mta.log_text()
    for user in ("alice", "bob"):
        assert re.search(delivered_line(queue_id, user, f"[{store.socket}]", "sent")
                         + rf"\(250 2\.0\.0 <{user}@mailbox\.test> .*Saved\)", log), log[-2000:]
        [message] = store.messages(user)
        assert message["Return-Path"] == "<sender@example.org>"
        # Dovecot names the final recipient in Delivered-To only when a transaction has one.
        assert message["Delivered-To"] is None
        assert message["Subject"] == "to the store"
        assert message["From"] == "sender@example.org"
        assert message["Message-Id"]
        # Dovecot's Received header on top of pyfastmta's, which names its queue ID.
        received = message.get_all("Received")
        assert "with LMTP" in received[0] and queue_id in received[1]
        payload = message.get_payload(decode=True).decode()
        # swaks ends the body with a line of its own; every line before it is intact.
        assert payload.replace("\r\n", "\n").rstrip("\n") == BODY.rstrip("\n")
    assert mta.queue_json() == []


@pytest.mark.parametrize("form", ["inet:{host}:{port}", "[{host}]:{port}"])
def test_mail_over_tcp_in_both_nexthop_forms(make_mta, store, form):
    mta = start_mta(make_mta, "lmtp:" + form.format(host=store.host, port=store.port))
    queue_id = send(mta, [f"bob@{DOMAIN}"], "sender@example.org", "over tcp", "one recipient\n")
    assert wait_until(lambda: removed(mta, queue_id)), mta.log_text()[-2000:]
    assert re.search(delivered_line(queue_id, "bob", f"[{store.host}]:{store.port}", "sent")
                     + r"\(250 2\.0\.0 ", mta.log_text()), mta.log_text()[-2000:]
    [message] = store.messages("bob")
    assert message["Return-Path"] == "<sender@example.org>"
    assert message["Delivered-To"] == f"bob@{DOMAIN}"
    assert f"for <bob@{DOMAIN}>" in message["Received"]
    assert message.get_payload().rstrip("\n") == "one recipient"
    assert mta.queue_json() == []


def test_one_reply_per_recipient_unknown_user_and_full_mailbox_bounce(make_mta, store):
    """Dovecot refuses an unknown user at RCPT and a user over quota after the data: the third
    recipient gets the mail, the other two come back to the sender, who is in the store too."""
    mta = start_mta(make_mta, f"lmtp:unix:{store.socket}")
    queue_id = send(mta, [f"bob@{DOMAIN}", f"nosuchuser@{DOMAIN}", f"full@{DOMAIN}"],
                    f"alice@{DOMAIN}", "partly undeliverable", "for three\n")
    assert wait_until(lambda: removed(mta, queue_id)), mta.log_text()[-2000:]
    log = mta.log_text()
    relay = f"[{store.socket}]"
    assert re.search(delivered_line(queue_id, "bob", relay, "sent"), log), log[-2000:]
    assert re.search(delivered_line(queue_id, "nosuchuser", relay, "bounced")
                     + r"\(host .* said: 550 5\.1\.1 <nosuchuser@mailbox\.test> User doesn't exist"
                     r".*\(in reply to RCPT TO command\)\)", log), log[-2000:]
    assert re.search(delivered_line(queue_id, "full", relay, "bounced")
                     + r"\(host .* said: 552 5\.2\.2 <full@mailbox\.test> Quota exceeded"
                     r".*\(in reply to end of DATA command\)\)", log), log[-2000:]
    assert [m["Subject"] for m in store.messages("bob")] == ["partly undeliverable"]
    assert store.messages("full") == []
    # The non-delivery notice travels the same LMTP route into the sender's mailbox.
    notice_id = re.search(queue_id + r": sender non-delivery notification: ([0-9A-F]+)", log).group(1)
    assert wait_until(lambda: removed(mta, notice_id)), mta.log_text()[-2000:]
    [notice] = store.messages("alice")
    assert notice["Return-Path"] == "<>"
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    report = notice.as_string()
    for user, code in (("nosuchuser", "5.1.1"), ("full", "5.2.2")):
        assert f"Final-Recipient: rfc822; {user}@{DOMAIN}" in report
        assert f"Status: {code}" in report
    assert f"Final-Recipient: rfc822; bob@{DOMAIN}" not in report
    assert mta.queue_json() == []


def test_store_down_defers_and_a_flush_delivers_when_it_is_back(make_mta, stopped_store):
    store = stopped_store
    mta = start_mta(make_mta, f"lmtp:unix:{store.socket}")
    queue_id = send(mta, [f"alice@{DOMAIN}"], "sender@example.org", "later", "wait for it\n")
    assert wait_until(lambda: f"{queue_id}: to=<" in mta.log_text()), mta.log_text()[-2000:]
    assert re.search(delivered_line(queue_id, "alice", "", "deferred")
                     + rf"\(connect to .*\[{re.escape(str(store.socket))}\]: No such file or directory\)",
                     mta.log_text()), mta.log_text()[-2000:]
    [queued] = mta.queue_json()
    assert queued["queue_id"] == queue_id and queued["queue_name"] == "deferred"
    store.start()
    mta.cli("postqueue", "-f")
    assert wait_until(lambda: removed(mta, queue_id)), mta.log_text()[-2000:]
    assert re.search(delivered_line(queue_id, "alice", f"[{store.socket}]", "sent"), mta.log_text())
    assert [m["Subject"] for m in store.messages("alice")] == ["later"]


def test_client_connection_lhlo_and_per_recipient_replies(store, tmp_path, run):
    wire = (b"From: sender@example.org\r\nTo: alice@mailbox.test\r\nSubject: direct\r\n"
            b"Message-ID: <direct@example.org>\r\n\r\n"
            b"8-bit: \xc3\xa4\r\n..\r\n...stuffed\r\n..leading dot\r\n")  # stored dot-stuffed
    path = tmp_path / "segment"
    path.write_bytes(b"HEAD" + wire + b"TAIL")
    content = ContentSource(str(path), 4, len(wire))
    recipients = [Recipient(f"{name}@{DOMAIN}") for name in ("alice", "nosuchuser", "full", "bob")]
    envelope = Envelope(queue_id="4ABCDEF", sender="sender@example.org", recipients=recipients,
                        arrival_time=time.time(), size=len(wire), body_type="8BITMIME")

    async def deliver(address: str, port: int):
        connection = await SmtpConnection.open("store.example", address, port,
                                               helo_name="client.example", lmtp=True)
        extensions = dict(connection.extensions)
        results = await connection.deliver(envelope, content, [3, 2, 1, 0])
        await connection.close()
        return connection.peer, extensions, results

    for address, port in ((str(store.socket), 0), (store.host, store.port)):
        peer, extensions, results = run(deliver(address, port))
        assert peer == (f"store.example[{address}]" if port == 0 else f"store.example[{address}]:{port}")
        assert {"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"} <= set(extensions)
        assert [(r.index, r.status, r.dsn) for r in results] == [
            (3, "sent", "2.0.0"), (2, "bounced", "5.2.2"), (1, "bounced", "5.1.1"), (0, "sent", "2.0.0")]
        assert results[1].reply.endswith("(in reply to end of DATA command)")
        assert results[2].reply.endswith("(in reply to RCPT TO command)")
    for user in ("alice", "bob"):
        stored = [path.read_bytes() for path in sorted((store.mail / user / "Maildir" / "new").iterdir())]
        assert len(stored) == 2
        for message in stored:
            # Dot-stuffing undone by the server, 8-bit bytes as sent.
            assert message.endswith(b"\n\n8-bit: \xc3\xa4\n.\n..stuffed\n.leading dot\n")
