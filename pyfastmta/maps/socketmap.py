"""socketmap:inet:host:port:name and socketmap:unix:/path:name — Sendmail's socketmap protocol.

Each lookup sends one netstring, "name key", and reads one netstring back: "OK value", "NOTFOUND ",
or a failure: "TEMP reason", "TIMEOUT reason" (temporary, TableTemporaryError) or "PERM reason"
(a TableError). Tables with the same server share one connection, kept between lookups and
closed after Postfix's idle time and lifetime limits. A connection the server closed is opened
again and the query sent once more; a server that does not answer within the timeout fails the
lookup. Lookups are synchronous and each is bounded by the timeout (per attempt).

Like Postfix's socketmap, this is a pattern table: the server sees whole keys, as given (no case
folding, no user@domain pieces).
"""

from __future__ import annotations

import os
import socket
import threading
import time

from pyfastmta.maps.table import Table, TableError, TableTemporaryError

# Postfix's limits for socketmap clients (not parameters in Postfix either): connect, read and
# write timeout, reply size, and when a kept connection is closed.
DEFAULT_TIMEOUT = 100.0
DEFAULT_MAX_REPLY = 100000
DEFAULT_MAX_IDLE = 10.0
DEFAULT_MAX_TTL = 100.0


class _Broken(Exception):
    """The connection ended (EOF, reset): worth one more try on a new connection."""


class _Failed(Exception):
    """Anything else that went wrong with the exchange: no retry."""


def parse_endpoint(endpoint: str) -> tuple[int, object]:
    """(address family, address) of "inet:host:port", "unix:/path" or "local:/path"."""
    transport, colon, address = endpoint.partition(":")
    if not colon or not transport or not address:
        raise ValueError(f'need "transport:endpoint", not "{endpoint}"')
    if transport in ("unix", "local"):
        return socket.AF_UNIX, address
    if transport != "inet":
        raise ValueError(f'unsupported transport "{transport}" (inet or unix)')
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f'bad address "{address}"; expected [host]:port')
        port = rest[1:]
    else:
        host, _, port = address.rpartition(":")
    if not port:
        raise ValueError(f'missing port in "{address}"')
    if port.isdigit():
        number = int(port)
    else:
        try:
            number = socket.getservbyname(port, "tcp")
        except OSError:
            raise ValueError(f'unknown service "{port}"') from None
    if not 0 < number < 65536:
        raise ValueError(f'bad port "{port}"')
    return socket.AF_INET, (host or "localhost", number)


