"""Envelope encoding, record framing and queue IDs."""

import string
import time
import zlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfastmta.queue.envelope import Envelope, Recipient, decode_envelope, encode_envelope
from pyfastmta.queue.queueid import QueueIdGenerator, partition_of
from pyfastmta.queue.record import (
    HEADER_SIZE, MAGIC, MESSAGE, STATE, Found, StateChange, Transition, decode_message, decode_state,
    encode_message, encode_state, scan,
)

texts = st.text(max_size=40)
optional_texts = st.none() | texts
recipients = st.builds(Recipient, address=texts, orcpt=optional_texts, notify=optional_texts)
envelopes = st.builds(
    Envelope,
    queue_id=st.text(alphabet="0123456789ABCDEF", min_size=15, max_size=15),
    sender=texts,
    recipients=st.lists(recipients, max_size=5),
    arrival_time=st.floats(min_value=0, max_value=4e9),
    client_name=texts,
    client_addr=texts,
    client_port=st.integers(0, 65535),
    helo_name=texts,
    protocol=st.sampled_from(["SMTP", "ESMTP", "ESMTPS", "UTF8SMTP"]),
    size=st.integers(0, 2**40),
    body_type=st.sampled_from([None, "7BIT", "8BITMIME"]),
    smtputf8=st.booleans(),
    envid=optional_texts,
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    extra=st.dictionaries(texts, texts, max_size=3),
)
changes = st.builds(
    StateChange,
    queue_id=st.text(alphabet="0123456789ABCDEF", min_size=15, max_size=15),
    transition=st.sampled_from(list(Transition)),
    time=st.floats(min_value=0, max_value=4e9),
    reason=optional_texts,
    next_retry=st.none() | st.floats(min_value=0, max_value=4e9),
    recipients=st.none() | st.lists(st.integers(0, 1000), max_size=5),
)


def message_record(envelope, content):
    head, content_at = encode_message(envelope, content)
    return head + content, content_at


@given(envelopes)
def test_envelope_round_trip(envelope):
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_envelope_reads_records_without_later_fields():
    """Fields appended later with defaults must not break older records."""

    class OldRecipient(msgspec.Struct, array_like=True):
        address: str

    class OldEnvelope(msgspec.Struct, array_like=True):
        queue_id: str
        sender: str
        recipients: list[OldRecipient]
        arrival_time: float

    old = msgspec.msgpack.encode(OldEnvelope("0123456789ABC00", "a@b", [OldRecipient("c@d")], 1.5))
    assert decode_envelope(old) == Envelope("0123456789ABC00", "a@b", [Recipient("c@d")], 1.5)


@given(envelopes, st.binary(max_size=2000))
def test_message_record_round_trip(envelope, content):
    data, content_at = message_record(envelope, content)
    [span] = list(scan(data))
    assert span.found is Found.RECORD and span.record_type == MESSAGE
    assert (span.start, span.end) == (0, len(data))
    decoded, offset = decode_message(memoryview(data)[HEADER_SIZE:])
    assert decoded == envelope
    assert HEADER_SIZE + offset == content_at
    assert data[content_at:] == content


@given(changes)
def test_state_record_round_trip(change):
    data = encode_state(change)
    [span] = list(scan(data))
    assert span.found is Found.RECORD and span.record_type == STATE
    assert decode_state(memoryview(data)[HEADER_SIZE:]) == change


def three_records():
    envelope = Envelope("0123456789ABC00", "a@example.org", [Recipient("b@example.net")], 1.0)
    records = [message_record(envelope, f"body {i}\r\n".encode() * 20)[0] for i in range(3)]
    return records, b"".join(records)


@settings(max_examples=300)
@given(st.data())
def test_any_flipped_byte_damages_only_its_record(data):
    records, joined = three_records()
    position = data.draw(st.integers(0, len(joined) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(joined)
    damaged[position] ^= 1 << bit
    spans = list(scan(bytes(damaged)))
    bounds = [0, len(records[0]), len(records[0]) + len(records[1]), len(joined)]
    hit = next(i for i in range(3) if bounds[i] <= position < bounds[i + 1])
    intact = [(s.start, s.end) for s in spans if s.found is Found.RECORD]
    assert intact == [(bounds[i], bounds[i + 1]) for i in range(3) if i != hit]
    assert all(s.found is not Found.RECORD for s in spans if s.start <= position < s.end)


@given(st.data())
def test_cut_anywhere_keeps_complete_records_and_reports_torn_tail(data):
    records, joined = three_records()
    cut = data.draw(st.integers(0, len(joined)))
    spans = list(scan(joined[:cut]))
    ends = [sum(len(r) for r in records[:i + 1]) for i in range(3)]
    complete = [end for end in ends if end <= cut]
    assert [s.end for s in spans if s.found is Found.RECORD] == complete
    last_end = complete[-1] if complete else 0
    if cut > last_end:
        assert spans[-1].found is Found.TORN and (spans[-1].start, spans[-1].end) == (last_end, cut)
    else:
        assert all(s.found is Found.RECORD for s in spans)


def test_damaged_length_field_is_not_taken_for_a_torn_tail():
    records, joined = three_records()
    damaged = bytearray(joined)
    damaged[len(records[0]) + 8] = 0xFF  # the length of the second record: far past the end
    spans = list(scan(bytes(damaged)))
    assert [s.found for s in spans] == [Found.RECORD, Found.DAMAGED, Found.RECORD]


def test_header_checksum_covers_the_header():
    record = encode_state(StateChange("0123456789ABC00", Transition.HOLD, 1.0))
    assert record.startswith(MAGIC)
    assert int.from_bytes(record[16:20], "little") == zlib.crc32(record[:16])


def test_queue_ids_are_fixed_width_uppercase_hex_and_increase():
    generate = QueueIdGenerator(7)
    ids = [generate() for _ in range(10000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 15 and set(i) <= set(string.hexdigits.upper()[:16]) for i in ids)
    assert {partition_of(i) for i in ids} == {7}
    # The leading digits are the creation time in microseconds.
    assert abs((int(ids[0], 16) >> 8) / 1e6 - time.time()) < 5


def test_queue_ids_differ_across_partitions_at_the_same_instant(monkeypatch):
    monkeypatch.setattr(time, "time_ns", lambda: 1_800_000_000_000_000_000)
    assert len({QueueIdGenerator(i)() for i in range(256)}) == 256


def test_queue_ids_survive_a_clock_step_back(monkeypatch):
    now = [1_800_000_000_000_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    generate = QueueIdGenerator(1)
    first = generate()
    now[0] -= 3600 * 10**9
    assert generate() > first


def test_queue_ids_stay_above_an_observed_id():
    generate = QueueIdGenerator(2)
    future = f"{(time.time_ns() // 1000 + 10**9) << 8 | 2:015X}"
    generate.observe(future)
    assert generate() > future


def test_partition_index_must_fit_the_id():
    with pytest.raises(ValueError):
        QueueIdGenerator(256)
