"""One client connection to one SMTP or LMTP server (Postfix's smtp(8) and lmtp(8) protocol side).

The caller (the delivery agent with its connection cache) picks the server and the recipients;
a `SmtpConnection` greets, negotiates, runs mail transactions and reports one outcome per
recipient. Replies are parsed by the compiled `SmtpReplyParser`; message content goes from the
queue segment to the socket with sendfile on plain connections.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import time

from pyfastmta._ext.smtpreply import SmtpReplyParser
from pyfastmta.smtp.replies import Reply

# Bytes handed to the kernel per sendfile call; the transfer timeout applies to each.
_CHUNK = 1 << 20
# Bytes the TLS transport may buffer before the sender waits for it to drain.
_TLS_WRITE_BUFFER = 256 * 1024
# Longest reply line kept (RFC 5321 allows 512; real servers send more).
_REPLY_LINE_LIMIT = 4096
_REPLY_LINES_LIMIT = 1000


class ClientTimeouts:
    """Per-stage time limits in seconds; None means no limit of ours."""

    __slots__ = ("connect", "helo", "starttls", "mail", "rcpt", "data_init", "data_xfer",
                 "data_done", "rset", "quit")

    def __init__(self, connect, helo, starttls, mail, rcpt, data_init, data_xfer, data_done,
                 rset, quit):
        self.connect = connect or None  # 0: the operating system's own connect timeout
        self.helo = helo
        self.starttls = starttls
        self.mail = mail
        self.rcpt = rcpt
        self.data_init = data_init
        self.data_xfer = data_xfer
        self.data_done = data_done
        self.rset = rset
        self.quit = quit

    # Postfix's default per stage. The greeting stage's parameter is *_helo_timeout for SMTP and
    # lmtp_lhlo_timeout for LMTP; LMTP's connect default 0 leaves the limit to the system.
    STAGES = (("connect", 30.0), ("helo", 300.0), ("starttls", 300.0), ("mail", 300.0),
              ("rcpt", 300.0), ("data_init", 120.0), ("data_xfer", 180.0), ("data_done", 600.0),
              ("rset", 20.0), ("quit", 300.0))

    @classmethod
    def parameter_names(cls, protocol: str) -> list[str]:
        """The main.cf names of the time limits of "smtp" or "lmtp", in constructor order."""
        return [f"{protocol}_{'lhlo' if protocol == 'lmtp' and stage == 'helo' else stage}_timeout"
                for stage, _default in cls.STAGES]

    @classmethod
    def _from_parameters(cls, protocol: str, values: dict) -> "ClientTimeouts":
        names = cls.parameter_names(protocol)
        unknown = set(values) - set(names)
        if unknown:
            raise TypeError(f"unknown {protocol} time limits: {', '.join(sorted(unknown))}")
        defaults = [0.0 if protocol == "lmtp" and stage == "connect" else default
                    for stage, default in cls.STAGES]
        return cls(*(values.get(name, default) for name, default in zip(names, defaults)))

    @classmethod
    def for_smtp(cls, **smtp_timeouts) -> "ClientTimeouts":
        """From smtp_*_timeout values by their Postfix names; Postfix's defaults for the rest."""
        return cls._from_parameters("smtp", smtp_timeouts)

    @classmethod
    def for_lmtp(cls, **lmtp_timeouts) -> "ClientTimeouts":
        """From lmtp_*_timeout values by their Postfix names; Postfix's defaults for the rest."""
        return cls._from_parameters("lmtp", lmtp_timeouts)


class RecipientResult:
    """The outcome for one recipient. `reply` is the text Postfix logs in parentheses after
    status=: the server's reply for sent mail, "host H[A] said: ... (in reply to ...)" otherwise."""

    __slots__ = ("index", "status", "dsn", "reply")

    def __init__(self, index: int, status: str, dsn: str, reply: str):
        self.index = index
        self.status = status  # "sent", "deferred" or "bounced"
        self.dsn = dsn
        self.reply = reply

    def __repr__(self) -> str:
        return f"RecipientResult({self.index}, {self.status}, {self.dsn}, {self.reply!r})"


