"""The client side of Postfix's policy delegation protocol (check_policy_service), so that
existing policy servers (postgrey, policyd-spf, ...) work unchanged.

A request is `name=value` lines and an empty line; the server answers `action=...` (and
possibly other attributes) and an empty line. The action is read as an access(5) table result.
Each worker keeps one connection per policy service open between requests, for as long as
smtpd_policy_service_max_idle and _max_ttl allow; a request that fails (no connection, a
timeout, an answer that is not a policy answer) is tried again, up to
smtpd_policy_service_try_limit times, smtpd_policy_service_retry_delay apart, and then the
service's default action stands in for the answer, as in Postfix.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyfastmta.config.valuetypes import BadValue, parse_time

# Longest answer line a server may send (Postfix reads lines of at most line_length_limit).
ANSWER_LINE_LIMIT = 8192


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


def request_text(attributes: Mapping[str, str]) -> bytes:
    """The request as sent: one name=value line per attribute (line breaks in values replaced,
    so that no value can end the request early), then an empty line."""
    lines = []
    for name, value in attributes.items():
        value = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}={value}\n")
    lines.append("\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class PolicyClient:
    """Requests to one policy service from one worker, over one kept connection."""

    def __init__(self, service: PolicyService, warn: Callable[[str], None] | None = None) -> None:
        self.service = service
        self._warn = warn
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._opened = 0.0
        self._last_used = 0.0
        self._requests = 0
        self._lock = asyncio.Lock()

    async def query(self, attributes: Mapping[str, str]) -> str:
        """The action the service answers (for example "DUNNO" or "DEFER_IF_PERMIT Greylisted"),
        or its default action when it cannot be asked."""
        return await self.query_text(request_text(attributes))

    async def query_text(self, request: bytes) -> str:
        """query() for a request already in its wire form (request_text)."""
        service = self.service
        async with self._lock:  # one request at a time on the connection
            problem = ""
            for attempt in range(max(1, service.try_limit)):
                if attempt:
                    await asyncio.sleep(service.retry_delay)
                try:
                    return await asyncio.wait_for(self._exchange(request), service.timeout)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError, PolicyAnswerError) as error:
                    problem = _describe(error, service.timeout)
                    self.close()
            if self._warn is not None:
                self._warn(f"problem talking to server {service.name}: {problem}")
            return service.default_action

    async def _exchange(self, request: bytes) -> str:
        await self._connection()
        self._writer.write(request)
        await self._writer.drain()
        action = None
        while True:
            line = await self._reader.readuntil(b"\n")
            if len(line) > ANSWER_LINE_LIMIT:
                raise PolicyAnswerError("answer line too long")
            text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            if not text:
                break
            name, equals, value = text.partition("=")
            if not equals:
                raise PolicyAnswerError(f'malformed answer line "{text[:100]}"')
            if name == "action":
                action = value
        if action is None:
            raise PolicyAnswerError("answer without action")
        self._requests += 1
        self._last_used = time.monotonic()
        if self.service.request_limit and self._requests >= self.service.request_limit:
            self.close()
        return action

    async def _connection(self) -> None:
        now = time.monotonic()
        service = self.service
        if self._writer is not None and (
                self._writer.is_closing() or now - self._last_used > service.max_idle
                or now - self._opened > service.max_ttl):
            self.close()
        if self._writer is not None:
            return
        if service.transport == "inet":
            host, _, port = service.address.rpartition(":")
            host = host.strip("[]")
            self._reader, self._writer = await asyncio.open_connection(host, int(port),
                                                                       limit=ANSWER_LINE_LIMIT * 2)
        else:
            self._reader, self._writer = await asyncio.open_unix_connection(
                service.address, limit=ANSWER_LINE_LIMIT * 2)
        self._opened = self._last_used = now
        self._requests = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return f"timeout after {timeout:g}s"
    if isinstance(error, asyncio.IncompleteReadError):
        return "connection closed by the server"
    if isinstance(error, asyncio.LimitOverrunError):
        return "answer line too long"
    return str(error) or type(error).__name__
