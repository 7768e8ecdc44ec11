"""Builds the queued form of a message: Received: on top, address headers rewritten, headers that
message_drop_headers names removed, missing headers added, loops refused.

The header section is located by the compiled scanner (pyfastmta._ext.headers); the result is one
join of the original buffer's slices and the new lines, so the body is copied once, and a header
that does not change is never written again.
"""

from __future__ import annotations

import time

from pyfastmta._ext.headers import scan_headers
from pyfastmta.cleanup.dates import mail_date
from pyfastmta.cleanup.rewrite import RECIPIENT_HEADERS, SENDER_HEADERS, HeaderRewriter

# Header kinds, as Postfix's header_opts classifies them.
_SENDER, _RECIPIENT, _RESENT = 1, 2, 4
_HEADER_KINDS: dict[bytes, int] = {}
for _name in SENDER_HEADERS:
    _HEADER_KINDS[_name] = _HEADER_KINDS.get(_name, 0) | _SENDER
for _name in RECIPIENT_HEADERS:
    _HEADER_KINDS[_name] = _HEADER_KINDS.get(_name, 0) | _RECIPIENT
for _name in (b"resent-bcc", b"resent-cc", b"resent-date", b"resent-from", b"resent-message-id",
              b"resent-reply-to", b"resent-sender", b"resent-to"):
    _HEADER_KINDS[_name] = _HEADER_KINDS.get(_name, 0) | _RESENT
del _name

class CleanupSettings:
    """The parameters cleanup needs, read once per configuration (not per message)."""

    __slots__ = (
        "myhostname", "mail_name", "hopcount_limit", "header_size_limit",
        "always_add_missing_headers", "undisclosed_recipients_header", "header_rewriter",
        "drop_headers", "content_filter",
    )

    def __init__(self, config, header_rewriter: HeaderRewriter | None):
        """header_rewriter None: no header address is rewritten."""
        self.header_rewriter = header_rewriter
        drop = config.get("message_drop_headers")
        self.drop_headers = frozenset(name.lower().encode("ascii") for name in drop)
        self.myhostname = config.get("myhostname")
        self.mail_name = config.get("mail_name")
        self.hopcount_limit = config.get("hopcount_limit")
        self.header_size_limit = config.get("header_size_limit")
        self.always_add_missing_headers = config.get("always_add_missing_headers")
        self.undisclosed_recipients_header = config.get("undisclosed_recipients_header")
        # transport:nexthop every message is sent through instead of its normal route; "" none.
        self.content_filter = config.get("content_filter")


