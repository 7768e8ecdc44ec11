"""Read-only listing of all partitions, for postqueue/mailq.

Safe while workers append: a record still being written is an incomplete tail and is not listed,
a segment removed meanwhile held only final messages, and nothing here writes to the queue.
"""

from __future__ import annotations

import os

import msgspec

from pyfastmta.queue.envelope import Envelope
from pyfastmta.queue.index import LISTED_QUEUES, QueueEntry, QueueIndex
from pyfastmta.queue.segment import list_segments, read_range, read_segment, segment_name

_PARTITION_PREFIX = "partition."


class QueuedRecipient(msgspec.Struct):
    address: str
    delay_reason: str | None = None


class QueuedMessage(msgspec.Struct):
    queue_id: str
    queue_name: str
    arrival_time: float
    size: int
    sender: str
    recipients: list[QueuedRecipient]
    forced_expire: bool = False


def _partition_directories(queue_directory: str) -> list[str]:
    found = []
    for name in os.listdir(queue_directory):
        suffix = name[len(_PARTITION_PREFIX):]
        if name.startswith(_PARTITION_PREFIX) and suffix.isdigit():
            found.append((int(suffix), os.path.join(queue_directory, name)))
    return [path for _index, path in sorted(found)]


def _partition_entries(directory: str) -> dict[str, QueueEntry]:
    index = QueueIndex()
    for sequence, path in list_segments(directory):
        data = read_segment(path)
        if data is not None:
            index.replay(sequence, data)
    return index.entries


def read_message(queue_directory: str, queue_id: str) -> tuple[str, Envelope, bytes] | None:
    """(queue name, envelope, stored content) of a live message, or None when there is none."""
    for directory in _partition_directories(queue_directory):
        entry = _partition_entries(directory).get(queue_id)
        if entry is not None:
            content = read_range(os.path.join(directory, segment_name(entry.segment)),
                                 entry.content_offset, entry.content_length)
            return entry.queue_name, entry.envelope, content
    return None


def scan_queue(queue_directory: str) -> list[QueuedMessage]:
    """Messages in all partitions, in Postfix's queue order (active, incoming, deferred, hold),
    oldest first within a queue. Only recipients that are not final are listed."""
    messages = []
    for directory in _partition_directories(queue_directory):
        for entry in _partition_entries(directory).values():
            envelope = entry.envelope
            recipients = [QueuedRecipient(envelope.recipients[i].address, entry.reasons[i])
                          for i in entry.pending_recipients()]
            messages.append(QueuedMessage(envelope.queue_id, entry.queue_name, envelope.arrival_time,
                                          entry.content_length, envelope.sender, recipients))
    order = {name: rank for rank, name in enumerate(LISTED_QUEUES)}
    messages.sort(key=lambda message: (order[message.queue_name], message.queue_id))
    return messages
