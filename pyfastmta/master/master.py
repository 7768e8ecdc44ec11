"""The master process: binds the listeners, forks the workers, restarts one that dies, stops them.

The master never creates an event loop (workers make their own after the fork); it waits for
signals with sigtimedwait. Each worker gets its own SO_REUSEPORT socket per listener, kept open by
the master, so a restarted worker takes over the connections waiting in its predecessor's backlog.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import time
import traceback

from pyfastmta import __version__
from pyfastmta._ext.anvil import ClientEvents
from pyfastmta.config import ConfigError, load_config
from pyfastmta.maillog import Maillog
from pyfastmta.master.pidfile import PidFile
from pyfastmta.master.worker import LISTEN_BACKLOG, Worker
from pyfastmta.qmgr.service import address_resolver
from pyfastmta.smtpd.settings import SmtpdSettings

# A worker that dies sooner than this after its start is restarted only after THROTTLE_SECONDS.
THROTTLE_SECONDS = 1.0
MIN_HEALTHY_SECONDS = 10.0
STARTUP_TIMEOUT = 120.0
# Clients the limits can follow at once (64 bytes each); a client seen in no window and with no
# connection frees its slot.
CLIENT_EVENT_SLOTS = 65536

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1}



def raise_open_file_limit() -> None:
    """Every client connection is a descriptor: workers may use as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # the kernel's own ceiling (nr_open) is lower: keep what we have

class StartupError(Exception):
    pass


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StartupError(f"cannot listen on {shown}: {error.strerror}") from None
    return sock


class WorkerSlot:
    __slots__ = ("index", "pid", "started", "restart_at")

    def __init__(self, index: int):
        self.index = index
        self.pid = 0
        self.started = 0.0
        self.restart_at: float | None = None