class DeliveryError(Exception):
    """The connection failed as a whole (connect, greeting, handshake, timeout, hang-up).

    `results` is empty when no transaction was under way; during one it holds an outcome for
    every recipient of `deliver`: those already final as they were, the rest deferred."""

    def __init__(self, temporary: bool, dsn: str, reason: str, stage: str = ""):
        super().__init__(reason)
        self.temporary = temporary
        self.dsn = dsn
        self.reason = reason
        self.stage = stage  # "connect", "greeting", "helo", "starttls", "mail", "rcpt", "data"...
        self.results: list[RecipientResult] = []


class ContentSource:
    """The stored wire form of a message inside a queue segment: dot-stuffed CRLF lines without
    the final ".<CR><LF>"."""

    __slots__ = ("path", "offset", "length")

    def __init__(self, path: str, offset: int, length: int):
        self.path = path
        self.offset = offset
        self.length = length


class _ConnectionBroken(Exception):
    """The server hung up, sent a malformed reply, or a stage timed out."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what  # "lost connection" / "timed out" / "malformed reply"


class _ClientProtocol(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.parser = SmtpReplyParser(self, _REPLY_LINE_LIMIT, _REPLY_LINES_LIMIT)
        self.replies: collections.deque[Reply] = collections.deque()
        self.broken: str | None = None
        self.discard_after_reply = False  # STARTTLS sent: what follows its reply is dropped
        self.discarding = False
        self._reply_waiter: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._paused = False

    def connection_made(self, transport):
        self.transport = transport
        self.limit_write_buffer()

    def limit_write_buffer(self, high: int = 0):
        """high 0 (plain TCP): paused while anything is buffered, so a drain waits for an empty
        buffer and direct sendfile on the socket never overtakes bytes the transport holds.
        Over TLS content goes through the transport: ordinary flow control (a zero limit there
        makes the TLS layer flip pause and resume on an empty buffer, and can leave the writer
        paused with nothing left to send)."""
        self._paused = False
        if high:
            self.transport.set_write_buffer_limits(high=high)
        else:
            self.transport.set_write_buffer_limits(high=0, low=0)

    def data_received(self, data):
        if self.discarding:
            return
        self.parser.feed(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if self.broken is None:
            self.broken = "lost connection"
        self._wake(self._reply_waiter)
        self._paused = False
        self._wake(self._drain_waiter)

    def on_reply(self, code, lines):
        self.replies.append(Reply(code, lines))
        if self.discard_after_reply:
            self.discard_after_reply = False
            self.discarding = True
            self.parser.discard_buffered()
        self._wake(self._reply_waiter)

    def on_bad_reply(self, line):
        self.broken = "malformed reply"
        self._wake(self._reply_waiter)

    def pause_writing(self):
        self._paused = True

    def resume_writing(self):
        self._paused = False
        self._wake(self._drain_waiter)

    @staticmethod
    def _wake(waiter):
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_reply(self, timeout: float | None) -> Reply:
        if not self.replies and self.broken is None:
            self._reply_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    while not self.replies and self.broken is None:
                        await self._reply_waiter
                        self._reply_waiter = asyncio.get_running_loop().create_future()
            except TimeoutError:
                raise _ConnectionBroken("timed out") from None
            finally:
                self._reply_waiter = None
        if self.replies:
            return self.replies.popleft()
        raise _ConnectionBroken(self.broken)

    async def drain(self, timeout: float | None) -> None:
        if not self._paused and self.broken is None:
            return
        try:
            async with asyncio.timeout(timeout):
                while self._paused and self.broken is None:
                    self._drain_waiter = asyncio.get_running_loop().create_future()
                    await self._drain_waiter
        except TimeoutError:
            raise _ConnectionBroken("timed out") from None
        finally:
            self._drain_waiter = None
        if self.broken is not None:
            raise _ConnectionBroken(self.broken)


def xtext(value: str) -> str:
    """RFC 3461 xtext: "+", "=" and characters outside "!".."~" as +HH."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else
                   "".join(f"+{b:02X}" for b in c.encode("utf-8")) for c in value)


def _first_word(reply: Reply) -> str:
    words = reply.lines[0].split(None, 1) if reply.lines else []
    return words[0].decode("ascii", "replace").lower() if words else ""


