"""What the access table (or policy server) actions that change a message do to it when it is
queued: BCC and REDIRECT change the recipients, FILTER (or content_filter) chooses the route,
HOLD files it in the hold queue. PREPEND is done by clean_message (message.py).

As in Postfix: each BCC adds a recipient that never asks for a notification and is rewritten
like any other recipient (canonical maps, virtual aliases); REDIRECT replaces every recipient,
BCC ones included, by its one address in canonical form, keeping the first recipient's DSN
parameters and naming it as the original recipient (the last REDIRECT wins); REDIRECT
overrides FILTER and content_filter; the last FILTER wins over content_filter.
"""

from __future__ import annotations

import asyncio

from pyfastmta.queue.envelope import Recipient
from pyfastmta.queue.record import Transition


def with_bcc(recipients: list[Recipient], bcc: list[str], rewriter) -> list[Recipient]:
    """The recipients and the BCC ones after them, each address kept once per DSN parameters
    and origin, as cleanup keeps the recipients it is given. Raises AliasExpansionError past
    the virtual alias limits."""
    recipients = list(recipients)
    seen = {(r.address.lower(), r.orcpt, r.notify, (r.original or r.address).lower()) for r in recipients}
    for given in bcc:
        for address in rewriter.recipient(given):
            key = (address.lower(), None, "NEVER", given.lower())
            if key in seen:
                continue
            seen.add(key)
            recipients.append(Recipient(address, notify="NEVER",
                                        original=given if address != given else None))
    return recipients


def redirected(recipients: list[Recipient], redirect: str, rewriter) -> list[Recipient]:
    """The one recipient that REDIRECT leaves."""
    address = rewriter.local.rewrite(redirect.strip())
    first = recipients[0] if recipients else Recipient(address)
    original = first.original or first.address
    return [Recipient(address, orcpt=first.orcpt, notify=first.notify,
                      original=original if original != address else None)]


def message_filter(action: str | None, content_filter: str, redirect: str | None) -> str | None:
    """The transport:nexthop the message goes through, or None for its normal route."""
    if redirect:
        return None
    chosen = (action or content_filter or "").strip()
    return chosen or None


def hold_when_durable(partition, durable: asyncio.Future, queue_id: str) -> asyncio.Future:
    """A future that completes as durable does, once the message has also been moved to the
    hold queue. The message is safe once durable is: should the hold record fail, the queue
    manager holds the message when it finds it (its envelope says hold), so the failure is not
    the client's."""
    done = durable.get_loop().create_future()

    def finish(written: asyncio.Future | None = None) -> None:
        if written is not None and not written.cancelled():
            written.exception()  # a failed hold record is retrieved here, not reported twice
        if not done.done():
            done.set_result(None)

    def queued(future: asyncio.Future) -> None:
        if future.cancelled():
            done.cancel()
            return
        error = future.exception()
        if error is not None:
            done.set_exception(error)
            return
        try:
            held = partition.record_state(queue_id, Transition.HOLD)
        except (KeyError, RuntimeError, ValueError):
            finish()
            return
        held.add_done_callback(finish)

    durable.add_done_callback(queued)
    return done
