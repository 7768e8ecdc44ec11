"""SMTP AUTH in smtpd against real peers: a private Dovecot is the SASL server for both a
private Postfix (smtpd_sasl_type = dovecot) and pyfastmta, and the same AUTH dialogs must get
the same reply lines from both; swaks authenticates; the passwd-file backend end to end; a
submission service on 587 (master.cf -o overrides) with STARTTLS and AUTH.

Dovecot slows down the next attempt from an address that just failed (its auth penalty): every
dialog comes from a loopback address of its own and fails at most once."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest
from peers.certificates import self_signed_certificate
from peers.dialog import differences
from peers.dialog import run_dialog as dialog
from peers.dovecot import DOVECOT, b64
from peers.loopback import wait_until
from peers.privatepostfix import PostfixInstance
from peers.rawclient import RawClient

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or not os.path.exists(DOVECOT)
                                  or not shutil.which("postfix", path="/usr/sbin:/usr/bin")),
    reason="a private Dovecot and a private Postfix need root and their packages (make sysdeps)")

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"

COMMON = {
    "myhostname": "mx.example.test",
    "mydomain": "example.test",
    "myorigin": "mx.example.test",
    "mydestination": "localhost, mx.example.test",
    "mynetworks": "127.0.0.1/32",
    "smtpd_peername_lookup": "no",
    "smtpd_soft_error_limit": "1000",
    "smtpd_hard_error_limit": "1000",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_sasl_type": "dovecot",
    "broken_sasl_auth_clients": "yes",
    "smtpd_sender_restrictions": "reject_sender_login_mismatch",
}
LOGINS = "alice@owned.example alice\nshared@owned.example bob, alice\n@bobs.example bob\n"

ALICE = b64("\0alice\0secret")
PLAIN_ALICE = f"AUTH PLAIN {ALICE}"
ENVELOPE = ["MAIL FROM:<a@client.example>", "RCPT TO:<u@mx.example.test>",
            "RCPT TO:<x@foreign.example>", "RSET"]

DIALOGS = [
    # AUTH before EHLO is allowed; authentication survives EHLO; AUTH twice; AUTH=<>.
    [PLAIN_ALICE, "EHLO c.example", PLAIN_ALICE, "MAIL FROM:<a@client.example> AUTH=<>",
     "RCPT TO:<x@foreign.example>", "QUIT"],
    # PLAIN without an initial response: an empty challenge first.
    ["EHLO c.example", "AUTH PLAIN", b64("\0bob\0b0b-pass"), *ENVELOPE, "QUIT"],
    # LOGIN, asked for user and password; LOGIN with the user name as initial response.
    ["EHLO c.example", "AUTH LOGIN", b64("carol"), b64("Carol with spaces"), "QUIT"],
    ["EHLO c.example", "AUTH LOGIN " + b64("carol"), b64("Carol with spaces"), "QUIT"],
    # Wrong passwords, unknown users, another user's identity, no separators.
    ["EHLO c.example", "AUTH PLAIN " + b64("\0alice\0wrong"), *ENVELOPE, "QUIT"],
    ["EHLO c.example", "AUTH LOGIN", b64("alice"), b64("wrong"), "QUIT"],
    ["EHLO c.example", "AUTH PLAIN " + b64("\0nobody\0secret"), "QUIT"],
    ["EHLO c.example", "AUTH PLAIN " + b64("alice\0bob\0b0b-pass"), "QUIT"],
    # "=" is an empty initial response.
    ["EHLO c.example", "AUTH PLAIN =", "QUIT"],
    # Cancelled with "*".
    ["EHLO c.example", "AUTH LOGIN", "*", "QUIT"],
    ["EHLO c.example", "AUTH PLAIN", "*", "NOOP", "QUIT"],
    # Bad base64, in a response and as the initial response.
    ["EHLO c.example", "AUTH PLAIN", "!!notbase64", "QUIT"],
    ["EHLO c.example", "AUTH PLAIN !!notbase64", "QUIT"],
    # Unknown mechanism, syntax errors, then a lower-case AUTH that works.
    ["EHLO c.example", "AUTH CRAM-MD5", "AUTH", "AUTH PLAIN a b", "auth plain " + ALICE, "QUIT"],
    # AUTH inside a mail transaction.
    ["EHLO c.example", "MAIL FROM:<a@client.example>", PLAIN_ALICE, "QUIT"],
    # HELO clients may authenticate too; AUTH= with an address.
    ["HELO c.example", PLAIN_ALICE, "MAIL FROM:<alice@owned.example> AUTH=<alice@owned.example>",
     "RCPT TO:<x@foreign.example>", "QUIT"],
    # smtpd_sender_login_maps: alice owns alice@ and shared@, bob owns shared@ and bobs.example.
    ["EHLO c.example", PLAIN_ALICE, "MAIL FROM:<alice@owned.example>", "RCPT TO:<x@foreign.example>",
     "RSET", "MAIL FROM:<shared@owned.example>", "RCPT TO:<x@foreign.example>", "RSET",
     "MAIL FROM:<bob@bobs.example>", "RCPT TO:<x@foreign.example>", "RSET",
     "MAIL FROM:<nobody@elsewhere.example>", "RCPT TO:<x@foreign.example>", "QUIT"],
    ["EHLO c.example", "MAIL FROM:<alice@owned.example>", "RCPT TO:<u@mx.example.test>", "RSET",
     "MAIL FROM:<anyone@elsewhere.example>", "RCPT TO:<u@mx.example.test>", "QUIT"],
    # Pipelined: the exchange's response line is never taken for a command.
    [["EHLO c.example", "AUTH LOGIN"], [b64("bob"), b64("b0b-pass"), "MAIL FROM:<shared@owned.example>",
                                        "RCPT TO:<x@foreign.example>", "QUIT"]],
]

# One loopback source address per dialog and run (see the module's docstring).
_sources = (f"127.0.{2 + n // 250}.{1 + n % 250}" for n in itertools.count())


def _normal(command: str, lines: list[str]) -> str:
    if command == "CONNECT":
        return lines[0][:3]
    if command.upper() == "EHLO":
        # Each server has keywords of its own; the AUTH lines must be the same.
        return " | ".join([lines[0][:3], *[line[4:] for line in lines if line[4:].startswith("AUTH")]])
    return re.sub(r"queued as \w+", "queued as ID", "\n".join(lines))


def run_dialog(port: int, steps) -> list[str]:
    return dialog(port, next(_sources), steps, _normal)


@pytest.fixture(scope="module")
def tables():
    directory = Path(tempfile.mkdtemp(prefix="pyfastmta-auth-"))
    directory.chmod(0o755)
    (directory / "logins").write_text(LOGINS)
    (directory / "logins").chmod(0o644)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def settings_for(dovecot, tables) -> dict[str, str]:
    return {**COMMON, "smtpd_sasl_path": str(dovecot.socket),
            "smtpd_sender_login_maps": f"texthash:{tables}/logins"}


@pytest.fixture(scope="module")
def postfix_transcripts(dovecot, tables):
    postfix = PostfixInstance(main_cf=settings_for(dovecot, tables))
    try:
        postfix.start()
        yield [run_dialog(postfix.port, steps) for steps in DIALOGS]
    finally:
        postfix.stop()
        postfix.remove()


def test_auth_dialogs_match_postfix(postfix_transcripts, dovecot, tables, make_mta):
    mta = make_mta(settings_for(dovecot, tables))
    report = differences([run_dialog(mta.port, steps) for steps in DIALOGS], postfix_transcripts)
    assert not report, "\n".join(report)
    # Postfix's log lines: the failure warning and the SASL fields of the client= line.
    assert mta.logged("SASL PLAIN authentication failed: (reason unavailable), sasl_username=alice")
    assert mta.logged("SASL LOGIN authentication aborted")
    assert mta.logged(", sasl_method=PLAIN, sasl_username=alice, sasl_sender=<alice@owned.example>")
    assert mta.logged("SASL CRAM-MD5 authentication failed: Invalid authentication mechanism")


# smtpd_sasl_mechanism_filter, smtpd_sasl_response_limit (its least value, 12288, which is more
# than line_length_limit) and smtpd_client_auth_rate_limit, against the same private Postfix.
LIMITED = {"smtpd_sasl_mechanism_filter": "!PLAIN, static:rest",
           "smtpd_client_auth_rate_limit": "3"}


def _plain_response(size: int) -> str:
    """A PLAIN response of exactly `size` base64 characters (a multiple of 4): alice with a long
    wrong password."""
    return b64("\0alice\0" + "x" * (size // 4 * 3 - 7))


LIMITED_DIALOGS = [
    # EHLO announces LOGIN only; PLAIN, filtered out of the announcement, is still accepted.
    ["EHLO c.example", PLAIN_ALICE, "QUIT"],
    # A response longer than line_length_limit but within the response limit reaches the backend;
    # Postfix's bound counts the line ending, so 12288 characters are one too many.
    ["EHLO c.example", "AUTH PLAIN", _plain_response(12284), "QUIT"],
    ["EHLO c.example", "AUTH PLAIN", _plain_response(12288), "NOOP", "QUIT"],
    # The fourth AUTH of a client in anvil_rate_time_unit, whatever the first three did.
    ["EHLO c.example", "AUTH", "AUTH CRAM-MD5", "AUTH PLAIN a b", PLAIN_ALICE, "AUTH LOGIN", "NOOP",
     "QUIT"],
]


def run_limited_dialog(port: int, steps) -> list[str]:
    # The rate limit's reply names the client, whose address differs from run to run.
    return [re.sub(r"127\.0\.\d+\.\d+", "CLIENT", line) for line in run_dialog(port, steps)]


@pytest.fixture(scope="module")
def postfix_limited_transcripts(dovecot, tables):
    postfix = PostfixInstance(main_cf={**settings_for(dovecot, tables), **LIMITED})
    try:
        postfix.start()
        yield [run_limited_dialog(postfix.port, steps) for steps in LIMITED_DIALOGS]
    finally:
        postfix.stop()
        postfix.remove()


def test_auth_limits_match_postfix(postfix_limited_transcripts, dovecot, tables, make_mta):
    mta = make_mta({**settings_for(dovecot, tables), **LIMITED})
    ours = [run_limited_dialog(mta.port, steps) for steps in LIMITED_DIALOGS]
    report = differences(ours, postfix_limited_transcripts)
    assert not report, "\n".join(report)
    assert "EHLO c.example -> 250 | AUTH LOGIN | AUTH=LOGIN" in ours[0]
    assert ours[2][3].endswith("-> 500 5.5.6 SASL response limit exceeded")
    assert ours[3][5] == "AUTH PLAIN " + ALICE + " -> 450 4.7.1 Error: too many AUTH commands from CLIENT"
    for line in (r"warning: unknown\[127\.0\.\d+\.\d+\]: request longer than 12288",
                 r"warning: AUTH command rate limit exceeded: 4 from unknown\[127\.0\.\d+\.\d+\] "
                 rf"for service {mta.host}:{mta.port}"):
        assert wait_until(lambda: re.search(line, mta.log_text()), 10), line


def test_swaks_auth_relays_with_authenticated_header(dovecot, tables, make_mta):
    mta = make_mta({**settings_for(dovecot, tables), "smtpd_sasl_authenticated_header": "yes"})
    for mechanism in ("PLAIN", "LOGIN"):
        result = subprocess.run(
            [SWAKS, "--server", f"{mta.host}:{mta.port}", "--auth", mechanism, "--auth-user", "bob",
             "--auth-password", "b0b-pass", "--from", "bob@bobs.example", "--to", "x@foreign.example",
             "--helo", "client.example", "--body", "authenticated"],
            capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "235 2.7.0 Authentication successful" in result.stdout
        queue_id = re.search(r"queued as ([0-9A-F]+)", result.stdout).group(1)
        headers = mta.cli("postcat", "-h", "-q", queue_id).stdout
        # RFC 3848's ESMTPA and Postfix's clause before "by".
        assert re.search(r"Received: from client\.example \(unknown \[127\.0\.0\.1\]\)\n"
                         r"\t\(Authenticated sender: bob\)\n"
                         rf"\tby mx\.example\.test \(\w+\) with ESMTPA id {queue_id}", headers), headers
    assert mta.logged("client=unknown[127.0.0.1], sasl_method=LOGIN, sasl_username=bob")


def test_passwd_file_backend_end_to_end(dovecot, make_mta, connect):
    mta = make_mta({**COMMON, "smtpd_sasl_type": "passwd-file", "smtpd_sasl_path": str(dovecot.users),
                    "smtpd_sender_restrictions": ""}, host="127.0.0.1")
    client = connect(mta, source="127.0.1.1")
    code, text = client.command("EHLO c.example")
    assert "250-AUTH PLAIN LOGIN" in text
    assert client.command("MAIL FROM:<a@client.example>")[0] == 250
    assert client.command("RCPT TO:<x@foreign.example>")[0] == 454  # not yet authenticated
    assert client.command("RSET")[0] == 250
    assert client.command("AUTH PLAIN " + b64("\0dave\0wrong")) == (
        535, "535 5.7.8 Error: authentication failed: (reason unavailable)")
    assert client.command("AUTH LOGIN") == (334, "334 VXNlcm5hbWU6")
    assert client.command(b64("dave")) == (334, "334 UGFzc3dvcmQ6")
    assert client.command(b64("dävé-ünicode")) == (235, "235 2.7.0 Authentication successful")
    assert client.command("MAIL FROM:<a@client.example>")[0] == 250
    assert client.command("RCPT TO:<x@foreign.example>")[0] == 250
    assert client.command("DATA")[0] == 354
    code, text = client.command("Subject: hi\r\n\r\nbody\r\n.")
    assert code == 250, text
    assert mta.logged("sasl_method=LOGIN, sasl_username=dave")
    assert mta.logged("SASL PLAIN authentication failed: (reason unavailable), sasl_username=dave")


def test_cyrus_is_refused_with_a_reason(make_mta):
    mta = make_mta({"smtpd_sasl_auth_enable": "yes"}, start=False)
    result = mta.cli("start", check=False)
    assert result.returncode != 0
    assert "smtpd_sasl_type = cyrus" in result.stdout + result.stderr


def test_submission_service_with_starttls_and_auth(dovecot, tables, make_mta, tmp_path):
    directory = tmp_path / "tls"
    directory.mkdir()
    cert_file, key_file = self_signed_certificate(directory, "mx.example.test")
    mta = make_mta({**settings_for(dovecot, tables), "smtpd_sasl_auth_enable": "no",
                    "smtpd_tls_cert_file": str(cert_file), "smtpd_tls_key_file": str(key_file),
                    "smtpd_tls_security_level": "may"}, start=False)
    from peers.loopback import free_port

    submission = free_port()
    (mta.dir / "master.cf").write_text(
        f"{mta.host}:{mta.port} inet n - n - - smtpd\n"
        f"{mta.host}:{submission} inet n - n - - smtpd\n"
        "  -o smtpd_sasl_auth_enable=yes\n  -o smtpd_tls_security_level=encrypt\n"
        "  -o smtpd_tls_auth_only=yes\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n")
    mta.start()
    # Port 25 of the same instance offers no AUTH.
    plain = RawClient(mta.host, mta.port, source="127.0.1.2")
    try:
        assert plain.reply()[0] == 220
        assert "AUTH" not in plain.command("EHLO c.example")[1]
        assert plain.command(PLAIN_ALICE)[1] == "503 5.5.1 Error: authentication not enabled"
    finally:
        plain.close()
    client = RawClient(mta.host, submission, source="127.0.1.3")
    try:
        assert client.reply()[0] == 220
        assert "AUTH" not in client.command("EHLO c.example")[1]  # only under TLS
        assert client.command(PLAIN_ALICE)[0] == 530
        assert client.command("STARTTLS")[0] == 220
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a self-signed test certificate
        client.sock = context.wrap_socket(client.sock)
        assert "250-AUTH PLAIN LOGIN" in client.command("EHLO c.example")[1]
        assert client.command("MAIL FROM:<a@client.example>")[0] == 250
        assert client.command("RCPT TO:<x@foreign.example>")[1] == (
            "554 5.7.1 <x@foreign.example>: Recipient address rejected: Access denied")
        assert client.command("RSET")[0] == 250
        assert client.command(PLAIN_ALICE)[0] == 235
        assert client.command("MAIL FROM:<alice@owned.example>")[0] == 250
        assert client.command("RCPT TO:<x@foreign.example>")[0] == 250
        assert client.command("DATA")[0] == 354
        code, text = client.command("Subject: submitted\r\n\r\nbody\r\n.")
        assert code == 250, text
    finally:
        client.close()
    assert mta.logged("sasl_method=PLAIN, sasl_username=alice")
