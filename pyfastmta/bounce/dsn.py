"""Delivery status notifications (RFC 3464, RFC 6533 for UTF-8 addresses) in the queue's wire form.

A notice is a multipart/report with three parts: a text for people, the machine-readable
delivery-status, and the original message (whole, or its header block only). The result is what
the queue stores: CRLF lines, dot-stuffed, without the final ".", so it can be queued like any
message that came in over SMTP.
"""

from __future__ import annotations

import re
import textwrap
import time
from dataclasses import dataclass

from pyfastmta.cleanup.dates import mail_date
from pyfastmta.queue.wireform import stuff, unstuff

KINDS = ("failure", "delay", "success")
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

# Header lines are folded at whitespace to stay within RFC 5322's recommended length.
_FOLD_WIDTH = 78
_TEXT_WIDTH = 76
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIAGNOSTIC_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]*;")

_SUBJECTS = {
    "failure": "Mail delivery failed: message returned to sender",
    "delay": "Mail delivery delayed: the mail system is still trying",
    "success": "Mail delivery report: message delivered",
}

_OPENINGS = {
    "failure": (
        "Your message could not be delivered to one or more of its recipients, and the mail "
        "system has stopped trying. The recipients and the reasons are listed below; the "
        "message itself is attached."),
    "delay": (
        "Your message has not yet been delivered to one or more of its recipients. The mail "
        "system will keep trying; you do not need to send it again. If it still cannot be "
        "delivered when the retry period ends, you will receive another notice. The "
        "recipients and the reasons for the delay are listed below."),
    "success": (
        "Your message has reached the recipients listed below. This report was sent because "
        "the message asked for a notice of successful delivery."),
}

_ACTION_WORDS = {
    "failed": "not delivered",
    "delayed": "delivery delayed",
    "delivered": "delivered",
    "relayed": "passed on to a system that sends no delivery reports",
    "expanded": "delivered and expanded to further recipients",
}


@dataclass(slots=True, kw_only=True)
class RecipientReport:
    """What a notice says about one recipient."""

    address: str
    action: str  # one of ACTIONS
    status: str  # RFC 3463 enhanced status, "5.1.1"
    orcpt: str | None = None  # "rfc822;addr" as smtpd kept it from ORCPT
    diagnostic: str | None = None  # "smtp; 550 5.1.1 user unknown"
    remote_mta: str | None = None  # host name of the server that answered
    last_attempt: float | None = None
    will_retry_until: float | None = None


@dataclass(frozen=True, slots=True)
class NoticeRoute:
    """Where a notice goes: its envelope recipient and envelope sender."""

    recipient: str
    sender: str
    double_bounce: bool


def _is_double_bounce_address(sender: str, double_bounce_sender: str, myorigin: str | None) -> bool:
    local, at, domain = sender.rpartition("@")
    if not at:
        return sender.lower() == double_bounce_sender.lower()
    return (myorigin is not None and local.lower() == double_bounce_sender.lower()
            and domain.lower() == myorigin.lower())


def undeliverable_to_sender(sender: str, *, double_bounce_sender: str = "double-bounce",
                            myorigin: str | None = None) -> bool:
    """True when no notice may go to this sender: the null sender (the message was itself a
    notice) and the double-bounce address, whose mail is discarded to end bounce loops."""
    return sender == "" or _is_double_bounce_address(sender, double_bounce_sender, myorigin)


def notice_route(sender: str, kind: str, *, myorigin: str, double_bounce_sender: str = "double-bounce",
                 bounce_2_notice_recipient: str = "postmaster") -> NoticeRoute | None:
    """Who receives a notice about a message from `sender`, or None when nobody does.

    A failure of a message from the null sender is a double bounce: it goes to
    2bounce_notice_recipient, sent from double_bounce_sender so that its own failure is dropped.
    Delay and success notices are never sent about mail from the null sender, and nothing is sent
    about mail from the double-bounce address.
    """
    if kind not in KINDS:
        raise ValueError(f"notice kind {kind!r} is not one of {', '.join(KINDS)}")
    if _is_double_bounce_address(sender, double_bounce_sender, myorigin):
        return None
    if sender:
        return NoticeRoute(recipient=sender, sender="", double_bounce=False)
    if kind != "failure":
        return None
    recipient = bounce_2_notice_recipient
    if "@" not in recipient:
        recipient = f"{recipient}@{myorigin}"
    return NoticeRoute(recipient=recipient, sender=f"{double_bounce_sender}@{myorigin}",
                       double_bounce=True)


def wants_notice(notify: str | None, kind: str) -> bool:
    """Whether a recipient's NOTIFY (as parse_notify returns it, None when absent) asks for a
    notice of this kind. Without NOTIFY, failures and delays are reported (RFC 3461 4.1)."""
    if notify is None:
        return kind != "success"
    word = {"failure": "FAILURE", "delay": "DELAY", "success": "SUCCESS"}[kind]
    return word in notify.split(",")


