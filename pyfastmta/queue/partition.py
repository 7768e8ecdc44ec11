"""One queue partition: append-only segments, group commit, recovery.

Layout under queue_directory:

    partition.<N>/segment.<16 hex digits>   the records of partition N, in write order
    corrupt/partition.<N>.segment.<16 hex digits>.offset.<byte offset>
                                            a copy of each damaged record found at recovery

Each worker process owns one partition, so nothing on the write path is shared between processes.

Group commit: enqueue() and set_state() add an encoded record to the pending batch; a commit
writes the batch with one writev and hands its fdatasync to the partition's datasync thread (C,
without the GIL: pyfastmta._ext.datasync), so the event loop keeps serving sessions meanwhile, and
every waiting call returns only after that fdatasync did. With commit_delay 0 a commit starts as soon as a record waits and none is in flight, and what
arrives during an fsync rides on the next one. With commit_delay > 0 records wait up to that long
for company, or until commit_batch of them are waiting. No commit covers more than commit_batch
records. A failed write or fdatasync fails every call of its batch (the session answers 451).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import KeysView, Mapping
from types import MappingProxyType

import msgspec

from pyfastmta._ext.datasync import DatasyncThread
from pyfastmta.queue.envelope import Envelope
from pyfastmta.queue.index import CORRUPT, HOLD, QueueEntry, QueueIndex
from pyfastmta.queue.queueid import QueueIdGenerator
from pyfastmta.queue.record import Found, Span, StateChange, Transition, encode_message, encode_state
from pyfastmta.queue.segment import (
    SegmentWriter, fsync_directory, list_segments, read_range, read_segment, segment_name,
)


# A callable taking a file descriptor, used instead of fdatasync(2) when set: the tests inject
# slow and failing syncs through it. None in service.
datasync_override = None


class QueueWriteError(OSError):
    """A batch could not be made durable; none of its records may be acknowledged."""


class RecoveryReport(msgspec.Struct):
    messages: int = 0  # live messages after recovery
    corrupt_records: int = 0  # damaged records copied to corrupt/ and skipped
    truncated_bytes: int = 0  # torn tail bytes cut off (records never acknowledged)
    segments: int = 0  # segments read
    removed_segments: int = 0  # segments whose messages were all final

    def __str__(self) -> str:
        return (f"messages={self.messages} corrupt_records={self.corrupt_records}"
                f" truncated_bytes={self.truncated_bytes} segments={self.segments}"
                f" removed_segments={self.removed_segments}")


def partition_directory(queue_directory: str, index: int) -> str:
    return os.path.join(queue_directory, f"partition.{index}")


class Partition:
    def __init__(self, queue_directory: str, index: int, *, commit_delay: float = 0.0,
                 commit_batch: int = 256, segment_size: int = 64 << 20) -> None:
        if commit_batch < 1:
            raise ValueError("commit_batch must be at least 1")
        self.queue_directory = queue_directory
        self.index = index
        self.directory = partition_directory(queue_directory, index)
        self.commit_delay = commit_delay
        self.commit_batch = commit_batch
        self.segment_size = segment_size
        self._new_queue_id = QueueIdGenerator(index)
        self._queue = QueueIndex()
        self._writer: SegmentWriter | None = None
        self._datasync: DatasyncThread | None = None
        self._datasync_thread: threading.Thread | None = None
        self._request_fd = self._done_fd = -1
        self._syncing: tuple | None = None  # (flight future, segment sequence, offset)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Pending records: (buffers, size, what to apply once durable, waiter).
        self._batch: list[tuple] = []
        self._batch_since = 0.0
        self._in_flight: asyncio.Future | None = None
        self._timer: asyncio.Handle | None = None
        self._closing = False
        self._commits = 0
        self._failed_commits = 0
        self._records = 0
        self._bytes = 0
        self._last_batch = 0
        self._max_batch = 0
        self._removed_segments = 0

    # -- recovery -------------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Rebuild the index from the segments on disk, repair them, and open a new segment.

        Synchronous: the worker runs it before it accepts mail.
        """
        if self._writer is not None:
            raise RuntimeError(f"queue partition {self.index}: recover() runs once, before use")
        self._make_directory()
        report = RecoveryReport()
        segments = list_segments(self.directory)
        for sequence, path in segments:
            data = read_segment(path)
            if data is None:
                continue
            report.segments += 1
            for problem in self._queue.replay(sequence, data):
                if problem.found is Found.DAMAGED:
                    self._save_corrupt(sequence, data, problem)
                    report.corrupt_records += 1
                    continue
                # A torn tail: a write cut short by a crash, never acknowledged. Tail bytes
                # without even an intact header might still be a damaged last record, so they
                # are kept in corrupt/ unless they are blank.
                tail = data[problem.start:]
                if not problem.has_header and tail.strip(b"\0"):
                    self._save_corrupt(sequence, data, problem)
                    report.corrupt_records += 1
                self._truncate(path, problem.start)
                report.truncated_bytes += len(tail)
        self._queue.requeue_active()
        if self._queue.largest_queue_id:
            self._new_queue_id.observe(self._queue.largest_queue_id)
        self._start_datasync_thread()
        self._writer = SegmentWriter(self.directory, segments[-1][0] + 1 if segments else 1, self.segment_size)
        self._writer.open_next()
        self._queue.add_segment(self._writer.sequence)
        removable = self._removable_segments()
        if removable:
            self._unlink_segments(removable)
        report.removed_segments = len(removable)
        report.messages = len(self._queue.entries)
        return report

    def _make_directory(self) -> None:
        for path in (self.queue_directory, self.directory):
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
                fsync_directory(os.path.dirname(os.path.abspath(path)))

    def _save_corrupt(self, sequence: int, data: bytes, span: Span) -> None:
        directory = os.path.join(self.queue_directory, CORRUPT)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        name = f"partition.{self.index}.{segment_name(sequence)}.offset.{span.start}"
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data[span.start:span.end])
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(directory)

    @staticmethod
    def _truncate(path: str, length: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _removable_segments(self) -> list[int]:
        self._queue.segment_emptied = False
        removable = self._queue.removable_segments(keep=self._writer.sequence)
        self._removed_segments += len(removable)
        return removable

    def _unlink_segments(self, sequences: list[int]) -> None:
        for sequence in sequences:
            try:
                os.unlink(self._writer.path(sequence))
            except FileNotFoundError:
                pass
        fsync_directory(self.directory)

    # -- queueing -------------------------------------------------------------------------------

    def new_queue_id(self) -> str:
        return self._new_queue_id()

    def enqueue(self, envelope: Envelope, content: bytes | bytearray | memoryview) -> asyncio.Future:
        """Append a message. The returned future completes when the record is durable, or fails
        with QueueWriteError. A plain future, not a coroutine: smtpd's hot path adds a callback
        instead of paying for a task per message."""
        if type(content) is not bytes:
            # The caller may reuse its buffer once we return or are cancelled; the batch may not.
            content = bytes(content)
        head, content_at = encode_message(envelope, content)
        return self._submit((head, content), len(head) + len(content), (envelope, content_at, len(content)))

    async def set_state(self, queue_id: str, state: Transition | str, reason: str | None = None, *,
                        next_retry: float | None = None, recipients: list[int] | None = None) -> None:
        """Record a state change of a live message; durable when this returns.

        state is a Transition: "active", "deferred" (reason and next_retry, for the listed
        recipients or all pending ones), "hold", "release", "done" (the listed recipients, or all,
        are final), "delete". Raises KeyError for a message that is not in the queue.
        """
        await self.record_state(queue_id, state, reason, next_retry=next_retry, recipients=recipients)

    def record_state(self, queue_id: str, state: Transition | str, reason: str | None = None, *,
                     next_retry: float | None = None, recipients: list[int] | None = None) -> asyncio.Future:
        """set_state() as a plain future, durable when it completes: the queue manager writes a
        record per message and delivery and adds a callback instead of paying for a task."""
        entry = self._queue.entries.get(queue_id)
        if entry is None:
            raise KeyError(queue_id)
        transition = Transition(state)
        if transition is Transition.RELEASE and entry.queue_name != HOLD:
            raise ValueError(f"{queue_id}: not on hold")
        change = StateChange(queue_id, transition, time.time(), reason, next_retry, recipients)
        record = encode_state(change)
        return self._submit((record,), len(record), change)

    def _submit(self, buffers: tuple, size: int, apply: object) -> asyncio.Future:
        if self._writer is None:
            raise RuntimeError(f"queue partition {self.index}: recover() first")
        if self._closing:
            raise RuntimeError(f"queue partition {self.index} is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_reader(self._done_fd, self._on_synced)
        waiter = loop.create_future()
        batch = self._batch
        if not batch:
            self._batch_since = loop.time()
        batch.append((buffers, size, apply, waiter))
        if self._in_flight is None:
            if len(batch) >= self.commit_batch:
                self._start_commit()
            elif self._timer is None:
                if self.commit_delay <= 0:
                    # Still no waiting: the commit starts at the end of this loop iteration, so
                    # the records of every session served in the same iteration share its fsync.
                    self._timer = loop.call_soon(self._on_timer)
                else:
                    self._timer = loop.call_later(self.commit_delay, self._on_timer)
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        if self._in_flight is None and self._batch:
            self._start_commit()

    def _start_datasync_thread(self) -> None:
        self._request_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._done_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._datasync = DatasyncThread(self._request_fd, self._done_fd, datasync_override)
        self._datasync_thread = threading.Thread(target=self._datasync.run, daemon=True,
                                                 name=f"queue-partition-{self.index}-datasync")
        self._datasync_thread.start()

    def _start_commit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items = self._batch[:self.commit_batch]
        del self._batch[:self.commit_batch]
        if self._batch:
            self._batch_since = self._loop.time()
        buffers = [buffer for item in items for buffer in item[0]]
        total = sum(item[1] for item in items)
        flight = self._loop.create_future()
        self._in_flight = flight
        flight.add_done_callback(functools.partial(self._commit_done, items, total))
        try:
            sequence, offset = self._writer.write(buffers, total)
        except BaseException as exc:  # noqa: BLE001 - the waiters hear it through the future
            flight.set_exception(exc)
            return
        self._syncing = (flight, sequence, offset)
        self._datasync.request(self._writer.fd)

    def _on_synced(self) -> None:
        """The datasync thread finished the batch in flight (its eventfd became readable)."""
        try:
            os.eventfd_read(self._done_fd)
        except BlockingIOError:
            return
        flight, sequence, offset = self._syncing
        self._syncing = None
        error = self._datasync.error
        if error:
            self._writer.mark_suspect()
            flight.set_exception(OSError(error, os.strerror(error)))
        else:
            flight.set_result((sequence, offset))

    def _commit_done(self, items: list[tuple], total: int, flight: asyncio.Future) -> None:
        self._in_flight = None
        try:
            sequence, position = flight.result()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the waiters
            self._failed_commits += 1
            error = QueueWriteError(f"queue partition {self.index}: queue file write error: {exc}")
            error.__cause__ = exc
            for item in items:
                waiter = item[3]
                if not waiter.done():
                    waiter.set_exception(error)
        else:
            queue = self._queue
            if queue.add_segment(sequence):
                # The writer rolled over: the previous segment is closed and may be removable.
                queue.segment_emptied = True
            for _buffers, size, apply, waiter in items:
                if type(apply) is StateChange:
                    queue.apply(apply, sequence)
                else:
                    envelope, content_at, length = apply
                    queue.add_message(envelope, sequence, position + content_at, length)
                position += size
                if not waiter.done():
                    waiter.set_result(None)
            self._commits += 1
            self._records += len(items)
            self._bytes += total
            self._last_batch = len(items)
            if len(items) > self._max_batch:
                self._max_batch = len(items)
            if queue.segment_emptied:
                removable = self._removable_segments()
                if removable:
                    # A segment that fails to go stays for the next recovery to remove.
                    try:
                        self._unlink_segments(removable)
                    except OSError:
                        pass
        self._commit_next()

    def _commit_next(self) -> None:
        if not self._batch or self._in_flight is not None:
            return
        if self.commit_delay <= 0 or self._closing or len(self._batch) >= self.commit_batch:
            self._start_commit()
        elif self._timer is None:
            wait = self._batch_since + self.commit_delay - self._loop.time()
            self._timer = self._loop.call_later(max(0.0, wait), self._on_timer)

    async def close(self) -> None:
        """Commit what is pending, then close the open segment."""
        if self._closing:
            return
        self._closing = True
        if self._writer is None:
            return
        while self._batch or self._in_flight is not None:
            if self._in_flight is None:
                self._start_commit()
            await asyncio.wait([self._in_flight])
        try:
            self._writer.close()  # the last fdatasync blocks the loop: the worker is stopping
        finally:
            self._stop_datasync_thread()

    def _stop_datasync_thread(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._done_fd)
        self._datasync.stop()
        self._datasync_thread.join()
        os.close(self._request_fd)
        os.close(self._done_fd)

    # -- reading --------------------------------------------------------------------------------

    @property
    def entries(self) -> Mapping[str, QueueEntry]:
        """The live messages by queue ID (read-only)."""
        return MappingProxyType(self._queue.entries)

    @property
    def incoming(self) -> KeysView[str]:
        """The queue IDs of the incoming queue, oldest first (a live view: copy before awaiting)."""
        return self._queue.incoming.keys()

    def content_location(self, queue_id: str) -> tuple[str, int, int]:
        """(segment path, offset, length) of a live message's content, for a delivery agent to
        stream from the file."""
        entry = self._queue.entries[queue_id]
        return (os.path.join(self.directory, segment_name(entry.segment)),
                entry.content_offset, entry.content_length)

    def read_content(self, queue_id: str) -> bytes:
        """The stored content of a live message (blocking file read)."""
        entry = self._queue.entries[queue_id]
        return read_range(os.path.join(self.directory, segment_name(entry.segment)),
                          entry.content_offset, entry.content_length)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "commits": self._commits,
            "failed_commits": self._failed_commits,
            "records": self._records,
            "bytes": self._bytes,
            "last_batch": self._last_batch,
            "max_batch": self._max_batch,
            "pending": len(self._batch),
            "messages": len(self._queue.entries),
            "segment": self._writer.sequence if self._writer else 0,
            "segments_created": self._writer.created if self._writer else 0,
            "segments_removed": self._removed_segments,
        }
