"""One SMTP session: the command state machine over the compiled protocol parser.

The parser (pyfastmta._ext.smtpproto) turns bytes into command and end-of-data events; this class
decides and answers. Replies produced while one read is processed go out in a single write, so a
pipelined group gets its replies in one segment. At end-of-data the parser is paused until the
queue has made the message durable: only then does the client hear 250, and only then are the
commands that followed the message (pipelined in the same read) processed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time

from pyfastmta._ext.smtpproto import SmtpServerParser, parse_path_argument
from pyfastmta.cleanup import actions as message_actions
from pyfastmta.cleanup.message import Rejected, clean_message
from pyfastmta.cleanup.rewrite import AliasExpansionError
from pyfastmta.queue.envelope import Envelope, Recipient
from pyfastmta.smtpd.dsnparams import DsnParameterError, parse_envid, parse_notify, parse_orcpt, parse_ret
from pyfastmta.smtpd.restrictions import CheckState, Request, Verdict
from pyfastmta.smtpd.tls import TlsInfo
from pyfastmta.smtpd.peername import UNKNOWN as UNKNOWN_NAMES
from pyfastmta.smtpd.lookups import Answers
from pyfastmta.smtpd.policy import attribute_value
from pyfastmta.smtpd import auth

_COMMAND_NAMES = {
    b"EHLO": "ehlo", b"HELO": "helo", b"MAIL": "mail", b"RCPT": "rcpt", b"DATA": "data",
    b"RSET": "rset", b"NOOP": "noop", b"QUIT": "quit", b"VRFY": "vrfy", b"HELP": "help",
}
_COMMAND_NAMES[b"STARTTLS"] = "starttls"
# Commands that do nothing for a transaction (smtpd_junk_command_limit).
_JUNK_VERBS = frozenset({b"NOOP", b"VRFY", b"RSET"})
_COMMAND_NAMES[b"AUTH"] = "auth"
# What a client may say before STARTTLS when smtpd_tls_security_level = encrypt (as Postfix).
_PRE_TLS_VERBS = frozenset({b"EHLO", b"HELO", b"STARTTLS", b"NOOP", b"QUIT"})
# Commands after which an ESMTP client must wait for the reply (the end of a pipelined group).
_SYNC_VERBS = frozenset({b"EHLO", b"HELO", b"DATA", b"NOOP", b"VRFY"})
# The order of the disconnect line's counts (Postfix's table of commands); commands Postfix does
# not have come after it, and unknown ones last.
_LOGGED_ORDER = {name: rank for rank, name in enumerate(
    ("helo", "ehlo", "xclient", "xforward", "starttls", "auth", "mail", "rcpt", "data", "bdat",
     "rset", "noop", "vrfy", "etrn", "quit"))}


def _command_rank(item: tuple[str, list[int]]) -> int:
    name = item[0]
    if name == "unknown":
        return len(_LOGGED_ORDER) + 1
    return _LOGGED_ORDER.get(name, len(_LOGGED_ORDER))

# Control characters from the client never reach a header or a log line (a bare CR in HELO
# would otherwise start a header line of the client's choosing in Received:).
_UNPRINTABLE = {code: "?" for code in [*range(0x20), 0x7F]}


def printable(arg: bytes) -> str:
    return arg.decode("utf-8", "surrogateescape").translate(_UNPRINTABLE)


# Client bytes quoted in a log line, C-style, as Postfix quotes them: control and 8-bit bytes
# as escapes, so that a line of the log is one line whatever the client sent.
_NAMED_ESCAPES = dict(zip(b"\a\b\f\n\r\t\v", "abfnrtv"))
_LOG_ESCAPES = ["\\\\" if byte == ord("\\") else "\\" + _NAMED_ESCAPES[byte] if byte in _NAMED_ESCAPES
                else chr(byte) if 32 <= byte < 127 else f"\\{byte:03o}" for byte in range(256)]


def log_escaped(data: bytes) -> str:
    return "".join([_LOG_ESCAPES[byte] for byte in data])


# Bytes a paused session buffers before it stops reading from the client.
PAUSED_BUFFER_LIMIT = 65536

# Bytes of a client's pipelined input quoted in the "improper command pipelining" line.
PIPELINING_QUOTE_LIMIT = 100

# Seconds a closing TLS session waits for the client's close_notify before the socket goes.
TLS_SHUTDOWN_TIMEOUT = 5.0

_HELP_REPLY = "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"


class SmtpSession(asyncio.Protocol):
    def __init__(self, server, settings):
        self.server = server
        self.settings = settings
        self.transport = None
        self.parser = None
        self._out: list[bytes] = []
        self.client_addr = ""
        self.client_port = 0
        self.client_name = "unknown"
        self.client_names = UNKNOWN_NAMES  # the name, the PTR name and their status (peername.py)
        self.helo_name: str | None = None
        self.esmtp = False
        self.in_mynetworks = False
        self.local_client = False
        self.error_count = 0
        self.junk_commands = 0
        self.command_stats: dict[str, list[int]] = {}
        self.last_command = "CONNECT"
        self.transactions = 0  # MAIL commands accepted (the policy protocol's instance)
        self._policy_session_text = None  # (what it depends on, the request's per-session lines)
        self.closing = False
        self.greeted = False  # the greeting went out: commands are read
        self._connect_logged = False
        self._check_task = None  # a restriction check waiting for the DNS or a policy server
        self._committing = False  # a received message is on its way into the queue
        self._ended_while_committing = False  # the client left before the queue answered
        self._early_data: list[bytes] = []
        self._timer = None
        self._last_activity = 0.0
        # Restriction lists: what carries over between checks, the connect-time refusal
        # (smtpd_delay_reject = no), and command pipelining as reject_unauth_pipelining sees it.
        self.check_state = CheckState()
        self.access_denied: str | None = None
        self.illegal_pipelining = False
        self._lines_pending = 0
        self._input_ends_line = True
        self.tls: TlsInfo | None = None  # the established TLS session, if any
        self._limits_counted = False  # this connection is counted in the machine-wide table
        self._tls_task = None  # the handshake under way (held: the loop keeps only a weak reference)
        # SMTP AUTH (auth.py): who the client authenticated as, and the exchange under way.
        self.sasl_method: str | None = None
        self.sasl_username: str | None = None
        self.sasl_sender: str | None = None  # MAIL FROM's AUTH=, for this transaction
        self._sasl_exchange: auth.AuthExchange | None = None
        self._sasl_task = None
        self._reset_transaction()

    # ---- transaction state -------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.recipients: list[Recipient] = []
        self.rcpt_attempts = 0
        self.queue_id: str | None = None
        self.mail_params: dict = {}
        self.body_type: str | None = None
        self.smtputf8 = False
        self.ret: str | None = None
        self.envid: str | None = None
        self.in_data = False
        self.message_size: int | None = None  # bytes received after DATA, once the dot came
        self.sasl_sender = None
        self.check_state.reset_transaction()

    @property
    def in_transaction(self) -> bool:
        return self.sender is not None

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        addr = peer[0] if peer else "127.0.0.1"
        if addr.startswith("::ffff:") and "." in addr:
            addr = addr[7:]
        self.client_addr = addr
        self.client_port = peer[1] if peer else 0
        if self.server.overloaded():
            # No room for one more session: a clean 421 now rather than a dropped connection.
            self.server.log("smtpd", f"warning: too many sessions ({self.server.session_limit}); "
                                     f"refusing the connection from [{addr}]")
            transport.write(f"421 4.3.2 {self.settings.myhostname} All server ports are busy\r\n".encode())
            transport.close()
            return
        settings = self.settings
        self.in_mynetworks, loopback = settings.classify_client(addr)
        self.local_client = self._is_local_client(loopback)
        self.parser = SmtpServerParser(self, settings.line_length_limit, settings.message_size_limit)
        self.server.session_started(self)
        self._last_activity = self.server.loop.time()
        self._timer = self.server.loop.call_later(settings.timeout, self._check_timeout)
        if settings.tls.wrappermode:
            # Implicit TLS (smtps): the handshake comes before the greeting.
            transport.pause_reading()
            self._tls_task = self.server.loop.create_task(self._start_tls(wrapper=True))
            return
        names = self.server.peernames.cached(addr) if settings.peername_lookup else UNKNOWN_NAMES
        if names is None:
            self.server.loop.create_task(self._lookup_then_greet(addr))
        else:
            self._greet(names)

    async def _lookup_then_greet(self, addr: str) -> None:
        names = await self.server.peernames.lookup(addr)
        if self.transport is not None and not self.transport.is_closing():
            self._greet(names)

    def _greet(self, names) -> None:
        self.client_names = names
        self.client_name = names.name
        self._connect_logged = True
        self.server.log("smtpd", f"connect from {self.client_label}")
        early = b"".join(self._early_data)[:PIPELINING_QUOTE_LIMIT] or self._unread_input()
        if early:
            self.illegal_pipelining = True  # the client spoke before the greeting
            self.server.log("smtpd", f"improper command pipelining after CONNECT from "
                                     f"{self.client_label}: {log_escaped(early)}")
        if self._limits_refuse_connection():
            return
        restrictions = self.settings.restrictions
        if restrictions.delay_reject:
            self._connect_checked(None)
        else:
            self._decide("CONNECT", self._request("CONNECT"), restrictions.check_client,
                         self._connect_checked)

    def _unread_input(self) -> bytes:
        """What the client sent that the loop has not read yet, looked at without reading it
        (plain text only): before the greeting, a client that talks first."""
        if self.tls is not None or self.settings.tls.wrappermode:
            return b""
        connection = self.transport.get_extra_info("socket")
        if connection is None:
            return b""
        peek = socket.socket(connection.family, socket.SOCK_STREAM, 0, connection.fileno())
        try:
            return peek.recv(PIPELINING_QUOTE_LIMIT, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # nothing there (EAGAIN), or the client is already gone
            return b""
        finally:
            peek.detach()  # the transport owns the descriptor

    def _connect_checked(self, refused: str | None) -> bool:
        """smtpd_client_restrictions at connect (smtpd_delay_reject = no): the greeting, or the
        refusal that every command but QUIT will get."""
        self.greeted = True
        if refused is not None:
            self.access_denied = refused
            self.error_count += 1
            self.transport.write(refused.encode() + b"\r\n")
        else:
            self.transport.write(self.settings.banner)
        if self._early_data:
            data = b"".join(self._early_data)
            self._early_data.clear()
            self.data_received(data)
        return False

    @property
    def client_label(self) -> str:
        if self.settings.client_port_logging:
            return f"{self.client_name}[{self.client_addr}]:{self.client_port}"
        return f"{self.client_name}[{self.client_addr}]"

    def data_received(self, data: bytes) -> None:
        if not self.greeted:
            self._early_data.append(data)
            return
        self._last_activity = self.server.loop.time()
        parser = self.parser
        self._note_input(data)
        parser.feed(data)
        self.flush_replies()
        if parser.paused and parser.buffered > PAUSED_BUFFER_LIMIT and self.transport is not None:
            # A client that keeps sending while its message is being committed waits in TCP.
            self.transport.pause_reading()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sasl_task is not None:
            self._sasl_task.cancel()  # an AUTH exchange waiting for this client's next line
            self._sasl_task = None
        if self._check_task is not None:
            self._check_task.cancel()  # nobody is left to hear the answer
            self._check_task = None
        self.transport = None
        if self._connect_logged and not self.closing:
            # The client left without QUIT. As in Postfix, leaving right after a message was
            # received is normal enough to go unmentioned.
            if self.last_command != "END-OF-MESSAGE":
                self.server.log("smtpd", f"lost connection after {self._where()} from {self.client_label}")
            if self.in_data:
                self._count("data", False)
        if self._committing:
            # The message's outcome belongs in the disconnect line's counts: end when it is known.
            self._ended_while_committing = True
            return
        self._end_session()

    def _end_session(self) -> None:
        if self._connect_logged:
            self.server.log("smtpd", f"disconnect from {self.client_label}{self._stats_text()}")
        if self._limits_counted:
            self.settings.limits.disconnect(self.client_addr)
            self._limits_counted = False
        self.server.session_ended(self)

    def _where(self) -> str:
        """What the session was doing, as Postfix names it in its timeout and lost connection
        lines: the last command, with the bytes received so far in DATA."""
        if self.in_data:
            return f"DATA ({self.parser.received_size} bytes)"
        return self.last_command

    def _stats_text(self) -> str:
        """The disconnect line's counts, in Postfix's order of commands, unknown ones last."""
        parts = []
        total_ok = total = 0
        for name, (ok, count) in sorted(self.command_stats.items(), key=_command_rank):
            parts.append(f" {name}={ok}" if ok == count else f" {name}={ok}/{count}")
            total_ok += ok
            total += count
        parts.append(f" commands={total_ok}" if total_ok == total and total else f" commands={total_ok}/{total}")
        return "".join(parts)

    def _check_timeout(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        loop = self.server.loop
        deadline = self._last_activity + self.settings.timeout
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._check_timeout)
            return
        self.server.log("smtpd", f"timeout after {self._where()} from {self.client_label}")
        if self.in_data:
            self._count("data", False)
        self.closing = True
        self.transport.write(f"421 4.4.2 {self.settings.myhostname} Error: timeout exceeded\r\n".encode())
        self.transport.close()

    # ---- replies -------------------------------------------------------------------------------

    def reply(self, text: str) -> None:
        self._out.append(text.encode("utf-8", "surrogateescape") + b"\r\n")

    def flush_replies(self) -> None:
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))
            self._out.clear()
        if self.closing and self.transport is not None:
            self.transport.close()

    def _count(self, name: str, ok: bool) -> None:
        stats = self.command_stats.get(name)
        if stats is None:
            stats = self.command_stats[name] = [0, 0]
        stats[1] += 1
        if ok:
            stats[0] += 1

    def _error(self, name: str, text: str) -> bool:
        """An error reply; returns True when the session must pause (error sleep or hangup)."""
        self._count(name, False)
        self.reply(text)
        self.error_count += 1
        settings = self.settings
        if self.error_count >= settings.hard_error_limit:
            self.server.log("smtpd", f"too many errors after {self.last_command} from {self.client_label}")
            self.reply(f"421 4.7.0 {settings.myhostname} Error: too many errors")
            self.closing = True
            return True
        if self.error_count > settings.soft_error_limit and settings.error_sleep_time > 0:
            self.server.loop.call_later(settings.error_sleep_time, self._resume_after_sleep)
            return True
        return False

    def _resume_after_sleep(self) -> None:
        if self.transport is None:
            return
        self.flush_replies()
        self.transport.resume_reading()
        self.parser.resume()
        self.flush_replies()

    # ---- parser callbacks ----------------------------------------------------------------------

    def on_line_too_long(self) -> None:
        if self._sasl_exchange is not None and self._sasl_exchange.wants_line:
            return self._sasl_exchange.line_too_long()
        self._lines_pending -= 1
        self.last_command = "UNKNOWN"
        self._error("unknown", "500 5.5.2 Error: line too long")

    def on_command(self, verb: bytes, arg: bytes):
        self._lines_pending -= 1
        if self.closing or self._too_many_errors():
            return True
        name = _COMMAND_NAMES.get(verb)
        if name is None:
            self.last_command = "UNKNOWN"
            if not verb:
                return self._error("unknown", "500 5.5.2 Error: bad syntax")
            return self._error("unknown", "500 5.5.2 Error: command not recognized")
        self.last_command = verb.decode("ascii")
        if self.server.stopping and not self.in_transaction:
            self.reply(f"421 4.3.2 {self.settings.myhostname} Service shutting down, closing transmission channel")
            self.closing = True
            return True
        if self.tls is None and verb not in _PRE_TLS_VERBS and self.settings.tls.required:
            return self._error(name, "530 5.7.0 Must issue a STARTTLS command first")
        gated, result = self._restriction_gate(verb, name)
        if gated:
            return result
        if verb in _JUNK_VERBS:
            self._junk_command()
        return _HANDLERS[verb](self, arg)

    def _junk_command(self) -> None:
        """Past smtpd_junk_command_limit, every NOOP, VRFY or RSET counts as an error, so that a
        client cannot hold a session with them (the next command after the hard error limit is
        answered 421)."""
        if self.junk_commands > self.settings.junk_command_limit:
            self.error_count += 1
        self.junk_commands += 1

    def _too_many_errors(self) -> bool:
        """Errors that reached smtpd_hard_error_limit without an error reply (junk commands)
        end the session before the next command runs."""
        settings = self.settings
        if self.error_count < settings.hard_error_limit:
            return False
        self.server.log("smtpd", f"too many errors after {self.last_command} from {self.client_label}")
        self.reply(f"421 4.7.0 {settings.myhostname} Error: too many errors")
        self.closing = True
        return True

    def smtp_ehlo(self, arg: bytes):
        if not arg:
            return self._error("ehlo", "501 Syntax: EHLO hostname")
        helo = printable(arg)
        return self._check_helo_now(helo, lambda refused: self._ehlo_checked(helo, refused))

    def _ehlo_checked(self, helo: str, refused: str | None):
        if refused is not None:
            return self._error("ehlo", refused)
        self._reset_transaction()
        self.helo_name = helo
        self.esmtp = True
        self._count("ehlo", True)
        return auth.ehlo_reply(self, self.settings.ehlo_reply if self.tls is not None
                               else self.settings.ehlo_reply_starttls)

    def smtp_helo(self, arg: bytes):
        if not arg:
            return self._error("helo", "501 Syntax: HELO hostname")
        helo = printable(arg)
        return self._check_helo_now(helo, lambda refused: self._helo_checked(helo, refused))

    def _helo_checked(self, helo: str, refused: str | None):
        if refused is not None:
            return self._error("helo", refused)
        self._reset_transaction()
        self.helo_name = helo
        # A HELO after EHLO keeps the session ESMTP, as in Postfix (proto=, Received: with ESMTP).
        self._count("helo", True)
        self.reply(f"250 {self.settings.myhostname}")

    def smtp_mail(self, arg: bytes):
        if self.settings.restrictions.helo_required and self.helo_name is None:
            return self._error("mail", "503 5.5.1 Error: send HELO/EHLO first")
        if self.in_transaction:
            return self._error("mail", "503 5.5.1 Error: nested MAIL command")
        status, address, params = parse_path_argument(arg, b"FROM")
        if status == 1:
            return self._error("mail", "501 5.5.4 Syntax: MAIL FROM:<address>")
        if status == 2:
            return self._error("mail", "501 5.1.7 Bad sender address syntax")
        if status == 3:
            return self._error("mail", "501 5.5.4 Bad MAIL parameter syntax")
        settings = self.settings
        body_type = None
        smtputf8 = False
        ret = envid = None
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    return self._error("mail", "501 5.5.4 Bad message size syntax")
                if settings.message_size_limit and int(value) > settings.message_size_limit:
                    refused = "552 5.3.4 Message size exceeds fixed limit"
                    self._log_reject("MAIL", refused, None, sender=address)
                    return self._error("mail", refused)
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return self._error("mail", "501 5.5.4 Bad BODY keyword value")
                body_type = value.upper()
            elif key == "SMTPUTF8" and settings.smtputf8_enable and value is None:
                smtputf8 = True
            elif key == "AUTH":
                refused = auth.mail_auth_parameter(self, value)
                if refused is not None:
                    return self._error("mail", refused)
            elif key == "RET":
                try:
                    ret = parse_ret(value or "")
                except DsnParameterError as error:
                    return self._error("mail", error.reply)
            elif key == "ENVID":
                try:
                    envid = parse_envid(value or "")
                except DsnParameterError as error:
                    return self._error("mail", error.reply)
            else:
                return self._error("mail", f"555 5.5.4 Unsupported option: {key}")
        if not smtputf8 and not address.isascii():
            return self._error("mail", "553 5.6.7 Must declare SMTPUTF8 to send unicode address")
        if (no_room := self.settings.queue_space.refusal(self)) is not None:  # queuespace.py
            return self._error("mail", no_room)
        if self._limits_counted:
            limited = self.settings.limits.message(self.client_addr, self.client_label)
            if limited is not None:
                return self._limit_error("mail", limited)
        return self._check_mail_now(address, smtputf8, lambda refused: self._mail_checked(
            refused, address, params, body_type, smtputf8, ret, envid))

    def _mail_checked(self, refused: str | None, address: str, params: dict, body_type,
                      smtputf8: bool, ret, envid):
        if refused is not None:
            return self._error("mail", refused)
        self.sender = address
        self.mail_params = params
        self.body_type = body_type
        self.smtputf8 = smtputf8
        self.ret = ret
        self.envid = envid
        self.transactions += 1
        self._count("mail", True)
        self.reply("250 2.1.0 Ok")

    def smtp_rcpt(self, arg: bytes):
        if not self.in_transaction:
            return self._error("rcpt", "503 5.5.1 Error: need MAIL command")
        self.rcpt_attempts += 1
        settings = self.settings
        if self.rcpt_attempts > settings.recipient_overshoot_limit:
            return self._error("rcpt", "452 4.5.3 Error: too many recipients")
        status, address, params = parse_path_argument(arg, b"TO")
        if status == 1:
            return self._error("rcpt", "501 5.5.4 Syntax: RCPT TO:<address>")
        if status in (2,) or address == "":
            return self._error("rcpt", "501 5.1.3 Bad recipient address syntax")
        if status == 3:
            return self._error("rcpt", "501 5.5.4 Bad RCPT parameter syntax")
        notify = orcpt = None
        for key, value in params.items():
            try:
                if key == "NOTIFY":
                    notify = parse_notify(value or "")
                elif key == "ORCPT":
                    orcpt = parse_orcpt(value or "")
                else:
                    return self._error("rcpt", f"555 5.5.4 Unsupported option: {key}")
            except DsnParameterError as error:
                return self._error("rcpt", error.reply)
        if not self.smtputf8 and not address.isascii():
            return self._error("rcpt", "553 5.6.7 Must declare SMTPUTF8 to send unicode address")
        if len(self.recipients) >= settings.recipient_limit:
            self._count("rcpt", False)
            self.reply("452 4.5.3 Error: too many recipients")
            return None
        if self._limits_counted:
            limited = self.settings.limits.recipient(self.client_addr, self.client_label)
            if limited is not None:
                return self._limit_error("rcpt", limited)
        return self._check_rcpt(address, lambda refused: self._rcpt_checked(refused, address, orcpt, notify))

    def _rcpt_checked(self, refused: str | None, address: str, orcpt, notify):
        if refused is not None:
            return self._error("rcpt", refused)
        if self.queue_id is None:
            self.queue_id = self.server.partition.new_queue_id()
            self.server.log("smtpd", f"{self.queue_id}: client={self.client_label}"
                                     f"{auth.client_log_fields(self)}")
        self.recipients.append(Recipient(address=address, orcpt=orcpt, notify=notify))
        self._count("rcpt", True)
        self.reply("250 2.1.5 Ok")

    def _log_reject(self, stage: str, text: str, recipient: str | None, sender: str | None = None) -> None:
        """sender: the one a refused MAIL command named (none is in the session yet)."""
        parts = [f"{self.queue_id or 'NOQUEUE'}: reject: {stage} from {self.client_label}: {text};"
                 f" from=<{sender if sender is not None else self.sender or ''}>"]
        if recipient is not None:
            parts.append(f" to=<{recipient}>")
        parts.append(f" proto={'ESMTP' if self.esmtp else 'SMTP'}")
        if self.helo_name:
            parts.append(f" helo=<{self.helo_name}>")
        self.server.log("smtpd", "".join(parts))

    # ---- restriction lists (pyfastmta/smtpd/restrictions.py) -------------------------------

    def _request(self, where: str, **changed) -> Request:
        restrictions = self.settings.restrictions
        names = self.client_names
        facts = dict(client_name=self.client_name, client_addr=self.client_addr,
                     in_mynetworks=self.in_mynetworks, helo=self.helo_name, sender=self.sender,
                     smtputf8=self.smtputf8, illegal_pipelining=self.illegal_pipelining,
                     sasl_username=self.sasl_username, client_name_status=names.status,
                     reverse_client_name=names.reverse_name,
                     reverse_client_name_status=names.reverse_status, tls=self.tls)
        if restrictions.may_ask:
            facts["answers"] = Answers(self.server.resolver)
            facts["policy_request"] = lambda helo, sender, recipient, context: self._policy_request(
                where, helo, sender, recipient, context)
        facts.update(changed)
        return Request(**facts)

    def _policy_request(self, where: str, helo: str, sender: str, recipient: str, context: str) -> bytes:
        """What a policy server is told (Postfix's policy delegation request, in its wire form).
        The part that stays the same for the session is written once."""
        key = (self.tls, self.sasl_username, self.client_name)
        cached = self._policy_session_text
        if cached is None or cached[0] != key:
            cached = self._policy_session_text = (key, self._policy_session_part())
        clean = attribute_value
        count = len(self.recipients) if where in ("DATA", "END-OF-MESSAGE") else 0
        # The declared SIZE until the message is in; then, as Postfix, the size received.
        size = self.message_size if self.message_size is not None else self.mail_params.get("SIZE") or "0"
        text = (f"request=smtpd_access_policy\nprotocol_state={where}\n"
                f"protocol_name={'ESMTP' if self.esmtp else 'SMTP'}\nhelo_name={clean(helo)}\n"
                f"queue_id={self.queue_id or ''}\nsender={clean(sender)}\nrecipient={clean(recipient)}\n"
                f"recipient_count={count}\ninstance={os.getpid():x}.{id(self):x}.{self.transactions:x}\n"
                f"sasl_sender={clean(self.sasl_sender or '')}\n"
                f"size={clean(size)}\npolicy_context={clean(context)}\n")
        # One request: the empty line that ends it comes last, with the session's part.
        return text.encode("utf-8", "surrogateescape") + cached[1]

    def _policy_session_part(self) -> bytes:
        tls = self.tls
        sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
        clean = attribute_value
        subject = issuer = fingerprint = protocol = cipher = ""
        bits = 0
        if tls is not None:
            subject, issuer = tls.peer_subject_cn or "", tls.peer_issuer_cn or ""
            fingerprint, protocol, cipher, bits = tls.peer_fingerprint or "", tls.protocol, tls.cipher, tls.bits
        text = (f"client_address={self.client_addr}\nclient_name={clean(self.client_name)}\n"
                f"client_port={self.client_port}\n"
                f"reverse_client_name={clean(self.client_names.reverse_name)}\n"
                f"server_address={sock[0] if sock else ''}\nserver_port={sock[1] if sock else ''}\n"
                f"sasl_method={clean(self.sasl_method or '')}\n"
                f"sasl_username={clean(self.sasl_username or '')}\n"
                f"ccert_subject={clean(subject)}\nccert_issuer={clean(issuer)}\n"
                f"ccert_fingerprint={clean(fingerprint)}\nccert_pubkey_fingerprint=\n"
                f"encryption_protocol={clean(protocol)}\nencryption_cipher={clean(cipher)}\n"
                f"encryption_keysize={bits}\n"
                f"etrn_domain=\nstress={'yes' if self.settings.stress else ''}\n"
                f"compatibility_level={clean(self.settings.compatibility_level)}\n"
                f"mail_version={clean(self.settings.mail_version)}\n\n")
        return text.encode("utf-8", "surrogateescape")

    def _apply(self, verdict: Verdict, stage: str, request: Request) -> str | None:
        """Writes the check's log lines as Postfix does; the reply when it refused."""
        log = self.server.log
        for what, text in verdict.events:
            if what == "warning":
                log("smtpd", f"warning: {text}")
                continue
            parts = [f"{self.queue_id or 'NOQUEUE'}: {what}: {stage} from {self.client_label}: {text};"]
            if request.sender is not None:
                parts.append(f" from=<{request.sender}>")
            if request.recipient is not None:
                parts.append(f" to=<{request.recipient}>")
            parts.append(f" proto={'ESMTP' if self.esmtp else 'SMTP'}")
            if request.helo:
                parts.append(f" helo=<{request.helo}>")
            log("smtpd", "".join(parts))
        return verdict.reply

    def _decide(self, where: str, request: Request, check, proceed, in_parser: bool = True):
        """Runs a restriction check and hands its refusal (or None) to proceed. A check that needs
        the DNS or a policy server pauses the session until the answers are in, then runs again;
        what proceed returns tells the parser whether to wait (True) or go on."""
        restrictions = self.settings.restrictions
        try:
            verdict = restrictions.evaluate(check, request, self.check_state)
        except Exception as error:  # a defect must not lose the session: refuse for now
            return self._proceed(proceed, self._check_failed(error), in_parser)
        pending = verdict.pending
        if pending is None:
            return self._proceed(proceed, self._apply(verdict, where, request), in_parser)
        if not self._ask_policy_now(pending, where, request, check, proceed):
            self._check_task = self.server.loop.create_task(
                self._decide_later(where, request, check, proceed, pending))
        return True

    def _proceed(self, proceed, refused: str | None, in_parser: bool):
        if in_parser:
            return proceed(refused)
        # After a pause: the parser waits for this command's outcome before it goes on.
        self._last_activity = self.server.loop.time()
        waits = proceed(refused)
        self.flush_replies()
        if not waits and not self.closing:
            self._resume_parser()
        return waits

    def _ask_policy_now(self, pending, where: str, request: Request, check, proceed) -> bool:
        """The common wait, one policy question with a kept connection free, without a task."""
        if len(pending) != 1 or pending[0][0] != "policy":
            return False
        question = pending[0]

        def answered(action: str) -> None:
            if self.transport is None:
                return
            request.answers.known[question] = action
            self._decide(where, request, check, proceed, in_parser=False)

        return self.settings.restrictions.policy_client(question[1]).try_ask(question[2], answered)

    async def _decide_later(self, where: str, request: Request, check, proceed, pending) -> None:
        restrictions = self.settings.restrictions
        try:
            while pending:
                await request.answers.fetch(pending, restrictions.policy_client)
                if self.transport is None:
                    return
                verdict = restrictions.evaluate(check, request, self.check_state)
                pending = verdict.pending
            refused = self._apply(verdict, where, request)
        except Exception as error:  # a defect must not hang the session: refuse for now
            if self.transport is None:
                return
            refused = self._check_failed(error)
        finally:
            self._check_task = None
        self._proceed(proceed, refused, in_parser=False)

    def _check_failed(self, error: Exception) -> str:
        self.server.log("smtpd", f"warning: restriction check failed: {type(error).__name__}: {error}")
        return "451 4.3.0 Error: internal error while checking"

    def _check_helo_now(self, helo: str, proceed):
        restrictions = self.settings.restrictions
        if restrictions.delay_reject:
            return proceed(None)
        where = self.last_command
        return self._decide(where, self._request(where, helo=helo), restrictions.check_helo, proceed)

    def _check_mail_now(self, sender: str, smtputf8: bool, proceed):
        restrictions = self.settings.restrictions
        if restrictions.delay_reject:
            return proceed(None)
        return self._decide("MAIL", self._request("MAIL", sender=sender, smtputf8=smtputf8),
                            restrictions.check_mail, proceed)

    def _check_rcpt(self, recipient: str, proceed):
        return self._decide("RCPT", self._request("RCPT", recipient=recipient),
                            self.settings.restrictions.check_rcpt, proceed)

    def _check_stage(self, stage: str, where: str, proceed):
        restrictions = self.settings.restrictions
        if not restrictions.lists[stage]:
            return proceed(None)
        # With several recipients none is named: the check is about all of them.
        recipient = self.recipients[0].address if len(self.recipients) == 1 else None
        check = restrictions.check_data if stage == "data" else restrictions.check_end_of_data
        return self._decide(where, self._request(where, recipient=recipient), check, proceed)

    def _note_input(self, data: bytes) -> None:
        """Counts the command lines received and not yet processed: when the parser is not
        paused, everything before this read has been processed."""
        if not self.parser.paused:
            self._lines_pending = 0
        self._lines_pending += data.count(b"\n")
        self._input_ends_line = data.endswith(b"\n")

    def _restriction_gate(self, verb: bytes, name: str) -> tuple[bool, object]:
        """Before a command runs: note improper pipelining, and refuse every command but QUIT
        from a client that the client restrictions refused at connect."""
        if (not self.illegal_pipelining and (self._lines_pending > 0 or not self._input_ends_line)
                and (not self.esmtp or verb in _SYNC_VERBS)):
            self.illegal_pipelining = True
            self.server.log("smtpd", f"improper command pipelining after {self.last_command} "
                                     f"from {self.client_label}: "
                                     f"{log_escaped(self.parser.peek(PIPELINING_QUOTE_LIMIT))}")
        if self.access_denied is not None and verb != b"QUIT":
            return True, self._error(name, f"503 5.7.0 Error: access denied for {self.client_name}"
                                           f"[{self.client_addr}]")
        return False, None

    def smtp_data(self, arg: bytes):
        if arg:
            return self._error("data", "501 5.5.4 Syntax: DATA")
        if not self.in_transaction:
            return self._error("data", "503 5.5.1 Error: need RCPT command")
        if not self.recipients:
            return self._error("data", "554 5.5.1 Error: no valid recipients")
        return self._check_stage("data", "DATA", self._data_checked)

    def _data_checked(self, refused: str | None):
        if refused is not None:
            return self._error("data", refused)
        self.in_data = True
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        self.parser.start_data()

    def smtp_rset(self, arg: bytes):
        if arg:
            return self._error("rset", "501 5.5.4 Syntax: RSET")
        self._reset_transaction()
        self._count("rset", True)
        self.reply("250 2.0.0 Ok")

    def smtp_noop(self, arg: bytes):
        self._count("noop", True)
        self.reply("250 2.0.0 Ok")

    def smtp_quit(self, arg: bytes):
        self._count("quit", True)
        self.reply("221 2.0.0 Bye")
        self.closing = True
        return True

    def smtp_vrfy(self, arg: bytes):
        if not arg:
            return self._error("vrfy", "501 5.5.4 Syntax: VRFY address")
        self._count("vrfy", True)
        text = printable(arg)
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        self.reply(f"252 2.0.0 {text}")

    def smtp_help(self, arg: bytes):
        self._count("help", True)
        self.reply(_HELP_REPLY)

    # ---- end of data -------------------------------------------------------------------------

    def on_data_end(self, content: bytes, too_big: bool, bare_newline: bool):
        self.in_data = False
        self.last_command = "END-OF-MESSAGE"
        # The message's lines and its final dot line were not commands.
        self._lines_pending = 0 if too_big else self._lines_pending - content.count(b"\n") - 1
        if too_big:
            self._count("data", False)
            self.reply("552 5.3.4 Error: message file too big")
            self._log_reject("END-OF-MESSAGE", "552 5.3.4 Error: message file too big", None)
            self._reset_transaction()
            return None
        self.check_state.end_of_data = True  # PREPEND is too late from here on
        self.message_size = len(content)
        return self._check_stage("end_of_data", "END-OF-MESSAGE",
                                 lambda refused: self._end_of_data_checked(refused, content))

    def _end_of_data_checked(self, refused: str | None, content: bytes):
        if refused is not None:
            self._count("data", False)
            self.reply(refused)
            self._reset_transaction()
            return None
        if self.check_state.discard is not None:
            # DISCARD: the client hears success, nothing is queued.
            self._count("data", True)
            self.server.log("smtpd", f"{self.queue_id}: discard: {self.check_state.discard}")
            self.reply(f"250 2.0.0 Ok: queued as {self.queue_id}")
            self._reset_transaction()
            return None
        self._queue_message(content)
        return True

    def _queue_message(self, content: bytes) -> None:
        queue_id = self.queue_id
        recipients = self.recipients
        protocol = ("UTF8SMTP" if self.smtputf8 else "ESMTP") if self.esmtp else "SMTP"
        if self.tls is not None and self.esmtp:
            protocol += "S"  # RFC 3848: ESMTPS
        if self.sasl_username is not None and self.esmtp:
            protocol += "A"  # RFC 3848: ESMTPA, ESMTPSA
        now = time.time()
        actions = self.check_state  # HOLD, PREPEND, REDIRECT, BCC, FILTER (cleanup/actions.py)
        try:
            message = clean_message(
                content, settings=self.settings.cleanup, queue_id=queue_id, sender=self.sender,
                recipients=[r.address for r in recipients], helo=self.helo_name,
                client_name=self.client_name, client_addr=self.client_addr, protocol=protocol,
                local_client=self.local_client, now=now,
                tls_clause=(self.tls.received_clause(self.settings.tls.ask_ccert)
                            if self.tls is not None and self.settings.tls.received_header else ""),
                auth_clause=auth.received_clause(self), prepend=actions.prepend,
            )
        except Rejected as rejected:
            self._count("data", False)
            self._log_reject("END-OF-MESSAGE", rejected.reply, None)
            self.reply(rejected.reply)
            self._transaction_done()
            return
        try:
            sender, recipients = self._rewritten_envelope()
            if actions.bcc:
                recipients = message_actions.with_bcc(recipients, actions.bcc, self.settings.rewriter)
            if actions.redirect:
                recipients = message_actions.redirected(recipients, actions.redirect, self.settings.rewriter)
        except AliasExpansionError as error:
            self.server.log("cleanup", f"warning: {queue_id}: {error} -- message not accepted, "
                                       "try again later")
            self._count("data", False)
            self.reply("451 4.6.0 Alias expansion error")
            self._transaction_done()
            return
        envelope = Envelope(
            queue_id=queue_id, sender=sender, recipients=recipients, arrival_time=now,
            client_name=self.client_name, client_addr=self.client_addr,
            client_port=self.client_port, helo_name=self.helo_name or "", protocol=protocol,
            size=len(message.content), body_type=self.body_type, smtputf8=self.smtputf8,
            envid=self.envid, ret=self.ret,
            content_filter=message_actions.message_filter(actions.filter, self.settings.cleanup.content_filter,
                                                          actions.redirect),
            hold=actions.hold,
        )
        try:
            durable = self.server.partition.enqueue(envelope, message.content)
            if envelope.hold:
                durable = message_actions.hold_when_durable(self.server.partition, durable, queue_id)
        except Exception as exc:
            self._queue_failed(exc)
            return
        self._committing = True
        durable.add_done_callback(lambda future: self._queued(future, envelope, message.message_id))

    def _rewritten_envelope(self) -> tuple[str, list[Recipient]]:
        """The envelope as cleanup rewrites it (canonical, masquerading, virtual aliases); a
        recipient that turns out twice with the same DSN parameters and origin is kept once."""
        rewriter = self.settings.rewriter
        sender = rewriter.sender(self.sender)
        recipients: list[Recipient] = []
        seen: set[tuple] = set()
        for given in self.recipients:
            for address in rewriter.recipient(given.address):
                key = (address.lower(), given.orcpt, given.notify, given.address.lower())
                if key in seen:
                    continue
                seen.add(key)
                original = given.address if address != given.address else None
                recipients.append(Recipient(address, orcpt=given.orcpt, notify=given.notify,
                                            original=original))
        return sender, recipients

    def _queued(self, future, envelope: Envelope, message_id: str | None) -> None:
        self._committing = False
        exc = future.exception()
        if exc is not None:
            self._queue_failed(exc)
            return
        self._count("data", True)
        queue_id = envelope.queue_id
        log = self.server.log
        if message_id is not None:
            log("cleanup", f"{queue_id}: message-id={message_id}")
        self.server.message_queued()
        # A message received in full forgives the client's earlier errors, as in Postfix.
        self.error_count = 0
        self.junk_commands = 0
        if self._ended_while_committing:
            self._end_session()
            return
        self.reply(f"250 2.0.0 Ok: queued as {queue_id}")
        self._transaction_done(in_parser_callback=False)

    def _queue_failed(self, exc: BaseException) -> None:
        """The queue could not make the message durable: the client never hears 250."""
        self._count("data", False)
        self.server.log("smtpd", f"warning: {self.queue_id}: queue file write error: {exc}")
        if self._ended_while_committing:
            self._end_session()
            return
        self.reply("451 4.3.0 Error: queue file write error")
        self._transaction_done()

    def _transaction_done(self, in_parser_callback: bool = True) -> None:
        """After the reply to end-of-data: go on with what the client pipelined behind it."""
        self._reset_transaction()
        if self.transport is None:
            return
        self.flush_replies()
        if self.server.stopping:
            self.reply(f"421 4.3.2 {self.settings.myhostname} Service shutting down, closing transmission channel")
            self.closing = True
            self.flush_replies()
            return
        if in_parser_callback:
            self.server.loop.call_soon(self._resume_parser)  # the parser may not be re-entered
        else:
            self._resume_parser()

    def _resume_parser(self) -> None:
        if self.transport is None:
            return
        self.transport.resume_reading()
        self.parser.resume()
        self.flush_replies()

    # ---- client limits (pyfastmta/smtpd/limits.py) --------------------------------------------

    def _limits_refuse_connection(self) -> bool:
        """Counts the connection; True when a client limit refused it (reply sent, closing)."""
        limits = self.settings.limits
        if not limits.counts(self.client_addr):
            return False
        self._limits_counted = True
        refused = limits.connect(self.client_addr, self.client_label)
        if refused is None:
            return False
        reply, warning = refused
        self.server.log("smtpd", warning)
        self.transport.write(reply.encode() + b"\r\n")
        self.closing = True
        self.transport.close()
        return True

    def _limit_error(self, name: str, refused: tuple[str, str]):
        reply, warning = refused
        self.server.log("smtpd", warning)
        return self._error(name, reply)

    # ---- SMTP AUTH (auth.py) -----------------------------------------------------------------

    def smtp_auth(self, arg: bytes):
        return auth.auth_command(self, arg)

    def on_line(self, line: bytes):
        """A response line in an AUTH exchange (the parser hands it over whole)."""
        self._lines_pending -= 1
        if self._sasl_exchange is None:
            return None
        return self._sasl_exchange.on_line(line)

    # ---- TLS: STARTTLS and implicit TLS ------------------------------------------------------

    def smtp_starttls(self, arg: bytes):
        if arg:
            return self._error("starttls", "501 5.5.4 Syntax: STARTTLS")
        if self.tls is not None:
            return self._error("starttls", "554 5.5.1 Error: TLS already active")
        if not self.settings.tls.offered:
            return self._error("starttls", "502 5.5.1 Error: command not implemented")
        if self._limits_counted:
            limited = self.settings.limits.tls_session(self.client_addr, self.client_label)
            if limited is not None:
                self.server.log("smtpd", limited[1])
                self._count("starttls", False)
                self.reply(limited[0])
                self.closing = True
                return True
        self._count("starttls", True)
        self.reply("220 2.0.0 Ready to start TLS")
        # Whatever the client sent behind STARTTLS in plaintext is dropped unread: it must not
        # run as if it came over TLS (CVE-2011-0411). Nothing more is read until the handshake.
        self.parser.discard_buffered()
        self._lines_pending = 0  # the dropped lines are no longer waiting to be processed
        self.transport.pause_reading()
        self._tls_task = self.server.loop.create_task(self._start_tls(wrapper=False))
        return True  # the parser stays paused until the TLS session exists

    async def _start_tls(self, wrapper: bool) -> None:
        tls = self.settings.tls
        loop = self.server.loop
        raw = self.transport
        if wrapper and self.settings.peername_lookup:
            names = self.server.peernames.cached(self.client_addr)
            self.client_names = names if names is not None else await self.server.peernames.lookup(self.client_addr)
            self.client_name = self.client_names.name
        if self.transport is None:
            return
        started = loop.time()
        try:
            transport = await loop.start_tls(raw, self, tls.context, server_side=True,
                                             ssl_handshake_timeout=tls.handshake_timeout,
                                             ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            # Both loops report their handshake timeout as an aborted connection.
            timed_out = loop.time() - started >= tls.handshake_timeout
            self._tls_failed(raw, TimeoutError() if timed_out else error, wrapper)
            return
        if transport is None or self.transport is None:  # the client left during the handshake
            return
        self.transport = transport
        self._last_activity = loop.time()
        self.tls = TlsInfo(transport.get_extra_info("ssl_object"), tls.digest)
        if self._limits_counted and not transport.get_extra_info("ssl_object").session_reused:
            self.settings.limits.new_tls_session(self.client_addr)
        if tls.loglevel >= 1:
            self.server.log("smtpd", self.tls.log_line(self.client_label))
        if wrapper:
            self._greet(self.client_names)
            return
        # RFC 3207 4.2: the client starts over; what it said before TLS is forgotten.
        self.helo_name = None
        self.esmtp = False
        self._reset_transaction()
        self._resume_parser()

    def _tls_failed(self, raw, error: BaseException, wrapper: bool) -> None:
        if wrapper:
            self.server.log("smtpd", f"connect from {self.client_label}")
        if isinstance(error, TimeoutError):
            reason = "timeout"
        elif isinstance(error, ssl.SSLError):
            reason = error.reason or error.__class__.__name__
        else:
            reason = "lost connection"
        self.server.log("smtpd", f"SSL_accept error from {self.client_label}: {reason}")
        self.server.log("smtpd", f"lost connection after {'CONNECT' if wrapper else 'STARTTLS'} "
                                 f"from {self.client_label}")
        self.closing = True  # the end is logged
        raw.abort()
        self.server.loop.call_later(1.0, self._ended_after_tls_failure, error)

    def _ended_after_tls_failure(self, error: BaseException) -> None:
        if self in self.server.sessions:
            # The loop did not report the end of the connection to this protocol: end it here.
            self.connection_lost(error)

    # ---- client classification -------------------------------------------------------------

    def _client_is_own_address(self) -> bool:
        """A client connecting from one of this host's addresses (it reached us from it)."""
        sock = self.transport.get_extra_info("sockname")
        return bool(sock) and sock[0] in (self.client_addr, "::ffff:" + self.client_addr)

    def _is_local_client(self, loopback: bool) -> bool:
        for entry in self.settings.local_header_rewrite_clients:
            if entry == "permit_inet_interfaces":
                if loopback or self._client_is_own_address():
                    return True
            elif entry == "permit_mynetworks":
                if self.in_mynetworks:
                    return True
            elif entry == "static:all":
                return True
        return False


_HANDLERS = {verb: getattr(SmtpSession, "smtp_" + name) for verb, name in _COMMAND_NAMES.items()}
