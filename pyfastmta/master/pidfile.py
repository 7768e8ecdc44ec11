"""$queue_directory/pid/master.pid, locked for as long as the master runs (as Postfix does).

The lock, not the file's existence, says whether a master runs: a master killed with SIGKILL
leaves the file behind, but its lock is gone with it.
"""

from __future__ import annotations

import fcntl
import os


class PidFile:
    def __init__(self, path: str):
        self.path = path
        self._fd = -1

    @classmethod
    def for_queue(cls, queue_directory: str) -> "PidFile":
        return cls(os.path.join(queue_directory, "pid", "master.pid"))

    def acquire(self) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid():>10}\n".encode())
        self._fd = fd
        return True

    def close_inherited(self) -> None:
        """In a forked child: drop the copy of the descriptor; the master keeps the lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def release(self) -> None:
        if self._fd >= 0:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = -1

    def read_pid(self) -> int | None:
        try:
            with open(self.path) as file:
                return int(file.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """The pid of the running master, or None when none holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.read_pid()
        finally:
            os.close(fd)
        return None
