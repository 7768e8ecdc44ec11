"""A worker process: one event loop, one queue partition, the smtpd sessions the kernel gives it.

Created by the master with fork(); the loop is created here, after the fork, never in the master.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal

from pyfastmta.config import ConfigError, load_config
from pyfastmta.maillog import Maillog
from pyfastmta.qmgr.flushrequest import FlushRequests
from pyfastmta.qmgr.service import DeliveryService
from pyfastmta.queue.partition import Partition
from pyfastmta.smtpd.server import SmtpServer

# Room for the connections a burst of clients opens before the workers accept them.
LISTEN_BACKLOG = 1024
# PYFASTMTA_EVENT_LOOP=asyncio runs the standard loop instead of uvloop (the tests use both).
EVENT_LOOP_VARIABLE = "PYFASTMTA_EVENT_LOOP"


def new_event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get(EVENT_LOOP_VARIABLE, "uvloop") == "asyncio":
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


class Worker:
    def __init__(self, index: int, config, listeners, ready_fd: int, master_alive_fd: int,
                 daemon: bool = False, client_events=None):
        self.index = index
        self.config = config
        self.listeners = listeners  # [(service, socket)]
        self.ready_fd = ready_fd
        self.master_alive_fd = master_alive_fd
        self.daemon = daemon
        self.client_events = client_events  # the master's table, shared by all workers
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested: asyncio.Event | None = None
        self.factories: dict[int, object] = {}
        self.server: SmtpServer | None = None
        self.delivery: DeliveryService | None = None
        self.maillog: Maillog | None = None

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C in a foreground master stops via the master
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1})
        try:
            return self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> int:
        config = self.config
        loop = self.loop
        self.maillog = Maillog.for_config(config, self.daemon)
        self.maillog.attach_loop(loop)
        partition = Partition(
            config.get("queue_directory"), self.index,
            commit_delay=config.get("queue_commit_delay"),
            commit_batch=config.get("queue_commit_batch"),
            segment_size=config.get("queue_segment_size"),
        )
        report = partition.recover()
        self.maillog.log("qmgr", f"partition {self.index}: recovered {report}")
        # What exists now (configuration, the recovered queue index) lives as long as the worker:
        # keep the collector from walking it again at every full collection.
        gc.collect()
        gc.freeze()
        self.delivery = DeliveryService(config, partition, self.maillog.log)
        delivery = loop.create_task(self.delivery.run())
        self.server = SmtpServer(loop, partition, self.maillog, self.delivery, self.client_events)
        self.stop_requested = asyncio.Event()
        servers = []
        for key, (service, sock) in enumerate(self.listeners):
            self.factories[key] = self.server.protocol_factory(config.for_service(service), service.name)
            # create_server listens again, with asyncio's backlog of 100 unless told otherwise.
            servers.append(await loop.create_server(self._session_factory(key), sock=sock,
                                                    backlog=LISTEN_BACKLOG))
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        flush_requests = FlushRequests(config.get("queue_directory"))
        loop.add_signal_handler(signal.SIGUSR1, self._flush, flush_requests)
        loop.add_reader(self.master_alive_fd, self._master_gone)
        os.write(self.ready_fd, bytes([self.index % 256]))
        os.close(self.ready_fd)

        await self.stop_requested.wait()
        for server in servers:
            server.close()
        await self.server.drain(config.get("worker_stop_timeout"))
        await self.delivery.stop(config.get("worker_stop_timeout"))
        await delivery
        await partition.close()
        self.maillog.flush()
        return 0

    def _session_factory(self, key: int):
        factories = self.factories
        return lambda: factories[key]()

    def _reload(self) -> None:
        try:
            config = load_config(self.config.config_dir)
        except ConfigError as error:
            self.maillog.log("master", f"warning: reload: {error}; keeping the running configuration")
            return
        try:
            self.delivery.reload(config)
        except (ConfigError, ValueError, OSError) as error:
            self.maillog.log("master", f"warning: reload: {error}; keeping the running configuration")
            return
        if config.get("maillog_file") != self.config.get("maillog_file"):
            self.maillog.reopen(config.get("maillog_file"))
        self.config = config
        services = {svc.name: svc for svc in config.smtpd_services()}
        for key, (service, _sock) in enumerate(self.listeners):
            current = services.get(service.name, service)
            self.factories[key] = self.server.protocol_factory(config.for_service(current), current.name)

    def _flush(self, flush_requests: FlushRequests) -> None:
        for site in flush_requests.new_sites():
            self.delivery.flush(site)

    def _master_gone(self) -> None:
        try:
            data = os.read(self.master_alive_fd, 1)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(self.master_alive_fd)
            self.maillog.log("master", "warning: master process is gone; stopping")
            self.stop_requested.set()
