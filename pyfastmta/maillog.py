"""Log lines in Postfix's maillog format.

`Nov 23 12:39:22 myhostname pyfastmta/smtpd[1234]: 3F2A41C0B2: client=localhost[127.0.0.1]`

Log tools written for Postfix (pflogsumm and friends) parse these lines, so the layout — timestamp,
host, `syslog_name/program[pid]:`, then the event text — stays exactly Postfix's.

Inside an event loop lines are gathered for at most FLUSH_DELAY seconds or FLUSH_LINES lines and
written with one write (an append costs as much as a reply to a client); a process without a loop
(the master, the CLI) writes each line at once. Without maillog_file a daemon logs
to syslog (facility mail) as Postfix does, and a process in the foreground to stderr.
"""

from __future__ import annotations

import os
import sys
import syslog
import time


FLUSH_DELAY = 0.05
FLUSH_LINES = 256


class Maillog:
    def __init__(self, path: str | None, hostname: str, syslog_name: str = "pyfastmta",
                 daemon: bool = False):
        self._path = path or None
        self._hostname = hostname
        self._syslog_name = syslog_name
        self._use_syslog = daemon and not path
        self._syslog_ident = ""
        self._fd = self._open(path)
        self._pending: list[str] = []
        self._loop = None
        self._flush_scheduled = False
        self._stamp_second = -1
        self._stamp = ""
        self._pid = os.getpid()

    @staticmethod
    def _open(path: str | None) -> int:
        if not path:
            return sys.stderr.fileno()
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @classmethod
    def for_config(cls, config, daemon: bool) -> "Maillog":
        return cls(config.get("maillog_file"), config.get("myhostname"), config.get("syslog_name"), daemon)

    def attach_loop(self, loop) -> None:
        """Batch writes per loop iteration from now on (called in a worker after its loop exists)."""
        self._loop = loop
        self._pid = os.getpid()

    def reopen(self, path: str | None) -> None:
        self.flush()
        if self._fd != sys.stderr.fileno():
            os.close(self._fd)
        self._path = path or None
        self._fd = self._open(path)

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%b %e %H:%M:%S", time.localtime(second))
        return self._stamp

    def log(self, program: str, text: str) -> None:
        if self._use_syslog:
            ident = f"{self._syslog_name}/{program}"
            if ident != self._syslog_ident:
                syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_MAIL)
                self._syslog_ident = ident
            syslog.syslog(syslog.LOG_INFO, text)
            return
        line = f"{self._timestamp()} {self._hostname} {self._syslog_name}/{program}[{self._pid}]: {text}\n"
        if self._loop is None:
            self._write(line)
            return
        pending = self._pending
        pending.append(line)
        if len(pending) >= FLUSH_LINES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            data = "".join(self._pending)
            self._pending.clear()
            self._write(data)

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self) -> None:
        self.flush()
        if self._fd != sys.stderr.fileno():
            os.close(self._fd)
            self._fd = sys.stderr.fileno()
