"""The in-memory view of a partition: live messages and what each segment still holds.

The same replay rules serve recovery (partition.py), the running partition after each commit, and
read-only listings (listing.py), so all three agree on a message's state.

Queue names are Postfix's: incoming (new, not yet taken by the queue manager), active, deferred,
hold. A message is final, and leaves the index, when it is deleted or all its recipients are done.

A segment can be removed when none of its messages is live and none of its state records could
change a message whose record is still on disk: otherwise removing it would undo, say, a hold.
"""

from __future__ import annotations

import msgspec

from pyfastmta.queue.envelope import Envelope
from pyfastmta.queue.record import (
    HEADER_SIZE, MESSAGE, Found, Span, StateChange, Transition, decode_message, decode_state, scan,
)

INCOMING = "incoming"
ACTIVE = "active"
DEFERRED = "deferred"
HOLD = "hold"
CORRUPT = "corrupt"
# The order in which Postfix's showq reports queues.
LISTED_QUEUES = (ACTIVE, INCOMING, DEFERRED, HOLD)


class QueueEntry:
    """A live message: its envelope, where its content is, and its delivery state."""

    __slots__ = ("envelope", "queue_name", "segment", "content_offset", "content_length",
                 "done", "reasons", "next_retry", "deferred_time")

    def __init__(self, envelope: Envelope, segment: int, content_offset: int, content_length: int) -> None:
        self.envelope = envelope
        self.queue_name = INCOMING
        self.segment = segment
        self.content_offset = content_offset
        self.content_length = content_length
        count = len(envelope.recipients)
        self.done = [False] * count
        self.reasons: list[str | None] = [None] * count
        self.next_retry = 0.0
        self.deferred_time = 0.0  # when the last DEFER record was written; 0.0: never deferred

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id

    def pending_recipients(self) -> list[int]:
        return [i for i, done in enumerate(self.done) if not done]


class _SegmentContents:
    __slots__ = ("messages", "live", "referenced")

    def __init__(self) -> None:
        self.messages: set[str] = set()  # message records in this segment
        self.live: set[str] = set()  # of those, the messages not yet final
        self.referenced: set[str] = set()  # messages named by state records in this segment


class QueueIndex:
    def __init__(self) -> None:
        self.entries: dict[str, QueueEntry] = {}
        # The incoming messages in arrival order (a dict used as an ordered set): the queue manager
        # takes new mail from here without walking a backlog of deferred messages.
        self.incoming: dict[str, None] = {}
        self._segments: dict[int, _SegmentContents] = {}
        self._message_segment: dict[str, int] = {}
        self.largest_queue_id = ""
        # Set when a segment's last live message became final: a segment may be removable now.
        self.segment_emptied = False

    def _segment(self, sequence: int) -> _SegmentContents:
        contents = self._segments.get(sequence)
        if contents is None:
            contents = self._segments[sequence] = _SegmentContents()
        return contents

    def add_segment(self, sequence: int) -> bool:
        """Start tracking a segment; False if it was known already."""
        if sequence in self._segments:
            return False
        self._segments[sequence] = _SegmentContents()
        return True

    def add_message(self, envelope: Envelope, segment: int, content_offset: int, content_length: int) -> None:
        queue_id = envelope.queue_id
        contents = self._segment(segment)
        contents.messages.add(queue_id)
        self._message_segment[queue_id] = segment
        if queue_id > self.largest_queue_id:
            self.largest_queue_id = queue_id
        if envelope.recipients:
            contents.live.add(queue_id)
            self.entries[queue_id] = QueueEntry(envelope, segment, content_offset, content_length)
            self.incoming[queue_id] = None

    def apply(self, change: StateChange, segment: int) -> None:
        """Replay one state change written in segment. Changes to unknown messages are ignored:
        their message was final already, or its record was damaged."""
        queue_id = change.queue_id
        self._segment(segment).referenced.add(queue_id)
        entry = self.entries.get(queue_id)
        if entry is None:
            return
        transition = change.transition
        if transition is Transition.ACTIVE:
            entry.queue_name = ACTIVE
        elif transition is Transition.DEFER:
            entry.queue_name = DEFERRED
            entry.next_retry = change.next_retry or change.time
            entry.deferred_time = change.time
            indexes = entry.pending_recipients() if change.recipients is None else change.recipients
            for i in indexes:
                if 0 <= i < len(entry.reasons):
                    entry.reasons[i] = change.reason
        elif transition is Transition.HOLD:
            entry.queue_name = HOLD
        elif transition is Transition.RELEASE:
            if entry.queue_name == HOLD:
                # As Postfix: a released message goes to the deferred queue, due at once.
                entry.queue_name = DEFERRED
                entry.next_retry = change.time
        elif transition is Transition.DONE:
            indexes = range(len(entry.done)) if change.recipients is None else change.recipients
            for i in indexes:
                if 0 <= i < len(entry.done):
                    entry.done[i] = True
            if all(entry.done):
                self._finish(entry)
        elif transition is Transition.DELETE:
            self._finish(entry)
        if entry.queue_name != INCOMING:
            self.incoming.pop(queue_id, None)

    def _finish(self, entry: QueueEntry) -> None:
        del self.entries[entry.queue_id]
        self.incoming.pop(entry.queue_id, None)
        live = self._segments[entry.segment].live
        live.discard(entry.queue_id)
        if not live:
            self.segment_emptied = True

    def replay(self, sequence: int, data: bytes) -> list[Span]:
        """Replay the records of one segment; return what could not be replayed (damaged
        stretches, and a torn tail last), for the caller to report or repair."""
        self.add_segment(sequence)
        view = memoryview(data)
        problems = []
        for span in scan(data):
            if span.found is Found.RECORD:
                payload = view[span.start + HEADER_SIZE:span.end]
                try:
                    if span.record_type == MESSAGE:
                        envelope, content_at = decode_message(payload)
                        self.add_message(envelope, sequence, span.start + HEADER_SIZE + content_at,
                                         len(payload) - content_at)
                    else:
                        self.apply(decode_state(payload), sequence)
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                    # The checksum matched but the payload does not decode: written by a broken
                    # or incompatible program; it is damage all the same.
                    problems.append(span._replace(found=Found.DAMAGED))
            else:
                problems.append(span)
        return problems

    def removable_segments(self, keep: int | None) -> list[int]:
        """Segments that hold nothing that matters any more, oldest first, except keep.

        Removing one can make another removable (its state records named messages of the first),
        so the caller removes them in the order given; the index forgets them here.
        """
        removable = []
        changed = True
        while changed:
            changed = False
            for sequence, contents in sorted(self._segments.items()):
                if sequence == keep or contents.live:
                    continue
                if any(self._message_segment.get(queue_id, sequence) != sequence
                       for queue_id in contents.referenced):
                    continue
                for queue_id in contents.messages:
                    del self._message_segment[queue_id]
                del self._segments[sequence]
                removable.append(sequence)
                changed = True
        return removable

    def requeue_active(self) -> None:
        """After a restart no delivery is in progress: active messages are incoming again."""
        for entry in self.entries.values():
            if entry.queue_name == ACTIVE:
                entry.queue_name = INCOMING
                self.incoming[entry.queue_id] = None
