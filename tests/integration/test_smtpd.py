"""smtpd against real clients: smtplib, swaks, and raw sockets with pipelined writes."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import time

import pytest

MESSAGE = (
    "From: Alice <alice@example.org>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: hello\r\n"
    "\r\n"
    "Hello Bob.\r\n"
)


def queued_id(text: str) -> str:
    match = re.search(r"queued as ([0-9A-F]+)", text)
    assert match, text
    return match.group(1)


def test_smtplib_message_is_queued_and_listed(mta):
    with smtplib.SMTP(mta.host, mta.port, timeout=15) as client:
        code, banner = client.ehlo("client.example.org")
        assert code == 250
        features = banner.decode().splitlines()
        assert features[0] == "mx.example.test"
        for extension in ("PIPELINING", "SIZE 10240000", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN",
                          "SMTPUTF8"):
            assert extension in features
        refused = client.sendmail("alice@example.org", ["bob@example.test"], MESSAGE)
        assert refused == {}
        code, text = client.noop()
        assert code == 250
    queue = mta.queue_json()
    assert len(queue) == 1
    entry = queue[0]
    assert entry["sender"] == "alice@example.org"
    assert [r["address"] for r in entry["recipients"]] == ["bob@example.test"]
    assert re.fullmatch(r"[0-9A-F]{12,16}", entry["queue_id"])
    mailq = mta.cli("postqueue", "-p").stdout
    assert entry["queue_id"] in mailq
    assert "alice@example.org" in mailq and "bob@example.test" in mailq
    assert "in 1 Request." in mailq


def test_swaks_sends(mta):
    swaks = shutil.which("swaks")
    assert swaks, "swaks is installed by make test"
    result = subprocess.run(
        [swaks, "--server", f"{mta.host}:{mta.port}", "--from", "alice@example.org",
         "--to", "carol@example.test", "--helo", "client.example.org", "--body", "via swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "queued as" in result.stdout
    assert [m["sender"] for m in mta.queue_json()] == ["alice@example.org"]


def test_pipelined_transaction_in_one_write(mta, connect):
    client = connect(mta)
    client.send(b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n"
                b"RCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
    assert client.reply()[0] == 250  # EHLO
    assert client.reply() == (250, "250 2.1.0 Ok")
    assert client.reply() == (250, "250 2.1.5 Ok")
    assert client.reply() == (250, "250 2.1.5 Ok")
    assert client.reply()[0] == 354
    # The message, its end, the next transaction and QUIT all in one write.
    client.send(b"Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.test>\r\n"
                b"DATA\r\n")
    first = queued_id(client.reply()[1])
    assert client.reply()[0] == 250
    assert client.reply()[0] == 250
    assert client.reply()[0] == 354
    client.send(b"Subject: two\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
    second = queued_id(client.reply()[1])
    assert client.reply() == (221, "221 2.0.0 Bye")
    assert first != second
    queue = {m["queue_id"]: m for m in mta.queue_json()}
    assert queue[first]["sender"] == "a@example.org"
    assert len(queue[first]["recipients"]) == 2
    assert queue[second]["sender"] == "MAILER-DAEMON"  # as Postfix's postqueue -j shows <>
    stored = mta.cli("postcat", "-bh", "-q", second).stdout
    assert "Subject: two\n" in stored
    assert "\n.leading dot\n" in stored


def test_command_errors_and_replies(mta, connect):
    client = connect(mta)
    assert client.command("HELO") == (501, "501 Syntax: HELO hostname")
    assert client.command("HELO client.example.org") == (250, "250 mx.example.test")
    assert client.command("RCPT TO:<b@example.test>") == (503, "503 5.5.1 Error: need MAIL command")
    assert client.command("DATA") == (503, "503 5.5.1 Error: need RCPT command")
    assert client.command("MAIL FROM:bad<") [0] == 501
    assert client.command("MAIL TO:<a@example.org>") == (501, "501 5.5.4 Syntax: MAIL FROM:<address>")
    assert client.command("MAIL FROM:<a@example.org> FOO=BAR") == (555, "555 5.5.4 Unsupported option: FOO")
    assert client.command("MAIL FROM:<a@example.org>") == (250, "250 2.1.0 Ok")
    assert client.command("MAIL FROM:<a@example.org>") == (503, "503 5.5.1 Error: nested MAIL command")
    assert client.command("RSET") == (250, "250 2.0.0 Ok")
    assert client.command("NOOP") == (250, "250 2.0.0 Ok")
    assert client.command("VRFY bob@example.test")[0] == 252
    assert client.command("HELP")[0] == 214
    assert client.command("XYZZY") == (500, "500 5.5.2 Error: command not recognized")
    assert client.command("QUIT") == (221, "221 2.0.0 Bye")
    assert client.closed_by_server()


def test_relay_control_for_a_client_outside_mynetworks(make_mta, connect):
    mta = make_mta({"mynetworks": "127.0.0.1/32"}, host="127.0.0.1")
    outsider = connect(mta, source="127.0.0.2")
    assert outsider.command("EHLO outside.example")[0] == 250
    assert outsider.command("MAIL FROM:<x@outside.example>")[0] == 250
    # Postfix's default smtpd_relay_restrictions end in defer_unauth_destination: 454, not 554.
    assert outsider.command("RCPT TO:<victim@elsewhere.example>") == (
        454, "454 4.7.1 <victim@elsewhere.example>: Relay access denied")
    assert outsider.command("RCPT TO:<user@example.test>") == (250, "250 2.1.5 Ok")
    insider = connect(mta, source="127.0.0.1")
    assert insider.command("EHLO inside.example")[0] == 250
    assert insider.command("MAIL FROM:<x@example.test>")[0] == 250
    assert insider.command("RCPT TO:<anyone@elsewhere.example>") == (250, "250 2.1.5 Ok")
    assert mta.logged("reject: RCPT from")


def test_relay_control_from_lookup_tables(make_mta, connect, tmp_path):
    """mynetworks, mydestination and relay_domains as tables: a client listed in the mynetworks
    table relays; another one reaches only the table-listed local and relay domains (relay_domains
    matching subdomains, as parent_domain_matches_subdomains has it by default)."""
    (tmp_path / "networks").write_text("127.0.0.1 trusted\n")
    (tmp_path / "local").write_text("table-local.example OK\n")
    (tmp_path / "relay").write_text("table-relay.example OK\n")
    mta = make_mta({"mynetworks": f"texthash:{tmp_path}/networks",
                    "mydestination": f"localhost, texthash:{tmp_path}/local",
                    "relay_domains": f"!no.table-relay.example, texthash:{tmp_path}/relay"})
    outsider = connect(mta, source="127.0.0.2")
    assert outsider.command("EHLO outside.example")[0] == 250
    assert outsider.command("MAIL FROM:<x@outside.example>")[0] == 250
    assert outsider.command("RCPT TO:<u@table-local.example>")[0] == 250
    assert outsider.command("RCPT TO:<u@sub.table-relay.example>")[0] == 250
    assert outsider.command("RCPT TO:<u@no.table-relay.example>")[0] == 454
    assert outsider.command("RCPT TO:<u@sub.table-local.example>")[0] == 454  # mydestination: exact
    insider = connect(mta, source="127.0.0.1")
    assert insider.command("EHLO inside.example")[0] == 250
    assert insider.command("MAIL FROM:<x@example.test>")[0] == 250
    assert insider.command("RCPT TO:<anyone@elsewhere.example>")[0] == 250


def test_a_missing_table_stops_the_start_with_its_name(make_mta, tmp_path):
    mta = make_mta({"mynetworks": f"texthash:{tmp_path}/absent"}, start=False)
    result = mta.cli("start", check=False)
    assert result.returncode != 0
    assert f"{tmp_path}/absent: file not found" in result.stderr


@pytest.mark.parametrize("smuggle", [
    b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\r\n\x00.\r\n", b"\n.\r\r\n",
])
def test_no_smtp_smuggling(mta, connect, smuggle):
    client = connect(mta)
    client.command("EHLO attacker.example")
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
    client.send(b"Subject: outer\r\n\r\nouter body" + smuggle +
                b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
    code, text = client.reply()
    assert code == 250, text
    client.send(b"QUIT\r\n")
    assert client.reply()[0] == 221
    queue = mta.queue_json()
    assert len(queue) == 1, queue
    assert queue[0]["sender"] == "a@example.org"


# Every way to end a line around a dot that is not CR LF . CR LF: bare CR or LF before or after
# the dot, a NUL beside it, a doubled CR.
_LINE_ENDS = [b"\r\n", b"\n", b"\r", b"\r\r\n", b""]
_DOTS = [b".", b"\x00.", b".\x00", b" ."]
SMUGGLING_ENDS = [before + dot + after for before in _LINE_ENDS for dot in _DOTS for after in _LINE_ENDS
                  if before + after and b"\r\n.\r\n" not in before + dot + after]


@pytest.mark.parametrize("forbid_bare_newline", ["normalize", "reject"])
def test_no_smtp_smuggling_in_any_combination(make_mta, connect, forbid_bare_newline):
    # From a client in mynetworks and from one outside it, each almost-end-of-data followed by a
    # second transaction: at most one message per connection, never the smuggled one.
    mta = make_mta({"mynetworks": "127.0.0.1/32", "smtpd_forbid_bare_newline": forbid_bare_newline})
    accepted = 0
    for source in ("127.0.0.1", "127.0.0.2"):
        for smuggle in SMUGGLING_ENDS:
            client = connect(mta, source=source)
            client.command("EHLO attacker.example")
            client.send(b"MAIL FROM:<outer@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
            assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
            client.send(b"Subject: outer\r\n\r\nouter body" + smuggle +
                        b"MAIL FROM:<smuggled@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
                        b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
            code, text = client.reply()
            if code == 250:
                accepted += 1
            else:
                assert forbid_bare_newline == "reject" and b"\n" in smuggle.replace(b"\r\n", b""), \
                    (smuggle, text)
            try:
                client.send(b"QUIT\r\n")
                remaining = client.reply()
            except (ConnectionError, OSError):
                remaining = None
            # Nothing after the real end of data may be taken for the smuggled commands.
            assert remaining is None or remaining[0] in (221, 500, 502), (smuggle, remaining)
            client.close()
    queue = mta.queue_json()
    assert len(queue) == accepted
    assert {message["sender"] for message in queue} <= {"outer@example.org"}
    if forbid_bare_newline == "normalize":
        assert accepted == 2 * len(SMUGGLING_ENDS)


def test_junk_commands_count_as_errors_past_the_limit(make_mta, connect):
    # With a limit of 3, four NOOP/VRFY/RSET are free (Postfix counts "more than 3" before it
    # adds one); each after them is an error; once the errors reach the hard limit of 4, the
    # next command is answered 421. The same dialogue with Postfix 3.7 gives the same replies.
    mta = make_mta({"smtpd_junk_command_limit": "3", "smtpd_hard_error_limit": "4",
                    "smtpd_soft_error_limit": "10"})
    client = connect(mta)
    replies = [client.command(command)[0]
               for command in ["NOOP", "VRFY x", "RSET", "NOOP", "NOOP", "RSET", "NOOP", "NOOP"]]
    assert replies == [250, 252, 250, 250, 250, 250, 250, 250]
    assert client.command("NOOP") == (421, "421 4.7.0 mx.example.test Error: too many errors")
    assert client.closed_by_server()
    # A message received in full starts the count again.
    client = connect(mta)
    for _ in range(7):
        assert client.command("NOOP")[0] == 250
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
    assert client.command("Subject: s\r\n\r\nbody\r\n.")[0] == 250
    assert [client.command("NOOP")[0] for _ in range(8)] == [250] * 8
    assert mta.logged("too many errors after NOOP from")


def test_size_limits(make_mta, connect):
    mta = make_mta({"message_size_limit": "2000"})
    client = connect(mta)
    client.command("EHLO client.example.org")
    assert client.command("MAIL FROM:<a@example.org> SIZE=5000") == (
        552, "552 5.3.4 Message size exceeds fixed limit")
    assert client.command("MAIL FROM:<a@example.org> SIZE=100")[0] == 250
    assert client.command("RCPT TO:<b@example.test>")[0] == 250
    assert client.command("DATA")[0] == 354
    client.send(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 100 + b".\r\n")
    assert client.reply() == (552, "552 5.3.4 Error: message file too big")
    # The session goes on after the refused message.
    assert client.command("MAIL FROM:<a@example.org>")[0] == 250
    assert mta.queue_json() == []


def test_recipient_limit(make_mta, connect):
    mta = make_mta({"smtpd_recipient_limit": "3"})
    client = connect(mta)
    client.command("EHLO client.example.org")
    client.command("MAIL FROM:<a@example.org>")
    for n in range(3):
        assert client.command(f"RCPT TO:<r{n}@example.test>")[0] == 250
    assert client.command("RCPT TO:<r4@example.test>") == (452, "452 4.5.3 Error: too many recipients")


def test_overlong_command_line(mta, connect):
    client = connect(mta)
    assert client.command("NOOP " + "x" * 5000) == (500, "500 5.5.2 Error: line too long")
    assert client.command("NOOP") == (250, "250 2.0.0 Ok")


def test_idle_client_times_out(make_mta, connect):
    mta = make_mta({"smtpd_timeout": "1s"})
    client = connect(mta)
    started = time.monotonic()
    code, text = client.reply()
    assert code == 421 and "4.4.2" in text
    assert time.monotonic() - started < 10
    assert client.closed_by_server()
    assert mta.logged("timeout after CONNECT from")


def test_mail_loop_is_refused(mta, connect):
    client = connect(mta)
    client.command("EHLO client.example.org")
    client.command("MAIL FROM:<a@example.org>")
    client.command("RCPT TO:<b@example.test>")
    client.command("DATA")
    hops = b"".join(b"Received: from hop%d.example by hop%d.example;\r\n" % (n, n) for n in range(60))
    client.send(hops + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
    assert client.reply() == (554, "554 5.4.6 Too many hops")
    assert mta.queue_json() == []


def test_unicode_address_needs_smtputf8(mta, connect):
    client = connect(mta)
    client.command("EHLO client.example.org")
    assert client.command("MAIL FROM:<jöran@example.org>")[0] == 553
    assert client.command("MAIL FROM:<jöran@example.org> SMTPUTF8")[0] == 250
    assert client.command("RCPT TO:<ünï@example.test>")[0] == 250


def test_maillog_lines_in_postfix_format(mta):
    with smtplib.SMTP(mta.host, mta.port, timeout=15) as client:
        client.sendmail("alice@example.org", ["bob@example.test"], MESSAGE)
    assert mta.logged("disconnect from")
    text = mta.log_text()
    qid = mta.queue_json()[0]["queue_id"]
    prefix = r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d mx\.example\.test pyfastmta/(\w+)\[\d+\]: "
    assert re.search(prefix + r"connect from localhost\[127\.0\.0\.1\]$", text, re.M)
    assert re.search(prefix + qid + r": client=localhost\[127\.0\.0\.1\]$", text, re.M)
    assert re.search(prefix + qid + r": message-id=<", text, re.M)
    assert re.search(prefix + qid + r": from=<alice@example\.org>, size=\d+, nrcpt=1 \(queue active\)$",
                     text, re.M)
    assert re.search(prefix + r"disconnect from localhost\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=1 data=1"
                     r" quit=1 commands=5$", text, re.M)


def test_commands_pipelined_behind_a_message_wait_in_tcp_not_in_memory(make_mta, connect):
    """Far more than the paused-session buffer arrives while the message is committed; every
    command still gets its reply, in order. (So many NOOPs would be junk past the default
    smtpd_junk_command_limit.)"""
    mta = make_mta({"smtpd_junk_command_limit": "100000"})
    client = connect(mta)
    client.command("EHLO client.example.org")
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
    count = 30000
    client.send(b"Subject: s\r\n\r\nbody\r\n.\r\n" + b"NOOP\r\n" * count + b"QUIT\r\n")
    assert client.reply()[0] == 250
    codes = [client.reply()[0] for _ in range(count)]
    assert codes == [250] * count
    assert client.reply()[0] == 221


def test_control_characters_in_helo_never_reach_a_header(mta, connect):
    client = connect(mta)
    assert client.command("HELO evil.example\rX-Injected: yes")[0] == 250
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
    client.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
    queue_id = queued_id(client.reply()[1])
    stored = mta.cli("postcat", "-h", "-q", queue_id).stdout
    assert "Received: from evil.example?X-Injected: yes (localhost [127.0.0.1])" in stored
    assert "\r" not in stored


def test_dsn_parameters_are_kept_and_checked(mta, connect):
    client = connect(mta)
    client.command("EHLO client.example.org")
    assert client.command("MAIL FROM:<a@example.org> RET=HDRS ENVID=x+0Dy")[0] == 501
    assert client.command("MAIL FROM:<a@example.org> RET=BOTH")[0] == 501
    assert client.command("MAIL FROM:<a@example.org> RET=HDRS ENVID=abc+2Bdef") == (250, "250 2.1.0 Ok")
    assert client.command("RCPT TO:<b@example.test> NOTIFY=NEVER,SUCCESS")[0] == 501
    assert client.command("RCPT TO:<b@example.test> ORCPT=rfc822;b+0A@example.test")[0] == 501
    assert client.command("RCPT TO:<b@example.test> NOTIFY=failure,success "
                          "ORCPT=rfc822;B+40example.test") == (250, "250 2.1.5 Ok")
    assert client.command("RCPT TO:<c@example.test>") == (250, "250 2.1.5 Ok")
    assert client.command("DATA")[0] == 354
    client.send(b"Subject: dsn\r\n\r\nbody\r\n.\r\n")
    queue_id = queued_id(client.reply()[1])
    envelope = mta.cli("postcat", "-e", "-q", queue_id).stdout.splitlines()
    assert "dsn_envid: abc+def" in envelope
    assert "dsn_ret: HDRS" in envelope
    recipients = envelope[envelope.index("dsn_ret: HDRS") + 1:-1]
    assert recipients == ["dsn_orig_rcpt: rfc822;B@example.test", "dsn_notify: SUCCESS,FAILURE",
                          "recipient: b@example.test", "recipient: c@example.test"]
