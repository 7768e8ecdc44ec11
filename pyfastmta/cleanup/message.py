"""Builds the queued form of a message: Received: on top, missing headers added, loops refused.

The header section is located by the compiled scanner (pyfastmta._ext.headers); the result is one
join of the original buffer's slices and the new lines, so the body is copied once.
"""

from __future__ import annotations

import time

from pyfastmta._ext.headers import scan_headers
from pyfastmta.cleanup.dates import mail_date


class CleanupSettings:
    """The parameters cleanup needs, read once per configuration (not per message)."""

    __slots__ = (
        "myhostname", "mail_name", "hopcount_limit", "header_size_limit",
        "always_add_missing_headers", "undisclosed_recipients_header",
    )

    def __init__(self, config):
        self.myhostname = config.get("myhostname")
        self.mail_name = config.get("mail_name")
        self.hopcount_limit = config.get("hopcount_limit")
        self.header_size_limit = config.get("header_size_limit")
        self.always_add_missing_headers = config.get("always_add_missing_headers")
        self.undisclosed_recipients_header = config.get("undisclosed_recipients_header")


class Rejected(Exception):
    """The message must not be queued; `reply` is the SMTP reply for the client."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


def received_header(*, helo: str | None, client_name: str, client_addr: str, myhostname: str,
                    mail_name: str, protocol: str, queue_id: str, recipients: list[str],
                    now: float) -> str:
    """Postfix's Received: layout; `for <rcpt>` only when there is exactly one recipient."""
    addr = f"IPv6:{client_addr}" if ":" in client_addr else client_addr
    lines = [f"Received: from {helo or client_name} ({client_name} [{addr}])\r\n",
             f"\tby {myhostname} ({mail_name}) with {protocol} id {queue_id}"]
    if len(recipients) == 1:
        lines.append(f"\r\n\tfor <{recipients[0]}>; {mail_date(now)}\r\n")
    else:
        lines.append(f"; {mail_date(now)}\r\n")
    return "".join(lines)


def _truncate_oversized_fields(content, block, limit: int) -> bytes:
    """header_size_limit: the excess of a larger header is discarded, as Postfix does; the
    message itself is kept."""
    view = memoryview(content)
    parts = []
    position = 0
    for index in range(len(block)):
        start, end = block.field_span(index)
        if end - start > limit:
            parts.append(view[position:start])
            kept = bytes(view[start:start + limit]).rstrip(b"\r\n")
            parts.append(kept + b"\r\n")
            position = end
    parts.append(view[position:])
    return b"".join(parts)


class CleanMessage:
    __slots__ = ("content", "message_id")

    def __init__(self, content: bytes, message_id: str | None):
        self.content = content
        self.message_id = message_id


def clean_message(content, *, settings: CleanupSettings, queue_id: str, sender: str,
                  recipients: list[str], helo: str | None, client_name: str, client_addr: str,
                  protocol: str, local_client: bool, now: float | None = None) -> CleanMessage:
    """Returns the message as it will be queued, or raises Rejected."""
    if now is None:
        now = time.time()
    block = scan_headers(content, settings.header_size_limit)
    if block.oversized:
        content = _truncate_oversized_fields(content, block, settings.header_size_limit)
        block = scan_headers(content, settings.header_size_limit)
    hops = block.count(b"received", b"delivered-to")
    if hops >= settings.hopcount_limit:
        raise Rejected("554 5.4.6 Too many hops")

    received = received_header(
        helo=helo, client_name=client_name, client_addr=client_addr,
        myhostname=settings.myhostname, mail_name=settings.mail_name, protocol=protocol,
        queue_id=queue_id, recipients=recipients, now=now,
    )
    added: list[str] = []
    message_id = None
    index = block.find(b"message-id")
    if index >= 0:
        message_id = block.value(index).strip().decode("utf-8", "surrogateescape")
    if local_client or settings.always_add_missing_headers:
        resent = block.find(b"resent-from") >= 0 or block.find(b"resent-date") >= 0 \
            or block.find(b"resent-message-id") >= 0
        prefix = "Resent-" if resent else ""
        if block.find(prefix.lower().encode() + b"date") < 0:
            added.append(f"{prefix}Date: {mail_date(now)}\r\n")
        if block.find(prefix.lower().encode() + b"message-id") < 0:
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
            new_id = f"<{stamp}.{queue_id}@{settings.myhostname}>"
            added.append(f"{prefix}Message-Id: {new_id}\r\n")
            if not resent:
                message_id = new_id
        if block.find(prefix.lower().encode() + b"from") < 0:
            added.append(f"{prefix}From: {sender or 'MAILER-DAEMON'}\r\n")
        if settings.undisclosed_recipients_header and not resent and \
                block.count(b"to", b"cc", b"bcc") == 0:
            added.append(settings.undisclosed_recipients_header + "\r\n")

    header_end = block.header_end
    view = memoryview(content)
    parts = [received.encode("utf-8", "surrogateescape"), view[:header_end]]
    if added:
        parts.append("".join(added).encode("utf-8", "surrogateescape"))
    parts.append(view[header_end:])
    return CleanMessage(b"".join(parts), message_id)
