"""Queues delivery status notifications, as Postfix's bounce(8) daemon does for its qmgr.

The queue manager calls `bounced` or `delayed` with a message and the outcomes of its failed or
deferred recipients; the notice is built (dsn.py) and queued in the same partition like any other
message, from the null sender, so its own failure can never start a loop.
"""

from __future__ import annotations

import re
import time
from typing import Callable

from pyfastmta.bounce.dsn import RecipientReport, build_dsn, notice_route, wants_notice
from pyfastmta.queue.envelope import Envelope, Recipient

# "host mx.example[192.0.2.1] said: 550 5.1.1 unknown (in reply to RCPT TO command)"
_SERVER_SAID = re.compile(r" said: (.*?)(?: \(in reply to [^)]*\))?$")


def diagnostic_code(reason: str) -> str:
    """Diagnostic-Code: the server's own reply as `smtp; …` when there was one."""
    said = _SERVER_SAID.search(reason)
    if said:
        return f"smtp; {said.group(1)}"
    return reason


def remote_mta(relay: str) -> str | None:
    if not relay or relay == "none":
        return None
    return relay.split("[", 1)[0]


class NoticeSender:
    def __init__(self, partition, *, myhostname: str, myorigin: str, mail_name: str,
                 double_bounce_sender: str, bounce_notice_recipient: str, bounce_size_limit: int,
                 log: Callable[[str, str], None], wake: Callable[[], None]):
        self.partition = partition
        self.myhostname = myhostname
        self.myorigin = myorigin
        self.mail_name = mail_name
        self.double_bounce_sender = double_bounce_sender
        self.bounce_notice_recipient = bounce_notice_recipient
        self.bounce_size_limit = bounce_size_limit
        self.log = log
        self.wake = wake

    async def bounced(self, entry, outcomes) -> None:
        await self._send("failure", "failed", "non-delivery", entry, outcomes)

    async def delayed(self, entry, outcomes) -> None:
        await self._send("delay", "delayed", "delay", entry, outcomes)

    async def _send(self, kind: str, action: str, label: str, entry, outcomes) -> None:
        envelope = entry.envelope
        route = notice_route(envelope.sender, kind, myorigin=self.myorigin,
                             double_bounce_sender=self.double_bounce_sender,
                             bounce_2_notice_recipient=self.bounce_notice_recipient)
        if route is None:
            return
        now = time.time()
        reports = []
        for outcome in outcomes:
            recipient = envelope.recipients[outcome.index]
            if not wants_notice(recipient.notify, kind):
                continue
            reports.append(RecipientReport(
                address=recipient.address, orcpt=recipient.orcpt, action=action, status=outcome.dsn,
                diagnostic=diagnostic_code(outcome.reason), remote_mta=remote_mta(outcome.relay),
                last_attempt=now))
        if not reports:
            return
        content = build_dsn(
            kind=kind, queue_id=envelope.queue_id, sender=envelope.sender,
            arrival_time=envelope.arrival_time, envid=envelope.envid, ret=envelope.ret,
            recipients=reports, original=self.partition.read_content(envelope.queue_id),
            myhostname=self.myhostname, mail_name=self.mail_name, postmaster=route.recipient,
            now=now, message_id_domain=self.myhostname, bounce_size_limit=self.bounce_size_limit)
        queue_id = self.partition.new_queue_id()
        notice = Envelope(
            queue_id=queue_id, sender=route.sender, recipients=[Recipient(route.recipient)],
            arrival_time=now, client_name="localhost", client_addr="127.0.0.1", protocol="local",
            size=len(content), body_type=None if content.isascii() else "8BITMIME",
            smtputf8=not route.recipient.isascii())
        await self.partition.enqueue(notice, content)
        self.log("bounce", f"{envelope.queue_id}: sender {label} notification: {queue_id}")
        self.wake()
