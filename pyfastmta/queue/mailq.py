"""The two listing formats of Postfix's postqueue: `-p` (Sendmail's mailq) and `-j` (JSON lines)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence

from pyfastmta.queue.index import ACTIVE, HOLD
from pyfastmta.queue.listing import QueuedMessage

HEADER = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
EMPTY = "Mail queue is empty"
_STATUS_MARK = {ACTIVE: "*", HOLD: "!"}
# Columns of Postfix's report: the ID and its status mark fill at least 11, a delay reason is
# right-aligned to end at 78, recipients start at 41.
_ID_WIDTH = 11
_REASON_END = 78
_RECIPIENT_INDENT = " " * 41
# RFC 5321 Dot-string; non-ASCII is allowed in atoms as with SMTPUTF8 (RFC 6531).
_DOT_STRING = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\U0010ffff]+"
                         r"(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\U0010ffff]+)*")


def quote_address(address: str) -> str:
    """The address in external form: a local part that is not a Dot-string is quoted."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if _DOT_STRING.fullmatch(local) or (len(local) >= 2 and local[0] == local[-1] == '"'):
        return address
    quoted = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}"{at}{domain}'


def _sender(message: QueuedMessage, empty_sender: str) -> str:
    return quote_address(message.sender) if message.sender else empty_sender


def format_mailq(messages: Sequence[QueuedMessage], empty_sender: str = "MAILER-DAEMON") -> str:
    if not messages:
        return EMPTY + "\n"
    lines = [HEADER]
    total_size = 0
    for message in messages:
        marked_id = message.queue_id + _STATUS_MARK.get(message.queue_name, "")
        arrival = time.asctime(time.localtime(message.arrival_time))[:19]
        lines.append(f"{marked_id:<{_ID_WIDTH}}{message.size:8d} {arrival}  {_sender(message, empty_sender)}")
        previous_reason = None
        for recipient in message.recipients:
            reason = recipient.delay_reason
            if reason and reason != previous_reason:
                lines.append(f"({reason})".rjust(_REASON_END))
            previous_reason = reason
            lines.append(_RECIPIENT_INDENT + quote_address(recipient.address))
        lines.append("")
        total_size += message.size
    count = len(messages)
    lines.append(f"-- {total_size // 1024} Kbytes in {count} Request{'' if count == 1 else 's'}.")
    return "\n".join(lines) + "\n"


def format_json_lines(messages: Sequence[QueuedMessage], empty_sender: str = "MAILER-DAEMON") -> str:
    lines = []
    for message in messages:
        recipients = []
        for recipient in message.recipients:
            item = {"address": quote_address(recipient.address)}
            if recipient.delay_reason:
                item["delay_reason"] = recipient.delay_reason
            recipients.append(item)
        lines.append(json.dumps({
            "queue_name": message.queue_name,
            "queue_id": message.queue_id,
            "arrival_time": int(message.arrival_time),
            "message_size": message.size,
            "forced_expire": message.forced_expire,
            "sender": _sender(message, empty_sender),
            "recipients": recipients,
        }, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)
