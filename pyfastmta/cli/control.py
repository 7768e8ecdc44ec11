"""start, stop, reload, status: what Postfix's postfix(1) command does for its master."""

from __future__ import annotations

import os
import signal
import sys
import time

from pyfastmta.master.master import Master
from pyfastmta.master.pidfile import PidFile
from pyfastmta.qmgr.flushrequest import write_request


def _say(text: str) -> None:
    print(f"pyfastmta: {text}", file=sys.stderr)


def start(config, foreground: bool) -> int:
    pidfile = PidFile.for_queue(config.get("queue_directory"))
    pid = pidfile.running_pid()
    if pid is not None:
        _say(f"the mail system is already running: PID: {pid}")
        return 1
    if foreground:
        _say("starting the mail system in the foreground")
        return Master(config).run()
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        code = 1
        try:
            code = Master(config, notify_fd=write_fd, daemon=True).run()
        finally:
            os._exit(code)
    os.close(write_fd)
    os.waitpid(child, 0)
    chunks = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    answer = b"".join(chunks).decode(errors="replace").strip()
    if answer == "ready":
        _say("starting the mail system")
        return 0
    _say(f"fatal: {answer.removeprefix('error: ') or 'the master exited during start'}")
    return 1


def stop(config) -> int:
    pidfile = PidFile.for_queue(config.get("queue_directory"))
    pid = pidfile.running_pid()
    if pid is None:
        _say("the mail system is not running")
        return 1
    _say("stopping the mail system")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + config.get("worker_stop_timeout") + 20
    while pidfile.running_pid() is not None:
        if time.monotonic() > deadline:
            _say(f"fatal: the master (PID {pid}) did not stop in time")
            return 1
        time.sleep(0.05)
    return 0


def reload(config) -> int:
    pid = PidFile.for_queue(config.get("queue_directory")).running_pid()
    if pid is None:
        _say("the mail system is not running")
        return 1
    _say("refreshing the mail system")
    os.kill(pid, signal.SIGHUP)
    return 0


def status(config) -> int:
    pid = PidFile.for_queue(config.get("queue_directory")).running_pid()
    if pid is None:
        _say("the mail system is not running")
        return 1
    _say(f"the mail system is running: PID: {pid}")
    return 0


def flush(config, site: str | None = None) -> int:
    """postqueue -f / flush: every deferred message is tried now; postqueue -s SITE: the mail
    queued for that site."""
    queue_directory = config.get("queue_directory")
    pid = PidFile.for_queue(queue_directory).running_pid()
    if pid is None:
        _say("the mail system is not running")
        return 1
    write_request(queue_directory, site)
    os.kill(pid, signal.SIGUSR1)
    return 0
