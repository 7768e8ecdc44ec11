"""What the queue manager hands a delivery agent, and what the agent reports back."""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from pyfastmta.queue.envelope import Envelope


class DeliveryRequest(msgspec.Struct, gc=False):
    """One delivery: some recipients of one message, all for the same transport and nexthop."""

    queue_id: str
    envelope: Envelope
    recipients: list[int]  # indexes into envelope.recipients
    transport: str  # the master.cf name, e.g. "smtp", "lmtp"
    nexthop: str  # as resolved: "example.com", "[10.0.0.1]:2525", "unix:/path" ...
    content: tuple[str, int, int]  # (segment path, offset, length) of the stored message


class DeliveryOutcome(msgspec.Struct, gc=False):
    """The result for one recipient of a request.

    status "sent" and "bounced" are final, "deferred" is retried later. site_failure marks a
    deferral caused by the destination as a whole (connection refused, greeting or HELO failed,
    timeout before MAIL FROM): that is what slows the destination down and can make it dead; a 4xx
    answer to one RCPT is not a site failure.
    """

    index: int
    status: Literal["sent", "deferred", "bounced"]
    dsn: str  # RFC 3463 status, e.g. "2.0.0"
    reason: str  # e.g. "250 2.0.0 Ok: queued as 4Xy" or "connect to host[addr]:25: Connection refused"
    relay: str = "none"  # "host[addr]:port", or "none" when no server was reached
    setup_time: float = 0.0  # seconds for DNS, connect, greeting, HELO and TLS (delays "c")
    conn_use: int = 0  # how many deliveries this connection carried, this one included
    site_failure: bool = False


class DeliveryAgent(Protocol):
    async def deliver(self, request: DeliveryRequest) -> list[DeliveryOutcome]:
        """Deliver, or fail to, and report one outcome per recipient of the request.

        An exception counts as a site failure: every recipient of the request is deferred.
        """
        ...