class Master:
    def __init__(self, config, notify_fd: int | None = None, daemon: bool = False):
        self.config = config
        self.notify_fd = notify_fd
        self.daemon = daemon
        self.maillog = Maillog.for_config(config, daemon)
        self.listeners: list[list[tuple[object, socket.socket]]] = []
        self.slots: list[WorkerSlot] = []
        # Client connection and event counts for every worker (smtpd_client_*_limit): made
        # before the first fork, so that all workers share one table.
        self.client_events = ClientEvents(CLIENT_EVENT_SLOTS)
        self.stopping = False
        self.pidfile: PidFile | None = None
        self._ready_r = self._ready_w = -1
        self._alive_r = self._alive_w = -1

    def log(self, text: str) -> None:
        self.maillog.log("master", text)

    # ---- start ---------------------------------------------------------------------------------

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            self._start()
        except StartupError as error:
            self._notify(f"error: {error}")
            self.log(f"fatal: {error}")
            self._close_all()
            return 1
        self._notify("ready")
        self.log(f"daemon started -- version {__version__}, configuration "
                 f"{self.config.config_dir or '(embedded default)'}")
        signum = self._supervise()
        self._stop(signum)
        return 0

    def _start(self) -> None:
        config = self.config
        self.pidfile = PidFile.for_queue(config.get("queue_directory"))
        if not self.pidfile.acquire():
            raise StartupError(f"the mail system is already running (PID {self.pidfile.read_pid()})")
        raise_open_file_limit()
        count = config.get("worker_count")
        services = config.smtpd_services()
        if not services:
            raise StartupError("master.cf defines no inet smtpd service")
        try:
            # Tables are opened now, so a bad one stops the start with its name.
            address_resolver(config)
            for service in services:
                SmtpdSettings(config.for_service(service))
        except ConfigError as error:
            raise StartupError(str(error)) from None
        for _index in range(count):
            socks = []
            for service in services:
                for host, port in service.listen:
                    socks.append((service, bind_listener(host, port)))
            self.listeners.append(socks)
        self._ready_r, self._ready_w = os.pipe()
        self._alive_r, self._alive_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        os.set_blocking(self._alive_r, False)
        self.slots = [WorkerSlot(i) for i in range(count)]
        for slot in self.slots:
            self._spawn(slot)
        self._await_ready(count)

    def _await_ready(self, count: int) -> None:
        ready = 0
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while ready < count:
            info = signal.sigtimedwait(_SIGNALS, 0.05)
            if info is not None:
                if info.si_signo == signal.SIGCHLD:
                    dead = self._reap()
                    if dead:
                        raise StartupError(f"worker exited during start: {dead[0]}")
                elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    raise StartupError("stopped during start")
            try:
                ready += len(os.read(self._ready_r, 64))
            except BlockingIOError:
                pass
            if time.monotonic() > deadline:
                raise StartupError("workers did not become ready in time")

    def _notify(self, text: str) -> None:
        if self.notify_fd is not None:
            try:
                os.write(self.notify_fd, text.encode() + b"\n")
                os.close(self.notify_fd)
            except OSError:
                pass
            self.notify_fd = None

    def _spawn(self, slot: WorkerSlot) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.pidfile.close_inherited()
                if self.notify_fd is not None:
                    os.close(self.notify_fd)
                os.close(self._alive_w)
                os.close(self._ready_r)
                for index, socks in enumerate(self.listeners):
                    if index != slot.index:
                        for _service, sock in socks:
                            sock.close()
                worker = Worker(slot.index, self.config, self.listeners[slot.index],
                                self._ready_w, self._alive_r, self.daemon, self.client_events)
                code = worker.run()
            except BaseException:
                self.maillog.log("worker", "fatal: " + traceback.format_exc().replace("\n", " | "))
            finally:
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.restart_at = None

    # ---- supervise -----------------------------------------------------------------------------

    def _supervise(self) -> int:
        while True:
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            now = time.monotonic()
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    return info.si_signo
                if info.si_signo == signal.SIGHUP:
                    self._reload()
                elif info.si_signo == signal.SIGUSR1:
                    self._signal_workers(signal.SIGUSR1)  # flush: deferred mail is due now
                elif info.si_signo == signal.SIGCHLD:
                    self._reap()
            for slot in self.slots:
                if slot.pid == 0 and slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot)

    def _reap(self) -> list[str]:
        reports = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for slot in self.slots:
                if slot.pid == pid:
                    if os.WIFSIGNALED(status):
                        how = f"killed by signal {os.WTERMSIG(status)}"
                    else:
                        how = f"exit status {os.WEXITSTATUS(status)}"
                    report = f"worker {slot.index} pid {pid} {how}"
                    reports.append(report)
                    slot.pid = 0
                    if not self.stopping:
                        self.log(f"warning: {report}")
                        healthy = time.monotonic() - slot.started >= MIN_HEALTHY_SECONDS
                        slot.restart_at = time.monotonic() + (0 if healthy else THROTTLE_SECONDS)
        return reports

    def _reload(self) -> None:
        try:
            config = load_config(self.config.config_dir)
        except ConfigError as error:
            self.log(f"warning: reload: {error}; keeping the running configuration")
            return
        if config.get("worker_count") != self.config.get("worker_count") or \
                _listen_set(config) != _listen_set(self.config):
            self.log("warning: changes to worker_count and to listeners take effect after stop and start")
        self.config = config
        self.log(f"reload -- version {__version__}, configuration {config.config_dir or '(embedded default)'}")
        self._signal_workers(signal.SIGHUP)

    def _signal_workers(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid:
                os.kill(slot.pid, signum)

    # ---- stop ----------------------------------------------------------------------------------

    def _stop(self, signum: int) -> None:
        self.stopping = True
        self.log(f"terminating on signal {signum}")
        for slot in self.slots:
            if slot.pid:
                os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.get("worker_stop_timeout") + 10
        while any(slot.pid for slot in self.slots):
            signal.sigtimedwait(_SIGNALS, 0.1)
            self._reap()
            if time.monotonic() > deadline:
                for slot in self.slots:
                    if slot.pid:
                        os.kill(slot.pid, signal.SIGKILL)
                deadline = float("inf")
        self._close_all()

    def _close_all(self) -> None:
        for socks in self.listeners:
            for _service, sock in socks:
                sock.close()
        for fd in (self._ready_r, self._ready_w, self._alive_r, self._alive_w):
            if fd >= 0:
                os.close(fd)
        if self.pidfile is not None:
            self.pidfile.release()
        self.maillog.close()


def _listen_set(config) -> set:
    return {(host, port) for service in config.smtpd_services() for host, port in service.listen}