class Rejected(Exception):
    """The message must not be queued; `reply` is the SMTP reply for the client."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


def received_header(*, helo: str | None, client_name: str, client_addr: str, myhostname: str,
                    mail_name: str, protocol: str, queue_id: str, recipients: list[str],
                    now: float, tls_clause: str = "", auth_clause: str = "") -> str:
    """Postfix's Received: layout; `for <rcpt>` only when there is exactly one recipient;
    tls_clause and then auth_clause (CRLF-ended lines) go between the from and by parts."""
    addr = f"IPv6:{client_addr}" if ":" in client_addr else client_addr
    lines = [f"Received: from {helo or client_name} ({client_name} [{addr}])\r\n", tls_clause,
             auth_clause,
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
                  protocol: str, local_client: bool, now: float | None = None,
                  tls_clause: str = "", auth_clause: str = "",
                  prepend: list[str] | None = None) -> CleanMessage:
    """Returns the message as it will be queued, or raises Rejected. prepend: header lines
    (without line ends) that go above our Received: header, as access table PREPEND actions put
    them; cleanup treats them as the message's own headers."""
    if now is None:
        now = time.time()
    above = 0  # bytes of prepended header lines at the start of content
    if prepend:
        lines = "".join(f"{line}\r\n" for line in prepend).encode("utf-8", "surrogateescape")
        above = len(lines)
        content = lines + bytes(content)
    block = scan_headers(content, settings.header_size_limit)
    if block.oversized:
        content = _truncate_oversized_fields(content, block, settings.header_size_limit)
        block = scan_headers(content, settings.header_size_limit)
    above = min(above, block.header_end)
    hops = block.count(b"received", b"delivered-to")
    if hops >= settings.hopcount_limit:
        raise Rejected("554 5.4.6 Too many hops")

    received = received_header(
        helo=helo, client_name=client_name, client_addr=client_addr,
        myhostname=settings.myhostname, mail_name=settings.mail_name, protocol=protocol,
        queue_id=queue_id, recipients=recipients, now=now, tls_clause=tls_clause,
        auth_clause=auth_clause,
    )
    rewriter = settings.header_rewriter
    context = rewriter.context(local_client) if rewriter is not None else None
    drop = settings.drop_headers
    # (start, end, replacement) for each header field that is rewritten or dropped.
    edits: list[tuple[int, int, bytes]] = []
    resent = False
    message_id = None
    seen: set[bytes] = set()
    for index in range(len(block)):
        name = block.name_lower(index)
        seen.add(name)
        if name == b"message-id" and message_id is None:
            message_id = block.value(index).strip().decode("utf-8", "surrogateescape")
        kind = _HEADER_KINDS.get(name, 0)
        if kind & _RESENT:
            resent = True
        if name in drop:
            edits.append((*block.field_span(index), b""))
            continue
        if context is not None and kind & (_SENDER | _RECIPIENT):
            start, end = block.value_span(index)
            field = rewriter.rewrite_field(block.name(index), bytes(content[start:end]),
                                           bool(kind & _SENDER), context)
            if field is not None:
                edits.append((*block.field_span(index), field))
                continue
        start, end = block.field_span(index)
        name_end = start + len(name)
        if content[name_end] != 58:
            # "Name :" (RFC 5322's obsolete syntax) is written "Name:", as Postfix writes it.
            colon = content.index(b":", name_end, end)
            edits.append((start, end, bytes(content[start:name_end]) + bytes(content[colon:end])))

    added: list[str] = []
    # Postfix adds what is missing when the client has a header rewriting context.
    has_context = context is not None if rewriter is not None else local_client
    if has_context or settings.always_add_missing_headers:
        prefix = "Resent-" if resent else ""
        lowered = prefix.lower().encode()
        if lowered + b"message-id" not in seen:
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
            new_id = f"<{stamp}.{queue_id}@{settings.myhostname}>"
            added.append(f"{prefix}Message-Id: {new_id}\r\n")
            if not resent:
                message_id = new_id
        if lowered + b"date" not in seen:
            added.append(f"{prefix}Date: {mail_date(now)}\r\n")
        if lowered + b"from" not in seen:
            if rewriter is not None:
                from_address = rewriter.envelope_sender_external(sender)
            else:
                from_address = sender or "MAILER-DAEMON"
            added.append(f"{prefix}From: {from_address}\r\n")
        if settings.undisclosed_recipients_header and not resent and \
                block.count(b"to", b"cc", b"bcc") == 0:
            added.append(settings.undisclosed_recipients_header + "\r\n")

    header_end = block.header_end
    view = memoryview(content)
    received_bytes = received.encode("utf-8", "surrogateescape")
    parts = [] if above else [received_bytes]
    position = 0
    for start, end, replacement in edits:
        if above and start >= above:
            # Past the prepended lines: our Received: goes here.
            cut = max(position, above)
            parts.append(view[position:cut])
            parts.append(received_bytes)
            position, above = cut, 0
        parts.append(view[position:start])
        if replacement:
            parts.append(replacement)
        position = end
    if above:
        cut = max(position, above)
        parts.append(view[position:cut])
        parts.append(received_bytes)
        position = cut
    parts.append(view[position:header_end])
    if added:
        parts.append("".join(added).encode("utf-8", "surrogateescape"))
    parts.append(view[header_end:])
    return CleanMessage(b"".join(parts), message_id)
