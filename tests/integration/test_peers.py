"""Clients beyond smtplib and raw sockets: Postfix's smtp-source with reused sessions
and many recipients, swaks pipelining 8-bit mail, and the installed CLI."""

from __future__ import annotations

import email
import email.policy
import shutil
import subprocess


def test_smtp_source_reused_sessions_many_recipients(mta):
    smtp_source = shutil.which("smtp-source", path="/usr/sbin:/usr/bin")
    assert smtp_source, "smtp-source comes with Debian's postfix package, installed by make test"
    result = subprocess.run(
        [smtp_source, "-d", "-s", "4", "-m", "200", "-r", "5", "-N", "-l", "30000",
         "-f", "sender@example.org", "-t", "rcpt@example.test", f"{mta.host}:{mta.port}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    queue = mta.queue_json()
    assert len(queue) == 200
    assert all(len(message["recipients"]) == 5 for message in queue)
    assert all(message["message_size"] > 30000 for message in queue)
    recipients = {r["address"] for message in queue for r in message["recipients"]}
    assert len(recipients) == 1000  # -N numbers every recipient


def test_swaks_pipelining_8bit(mta):
    swaks = shutil.which("swaks")
    assert swaks
    body = "Grüße aus Zürich\n.\n..two dots\n"
    result = subprocess.run(
        [swaks, "--server", f"{mta.host}:{mta.port}", "--pipeline",
         "--from", "jorg@example.org", "--to", "zoe@example.test",
         "--header", "Subject: ümlaut", "--body", body],
        capture_output=True, timeout=60)
    text = result.stdout.decode(errors="replace")
    assert result.returncode == 0, text
    queue_id = text.split("queued as ")[1].split()[0]
    stored = mta.cli("postcat", "-bh", "-q", queue_id).stdout
    message = email.message_from_string(stored.split("***\n", 1)[1].rsplit("*** MESSAGE FILE END", 1)[0],
                                        policy=email.policy.compat32)
    assert message["Subject"] == "ümlaut"
    assert "Grüße aus Zürich" in message.get_payload()
    # swaks stuffed the lone "." and the ".." line; the stored message has them back as written.
    assert "\n.\n..two dots\n" in message.get_payload()


def test_postconf_through_the_installed_command(mta):
    assert mta.cli("postconf", "-d", "message_size_limit").stdout == "message_size_limit = 10240000\n"
    settings = mta.cli("postconf", "-n").stdout
    assert "myhostname = mx.example.test\n" in settings
    assert "worker_count = 2\n" in settings
    assert mta.cli("postconf", "-h", "smtpd_banner").stdout == "$myhostname ESMTP $mail_name\n"
    assert mta.cli("postconf", "-x", "-h", "smtpd_banner").stdout == "mx.example.test ESMTP pyfastmta\n"
