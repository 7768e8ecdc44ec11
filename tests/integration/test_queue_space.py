"""Free space in the queue file system: MAIL FROM is refused with 452 4.3.1 when the queue has no
more than queue_minfree bytes free, or no more than 1.5 times message_size_limit (replies and log
lines compared with a private Postfix); a queue on a small tmpfs refuses mail until there is room;
and when the room runs out between MAIL and the end of the data, the client hears 451 and nothing
that was acknowledged is lost, across a restart too."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess

import pytest
from peers.dialog import differences
from peers.dialog import run_dialog as dialog
from peers.loopback import wait_until
from peers.privatepostfix import PostfixInstance

NEEDS_ROOT = pytest.mark.skipif(not os.environ.get("CI") and os.geteuid() != 0,
                                reason="mounting a tmpfs needs root")
HAS_POSTFIX = bool(shutil.which("postfix", path="/usr/sbin:/usr/bin"))

# More than any file system here has free.
HUGE = str(10 ** 18)
COMMON = {"smtpd_peername_lookup": "no", "mynetworks": "127.0.0.0/8"}
DIALOG = ["HELO c.example", "MAIL FROM:<a@client.example>", "EHLO c.example",
          "MAIL FROM:<a@client.example> SIZE=100", "MAIL FROM:<>", "RCPT TO:<u@example.test>",
          "NOOP", "QUIT"]
MESSAGE = b"Subject: room\r\n\r\n" + b"x" * 998 + b"\r\n"


def _normal(command: str, lines: list[str]) -> str:
    # Each server has its own greeting and EHLO keywords.
    if command in ("CONNECT", "EHLO", "HELO"):
        return lines[0][:3]
    return "\n".join(lines)


def _space_lines(log: str) -> list[str]:
    """The refusals and the warnings about queue space, then the last disconnect line with its
    command counts, without time, host and process."""
    found, disconnect = [], []
    for line in log.splitlines():
        text = line.partition("]: ")[2]
        if "queue_minfree(" in text:
            # Postfix's advice comes once per smtpd process, pyfastmta's once per worker.
            if text not in found:
                found.append(text)
        elif "Insufficient system storage" in text or "free space" in text:
            found.append(re.sub(r"\d+ bytes", "N bytes", text))
        elif text.startswith("disconnect from"):
            # Postfix lists the command counts in its command table's order.
            disconnect = [" ".join(sorted(text.split()))]
    return found + disconnect


@pytest.mark.parametrize("limits", [
    {"queue_minfree": HUGE},
    # The 1.5 x message_size_limit rule, with Postfix's advice about a queue_minfree below it.
    {"message_size_limit": str(10 ** 15), "queue_minfree": "1",
     "mailbox_size_limit": "0", "virtual_mailbox_limit": "0"},
], ids=["queue_minfree", "message_size_limit"])
@pytest.mark.skipif(not os.environ.get("CI") and (os.geteuid() != 0 or not HAS_POSTFIX),
                    reason="a private Postfix needs root and the postfix package")
def test_refusal_at_mail_matches_postfix(limits, make_mta):
    postfix = PostfixInstance(main_cf={**COMMON, **limits})
    try:
        postfix.start()
        theirs = dialog(postfix.port, "127.0.0.1", DIALOG, _normal)
        assert wait_until(lambda: "commands=4/8" in postfix.maillog_file.read_text(), 10)
        their_log = _space_lines(postfix.maillog_file.read_text())
    finally:
        postfix.stop()
        postfix.remove()
    mta = make_mta({**COMMON, **limits})
    ours = dialog(mta.port, "127.0.0.1", DIALOG, _normal)
    report = differences([ours], [theirs])
    assert not report, "\n".join(report)
    assert "MAIL FROM:<a@client.example> -> 452 4.3.1 Insufficient system storage" in ours
    # Each refusal counts as a failed command and starts no transaction (RCPT: need MAIL).
    assert mta.logged("commands=4/8")
    assert _space_lines(mta.log_text()) == their_log


def test_queue_minfree_refuses_until_lowered(make_mta, connect):
    """A reload that lowers queue_minfree lets mail in again: the space is read at every MAIL."""
    mta = make_mta({"queue_minfree": HUGE})
    client = connect(mta)
    assert client.command("EHLO c.example")[0] == 250
    assert client.command("MAIL FROM:<a@client.example>") == (452, "452 4.3.1 Insufficient system storage")
    assert mta.logged("[127.0.0.1]: 452 4.3.1 Insufficient system storage; proto=ESMTP helo=<c.example>")
    assert re.search(r"NOQUEUE: reject: MAIL from \S+\[127\.0\.0\.1\]: 452 4\.3\.1 .*\n.*"
                     r"warning: not enough free space in mail queue: \d+ bytes < "
                     r"1\.5\*message size limit", mta.log_text())
    mta.write_config({**_settings(mta), "queue_minfree": "0"})
    mta.cli("reload")
    assert wait_until(lambda: _mail_accepted(mta, connect), 10)


def _settings(mta) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in (mta.dir / "main.cf").read_text().splitlines())


def _mail_accepted(mta, connect) -> bool:
    client = connect(mta)
    client.command("EHLO c.example")
    return client.command("MAIL FROM:<a@client.example>")[0] == 250


@pytest.fixture
def small_spool():
    """mount(mta, size): the MTA's queue directory on a tmpfs of that size; unmounted at the end
    (the test stops the MTA first; a busy mount is detached lazily)."""
    mounted = []

    def mount(mta, size: str) -> None:
        mta.spool.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mta.spool)], check=True)
        mounted.append(mta.spool)

    yield mount
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


@NEEDS_ROOT
def test_small_queue_file_system_refuses_mail(make_mta, connect, small_spool):
    """An 8 MB queue with the default message_size_limit (10240000): no MAIL is accepted, since a
    message of the allowed size might not fit; a limit that fits 1.5 times lets mail in."""
    mta = make_mta(start=False)
    small_spool(mta, "8m")
    try:
        mta.start()
        client = connect(mta)
        client.command("EHLO c.example")
        assert client.command("MAIL FROM:<a@client.example>") == (
            452, "452 4.3.1 Insufficient system storage")
        mta.stop()
        mta.write_config({**_settings(mta), "message_size_limit": "4000000"})
        mta.start()
        client = connect(mta)
        client.command("EHLO c.example")
        assert client.command("MAIL FROM:<a@client.example>")[0] == 250
        client.command("QUIT")  # a stop waits for open transactions
    finally:
        mta.stop()


def _fill(path) -> None:
    """Writes path until the file system has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                if os.write(fd, chunk) < len(chunk):
                    chunk = chunk[:1]  # the last few bytes, one at a time
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[:1]
    finally:
        os.close(fd)


