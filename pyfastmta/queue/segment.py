"""Append-only segment files of one partition directory.

A segment is named `segment.<16 hex digits>`, its sequence number; the numbers grow, so the name
order is the write order. A process writes only to the segment it created last; segments left by
an earlier process are read at recovery and never appended to again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

SEGMENT_PREFIX = "segment."
_IOV_MAX = os.sysconf("SC_IOV_MAX")


def segment_name(sequence: int) -> str:
    return f"{SEGMENT_PREFIX}{sequence:016X}"


def list_segments(directory: str) -> list[tuple[int, str]]:
    """(sequence, path) of the segments in directory, in write order."""
    found = []
    for name in os.listdir(directory):
        if name.startswith(SEGMENT_PREFIX):
            try:
                sequence = int(name[len(SEGMENT_PREFIX):], 16)
            except ValueError:
                continue
            found.append((sequence, os.path.join(directory, name)))
    found.sort()
    return found


def fsync_directory(path: str) -> None:
    """Make the creation, rename or removal of names in directory durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_segment(path: str) -> bytes | None:
    """The bytes of a segment, or None when it was removed meanwhile (all its messages final)."""
    try:
        with open(path, "rb", buffering=0) as segment:
            return segment.read()
    except FileNotFoundError:
        return None


def read_range(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise OSError(f"{path}: {length} bytes expected at offset {offset}, found {len(data)}")
    return data


def _write_all(fd: int, buffers: Sequence[bytes | memoryview], total: int) -> None:
    if len(buffers) > _IOV_MAX:
        buffers = [b"".join(buffers)]
    written = os.writev(fd, buffers)
    if written == total:
        return
    # A short write (signal, full disk): continue after the bytes that did get written.
    rest = memoryview(b"".join(buffers))[written:]
    while rest:
        rest = rest[os.write(fd, rest):]


class SegmentWriter:
    """Appends batches of records to the newest segment.

    Runs in the event loop's thread: a batch is one writev into the page cache; the fdatasync
    that makes it durable is done by the partition's datasync thread. Opening a new segment
    (fsync of the directory) blocks, once per segment_size bytes.
    """

    def __init__(self, directory: str, first_sequence: int, segment_size: int) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.sequence = first_sequence - 1
        self._fd: int | None = None
        self._size = 0
        self._suspect = False
        self.created = 0

    def path(self, sequence: int) -> str:
        return os.path.join(self.directory, segment_name(sequence))

    def open_next(self) -> None:
        """Start a new segment; durable (directory fsync'd) on return."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        sequence = self.sequence + 1
        fd = os.open(self.path(sequence), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fsync(fd)
            fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.sequence, self._size, self._suspect = fd, sequence, 0, False
        self.created += 1

    @property
    def fd(self) -> int:
        return self._fd

    def write(self, buffers: Sequence[bytes | memoryview], total: int) -> tuple[int, int]:
        """Write a batch with one writev; return (segment sequence, offset). Not durable yet."""
        if self._fd is None or self._suspect or self._size >= self.segment_size:
            self.open_next()
        offset = self._size
        try:
            _write_all(self._fd, buffers, total)
        except BaseException:
            self.mark_suspect()
            raise
        self._size = offset + total
        return self.sequence, offset

    def mark_suspect(self) -> None:
        """A write or its sync failed: what reached the disk is unknown now. Later batches go to
        a fresh segment, and recovery treats what is left of this one as any other damaged or
        torn tail."""
        self._suspect = True

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
