"""The client side of Postfix's policy delegation protocol (check_policy_service), so that
existing policy servers (postgrey, policyd-spf, ...) work unchanged.

A request is `name=value` lines and an empty line; the server answers `action=...` (and
possibly other attributes) and an empty line. The action is read as an access(5) table result.
Each worker keeps its connections to a policy service open between requests, for as long as
smtpd_policy_service_max_idle and _max_ttl allow, one request at a time on each (as each of
Postfix's smtpd processes has its own); a request that fails (no connection, a
timeout, an answer that is not a policy answer) is tried again, up to
smtpd_policy_service_try_limit times, smtpd_policy_service_retry_delay apart, and then the
service's default action stands in for the answer, as in Postfix.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyfastmta.config.valuetypes import BadValue, parse_time

_LINE_BREAKS = {ord("\r"): " ", ord("\n"): " "}

# Longest answer line a server may send (Postfix reads lines of at most line_length_limit).
ANSWER_LINE_LIMIT = 8192

# How often a client looks for requests left unanswered past smtpd_policy_service_timeout; the
# answered ones it finds on the way are forgotten, so what it remembers stays small.
SWEEP_INTERVAL = 1.0


class PolicyAnswerError(Exception):
    """A server's answer that is not a policy answer."""


@dataclass(frozen=True)
class PolicyService:
    """One check_policy_service target and its settings."""

    transport: str          # "inet" or "unix"
    address: str            # host:port, or a socket path
    timeout: float
    max_idle: float
    max_ttl: float
    try_limit: int
    retry_delay: float
    default_action: str
    request_limit: int
    policy_context: str

    @property
    def name(self) -> str:
        return f"{self.transport}:{self.address}"


# main.cf parameter behind each setting a braced check_policy_service may override.
_SETTINGS = {
    "timeout": "smtpd_policy_service_timeout",
    "max_idle": "smtpd_policy_service_max_idle",
    "max_ttl": "smtpd_policy_service_max_ttl",
    "try_limit": "smtpd_policy_service_try_limit",
    "retry_delay": "smtpd_policy_service_retry_delay",
    "default_action": "smtpd_policy_service_default_action",
    "request_limit": "smtpd_policy_service_request_limit",
    "policy_context": "smtpd_policy_service_policy_context",
}
_TIMES = {"timeout", "max_idle", "max_ttl", "retry_delay"}
_COUNTS = {"try_limit", "request_limit"}


def parse_policy_service(spec: str, get: Callable[[str], object], queue_directory: str) -> PolicyService:
    """A check_policy_service argument: `inet:host:port`, `unix:/path`, `unix:private/name`
    (relative to the queue directory), or `{ target, name=value, ... }` with per-service
    settings. Raises ValueError with what is wrong."""
    text = spec.strip()
    overrides: dict[str, str] = {}
    if text.startswith("{"):
        if not text.endswith("}"):
            raise ValueError(f'"{spec}": missing "}}"')
        parts = [part.strip() for part in text[1:-1].split(",") if part.strip()]
        if not parts:
            raise ValueError(f'"{spec}": no policy service named')
        text = parts[0]
        for part in parts[1:]:
            name, equals, value = part.partition("=")
            name = name.strip()
            if not equals or name not in _SETTINGS:
                raise ValueError(f'"{spec}": unknown setting "{part}" (expected one of '
                                 f'{", ".join(sorted(_SETTINGS))})')
            overrides[name] = value.strip()
    transport, colon, address = text.partition(":")
    if not colon or transport not in ("inet", "unix") or not address:
        raise ValueError(f'"{text}": a policy service is inet:host:port or unix:/path')
    if transport == "inet":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f'"{text}": a policy service is inet:host:port')
    elif not address.startswith("/"):
        address = os.path.join(queue_directory, address)
    values: dict[str, object] = {}
    for setting, parameter in _SETTINGS.items():
        if setting in overrides:
            raw = overrides[setting]
            try:
                if setting in _TIMES:
                    values[setting] = parse_time(setting, raw, "s", 1)
                elif setting in _COUNTS:
                    values[setting] = int(raw)
                else:
                    values[setting] = raw
            except (BadValue, ValueError):
                raise ValueError(f'"{spec}": bad {setting} value "{raw}"') from None
        else:
            values[setting] = get(parameter)
    return PolicyService(transport=transport, address=address, **values)


