"""The envelope of a queued message, as msgspec Structs encoded with msgpack.

Structs are `array_like`: a record holds positional arrays, not field names, which keeps records
small and encoding fast. Compatibility rule for later versions: new fields are only ever appended at
the end with a default, so an older record still decodes (missing trailing fields take their
default). A change that cannot follow that rule bumps the record format version (record.py).
"""

from __future__ import annotations

import msgspec


class Recipient(msgspec.Struct, array_like=True, gc=False):
    """One envelope recipient with its DSN parameters (RFC 3461)."""

    address: str
    orcpt: str | None = None
    notify: str | None = None
    original: str | None = None  # as the client gave it, when rewriting changed it


class Envelope(msgspec.Struct, array_like=True, gc=False):
    """What the queue keeps about a message besides its content."""

    queue_id: str
    sender: str  # "" is the null sender
    recipients: list[Recipient]
    arrival_time: float
    client_name: str = ""
    client_addr: str = ""
    client_port: int = 0
    helo_name: str = ""
    protocol: str = "ESMTP"
    size: int = 0  # bytes of content, as stored (wire form)
    body_type: str | None = None  # None, "7BIT" or "8BITMIME"
    smtputf8: bool = False
    envid: str | None = None
    ret: str | None = None  # "FULL" or "HDRS"
    extra: dict[str, str] = {}
    # transport:nexthop that all recipients are delivered through instead of their own route
    # (an access table's FILTER action, or content_filter); None: the normal route.
    content_filter: str | None = None
    # Kept in the hold queue from the start (an access table's HOLD action): the queue manager
    # never delivers it until an administrator releases it.
    hold: bool = False


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes | memoryview) -> Envelope:
    return _decoder.decode(data)