def _clean(value: str) -> str:
    # Remote replies and addresses end up in headers: no control character may break a line.
    return _CONTROL.sub(" ", value).strip()


def _fold(name: str, value: str) -> str:
    """One header field, folded before a space where a line would pass the width."""
    line = f"{name}: {_clean(value)}"
    out = []
    start = len(name) + 2
    while len(line) > _FOLD_WIDTH:
        # A fold point is a space after a non-space, so no line is whitespace only.
        spaces = [i for i in range(start, len(line)) if line[i] == " " and line[i - 1] != " "]
        if not spaces:
            break
        fitting = [i for i in spaces if i <= _FOLD_WIDTH]
        cut = fitting[-1] if fitting else spaces[0]
        out.append(line[:cut])
        line = line[cut:]
        start = 1
    out.append(line)
    return "\r\n".join(out) + "\r\n"


def _address_field(address: str) -> str:
    address = _clean(address)
    return f"utf-8; {address}" if not address.isascii() else f"rfc822; {address}"


def _orcpt_field(orcpt: str) -> str:
    addr_type, semicolon, address = orcpt.partition(";")
    if not semicolon:
        addr_type, address = "rfc822", orcpt
    if addr_type.lower() == "rfc822" and not address.isascii():
        addr_type = "utf-8"
    return f"{_clean(addr_type)};{_clean(address)}"


def _diagnostic_field(diagnostic: str) -> str:
    diagnostic = _clean(diagnostic)
    if _DIAGNOSTIC_TYPE.match(diagnostic):
        return diagnostic
    return f"X-Pyfastmta; {diagnostic}"