class _Connection:
    """One server's connection, shared by every socketmap table that names that server."""

    def __init__(self, endpoint: str, family: int, address: object, max_idle: float,
                 max_ttl: float) -> None:
        self.endpoint = endpoint
        self.family = family
        self.address = address
        self.max_idle = max_idle
        self.max_ttl = max_ttl
        self.lock = threading.Lock()
        self.users = 0
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._opened = self._used = 0.0
        self._pid = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def exchange(self, request: bytes, timeout: float, max_reply: int) -> bytes:
        """Sends one netstring and returns the reply's payload; one retry on a new connection
        when the connection turns out to be closed."""
        with self.lock:
            for attempt in (1, 2):
                deadline = time.monotonic() + timeout
                try:
                    sock = self._access(deadline)
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                    sock.sendall(b"%d:%s," % (len(request), request))
                    reply = self._read_netstring(sock, deadline, max_reply)
                except _Broken as error:
                    self.close()
                    if attempt == 1:
                        continue
                    raise _Failed(str(error)) from None
                except _Failed:
                    self.close()
                    raise
                except TimeoutError:
                    self.close()
                    raise _Failed(f"timeout after {timeout:g} s") from None
                except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as error:
                    self.close()
                    if attempt == 1:
                        continue
                    raise _Failed(error.strerror or str(error)) from None
                except OSError as error:
                    self.close()
                    raise _Failed(error.strerror or str(error)) from None
                self._used = time.monotonic()
                return reply
        raise AssertionError("unreachable")

    def _access(self, deadline: float) -> socket.socket:
        now = time.monotonic()
        if self._sock is not None and (
                self._pid != os.getpid()  # a forked child never talks over its parent's socket
                or now - self._used > self.max_idle or now - self._opened > self.max_ttl
                or self._closed_by_server()):
            self.close()
        if self._sock is None:
            self._connect(deadline)
        return self._sock

    def _closed_by_server(self) -> bool:
        """Whether the idle connection has anything to read: EOF, or bytes nobody asked for.
        Either way it is of no further use (Postfix closes it when it becomes readable)."""
        try:
            self._sock.setblocking(False)
            try:
                self._sock.recv(1, socket.MSG_PEEK)
            finally:
                self._sock.setblocking(True)
        except BlockingIOError:
            return bool(self._buffer)
        except OSError:
            return True
        return True

    def _connect(self, deadline: float) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(self.address)
        except TimeoutError:
            sock.close()
            raise _Failed(f"connect to {self.endpoint}: timed out") from None
        except OSError as error:
            sock.close()
            raise _Failed(f"connect to {self.endpoint}: {error.strerror or error}") from None
        self._sock = sock
        self._buffer = b""
        self._opened = self._used = time.monotonic()
        self._pid = os.getpid()

    def _fill(self, sock: socket.socket, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise _Broken("connection closed by server")
        self._buffer += chunk

    def _read_netstring(self, sock: socket.socket, deadline: float, max_reply: int) -> bytes:
        digits = len(str(max_reply)) + 1
        while b":" not in self._buffer[:digits + 1]:
            if len(self._buffer) > digits or (self._buffer and not self._buffer.isdigit()):
                raise _Failed("netstring format error")
            self._fill(sock, deadline)
        length_text, _, rest = self._buffer.partition(b":")
        if not length_text.isdigit():
            raise _Failed("netstring format error")
        length = int(length_text)
        if length > max_reply:
            raise _Failed(f"netstring size error: reply of {length} bytes (limit {max_reply})")
        self._buffer = rest
        while len(self._buffer) < length + 1:
            self._fill(sock, deadline)
        payload, terminator = self._buffer[:length], self._buffer[length:length + 1]
        if terminator != b",":
            raise _Failed("netstring format error")
        self._buffer = self._buffer[length + 1:]
        return payload


_connections: dict[str, _Connection] = {}
_connections_lock = threading.Lock()


class SocketmapTable(Table):
    kind = "socketmap"
    pattern = True
    fold = False

    def __init__(self, name: str, connection: _Connection, map_name: str, smtputf8_enable: bool,
                 timeout: float, max_reply: int) -> None:
        super().__init__(name)
        self.map_name = map_name
        self._connection = connection
        self._smtputf8_enable = smtputf8_enable
        self._timeout = timeout
        self._max_reply = max_reply
        self._closed = False

    def get(self, key: str) -> str | None:
        if self._closed:
            raise TableError(f"{self.spec}: lookup on a closed table")
        try:
            request = f"{self.map_name} {key}".encode()
        except UnicodeEncodeError:
            if self._smtputf8_enable:
                return None  # a key that is not UTF-8 cannot be in the table
            request = f"{self.map_name} {key}".encode("utf-8", "surrogateescape")
        try:
            reply = self._connection.exchange(request, self._timeout, self._max_reply)
        except _Failed as error:
            raise TableTemporaryError(f"{self.spec}: lookup error: {error}") from None
        status, space, payload = reply.partition(b" ")
        if status == b"OK":
            # "OK" with no space after it carries no value: Postfix treats it as not found.
            return self._decode(payload) if space else None
        if status == b"NOTFOUND":
            return None
        reason = payload.lstrip().decode("utf-8", "replace")[:200]
        detail = f": {reason}" if reason else ""
        if status == b"PERM":
            raise TableError(f"{self.spec}: socketmap server permanent error{detail}")
        what = {b"TEMP": "temporary", b"TIMEOUT": "timeout"}.get(status, "unknown")
        raise TableTemporaryError(f"{self.spec}: socketmap server {what} error{detail}")

    def _decode(self, payload: bytes) -> str:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            if self._smtputf8_enable:
                raise TableError(f"{self.spec}: socketmap server sent a value that is not "
                                 f"UTF-8: {payload[:200]!r}") from None
            return payload.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _connections_lock:
            self._connection.users -= 1
            if self._connection.users == 0:
                _connections.pop(self._connection.endpoint, None)
                with self._connection.lock:
                    self._connection.close()


def open_socketmap(name: str, options, *, timeout: float = DEFAULT_TIMEOUT,
                   max_reply: int = DEFAULT_MAX_REPLY, max_idle: float = DEFAULT_MAX_IDLE,
                   max_ttl: float = DEFAULT_MAX_TTL) -> SocketmapTable:
    endpoint, colon, map_name = name.rpartition(":")
    if not colon or not endpoint:
        raise TableError(f"socketmap:{name}: expected socketmap:inet:host:port:name "
                         "or socketmap:unix:/path:name")
    try:
        family, address = parse_endpoint(endpoint)
    except ValueError as error:
        raise TableError(f"socketmap:{name}: {error}") from None
    with _connections_lock:
        connection = _connections.get(endpoint)
        if connection is None:
            connection = _Connection(endpoint, family, address, max_idle, max_ttl)
            _connections[endpoint] = connection
        connection.users += 1
    return SocketmapTable(name, connection, map_name, options.smtputf8_enable, timeout,
                          max_reply)

