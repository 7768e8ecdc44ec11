"""Record framing in segment files: a checksummed header, then a payload.

Header (20 bytes, little-endian):

    magic      4 bytes  MAGIC, the point where a reader resynchronizes after damage
    type       1 byte   MESSAGE or STATE
    version    1 byte   payload format version (FORMAT_VERSION)
    reserved   2 bytes  zero
    length     4 bytes  payload length
    crc        4 bytes  zlib.crc32 of the payload
    header_crc 4 bytes  zlib.crc32 of the 16 bytes before it

The header has its own checksum so that a damaged length field is recognised as damage and is never
mistaken for an incomplete record at the end of the file (which would truncate valid records).

MESSAGE payload: envelope length (u32), the msgpack envelope, then the content bytes as they will be
sent. The content is not msgpack-wrapped so that recovery and listings decode only the envelope.
STATE payload: a msgpack StateChange.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import msgspec

from pyfastmta.queue.envelope import Envelope, decode_envelope, encode_envelope

MAGIC = b"\xa7PFQ"
FORMAT_VERSION = 1
MESSAGE = 1
STATE = 2

_HEADER = struct.Struct("<4sBBHII")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
_ENVELOPE_LENGTH = struct.Struct("<I")


class Transition(enum.StrEnum):
    """A change of a queued message's state, written as a STATE record."""

    ACTIVE = "active"  # the queue manager took the message for delivery
    DEFER = "deferred"  # delivery failed temporarily for some recipients; retry later
    HOLD = "hold"  # an administrator held the message
    RELEASE = "release"  # an administrator released a held message
    DONE = "done"  # these recipients are final (delivered or bounced)
    DELETE = "delete"  # the message is removed as a whole


class StateChange(msgspec.Struct, array_like=True, gc=False):
    queue_id: str
    transition: Transition
    time: float
    reason: str | None = None
    next_retry: float | None = None
    recipients: list[int] | None = None  # indexes into Envelope.recipients; None: all of them


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(StateChange)


def _header(record_type: int, length: int, crc: int) -> bytes:
    head = _HEADER.pack(MAGIC, record_type, FORMAT_VERSION, 0, length, crc)
    return head + _HEADER_CRC.pack(zlib.crc32(head))


def encode_message(envelope: Envelope, content: bytes) -> tuple[bytes, int]:
    """Return the record's bytes before the content, and the offset of the content in the record.

    The caller writes both parts back to back (writev), so the content is never copied here.
    """
    packed = encode_envelope(envelope)
    prefix = _ENVELOPE_LENGTH.pack(len(packed)) + packed
    crc = zlib.crc32(content, zlib.crc32(prefix))
    head = _header(MESSAGE, len(prefix) + len(content), crc)
    return head + prefix, HEADER_SIZE + len(prefix)


def encode_state(change: StateChange) -> bytes:
    payload = _state_encoder.encode(change)
    return _header(STATE, len(payload), zlib.crc32(payload)) + payload


def decode_message(payload: memoryview) -> tuple[Envelope, int]:
    """Return the envelope and the offset of the content within the payload."""
    if len(payload) < _ENVELOPE_LENGTH.size:
        raise ValueError("message record too short")
    (length,) = _ENVELOPE_LENGTH.unpack_from(payload)
    end = _ENVELOPE_LENGTH.size + length
    if end > len(payload):
        raise ValueError("envelope longer than its record")
    return decode_envelope(payload[_ENVELOPE_LENGTH.size:end]), end


def decode_state(payload: memoryview) -> StateChange:
    return _state_decoder.decode(payload)


class Found(enum.Enum):
    RECORD = "record"  # a complete record whose checksums match
    DAMAGED = "damaged"  # bytes that are not a valid record, followed by a valid one
    TORN = "torn"  # the end of the data holds no complete valid record


class Span(NamedTuple):
    found: Found
    start: int
    end: int
    record_type: int = 0
    has_header: bool = False  # TORN only: an intact header of a record cut short


def _header_at(data: bytes, pos: int) -> tuple[int, int, int, int] | None:
    """(type, version, length, crc) of an intact header at pos, or None."""
    if len(data) - pos < HEADER_SIZE or data[pos:pos + 4] != MAGIC:
        return None
    (header_crc,) = _HEADER_CRC.unpack_from(data, pos + _HEADER.size)
    if zlib.crc32(memoryview(data)[pos:pos + _HEADER.size]) != header_crc:
        return None
    _magic, record_type, version, _reserved, length, crc = _HEADER.unpack_from(data, pos)
    return record_type, version, length, crc


def scan(data: bytes) -> Iterator[Span]:
    """Split segment bytes into records, damaged stretches and a torn tail (always last)."""
    view = memoryview(data)
    pos = 0
    size = len(data)
    while pos < size:
        header = _header_at(data, pos)
        if header is None:
            resume = data.find(MAGIC, pos + 1)
            while resume != -1 and _header_at(data, resume) is None:
                resume = data.find(MAGIC, resume + 1)
            if resume == -1:
                yield Span(Found.TORN, pos, size)
                return
            yield Span(Found.DAMAGED, pos, resume)
            pos = resume
            continue
        record_type, version, length, crc = header
        end = pos + HEADER_SIZE + length
        if end > size:
            yield Span(Found.TORN, pos, size, record_type, has_header=True)
            return
        intact = zlib.crc32(view[pos + HEADER_SIZE:end]) == crc
        known = version == FORMAT_VERSION and record_type in (MESSAGE, STATE)
        yield Span(Found.RECORD if intact and known else Found.DAMAGED, pos, end, record_type)
        pos = end
