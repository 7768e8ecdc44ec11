"""smtpd's log lines for one session against Postfix's own: the same dialog through a private
Postfix and through pyfastmta, from a client outside mynetworks; every line logged for that
client (connect, refusals, the queue ID's client line, the disconnect counts) must be the same,
queue IDs aside."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from peers.dialog import run_dialog
from peers.privatepostfix import PostfixInstance

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
}

DIALOG = [
    "NOOP",
    "FOO",
    "EHLO client.example",
    "MAIL FROM:<a@client.example> SIZE=999999999",
    "MAIL FROM:<a@client.example> SIZE=50000",
    "RCPT TO:<u@elsewhere.example>",
    "RCPT TO:<u@mx.example.test>",
    "RSET",
    "NOOP",
    "QUIT",
]


def client_lines(log: str) -> list[str]:
    """What smtpd logged for CLIENT, without the syslog prefix, queue IDs as ID."""
    lines = []
    for line in log.splitlines():
        program, _, text = line.partition("]: ")
        if "/smtpd[" not in program or f"[{CLIENT}]" not in text:
            continue
        lines.append(re.sub(r"^(?!NOQUEUE:)[0-9A-Za-z]{6,}(?=: )", "ID", text))
    return lines


def session_log(read_log) -> list[str]:
    deadline = time.monotonic() + 10
    while not any(line.startswith("disconnect from") for line in client_lines(read_log())):
        assert time.monotonic() < deadline, read_log()
        time.sleep(0.05)
    return client_lines(read_log())


@pytest.fixture(scope="module")
def postfix_log():
    postfix = PostfixInstance(main_cf=SETTINGS)
    try:
        postfix.start()
        run_dialog(postfix.port, CLIENT, DIALOG, lambda verb, lines: lines[0])
        return session_log(lambda: postfix.maillog_file.read_text(errors="replace"))
    finally:
        postfix.stop()
        postfix.remove()


def test_session_log_matches_postfix(postfix_log, make_mta):
    mta = make_mta(SETTINGS)
    run_dialog(mta.port, CLIENT, DIALOG, lambda verb, lines: lines[0])
    ours = session_log(mta.log_text)
    assert ours == postfix_log
    # What the comparison covers: the SIZE refusal names its sender; the counts are in
    # Postfix's order of commands, the unknown one last.
    assert ("NOQUEUE: reject: MAIL from unknown[127.0.0.2]: 552 5.3.4 Message size exceeds fixed "
            "limit; from=<a@client.example> proto=ESMTP helo=<client.example>") in ours
    assert "ID: client=unknown[127.0.0.2]" in ours
    assert ours[-1] == ("disconnect from unknown[127.0.0.2] ehlo=1 mail=1/2 rcpt=1/2 rset=1 noop=2 "
                        "quit=1 unknown=0/1 commands=7/10")