def _opportunistic_context() -> ssl.SSLContext:
    # may and encrypt encrypt without authenticating the server (Postfix's meaning).
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class SmtpConnection:
    """An open, greeted connection ready for mail transactions. Use `open` to make one."""

    def __init__(self, host, address, port, protocol, lmtp, timeouts, helo_name):
        self.host = host
        self.address = address
        self.port = port
        self.lmtp = lmtp
        self.timeouts = timeouts
        self.helo_name = helo_name
        self.extensions: dict[str, str] = {}
        self.size_limit: int | None = None
        self.reuse_count = 0
        self.opened_at = time.monotonic()
        self.tls = False
        self.greeting_name = ""  # the first word of the 220 greeting
        self.hello_name = ""  # the first word of the EHLO/HELO/LHLO reply
        self._protocol = protocol
        sock = protocol.transport.get_extra_info("socket")
        self._socket_fd = sock.fileno() if sock is not None else -1
        self._reset_done = False
        self._label = f"{host}[{address}]"
        self.peer = self._label if address.startswith("/") else f"{self._label}:{port}"
        self._usable = True

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(cls, host: str, address: str, port: int, *, helo_name: str,
                   lmtp: bool = False, timeouts: ClientTimeouts | None = None,
                   tls_security_level: str = "none", ssl_context=None) -> SmtpConnection:
        """Connect to `address` (an IP address, or a UNIX-domain socket path starting with "/")
        and greet. Raises DeliveryError when no mail transaction can start."""
        if tls_security_level not in ("none", "may", "encrypt"):
            raise ValueError(f"unsupported TLS security level {tls_security_level!r}: "
                             "use none, may or encrypt")
        if timeouts is None:
            timeouts = ClientTimeouts.for_lmtp() if lmtp else ClientTimeouts.for_smtp()
        loop = asyncio.get_running_loop()
        protocol = _ClientProtocol()
        where = f"{host}[{address}]" if address.startswith("/") else f"{host}[{address}]:{port}"
        try:
            async with asyncio.timeout(timeouts.connect):
                if address.startswith("/"):
                    await loop.create_unix_connection(lambda: protocol, address)
                else:
                    await loop.create_connection(lambda: protocol, address, port)
        except TimeoutError:
            raise DeliveryError(True, "4.4.1", f"connect to {where}: Connection timed out",
                                "connect") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise DeliveryError(True, "4.4.1", f"connect to {where}: {reason}", "connect") from None
        connection = cls(host, address, port, protocol, lmtp, timeouts, helo_name)
        try:
            await connection._handshake(tls_security_level, ssl_context)
        except _ConnectionBroken as exc:
            connection._abort()
            stage = "greeting" if connection._doing.endswith("greeting") else "helo"
            raise DeliveryError(True, "4.4.2", connection._broken_reason(exc), stage) from None
        except BaseException:
            connection._abort()
            raise
        return connection

    async def _handshake(self, tls_security_level, ssl_context):
        greeting = await self._reply(self.timeouts.helo, "receiving the initial server greeting")
        if not greeting.positive:
            raise self._refused(greeting, "greeting")
        self.greeting_name = _first_word(greeting)
        await self._hello()
        if tls_security_level == "none":
            return
        if "STARTTLS" not in self.extensions:
            if tls_security_level == "encrypt":
                raise DeliveryError(True, "4.7.4", "TLS is required, but was not offered by host "
                                    f"{self._label}", "starttls")
            return
        self._protocol.discard_after_reply = True
        self._write(b"STARTTLS\r\n")
        reply = await self._reply(self.timeouts.starttls, "sending STARTTLS")
        if reply.code != 220:
            self._protocol.discard_after_reply = False
            self._protocol.discarding = False
            if tls_security_level == "encrypt":
                raise DeliveryError(True, "4.7.5", f"TLS is required, but host {self._label} "
                                    f"refused to start TLS: {reply.text}", "starttls")
            return
        await self._start_tls(ssl_context or _opportunistic_context())
        await self._hello()

    async def _start_tls(self, context):
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        try:
            async with asyncio.timeout(self.timeouts.starttls):
                transport = await loop.start_tls(protocol.transport, protocol, context,
                                                 server_hostname=self.host or None)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise DeliveryError(True, "4.7.5", f"Cannot start TLS: handshake failure with "
                                f"{self._label}" + (f": {detail}" if detail else ""),
                                "starttls") from None
        protocol.transport = transport
        protocol.limit_write_buffer(_TLS_WRITE_BUFFER)
        protocol.discarding = False
        self.tls = True

    async def _hello(self):
        if self.lmtp:
            reply = await self._command(b"LHLO " + self.helo_name.encode() + b"\r\n",
                                        self.timeouts.helo, "performing the LHLO handshake")
            if not reply.positive:
                raise self._refused(reply, "helo", "LHLO")
        else:
            reply = await self._command(b"EHLO " + self.helo_name.encode() + b"\r\n",
                                        self.timeouts.helo, "performing the EHLO handshake")
            if not reply.positive:
                reply = await self._command(b"HELO " + self.helo_name.encode() + b"\r\n",
                                            self.timeouts.helo, "performing the HELO handshake")
                if not reply.positive:
                    raise self._refused(reply, "helo", "HELO")
                self.hello_name = _first_word(reply)
                self.extensions = {}
                self.size_limit = None
                return
        self.hello_name = _first_word(reply)
        extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.decode("ascii", "replace").strip().partition(" ")
            extensions[keyword.upper()] = params.strip()
        self.extensions = extensions
        size = extensions.get("SIZE", "")
        self.size_limit = int(size) if size.isdigit() and int(size) > 0 else None

    def _refused(self, reply: Reply, stage: str, command: str = "") -> DeliveryError:
        if command:
            reason = f"host {self._label} refused to talk to me: {reply.text} (in reply to {command} command)"
        else:
            reason = f"host {self._label} refused to talk to me: {reply.text}"
        return DeliveryError(reply.temporary, reply.dsn, reason, stage)

    # ---------------------------------------------------------------- transactions

    async def deliver(self, envelope, content: ContentSource, recipients: list[int],
                      reset_after: bool = False) -> list[RecipientResult]:
        """Run one mail transaction for envelope.recipients[i] for each i in `recipients`.
        Returns one result per recipient, in the order given. Raises DeliveryError (with
        `results` filled in) when the connection fails during the transaction.

        reset_after: the connection is to be reused, so RSET goes out behind the end of data
        where PIPELINING allows (saving the round trip of a separate reset())."""
        if not self._usable:
            raise DeliveryError(True, "4.4.2", f"connection with {self._label} is no longer usable",
                                "mail")
        results: dict[int, RecipientResult] = {}
        try:
            return await self._transaction(envelope, content, recipients, results, reset_after)
        except _ConnectionBroken as exc:
            self._abort()
            error = DeliveryError(True, "4.4.2", self._broken_reason(exc), self._stage)
        except asyncio.CancelledError:
            self._abort()
            raise
        error.results = [results.get(i) or RecipientResult(i, "deferred", error.dsn, error.reason)
                         for i in recipients]
        raise error

    async def _transaction(self, envelope, content, recipients, results, reset_after=False):
        self._stage = "mail"
        self._reset_done = False
        every = list(recipients)
        if self.size_limit is not None and content.length > self.size_limit:
            reason = (f"message size {content.length} exceeds size limit {self.size_limit} "
                      f"of server {self._label}")
            return [RecipientResult(i, "bounced", "5.3.4", reason) for i in every]
        utf8 = envelope.smtputf8 or not (envelope.sender.isascii() and all(
            envelope.recipients[i].address.isascii() for i in every))
        if utf8 and "SMTPUTF8" not in self.extensions:
            reason = f"SMTPUTF8 is required, but was not offered by host {self._label}"
            return [RecipientResult(i, "bounced", "5.6.7", reason) for i in every]
        self.reuse_count += 1
        mail = self._mail_command(envelope, content, utf8)
        rcpts = [self._rcpt_command(envelope.recipients[i]) for i in every]
        pipelining = self.lmtp or "PIPELINING" in self.extensions
        accepted: list[int] = []
        if pipelining:
            self._write(b"".join([mail, *rcpts, b"DATA\r\n"]))
            mail_reply = await self._reply(self.timeouts.mail, "sending MAIL FROM")
            self._stage = "rcpt"
            rcpt_replies = [await self._reply(self.timeouts.rcpt, "sending RCPT TO") for _ in every]
            self._stage = "data"
            data_reply = await self._reply(self.timeouts.data_init, "sending DATA command")
        else:
            mail_reply = await self._command(mail, self.timeouts.mail, "sending MAIL FROM")
            rcpt_replies = []
            data_reply = None
            if mail_reply.positive:
                self._stage = "rcpt"
                for command in rcpts:
                    rcpt_replies.append(await self._command(command, self.timeouts.rcpt,
                                                            "sending RCPT TO"))
        if not mail_reply.positive:
            self._record(results, every, mail_reply, "MAIL FROM")
        else:
            for index, reply in zip(every, rcpt_replies):
                if reply.positive:
                    accepted.append(index)
                else:
                    self._record(results, [index], reply, "RCPT TO")
        if not accepted:
            if data_reply is not None and data_reply.code == 354:
                # A server that said 354 anyway gets an empty message it will not deliver.
                self._write(b".\r\n")
                await self._reply(self.timeouts.data_done, "sending end of data")
            return [results[i] for i in every]
        if data_reply is None:
            self._stage = "data"
            data_reply = await self._command(b"DATA\r\n", self.timeouts.data_init,
                                             "sending DATA command")
        if data_reply.code != 354:
            self._record(results, accepted, data_reply, "DATA")
            return [results[i] for i in every]
        self._stage = "content"
        self._doing = "sending message body"
        reset_after = reset_after and pipelining
        await self._send_content(content, b"RSET\r\n" if reset_after else b"")
        self._stage = "data-done"
        what = "sending end of data -- message may be sent more than once"
        if self.lmtp:
            for index in accepted:
                self._record(results, [index], await self._reply(self.timeouts.data_done, what),
                             "end of DATA")
        else:
            self._record(results, accepted, await self._reply(self.timeouts.data_done, what),
                         "end of DATA")
        if reset_after:
            await self._finish_reset()
        return [results[i] for i in every]

    async def _finish_reset(self) -> None:
        """The reply to the RSET sent behind the end of data; the delivery's outcome stands
        whatever it is, only the connection is given up when it is not 250."""
        self._stage = "rset"
        try:
            reply = await self._reply(self.timeouts.rset, "sending RSET")
        except _ConnectionBroken:
            self._abort()
            return
        if reply.positive:
            self._reset_done = True
        else:
            self._usable = False

    def _mail_command(self, envelope, content, utf8) -> bytes:
        parts = [f"MAIL FROM:<{envelope.sender}>"]
        if "SIZE" in self.extensions:
            parts.append(f"SIZE={content.length}")
        if envelope.body_type == "8BITMIME" and "8BITMIME" in self.extensions:
            parts.append("BODY=8BITMIME")
        if utf8:
            parts.append("SMTPUTF8")
        if "DSN" in self.extensions:
            if envelope.ret:
                parts.append(f"RET={envelope.ret}")
            if envelope.envid:
                parts.append(f"ENVID={xtext(envelope.envid)}")
        return (" ".join(parts) + "\r\n").encode("utf-8")

    def _rcpt_command(self, recipient) -> bytes:
        parts = [f"RCPT TO:<{recipient.address}>"]
        if "DSN" in self.extensions:
            if recipient.notify:
                parts.append(f"NOTIFY={recipient.notify}")
            if recipient.orcpt:
                # Stored decoded as "type;address"; a bare address is an RFC 822 one.
                kind, sep, address = recipient.orcpt.partition(";")
                if not sep:
                    kind, address = "rfc822", recipient.orcpt
            else:
                # As Postfix: the recipient as the client gave it, before any rewriting.
                kind, address = "rfc822", recipient.original or recipient.address
            parts.append(f"ORCPT={kind};{xtext(address)}")
        return (" ".join(parts) + "\r\n").encode("utf-8")

    def _record(self, results, indexes, reply: Reply, command: str) -> None:
        if reply.positive:
            status, text = "sent", reply.text
        else:
            status = "deferred" if reply.temporary else "bounced"
            text = f"host {self._label} said: {reply.text} (in reply to {command} command)"
        for index in indexes:
            results[index] = RecipientResult(index, status, reply.dsn, text)

    async def _send_content(self, content: ContentSource, behind: bytes = b"") -> None:
        """The stored bytes, then the end of data and `behind` (pipelined commands)."""
        fd = os.open(content.path, os.O_RDONLY | os.O_CLOEXEC)  # no buffered file: fewer syscalls
        try:
            tail = await self._transfer(fd, content)
        finally:
            os.close(fd)
        # Content that does not end in CRLF (never true for what cleanup stored) still ends DATA.
        end = b".\r\n" if tail == b"\r\n" or content.length == 0 else b"\r\n.\r\n"
        self._write(end + behind)

    async def _transfer(self, fd: int, content: ContentSource) -> bytes:
        """Copies the content to the socket; returns its last two bytes."""
        protocol = self._protocol
        timeout = self.timeouts.data_xfer
        offset, remaining = content.offset, content.length
        tail = os.pread(fd, 2, offset + remaining - 2) if remaining >= 2 else b""
        while remaining > 0:
            count = min(remaining, _CHUNK)
            sent = 0
            if not self.tls:
                # sendfile(2) straight into the socket once the transport holds nothing.
                await protocol.drain(timeout)
                sent = self._sendfile_direct(fd, offset, count)
            if sent == 0:  # TLS, or the socket is full: one chunk through the transport
                sent = await self._write_chunk(fd, offset, count, timeout)
            offset += sent
            remaining -= sent
        return tail

    def _sendfile_direct(self, fd, offset, count) -> int:
        """sendfile(2) into the socket; 0 when the socket is full (the caller then hands one
        chunk to the transport and waits for it to drain)."""
        if self._socket_fd < 0:
            return 0
        if self._protocol.broken is not None or self._protocol.transport.is_closing():
            # The descriptor may be closed already, or even be another socket's by now.
            raise _ConnectionBroken(self._protocol.broken or "lost connection")
        try:
            return os.sendfile(self._socket_fd, fd, offset, count)
        except BlockingIOError:
            return 0
        except OSError:
            raise _ConnectionBroken("lost connection") from None

    async def _write_chunk(self, fd, offset, count, timeout) -> int:
        data = os.pread(fd, min(count, 256 * 1024), offset)
        if not data:
            raise OSError(f"message content ends early in {fd}: the queue file is damaged")
        self._write(data)
        await self._protocol.drain(timeout)
        return len(data)

    # ---------------------------------------------------------------- reuse and close

    async def reset(self) -> bool:
        """RSET before the next transaction; False (and the connection closed) when it cannot
        be reused."""
        if not self._usable:
            return False
        if self._reset_done:  # sent behind the last end of data, and answered 250
            self._reset_done = False
            return True
        self._stage = "rset"
        try:
            reply = await self._command(b"RSET\r\n", self.timeouts.rset, "sending RSET")
        except _ConnectionBroken:
            self._abort()
            return False
        if not reply.positive:
            await self.close()
            return False
        return True

    async def close(self) -> None:
        """QUIT, then close. Never raises for a server that is already gone."""
        if self._usable:
            self._usable = False
            try:
                await self._command(b"QUIT\r\n", self.timeouts.quit, "sending QUIT")
            except _ConnectionBroken:
                pass
        self._abort()

    @property
    def usable(self) -> bool:
        return self._usable and self._protocol.broken is None

    def _abort(self) -> None:
        self._usable = False
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    # ---------------------------------------------------------------- wire

    _stage = "greeting"
    _doing = ""

    def _write(self, data: bytes) -> None:
        if self._protocol.broken is not None:
            raise _ConnectionBroken(self._protocol.broken)
        self._protocol.transport.write(data)

    async def _reply(self, timeout, doing: str) -> Reply:
        self._doing = doing
        return await self._protocol.read_reply(timeout)

    async def _command(self, command: bytes, timeout, doing: str) -> Reply:
        self._doing = doing
        self._write(command)
        return await self._protocol.read_reply(timeout)

    def _broken_reason(self, exc: _ConnectionBroken) -> str:
        if exc.what == "timed out":
            return f"conversation with {self._label} timed out while {self._doing}"
        if exc.what == "malformed reply":
            return f"host {self._label} sent a malformed reply while {self._doing}"
        return f"lost connection with {self._label} while {self._doing}"

