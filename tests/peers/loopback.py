"""Small helpers the tests share for peers on loopback: free ports, waiting, smtp-sink."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-sink"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 30, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_listening(host: str, port: int, process: subprocess.Popen | None = None,
                   timeout: float = 10) -> None:
    """Returns once host:port accepts connections; fails the test if it does not in time, or
    if the process meant to listen there has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{process.args[0]} exited ({process.returncode}) before "
                                     f"listening on {host}:{port}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


def start_smtp_sink(host: str, port: int, *options: str, backlog: int = 50) -> subprocess.Popen:
    """Postfix's smtp-sink on host:port with the given options, listening when this returns.
    As root it runs as nobody (it would drop to that user anyway): dump directories it is given
    must be writable by nobody. The caller ends it (kill, then wait)."""
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([SMTP_SINK, *user, *options, f"{host}:{port}", str(backlog)])
    try:
        wait_listening(host, port, process)
    except AssertionError:
        process.kill()
        process.wait()
        raise
    return process


def run_on_loop(event_loop_name: str, coroutine):
    """Runs the coroutine to its end on a new event loop of the named kind (uvloop or asyncio)."""
    import asyncio

    import uvloop

    factory = uvloop.new_event_loop if event_loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)