def _wire_lines(content: bytes) -> bytes:
    """CRLF line ends throughout, and a final CRLF."""
    crlf = content.count(b"\r\n")
    if crlf != content.count(b"\r") or crlf != content.count(b"\n"):
        content = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def _header_block(message: bytes) -> bytes:
    """The header lines of a message (with their CRLFs), without the empty line after them."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[:end + 2]


def _boundary(queue_id: str, now: float, myhostname: str, parts: bytes) -> str:
    """A boundary that occurs in none of the parts."""
    base = f"{queue_id}.{int(now)}/{myhostname}"
    boundary = base
    serial = 0
    while f"--{boundary}".encode() in parts:
        serial += 1
        boundary = f"{base}.{serial}"
    return boundary


def _human_text(kind: str, sender: str, recipients: list[RecipientReport], myhostname: str,
                mail_name: str, postmaster: str) -> str:
    paragraphs = [f"This is the {mail_name} mail system at {myhostname}."]
    if not sender:
        paragraphs.append(
            "This notice goes to the postmaster: the message it is about came from the null "
            "sender (it was itself a delivery notice), so it cannot be returned to a sender.")
    paragraphs.append(_OPENINGS[kind])
    if kind != "success":
        paragraphs.append(f"If you need help, write to <{postmaster}> and include this notice.")
    lines = []
    for paragraph in paragraphs:
        lines += textwrap.wrap(_clean(paragraph), _TEXT_WIDTH, break_on_hyphens=False)
        lines.append("")
    for report in recipients:
        entry = f"<{report.address}>"
        if report.orcpt:
            original_address = report.orcpt.partition(";")[2] or report.orcpt
            if original_address != report.address:
                entry += f" (originally <{original_address}>)"
        entry += f": {_ACTION_WORDS.get(report.action, report.action)}."
        if report.diagnostic:
            # People read the reply itself, without the "smtp;" type of the report field.
            typed = _DIAGNOSTIC_TYPE.match(report.diagnostic)
            reason = report.diagnostic[typed.end() if typed else 0:].strip()
            if report.remote_mta:
                entry += f" The server {report.remote_mta} said: {reason}"
            else:
                entry += f" Reason: {reason}"
        if report.will_retry_until is not None and report.action == "delayed":
            entry += f" Retrying until {mail_date(report.will_retry_until)}."
        lines += textwrap.wrap(_clean(entry), _TEXT_WIDTH, subsequent_indent="    ",
                               break_on_hyphens=False)
        lines.append("")
    return "\r\n".join(lines)


def _status_text(queue_id: str, sender: str, arrival_time: float, envid: str | None,
                 recipients: list[RecipientReport], myhostname: str) -> str:
    fields = [_fold("Reporting-MTA", f"dns; {myhostname}"),
              _fold("X-Pyfastmta-Queue-ID", queue_id)]
    if sender:
        fields.append(_fold("X-Pyfastmta-Sender", _address_field(sender)))
    if envid:
        fields.append(_fold("Original-Envelope-Id", envid))
    fields.append(_fold("Arrival-Date", mail_date(arrival_time)))
    blocks = ["".join(fields)]
    for report in recipients:
        if report.action not in ACTIONS:
            raise ValueError(f"recipient action {report.action!r} is not one of {', '.join(ACTIONS)}")
        fields = [_fold("Final-Recipient", _address_field(report.address))]
        if report.orcpt:
            fields.append(_fold("Original-Recipient", _orcpt_field(report.orcpt)))
        fields.append(_fold("Action", report.action))
        fields.append(_fold("Status", report.status))
        if report.remote_mta:
            fields.append(_fold("Remote-MTA", f"dns; {report.remote_mta}"))
        if report.diagnostic:
            fields.append(_fold("Diagnostic-Code", _diagnostic_field(report.diagnostic)))
        if report.last_attempt is not None:
            fields.append(_fold("Last-Attempt-Date", mail_date(report.last_attempt)))
        if report.will_retry_until is not None and report.action == "delayed":
            fields.append(_fold("Will-Retry-Until", mail_date(report.will_retry_until)))
        blocks.append("".join(fields))
    return "\r\n".join(blocks)


def build_dsn(*, kind: str, queue_id: str, sender: str, arrival_time: float, envid: str | None,
              ret: str | None, recipients: list[RecipientReport], original: bytes, myhostname: str,
              mail_name: str, postmaster: str = "postmaster", now: float,
              message_id_domain: str, bounce_size_limit: int = 50000) -> bytes:
    """The notice about `recipients` of message `queue_id`, in the queue's wire form.

    `original` is the message as stored (wire form). A failure notice returns the whole message
    unless the sender asked for RET=HDRS or it is larger than bounce_size_limit (0: no limit);
    delay and success notices return the header block only (RFC 3461 applies RET to failures).
    The notice is addressed to `sender`, or to `postmaster` for mail from the null sender.
    """
    if kind not in KINDS:
        raise ValueError(f"notice kind {kind!r} is not one of {', '.join(KINDS)}")
    if not recipients:
        raise ValueError("a delivery status notice needs at least one recipient report")
    message = unstuff(_wire_lines(bytes(original)))
    whole = (kind == "failure" and (ret or "").upper() != "HDRS"
             and (bounce_size_limit <= 0 or len(original) <= bounce_size_limit))
    headers = _header_block(message)
    returned = message if whole else headers
    utf8_headers = not headers.isascii()
    if whole:
        returned_type = "message/global" if utf8_headers else "message/rfc822"
        description = "Returned message"
    else:
        returned_type = "message/global-headers" if utf8_headers else "text/rfc822-headers"
        description = "Header block of the returned message"

    status = _status_text(queue_id, sender, arrival_time, envid, recipients, myhostname)
    status_global = not status.isascii()
    report_type = "global-delivery-status" if status_global else "delivery-status"
    human = _human_text(kind, sender, recipients, myhostname, mail_name, postmaster)
    boundary = _boundary(queue_id, now, myhostname, b"".join(
        (returned, human.encode("utf-8"), status.encode("utf-8"))))
    eight_bit = not (returned.isascii() and human.isascii() and status.isascii())
    recipient = sender or postmaster
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))

    head = [
        _fold("From", f"Mail Delivery System <MAILER-DAEMON@{myhostname}>"),
        _fold("To", f"<{recipient}>"),
        _fold("Subject", _SUBJECTS[kind]),
        _fold("Date", mail_date(now)),
        _fold("Message-Id", f"<{stamp}.{queue_id}.{kind}@{message_id_domain}>"),
        "Auto-Submitted: auto-replied\r\n",
        "MIME-Version: 1.0\r\n",
        f"Content-Type: multipart/report; report-type={report_type};\r\n\tboundary=\"{boundary}\"\r\n",
    ]
    if eight_bit:
        head.append("Content-Transfer-Encoding: 8bit\r\n")
    head.append("\r\nThis is a delivery status notice in MIME format.\r\n")
    text_charset = "us-ascii" if human.isascii() else "utf-8"
    head += [
        f"\r\n--{boundary}\r\n",
        "Content-Description: Notification\r\n",
        f"Content-Type: text/plain; charset={text_charset}\r\n",
    ]
    if not human.isascii():
        head.append("Content-Transfer-Encoding: 8bit\r\n")
    head += [
        "\r\n", human,
        f"\r\n--{boundary}\r\n",
        "Content-Description: Delivery report\r\n",
        f"Content-Type: message/{report_type}\r\n",
    ]
    if status_global:
        head.append("Content-Transfer-Encoding: 8bit\r\n")
    head += [
        "\r\n", status,
        f"\r\n--{boundary}\r\n",
        f"Content-Description: {description}\r\n",
        f"Content-Type: {returned_type}\r\n",
    ]
    if not returned.isascii():
        head.append("Content-Transfer-Encoding: 8bit\r\n")
    head.append("\r\n")
    tail = f"\r\n--{boundary}--\r\n"
    notice = b"".join((("".join(head)).encode("utf-8"), returned, tail.encode("utf-8")))
    return stuff(notice)
