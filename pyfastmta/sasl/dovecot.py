"""Dovecot's authentication protocol, client side (smtpd_sasl_type = dovecot): one connection
per worker to the auth socket (smtpd_sasl_path), many exchanges on it at once, each with its own
request id. Mechanisms are Dovecot's to offer and to run: smtpd only passes the base64
challenges and responses through.

The socket is opened on first use and again after it breaks; an exchange under way when it
breaks fails temporarily (454 4.7.0 to the client), as does one that the server does not answer
in time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from pyfastmta.sasl.conversation import SaslStep, continue_with, failed, succeeded

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 1


def _unescape(value: str) -> str:
    """Dovecot's tab escaping: \\x01 followed by 1, t, r or n."""
    if "\x01" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        char = value[i]
        if char == "\x01" and i + 1 < len(value):
            out.append({"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _clean(value: str) -> str:
    """A value we send: no tab or line break can reach the protocol."""
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ")


class DovecotAuth:
    def __init__(self, path: str, *, timeout: float = 60.0,
                 warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.warn = warn  # where warnings go (the worker's maillog)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._mechanisms: list[tuple[str, frozenset[str]]] = []
        self._waiting: dict[int, asyncio.Future] = {}
        self._next_id = 1
        self._reading: asyncio.Task | None = None
        self._connecting: asyncio.Lock | None = None

    async def mechanisms(self) -> list[str]:
        """The mechanisms the server offers (for the EHLO AUTH line), [] when it cannot be asked."""
        try:
            await self._connection()
        except (OSError, asyncio.TimeoutError, ConnectionError) as error:
            self._warning(f"SASL: cannot connect to {self.path}: {error}")
            return []
        return [name for name, _flags in self._mechanisms]

    def mechanism_flags(self, name: str) -> frozenset[str]:
        """Dovecot's words for a mechanism (plaintext, anonymous, dictionary, ...)."""
        for mechanism, flags in self._mechanisms:
            if mechanism == name.upper():
                return flags
        return frozenset()

    def conversation(self, *, client_address: str, server_address: str, secured: bool,
                     client_port: int = 0, server_port: int = 0) -> DovecotConversation:
        return DovecotConversation(self, client_address, server_address, secured,
                                   client_port, server_port)

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._fail_waiting("connection to the authentication server closed")

    # ---- the connection ------------------------------------------------------------------------

    async def _connection(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path),
                                                    self.timeout)
            writer.write(f"VERSION\t{PROTOCOL_MAJOR}\t{PROTOCOL_MINOR}\nCPID\t{os.getpid()}\n".encode())
            mechanisms = []
            try:
                while True:
                    line = await asyncio.wait_for(reader.readline(), self.timeout)
                    if not line:
                        raise ConnectionError("the authentication server closed the connection")
                    fields = line.rstrip(b"\n").decode("utf-8", "replace").split("\t")
                    if fields[0] == "VERSION" and fields[1:2] != [str(PROTOCOL_MAJOR)]:
                        raise ConnectionError(f"authentication server protocol version "
                                              f"{fields[1:2]} is not {PROTOCOL_MAJOR}")
                    if fields[0] == "MECH" and len(fields) > 1:
                        mechanisms.append((fields[1].upper(), frozenset(fields[2:])))
                    if fields[0] == "DONE":
                        break
            except BaseException:
                writer.close()
                raise
            self._reader, self._writer = reader, writer
            self._mechanisms = mechanisms
            self._reading = asyncio.get_running_loop().create_task(self._read_answers(reader))

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                fields = line.rstrip(b"\n").decode("utf-8", "surrogateescape").split("\t")
                if len(fields) < 2 or not fields[1].isdigit():
                    continue
                waiter = self._waiting.pop(int(fields[1]), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(fields)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._reader is reader:
                self._reader = None
                if self._writer is not None:
                    self._writer.close()
                self._writer = None
            self._fail_waiting("connection to the authentication server lost")

    def _fail_waiting(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(reason))

    async def _send(self, request_id: int, line: str) -> list[str]:
        await self._connection()
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        self._writer.write(line.encode("utf-8", "surrogateescape"))
        try:
            return await asyncio.wait_for(waiter, self.timeout)
        finally:
            self._waiting.pop(request_id, None)

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id = request_id + 1 if request_id < 2**31 else 1
        return request_id

    def _warning(self, text: str) -> None:
        if self.warn is not None:
            self.warn(text)


class DovecotConversation:
    def __init__(self, auth: DovecotAuth, client_address: str, server_address: str,
                 secured: bool, client_port: int, server_port: int) -> None:
        self._auth = auth
        self._id = 0
        self._attributes = (f"service=smtp\tnologin\tlip={_clean(server_address)}"
                            f"\trip={_clean(client_address)}")
        if server_port:
            self._attributes += f"\tlport={server_port}"
        if client_port:
            self._attributes += f"\trport={client_port}"
        if secured:
            self._attributes += "\tsecured"

    async def start(self, mechanism: str, initial: str | None) -> SaslStep:
        self._id = self._auth._new_id()
        line = f"AUTH\t{self._id}\t{_clean(mechanism.upper())}\t{self._attributes}"
        if initial is not None:
            line += f"\tresp={_clean(initial)}"
        return await self._exchange(line + "\n")

    async def step(self, response: str) -> SaslStep:
        return await self._exchange(f"CONT\t{self._id}\t{_clean(response)}\n")

    async def _exchange(self, line: str) -> SaslStep:
        try:
            fields = await self._auth._send(self._id, line)
        except (OSError, ConnectionError, asyncio.TimeoutError) as error:
            reason = str(error) or "no answer from the authentication server in time"
            self._auth._warning(f"SASL: {self._auth.path}: {reason}")
            return failed(reason, temporary=True)
        kind, arguments = fields[0], fields[2:]
        if kind == "CONT":
            return continue_with(arguments[0] if arguments else "")
        values = {}
        flags = set()
        for argument in arguments:
            name, equals, value = argument.partition("=")
            if equals:
                values[name] = _unescape(value)
            else:
                flags.add(name)
        if kind == "OK":
            return succeeded(values.get("user", ""))
        if kind == "FAIL":
            return failed(values.get("reason", ""), temporary="temp" in flags,
                          username=values.get("user", ""))
        return failed(f"unexpected answer {kind!r} from the authentication server", temporary=True)