def _send(client, body: bytes) -> tuple[int, str]:
    client.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
    assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
    client.send(body + b".\r\n")
    return client.reply()


@NEEDS_ROOT
def test_no_room_at_end_of_data_is_451_and_nothing_acknowledged_is_lost(make_mta, connect, small_spool):
    """The queue's file system fills up after MAIL was accepted: the end of the data gets 451
    4.3.0, never 250; the next MAIL gets 452; once there is room again mail is accepted, and
    after a restart the queue holds exactly the messages that were acknowledged."""
    mta = make_mta({"message_size_limit": "2000000", "worker_count": "1"}, start=False)
    small_spool(mta, "16m")
    filler = mta.spool / "filler"
    try:
        mta.start()
        client = connect(mta)
        client.command("EHLO c.example")
        code, first = _send(client, MESSAGE)
        assert code == 250, first
        first_id = first.rsplit(" ", 1)[1]
        # Its delivery attempt writes a state record too: let it be written before the disk fills.
        assert mta.logged(f"{first_id}: to=<u@example.test>")
        assert client.command("MAIL FROM:<a@client.example>")[0] == 250
        assert client.command("RCPT TO:<u@example.test>")[0] == 250
        assert client.command("DATA")[0] == 354
        _fill(filler)
        client.send(b"Subject: too late\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1000 + b".\r\n")
        assert client.reply() == (451, "451 4.3.0 Error: queue file write error")
        assert mta.logged("queue file write error")
        # No room: refused at MAIL now, and the session goes on.
        assert client.command("MAIL FROM:<a@client.example>") == (
            452, "452 4.3.1 Insufficient system storage")
        assert client.command("NOOP")[0] == 250
        assert {m["queue_id"] for m in mta.queue_json()} == {first_id}
        filler.unlink()
        code, second = _send(client, MESSAGE)
        assert code == 250, second
        acknowledged = {first_id, second.rsplit(" ", 1)[1]}
        assert {m["queue_id"] for m in mta.queue_json()} == acknowledged
        client.command("QUIT")
        # Recovery reads the segment the failed write left behind, torn tail and all.
        mta.stop()
        mta.start()
        assert {m["queue_id"] for m in mta.queue_json()} == acknowledged
    finally:
        mta.stop()
