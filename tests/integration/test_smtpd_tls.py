"""TLS in smtpd against real clients: swaks (STARTTLS and implicit TLS), a private Postfix that
must encrypt when it relays into pyfastmta, Python's ssl module over raw sockets for the
STARTTLS injection probes and session resumption across workers. Every test runs with workers
on uvloop and on asyncio."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess

import pytest
from peers.certificates import client_certificate, self_signed_certificate
from peers.loopback import wait_until
from peers.privatepostfix import PostfixInstance
from peers.rawclient import RawClient

from pyfastmta.smtpd.tls import fingerprint

SWAKS = shutil.which("swaks")


@pytest.fixture
def certificate(tmp_path):
    directory = tmp_path / "tls"
    directory.mkdir()
    return self_signed_certificate(directory, "mx.example.test")


def tls_settings(certificate, level: str = "may", **more: str) -> dict[str, str]:
    cert_file, key_file = certificate
    settings = {"smtpd_tls_security_level": level, "smtpd_tls_cert_file": str(cert_file),
                "smtpd_tls_key_file": str(key_file), "smtpd_tls_loglevel": "1",
                "smtpd_tls_received_header": "yes", "smtpd_peername_lookup": "no"}
    settings.update(more)
    return settings


def client_context() -> ssl.SSLContext:
    # The server's certificate is self-signed: these tests look at the session, not at trust.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class TlsClient(RawClient):
    """A socket SMTP client that can switch to TLS and sends exactly the bytes it is given."""

    def start_tls(self, context: ssl.SSLContext | None = None, session=None) -> None:
        # Whatever the server sent after its 220 in plaintext would be a protocol error.
        assert self.buffer == b"", self.buffer
        self.sock = (context or client_context()).wrap_socket(self.sock, session=session)


@pytest.fixture
def clients():
    opened: list[TlsClient] = []

    def open_client(mta, greet: bool = True) -> TlsClient:
        client = TlsClient(mta.host, mta.port)
        opened.append(client)
        if greet:
            assert client.reply()[0] == 220
        return client

    yield open_client
    for client in opened:
        client.close()


def postcat(mta, queue_id: str) -> str:
    return mta.cli("postcat", "-h", "-q", queue_id).stdout


def queued_id(text: str) -> str:
    match = re.search(r"queued as ([0-9A-F]+)", text)
    assert match, text
    return match.group(1)


# ---- real clients --------------------------------------------------------------------------


def test_swaks_starttls_delivers_with_tls_in_received_and_log(make_mta, certificate):
    mta = make_mta(tls_settings(certificate))
    result = subprocess.run(
        [SWAKS, "--server", f"{mta.host}:{mta.port}", "--tls", "--from", "alice@example.org",
         "--to", "bob@example.test", "--helo", "client.example.org", "--body", "over TLS"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS" in result.stdout and "TLS started" in result.stdout
    queue_id = queued_id(result.stdout)
    headers = postcat(mta, queue_id)
    # Postfix's layout: the TLS lines between "from" and "by", and ESMTPS for the protocol.
    assert re.search(r"Received: from client\.example\.org \(unknown \[127\.0\.0\.1\]\)\n"
                     r"\t\(using TLSv1\.[23] with cipher \S+ \((\d+)/\1 bits\)\)\n"
                     r"\t\(No client certificate requested\)\n"
                     r"\tby mx\.example\.test \(\S+\) with ESMTPS id " + queue_id, headers), headers
    assert re.search(r"smtpd\[\d+\]: Anonymous TLS connection established from unknown\[127\.0\.0\.1\]: "
                     r"TLSv1\.[23] with cipher \S+ \((\d+)/\1 bits\)", mta.log_text())


def test_swaks_tls_on_connect_to_a_wrappermode_service(make_mta, certificate):
    # Implicit TLS is a master.cf service with -o smtpd_tls_wrappermode=yes: no STARTTLS level
    # is needed in main.cf, and the service's override reaches the worker's settings.
    settings = tls_settings(certificate, level="none")
    mta = make_mta(settings, start=False)
    master = (mta.dir / "master.cf").read_text().rstrip("\n")
    (mta.dir / "master.cf").write_text(master + "\n  -o smtpd_tls_wrappermode=yes\n")
    mta.start()
    result = subprocess.run(
        [SWAKS, "--server", f"{mta.host}:{mta.port}", "--tls-on-connect", "--from", "alice@example.org",
         "--to", "bob@example.test", "--helo", "client.example.org", "--body", "implicit TLS"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # A wrapped session does not offer STARTTLS again.
    assert "250-STARTTLS" not in result.stdout
    headers = postcat(mta, queued_id(result.stdout))
    assert "with ESMTPS id" in headers and "(using TLSv1." in headers
    assert mta.logged("Anonymous TLS connection established from unknown[127.0.0.1]")
    # A plaintext client on that port gets no banner and no reply: the server waits for a
    # handshake, and a plaintext line is not one.
    with socket.create_connection((mta.host, mta.port), timeout=2) as plain:
        plain.sendall(b"EHLO plain.example.org\r\n")
        data = b""
        try:
            while chunk := plain.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        assert b"220" not in data and b"250" not in data
    assert mta.logged("SSL_accept error from unknown[127.0.0.1]")


def test_private_postfix_relays_into_pyfastmta_with_tls_required(make_mta, certificate):
    mta = make_mta(tls_settings(certificate))
    postfix = PostfixInstance(relayhost=f"[127.0.0.1]:{mta.port}", main_cf={
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_loglevel": "1",
        "smtpd_peername_lookup": "no",
    })
    try:
        postfix.start()
        with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@example.test"],
                            "Subject: through Postfix\r\n\r\nencrypted hop\r\n")
        assert wait_until(lambda: len(mta.queue_json()) == 1, timeout=60), \
            postfix.maillog_file.read_text(errors="replace")
        assert wait_until(lambda: "status=sent" in postfix.maillog_file.read_text(errors="replace"))
        log = postfix.maillog_file.read_text(errors="replace")
        assert re.search(rf"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:{mta.port}: "
                         r"TLSv1\.[23] with cipher", log), log
    finally:
        postfix.stop()
        postfix.remove()
    queue_id = mta.queue_json()[0]["queue_id"]
    headers = postcat(mta, queue_id)
    assert "with ESMTPS id " + queue_id in headers and "(using TLSv1." in headers


# ---- STARTTLS: replies and the injection defence ------------------------------------------


def test_plaintext_pipelined_after_starttls_is_never_executed(make_mta, certificate, clients):
    mta = make_mta(tls_settings(certificate))
    client = clients(mta)
    code, text = client.command("EHLO client.example.org")
    assert code == 250 and "250-STARTTLS" in text
    # The injection: a command behind STARTTLS in the same write.
    client.send(b"STARTTLS\r\nRSET\r\n")
    assert client.reply() == (220, "220 2.0.0 Ready to start TLS")
    client.start_tls()
    # The first reply over TLS is the one to this EHLO, not one to the injected RSET; and the
    # client starts over (RFC 3207): no STARTTLS on offer any more.
    code, text = client.command("EHLO client.example.org")
    assert code == 250 and text.startswith("250-mx.example.test"), text
    assert "STARTTLS" not in text
    assert client.command("QUIT")[0] == 221
    client.close()
    assert mta.logged("disconnect from unknown[127.0.0.1] ehlo=2 starttls=1 quit=1 commands=4")


def test_mail_from_pipelined_after_starttls_is_discarded(make_mta, certificate, clients):
    mta = make_mta(tls_settings(certificate))
    client = clients(mta)
    assert client.command("EHLO client.example.org")[0] == 250
    client.send(b"STARTTLS\r\nMAIL FROM:<mallory@example.org>\r\n")
    assert client.reply()[0] == 220
    client.start_tls()
    assert client.command("EHLO client.example.org")[0] == 250
    # Had the injected MAIL run, this would be accepted.
    assert client.command("RCPT TO:<bob@example.test>") == (503, "503 5.5.1 Error: need MAIL command")
    assert client.command("MAIL FROM:<alice@example.org>") == (250, "250 2.1.0 Ok")
    assert client.command("RCPT TO:<bob@example.test>")[0] == 250
    assert client.command("DATA")[0] == 354
    code, _text = client.command("Subject: after TLS\r\n\r\nbody\r\n.")
    assert code == 250
    assert [m["sender"] for m in mta.queue_json()] == ["alice@example.org"]


def test_starttls_resets_helo_and_transaction(make_mta, certificate, clients):
    mta = make_mta(tls_settings(certificate))
    client = clients(mta)
    assert client.command("EHLO before.example.org")[0] == 250
    assert client.command("MAIL FROM:<alice@example.org>")[0] == 250
    assert client.command("STARTTLS")[0] == 220
    client.start_tls()
    # The transaction begun before TLS is gone.
    assert client.command("RCPT TO:<bob@example.test>")[0] == 503
    assert client.command("MAIL FROM:<alice@example.org>")[0] == 250
    assert client.command("RCPT TO:<bob@example.test>")[0] == 250
    assert client.command("DATA")[0] == 354
    queue_id = queued_id(client.command("Subject: x\r\n\r\nbody\r\n.")[1])
    # The HELO name from before TLS does not reach Received:.
    headers = postcat(mta, queue_id)
    assert "Received: from unknown (unknown [127.0.0.1])" in headers, headers
    assert "with SMTP id" in headers  # no EHLO since TLS started


def test_starttls_replies_as_postfix(make_mta, certificate, clients):
    mta = make_mta(tls_settings(certificate))
    client = clients(mta)
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("STARTTLS now") == (501, "501 5.5.4 Syntax: STARTTLS")
    assert client.command("STARTTLS")[0] == 220
    client.start_tls()
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("STARTTLS") == (554, "554 5.5.1 Error: TLS already active")
    # Without TLS configured, STARTTLS is an unknown feature.
    plain = make_mta({})
    other = clients(plain)
    code, text = other.command("EHLO client.example.org")
    assert code == 250 and "STARTTLS" not in text
    assert other.command("STARTTLS") == (502, "502 5.5.1 Error: command not implemented")


def test_level_encrypt_refuses_mail_before_starttls(make_mta, certificate, clients):
    mta = make_mta(tls_settings(certificate, level="encrypt"))
    client = clients(mta)
    code, text = client.command("EHLO client.example.org")
    assert code == 250 and "250-STARTTLS" in text
    refusal = (530, "530 5.7.0 Must issue a STARTTLS command first")
    assert client.command("MAIL FROM:<alice@example.org>") == refusal
    assert client.command("VRFY bob") == refusal
    assert client.command("NOOP")[0] == 250
    assert client.command("STARTTLS")[0] == 220
    client.start_tls()
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("MAIL FROM:<alice@example.org>") == (250, "250 2.1.0 Ok")
    # smtplib too: a plaintext sender is refused.
    with smtplib.SMTP(mta.host, mta.port, timeout=15) as plain:
        plain.ehlo("client.example.org")
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            plain.sendmail("alice@example.org", ["bob@example.test"], "Subject: x\r\n\r\nx\r\n")
        assert refused.value.smtp_code == 530


def test_failed_handshake_is_logged_and_closes_the_connection(make_mta, certificate, clients):
    mta = make_mta(tls_settings(certificate))
    client = clients(mta)
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("STARTTLS")[0] == 220
    client.send(b"this is not a TLS ClientHello\r\n" * 4)
    client.sock.settimeout(15)
    try:
        assert client.sock.recv(4096) == b""
    except ConnectionResetError:
        pass
    assert mta.logged("SSL_accept error from unknown[127.0.0.1]: ")
    assert mta.logged("lost connection after STARTTLS from unknown[127.0.0.1]")
    assert mta.logged("disconnect from unknown[127.0.0.1] ehlo=1 starttls=1 commands=2")
    # The worker serves the next client as usual.
    with smtplib.SMTP(mta.host, mta.port, timeout=15) as next_client:
        assert next_client.ehlo("client.example.org")[0] == 250


def test_client_silent_after_starttls_is_dropped_at_the_handshake_timeout(make_mta, certificate,
                                                                         clients):
    mta = make_mta(tls_settings(certificate, smtpd_starttls_timeout="1s"))
    client = clients(mta)
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("STARTTLS")[0] == 220
    client.sock.settimeout(15)
    try:
        assert client.sock.recv(4096) == b""
    except ConnectionResetError:
        pass
    assert mta.logged("SSL_accept error from unknown[127.0.0.1]: timeout")
    assert mta.logged("disconnect from unknown[127.0.0.1] ehlo=1 starttls=1 commands=2")


# ---- sessions across workers ----------------------------------------------------------------


def _tls_session(mta, context, session=None):
    client = TlsClient(mta.host, mta.port)
    try:
        assert client.reply()[0] == 220
        assert client.command("EHLO client.example.org")[0] == 250
        assert client.command("STARTTLS")[0] == 220
        client.start_tls(context, session)
        # The ticket arrives after the handshake: one round trip brings it in.
        assert client.command("EHLO client.example.org")[0] == 250
        assert client.command("QUIT")[0] == 221
        return client.sock.session, client.sock.session_reused
    finally:
        client.close()


def test_sessions_resume_on_every_worker(make_mta, certificate):
    mta = make_mta(tls_settings(certificate, worker_count="2"))
    assert len(mta.worker_pids()) == 2
    context = client_context()
    session, reused = _tls_session(mta, context)
    assert session is not None and not reused
    results = []
    # The kernel spreads connections over the workers; go on until both served resumed sessions.
    for _ in range(40):
        results.append(_tls_session(mta, context, session)[1])
        pids = set(re.findall(r"smtpd\[(\d+)\]: Anonymous TLS connection", mta.log_text()))
        if len(results) >= 4 and len(pids) == 2:
            break
    assert all(results), results
    assert len(set(re.findall(r"smtpd\[(\d+)\]: Anonymous TLS connection", mta.log_text()))) == 2


def sender_with_certificate(mta, cert_file, key_file) -> TlsClient:
    """A client that presents its certificate after STARTTLS and has said EHLO and MAIL FROM."""
    context = client_context()
    context.load_cert_chain(cert_file, key_file)
    client = TlsClient(mta.host, mta.port)
    assert client.reply()[0] == 220
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("STARTTLS")[0] == 220
    client.start_tls(context)
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("MAIL FROM:<alice@example.org>")[0] == 250
    return client


def test_client_certificate_fingerprint(make_mta, certificate, tmp_path):
    ca_file, cert_file, key_file, der = client_certificate(tmp_path / "tls")
    mta = make_mta(tls_settings(certificate, smtpd_tls_ask_ccert="yes", smtpd_tls_CAfile=str(ca_file)))
    client = sender_with_certificate(mta, cert_file, key_file)
    try:
        assert client.command("RCPT TO:<bob@example.test>")[0] == 250
        assert client.command("DATA")[0] == 354
        queue_id = queued_id(client.command("Subject: x\r\n\r\nbody\r\n.")[1])
    finally:
        client.close()
    assert mta.logged("Trusted TLS connection established from unknown[127.0.0.1]")
    headers = postcat(mta, queue_id)
    assert '(Client CN "client.example.test", Issuer "Test CA" (verified OK))' in headers, headers
    # The digest Postfix would look up for permit_tls_clientcerts (sha256 by default).
    assert len(fingerprint(der, "sha256").split(":")) == 32


@pytest.mark.parametrize("listed", [True, False])
def test_permit_tls_clientcerts_lets_a_listed_certificate_relay(make_mta, certificate, tmp_path, listed):
    """relay_clientcerts lists fingerprints (smtpd_tls_fingerprint_digest); a client outside
    mynetworks relays with a listed certificate and is refused without one."""
    ca_file, cert_file, key_file, der = client_certificate(tmp_path / "tls")
    table = tmp_path / "relay_clientcerts"
    table.write_text(f"{fingerprint(der, 'sha256') if listed else '00:11'} client.example.test\n")
    mta = make_mta(tls_settings(certificate, smtpd_tls_ask_ccert="yes", smtpd_tls_CAfile=str(ca_file),
                                mynetworks="127.0.0.2/32", relay_clientcerts=f"texthash:{table}",
                                smtpd_relay_restrictions="permit_tls_clientcerts, reject_unauth_destination"))
    client = sender_with_certificate(mta, cert_file, key_file)
    try:
        reply = client.command("RCPT TO:<bob@elsewhere.example>")
    finally:
        client.close()
    if listed:
        assert reply[0] == 250, reply
    else:
        assert reply == (554, "554 5.7.1 <bob@elsewhere.example>: Relay access denied")


# ---- configuration -------------------------------------------------------------------------


def test_missing_certificate_is_a_config_error_naming_the_file(make_mta, tmp_path):
    missing = tmp_path / "nowhere" / "cert.pem"
    mta = make_mta({"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(missing)},
                   start=False)
    result = mta.cli("start", check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert f"smtpd_tls_cert_file: cannot read {missing}: No such file or directory" in text, text
    assert mta.master_pid() is None


def test_certificate_without_its_key_is_a_config_error(make_mta, certificate, tmp_path):
    cert_file, _key_file = certificate
    self_signed_certificate(tmp_path, "other.example.test")
    other_key = tmp_path / "key.pem"
    mta = make_mta(tls_settings(certificate, smtpd_tls_key_file=str(other_key)), start=False)
    result = mta.cli("start", check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert f"cannot load the certificate and key from {cert_file} and {other_key}" in text, text


def test_protocol_list_in_postfix_syntax_limits_the_handshake(make_mta, certificate, clients):
    mta = make_mta(tls_settings(certificate, smtpd_tls_protocols=">=TLSv1.2, !TLSv1.3"))
    client = clients(mta)
    assert client.command("EHLO client.example.org")[0] == 250
    assert client.command("STARTTLS")[0] == 220
    client.start_tls()
    assert client.sock.version() == "TLSv1.2"
    too_new = client_context()
    too_new.minimum_version = ssl.TLSVersion.TLSv1_3
    other = clients(mta)
    assert other.command("EHLO client.example.org")[0] == 250
    assert other.command("STARTTLS")[0] == 220
    with pytest.raises(ssl.SSLError):
        other.start_tls(too_new)


pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (SWAKS is None or os.geteuid() != 0
                                  or shutil.which("postfix", path="/usr/sbin:/usr/bin") is None),
    reason="swaks and a private Postfix (root) are installed by make sysdeps")


def test_protocol_lists_in_postfix_syntax():
    from pyfastmta.smtpd.tls import TlsParameterError, protocol_range

    assert protocol_range(">=TLSv1") == ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
    assert protocol_range("!SSLv2, !SSLv3") == ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
    assert protocol_range("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1") == ["TLSv1.2", "TLSv1.3"]
    assert protocol_range("TLSv1.2 TLSv1.3") == ["TLSv1.2", "TLSv1.3"]
    assert protocol_range(">=TLSv1.1 <=TLSv1.2 !tlsv1.1") == ["TLSv1.2"]
    for bad in ("TLSv9", ">=TLSv1.3 !TLSv1.3"):
        with pytest.raises(TlsParameterError):
            protocol_range(bad)
