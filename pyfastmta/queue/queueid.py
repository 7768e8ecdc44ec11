"""Queue IDs: 15 uppercase hex digits, the creation time in microseconds, then the partition.

    value = microseconds_since_epoch << 8 | partition_index      (52 + 8 bits)

Fixed width, so string order is numeric order is creation order. Uppercase hex keeps the IDs in
the character set that log tools expect of Postfix's short IDs ([0-9A-F]+). The partition in the
low byte keeps IDs unique across workers without any coordination. Within a partition each new ID
is above the previous one even when the clock steps back, and recovery raises the floor to the
largest ID found on disk, so a restart after a clock step cannot reuse an ID.
"""

from __future__ import annotations

import time

QUEUE_ID_LENGTH = 15
MAX_PARTITIONS = 256


def partition_of(queue_id: str) -> int:
    """The index of the partition that created queue_id."""
    return int(queue_id[-2:], 16)


class QueueIdGenerator:
    def __init__(self, partition: int) -> None:
        if not 0 <= partition < MAX_PARTITIONS:
            raise ValueError(f"partition index {partition} is outside 0..{MAX_PARTITIONS - 1}")
        self.partition = partition
        self._last_tick = 0

    def observe(self, queue_id: str) -> None:
        """Never issue an ID at or below queue_id (an ID found on disk)."""
        tick = int(queue_id, 16) >> 8
        if tick > self._last_tick:
            self._last_tick = tick

    def __call__(self) -> str:
        tick = time.time_ns() // 1000
        if tick <= self._last_tick:
            tick = self._last_tick + 1
        self._last_tick = tick
        return f"{tick << 8 | self.partition:015X}"