def attribute_value(value: object) -> str:
    """A request attribute's value as sent: line breaks replaced, so that no value can end
    the request early."""
    text = value if type(value) is str else str(value)
    if "\n" in text or "\r" in text:
        return text.translate(_LINE_BREAKS)
    return text


def request_text(attributes: Mapping[str, object]) -> bytes:
    """The request as sent: one name=value line per attribute, then an empty line."""
    text = "".join([f"{name}={attribute_value(value)}\n" for name, value in attributes.items()])
    return (text + "\n").encode("utf-8", "surrogateescape")


class _Connection(asyncio.Protocol):
    """One connection to a policy server, carrying one request at a time (as each of Postfix's
    smtpd processes does). The answer, or what went wrong, goes to the asker's callback:
    answered(action, None) or answered(None, error)."""

    def __init__(self) -> None:
        self.transport = None
        self.opened = self.last_used = time.monotonic()
        self.requests = 0
        self._buffer = bytearray()
        self._answered: Callable[[str | None, BaseException | None], None] | None = None
        self._action: str | None = None
        self.lost = False
        self.asked = 0  # requests written so far: tells the client's timeout sweep which one it saw

    @property
    def waiting(self) -> bool:
        return self._answered is not None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.fail(asyncio.IncompleteReadError(bytes(self._buffer), None))

    def ask(self, answered: Callable[[str | None, BaseException | None], None]) -> None:
        """Waits for the answer to the request that the client writes next."""
        self._answered = answered
        self.asked += 1
        self._buffer.clear()
        self._action = None

    def fail(self, error: BaseException) -> None:
        self._deliver(None, error)

    def _deliver(self, action: str | None, error: BaseException | None) -> None:
        answered, self._answered = self._answered, None
        if answered is not None:
            answered(action, error)

    def data_received(self, data: bytes) -> None:
        if self._answered is None:
            return  # nothing asked: a server that talks out of turn is not listened to
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                if len(buffer) - start > ANSWER_LINE_LIMIT:
                    self.fail(PolicyAnswerError("answer line too long"))
                del buffer[:start]
                return
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if not line:
                del buffer[:start]
                if self._action is None:
                    self.fail(PolicyAnswerError("answer without action"))
                else:
                    self._deliver(self._action, None)
                return
            name, equals, value = line.partition(b"=")
            if not equals:
                text = line.decode("utf-8", "surrogateescape")
                self.fail(PolicyAnswerError(f'malformed answer line "{text[:100]}"'))
                return
            if name == b"action":
                self._action = value.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class PolicyClient:
    """Requests to one policy service from one worker. Each request has a connection of its
    own while it is out: an idle one when there is one, else a new one (up to
    default_process_limit, as many as Postfix's smtpd processes could hold), so that sessions
    never queue behind each other's questions. The requests that sessions make while the
    worker handles one batch of events are written together at its end, so that a policy
    server that sleeps between requests is woken once for them."""

    def __init__(self, service: PolicyService, warn: Callable[[str], None] | None = None,
                 max_connections: int = 100) -> None:
        self.service = service
        self._warn = warn
        self._idle: list[_Connection] = []
        self._max_connections = max(1, max_connections)
        self._slots: asyncio.Semaphore | None = None
        self._unsent: list[tuple[_Connection, bytes]] = []
        # (deadline, connection, its request number) for each request try_ask wrote, in order:
        # one timer sweeps them all, instead of a timer per request.
        self._asked: deque[tuple[float, _Connection, int]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._retrying: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def query(self, attributes: Mapping[str, str]) -> str:
        """The action the service answers (for example "DUNNO" or "DEFER_IF_PERMIT Greylisted"),
        or its default action when it cannot be asked."""
        return await self.query_text(request_text(attributes))

    async def query_text(self, request: bytes, failed: str | None = None) -> str:
        """query() for a request already in its wire form (request_text). failed: what went
        wrong with a first try that try_ask made; it counts against the try limit."""
        service = self.service
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_connections)
        async with self._slots:
            problem = failed or ""
            for attempt in range(0 if failed is None else 1, max(1, service.try_limit)):
                if attempt:
                    await asyncio.sleep(service.retry_delay)
                connection = None
                try:
                    async with asyncio.timeout(service.timeout):
                        connection = await self._connection()
                        answer = asyncio.get_running_loop().create_future()
                        self._send(connection, request, lambda action, error: _settle(answer, action, error))
                        action = await answer
                except (OSError, TimeoutError, asyncio.IncompleteReadError, PolicyAnswerError) as error:
                    problem = _describe(error, service.timeout)
                    if connection is not None:
                        self._discard(connection)
                    continue
                self._release(connection)
                return action
            if self._warn is not None:
                self._warn(f"problem talking to server {service.name}: {problem}")
            return service.default_action

    def try_ask(self, request: bytes, answered: Callable[[str], None]) -> bool:
        """Asks over a kept connection, without a coroutine: answered(action) with the answer,
        or with what query_text makes of it when this first try fails (a timeout, a broken
        connection): the other tries, as configured, then the default action. False when no
        kept connection is free: the request must go through query_text."""
        connection = self._idle_connection()
        if connection is None:
            return False

        def done(action: str | None, error: BaseException | None) -> None:
            if error is None:
                self._release(connection)
                answered(action)
                return
            self._discard(connection)
            retries = asyncio.get_running_loop().create_task(
                self.query_text(request, _describe(error, self.service.timeout)))
            self._retrying.add(retries)
            retries.add_done_callback(self._retrying.discard)
            retries.add_done_callback(lambda task: task.cancelled() or answered(task.result()))

        self._send(connection, request, done)
        loop = asyncio.get_running_loop()
        self._asked.append((loop.time() + self.service.timeout, connection, connection.asked))
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(min(SWEEP_INTERVAL, self.service.timeout), self._sweep)
        return True

    def _sweep(self) -> None:
        """Fails the requests that try_ask wrote and that went unanswered past the timeout."""
        self._sweep_handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        asked = self._asked
        while asked:
            deadline, connection, number = asked[0]
            if connection.asked == number and connection.waiting:
                if deadline > now:
                    break
                connection.fail(TimeoutError())
            asked.popleft()
        if asked:
            self._sweep_handle = loop.call_later(min(SWEEP_INTERVAL, asked[0][0] - now), self._sweep)

    def _send(self, connection: _Connection, request: bytes,
              answered: Callable[[str | None, BaseException | None], None]) -> None:
        connection.ask(answered)
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._write_unsent)
        self._unsent.append((connection, request))

    def _write_unsent(self) -> None:
        unsent, self._unsent = self._unsent, []
        for connection, request in unsent:
            if not connection.transport.is_closing():
                connection.transport.write(request)

    def _idle_connection(self) -> _Connection | None:
        """A kept connection that may still be used (smtpd_policy_service_max_idle, _max_ttl)."""
        now = time.monotonic()
        service = self.service
        while self._idle:
            connection = self._idle.pop()
            if (connection.lost or now - connection.last_used > service.max_idle
                    or now - connection.opened > service.max_ttl):
                self._discard(connection)
                continue
            return connection
        return None

    async def _connection(self) -> _Connection:
        connection = self._idle_connection()
        if connection is not None:
            return connection
        service = self.service
        loop = asyncio.get_running_loop()
        if service.transport == "inet":
            host, _, port = service.address.rpartition(":")
            _, connection = await loop.create_connection(_Connection, host.strip("[]"), int(port))
        else:
            _, connection = await loop.create_unix_connection(_Connection, service.address)
        return connection

    def _release(self, connection: _Connection) -> None:
        connection.requests += 1
        connection.last_used = time.monotonic()
        limit = self.service.request_limit
        if connection.lost or (limit and connection.requests >= limit):
            self._discard(connection)
        else:
            self._idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.close()

    def close(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def _settle(future: asyncio.Future, action: str | None, error: BaseException | None) -> None:
    if future.done():
        return  # given up on (a timeout)
    if error is None:
        future.set_result(action)
    else:
        future.set_exception(error)


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"timeout after {timeout:g}s"
    if isinstance(error, asyncio.IncompleteReadError):
        return "connection closed by the server"
    return str(error) or type(error).__name__
