"""smtpd's log lines against Postfix's own: the same sessions through a private Postfix and
through pyfastmta, from clients outside mynetworks; every line logged for a client (connect,
refusals, the queue ID's client line, improper pipelining with what was pipelined, timeouts,
lost connections, the disconnect counts) must be the same, queue IDs aside."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time

import pytest

from peers.dialog import run_dialog
from peers.privatepostfix import PostfixInstance
from peers.rawclient import reply_lines

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or not shutil.which("postfix", path="/usr/sbin:/usr/bin")),
    reason="a private Postfix needs root (`postfix start`) and Postfix installed (make sysdeps)")

CLIENT = "127.0.0.2"

SETTINGS = {
    "myhostname": "mx.example.test",
    "mydestination": "mx.example.test",
    "mynetworks": "127.0.0.1/32",
    "smtpd_peername_lookup": "no",
    "message_size_limit": "100000",
    "smtpd_timeout": "3s",  # the sessions that wait for a timeout
}

DIALOG = [
    "NOOP",
    "FOO",
    "EHLO client.example",
    "HELO other.example",  # HELO after EHLO: still ESMTP
    "MAIL FROM:<a@client.example> SIZE=999999999",
    "MAIL FROM:<a@client.example> SIZE=50000",
    "RCPT TO:<u@elsewhere.example>",
    "RCPT TO:<u@mx.example.test>",
    "RSET",
    "NOOP",
    "QUIT",
]


def client_lines(log: str, client: str = CLIENT) -> list[str]:
    """What smtpd logged for client, without the syslog prefix, queue IDs as ID."""
    lines = []
    for line in log.splitlines():
        program, _, text = line.partition("]: ")
        if "/smtpd[" not in program or f"[{client}]" not in text:
            continue
        lines.append(re.sub(r"^(?!NOQUEUE:)[0-9A-Za-z]{6,}(?=: )", "ID", text))
    return lines


def session_log(read_log, clients=(CLIENT,)) -> dict[str, list[str]]:
    deadline = time.monotonic() + 15
    while not all(any(line.startswith("disconnect from") for line in client_lines(read_log(), client))
                  for client in clients):
        assert time.monotonic() < deadline, read_log()
        time.sleep(0.05)
    return {client: client_lines(read_log(), client) for client in clients}


HELLO = "EHLO client.example\r\n"
ENVELOPE = [HELLO, "MAIL FROM:<a@client.example>\r\n", "RCPT TO:<u@mx.example.test>\r\n", "DATA\r\n"]
MESSAGE = "Subject: test\r\n\r\nbody\r\n.\r\n"
# Sessions that end without QUIT, one client address each: (steps, end). A step is what the
# client sends; it waits for one reply after each step but the message text ("body" steps).
# end: "close", "reset" (RST), or "wait" for smtpd_timeout.
UNFINISHED = {
    "127.0.0.10": ([], "close"),
    "127.0.0.11": ([HELLO], "close"),
    "127.0.0.12": ([HELLO, "FOO\r\n"], "close"),
    "127.0.0.13": (ENVELOPE[:2], "reset"),
    # In DATA: the count is of whole lines, without dot-stuffing, a bare LF counting as CR LF.
    "127.0.0.14": (ENVELOPE + [("body", "Subject: test\r\n\r\n..dot\r\nbare\nlf\r\npartial")], "close"),
    "127.0.0.15": (ENVELOPE, "close"),
    # Right after a message: no lost connection line. After a command that followed it: one.
    "127.0.0.16": (ENVELOPE + [MESSAGE], "close"),
    "127.0.0.17": (ENVELOPE + [MESSAGE, "RSET\r\n"], "close"),
    # Improper pipelining, with what was pipelined quoted (C-style escapes for what is not text).
    "127.0.0.18": ([HELLO, "MAIL FROM:<a@client.example>\r\nRCPT TO:<u@mx.example.test>\r\n"
                           "DATA\r\nx\ty\\z\x01\xc3\xa9\x7f\r\n"], "close"),
    "127.0.0.19": (["HELO client.example\r\nNOOP\r\n"], "close"),
    "127.0.0.20": (ENVELOPE + [("body", "Subject: test\r\n\r\nbody text\r\n")], "wait"),
    "127.0.0.21": (ENVELOPE + [MESSAGE], "wait"),
    "127.0.0.22": ([HELLO, "MAIL FROM:<a@client.example>\r\n"], "wait"),
}


def run_unfinished(port: int) -> None:
    """Runs every UNFINISHED session; the ones that wait stay open together until the server's
    timeout has passed."""
    waiting = []
    for client, (steps, end) in UNFINISHED.items():
        sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(client, 0))
        buffer = bytearray()
        reply_lines(sock, buffer)
        for step in steps:
            body = isinstance(step, tuple)
            sock.sendall((step[1] if body else step).encode("latin-1"))
            if not body:
                reply_lines(sock, buffer)
        if end == "wait":
            waiting.append(sock)
            continue
        if end == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.close()
    time.sleep(float(SETTINGS["smtpd_timeout"].rstrip("s")) + 1)
    for sock in waiting:
        sock.close()


@pytest.fixture(scope="module")
def postfix_logs():
    """Postfix's lines for the dialog of test_session_log_matches_postfix (under CLIENT) and for
    the UNFINISHED sessions."""
    postfix = PostfixInstance(main_cf=SETTINGS)
    try:
        postfix.start()
        run_dialog(postfix.port, CLIENT, DIALOG, lambda verb, lines: lines[0])
        run_unfinished(postfix.port)
        return session_log(lambda: postfix.maillog_file.read_text(errors="replace"),
                           (CLIENT, *UNFINISHED))
    finally:
        postfix.stop()
        postfix.remove()


def test_session_log_matches_postfix(postfix_logs, make_mta):
    mta = make_mta(SETTINGS)
    run_dialog(mta.port, CLIENT, DIALOG, lambda verb, lines: lines[0])
    ours = session_log(mta.log_text)[CLIENT]
    assert ours == postfix_logs[CLIENT]
    # What the comparison covers: the SIZE refusal names its sender; the counts are in
    # Postfix's order of commands, the unknown one last.
    assert ("NOQUEUE: reject: MAIL from unknown[127.0.0.2]: 552 5.3.4 Message size exceeds fixed "
            "limit; from=<a@client.example> proto=ESMTP helo=<other.example>") in ours
    assert "ID: client=unknown[127.0.0.2]" in ours
    assert ours[-1] == ("disconnect from unknown[127.0.0.2] helo=1 ehlo=1 mail=1/2 rcpt=1/2 rset=1 "
                        "noop=2 quit=1 unknown=0/1 commands=8/11")


def test_unfinished_sessions_log_as_postfix(postfix_logs, make_mta):
    mta = make_mta(SETTINGS)
    run_unfinished(mta.port)
    ours = session_log(mta.log_text, tuple(UNFINISHED))
    for client in UNFINISHED:
        assert ours[client] == postfix_logs[client], client
    # What the comparison covers.
    assert "lost connection after CONNECT from unknown[127.0.0.10]" in ours["127.0.0.10"]
    assert "lost connection after UNKNOWN from unknown[127.0.0.12]" in ours["127.0.0.12"]
    assert "lost connection after MAIL from unknown[127.0.0.13]" in ours["127.0.0.13"]
    assert ours["127.0.0.14"][-2:] == [
        "lost connection after DATA (33 bytes) from unknown[127.0.0.14]",
        "disconnect from unknown[127.0.0.14] ehlo=1 mail=1 rcpt=1 data=0/1 commands=3/4"]
    assert not any(line.startswith("lost connection") for line in ours["127.0.0.16"])
    assert "lost connection after RSET from unknown[127.0.0.17]" in ours["127.0.0.17"]
    assert ("improper command pipelining after DATA from unknown[127.0.0.18]: "
            "x\\ty\\\\z\\001\\303\\251\\177\\r\\n") in ours["127.0.0.18"]
    assert "improper command pipelining after HELO from unknown[127.0.0.19]: NOOP\\r\\n" in ours["127.0.0.19"]
    assert "timeout after DATA (28 bytes) from unknown[127.0.0.20]" in ours["127.0.0.20"]
    assert "timeout after END-OF-MESSAGE from unknown[127.0.0.21]" in ours["127.0.0.21"]
    assert "timeout after MAIL from unknown[127.0.0.22]" in ours["127.0.0.22"]


def test_client_that_talks_before_the_greeting(make_mta):
    """A client whose first command is there before the greeting is sent (the workers are held
    while it connects and talks) pipelined improperly: logged as Postfix logs it, and refused by
    reject_unauth_pipelining."""
    mta = make_mta(dict(SETTINGS, smtpd_client_restrictions="reject_unauth_pipelining"))
    workers = mta.worker_pids()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        sock = socket.create_connection(("127.0.0.1", mta.port), timeout=15, source_address=("127.0.0.23", 0))
        sock.sendall(HELLO.encode())
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    with sock:
        buffer = bytearray()
        assert reply_lines(sock, buffer)[0].startswith("220 ")
        assert reply_lines(sock, buffer)[0].startswith("250-")
        for command in ENVELOPE[1:3]:
            sock.sendall(command.encode())
            reply = reply_lines(sock, buffer)
        assert reply == ["503 5.5.0 <unknown[127.0.0.23]>: Client host rejected: Improper use of SMTP "
                         "command pipelining"]
    assert mta.logged("improper command pipelining after CONNECT from unknown[127.0.0.23]: "
                      "EHLO client.example\\r\\n")
