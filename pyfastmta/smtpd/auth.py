"""SMTP AUTH (RFC 4954) in smtpd, on the SASL backends of pyfastmta/sasl/: what EHLO
advertises, the AUTH command and its exchange, the MAIL FROM AUTH= parameter, and the log and
Received: details of an authenticated session, with Postfix's replies and log lines.

The exchange runs as a task while the parser is paused: each 334 challenge asks the parser for
the next line whole (read_line), so a case-sensitive base64 response reaches the backend as the
client sent it, and commands pipelined behind the exchange wait until it is over.
"""

from __future__ import annotations

import asyncio
import os

from pyfastmta.config import ConfigError
from pyfastmta.maps import TableError
from pyfastmta.maps.matchlist import DomainList, NetworkList
from pyfastmta.sasl.conversation import SaslStep, failed

BACKENDS = ("dovecot", "passwd-file")
# Security options (smtpd_sasl_security_options) and the Dovecot mechanism flag each one hides.
_OPTION_FLAGS = {"noplaintext": "plaintext", "noactive": "active", "nodictionary": "dictionary",
                 "noanonymous": "anonymous", "mutual_auth": "mutual-auth",
                 "forward_secrecy": "forward-secrecy"}
# What pyfastmta's own backend offers, in Dovecot's words.
_PASSWORD_FILE_FLAGS = frozenset({"plaintext"})
# A backend that gives no reason for a refusal: Postfix logs and answers this instead.
NO_REASON = "(reason unavailable)"


class SaslSettings:
    """The AUTH part of one smtpd service's settings."""

    def __init__(self, config, warn=None) -> None:
        get = config.get
        self.enabled: bool = get("smtpd_sasl_auth_enable")
        self.type: str = get("smtpd_sasl_type").strip().lower()
        self.tls_auth_only: bool = get("smtpd_tls_auth_only")
        self.broken_clients: bool = get("broken_sasl_auth_clients")
        self.authenticated_header: bool = get("smtpd_sasl_authenticated_header")
        self.service: str = get("smtpd_sasl_service")
        self.local_domain: str = get("smtpd_sasl_local_domain")
        self.options = _options(config, "smtpd_sasl_security_options")
        self.tls_options = _options(config, "smtpd_sasl_tls_security_options")
        # Longest response line; Postfix's bound counts the line ending, so a response of
        # exactly this many characters is already too long.
        self.response_limit: int = get("smtpd_sasl_response_limit")
        try:
            self.exceptions = NetworkList("smtpd_sasl_exceptions_networks",
                                          get("smtpd_sasl_exceptions_networks"))
            # A string list as Postfix's (names compared without case, tables asked for the
            # name); it decides what EHLO announces, not what AUTH accepts (as in Postfix).
            patterns = get("smtpd_sasl_mechanism_filter")
            self.mechanism_filter = (DomainList("smtpd_sasl_mechanism_filter", patterns, "exact")
                                     if patterns else None)
        except TableError as error:
            raise ConfigError(config.main_cf_path, None, str(error)) from None
        self._warned_filter = False
        self.path = _sasl_path(config)
        self.backend = None
        self._mechanisms: list[str] | None = None
        self._ehlo: dict[tuple, bytes] = {}
        if not self.enabled:
            return
        if self.type not in BACKENDS:
            raise ConfigError(config.main_cf_path, None,
                              f"smtpd_sasl_type = {self.type}: pyfastmta supports only "
                              f"{' and '.join(BACKENDS)} (with smtpd_sasl_auth_enable = yes)")
        if self.type == "dovecot":
            from pyfastmta.sasl.dovecot import DovecotAuth

            self.backend = DovecotAuth(self.path, warn=warn)
        else:
            from pyfastmta.sasl.passwords import PasswordFile

            try:
                self.backend = PasswordFile(self.path, warn)
            except OSError as error:
                raise ConfigError(config.main_cf_path, None,
                                  f"smtpd_sasl_path: cannot read {self.path}: {error}") from None

    # ---- mechanisms ----------------------------------------------------------------------------

    @property
    def mechanisms_known(self) -> bool:
        return self._mechanisms is not None

    async def load_mechanisms(self) -> list[str]:
        """The backend's mechanisms, asked once per worker (again while it cannot be asked)."""
        if self._mechanisms is None:
            mechanisms = await self.backend.mechanisms()
            if mechanisms:
                self._mechanisms = mechanisms
            return mechanisms
        return self._mechanisms

    def _flags(self, mechanism: str) -> frozenset[str]:
        if self.type == "dovecot":
            return self.backend.mechanism_flags(mechanism)
        return _PASSWORD_FILE_FLAGS

    def allowed(self, tls: bool) -> list[str]:
        """The mechanisms the security options leave for a session with or without TLS: what
        AUTH accepts."""
        hidden = {_OPTION_FLAGS[o] for o in (self.tls_options if tls else self.options)
                  if o in _OPTION_FLAGS and o not in ("mutual_auth", "forward_secrecy")}
        required = {_OPTION_FLAGS[o] for o in (self.tls_options if tls else self.options)
                    if o in ("mutual_auth", "forward_secrecy")}
        return [name for name in (self._mechanisms or [])
                if not (self._flags(name) & hidden) and required <= self._flags(name)]

    def offered(self, tls: bool) -> list[str]:
        """What EHLO announces: the allowed mechanisms that smtpd_sasl_mechanism_filter keeps."""
        allowed = self.allowed(tls)
        if self.mechanism_filter is None or not allowed:
            return allowed
        kept = [name for name in allowed if self.mechanism_filter.matches(name)]
        if not kept and not self._warned_filter and self.backend is not None:
            # Postfix's smtpd stops here; pyfastmta announces no AUTH and says why.
            self._warned_filter = True
            if getattr(self.backend, "warn", None) is not None:
                self.backend.warn(f"smtpd_sasl_mechanism_filter discards all mechanisms in "
                                  f"'{' '.join(allowed)}'")
        return kept

    def advertised(self, tls: bool, client_addr: str) -> bool:
        return (self.enabled and (tls or not self.tls_auth_only)
                and not (self.exceptions and self.exceptions.matches(client_addr)))

    def ehlo_reply(self, reply: bytes, tls: bool) -> bytes:
        """reply with the AUTH line(s) put where Postfix puts them, before ENHANCEDSTATUSCODES."""
        mechanisms = self.offered(tls)
        key = (reply, tls, tuple(mechanisms))
        cached = self._ehlo.get(key)
        if cached is None:
            if not mechanisms:
                cached = reply
            else:
                lines = f"250-AUTH {' '.join(mechanisms)}\r\n"
                if self.broken_clients:
                    lines += f"250-AUTH={' '.join(mechanisms)}\r\n"
                marker = b"250-ENHANCEDSTATUSCODES\r\n"
                at = reply.find(marker)
                if at < 0:  # the last line: keep it last
                    at = reply.rfind(b"\r\n250 ") + 2
                cached = reply[:at] + lines.encode() + reply[at:]
            if len(self._ehlo) > 64:
                self._ehlo.clear()
            self._ehlo[key] = cached
        return cached

    def close(self) -> None:
        if self.backend is not None and hasattr(self.backend, "close"):
            self.backend.close()


def _options(config, name: str) -> list[str]:
    words = [word.lower() for word in config.get(name)]
    unknown = [word for word in words if word not in _OPTION_FLAGS]
    if unknown:
        raise ConfigError(config.main_cf_path, None,
                          f"{name}: unknown security option {unknown[0]!r} (known: "
                          f"{', '.join(_OPTION_FLAGS)})")
    return words


def _sasl_path(config) -> str:
    """smtpd_sasl_path; a relative name (private/auth) is under queue_directory, as Postfix's
    smtpd sees it from its chroot or working directory."""
    path = config.get("smtpd_sasl_path")
    if os.path.isabs(path):
        return path
    return os.path.join(config.get("queue_directory"), path)


# ---- the session side ----------------------------------------------------------------------------


class AuthExchange:
    """One AUTH command from the client, run as a task."""

    def __init__(self, session, mechanism: str, initial: str | None) -> None:
        self.session = session
        self.mechanism = mechanism.upper()
        self.initial = initial
        self._line: asyncio.Future | None = None

    @property
    def wants_line(self) -> bool:
        return self._line is not None and not self._line.done()

    def on_line(self, line: bytes) -> bool:
        """The client's response to a challenge; the parser stays paused until it is handled."""
        if self.wants_line:
            self._line.set_result(line.decode("ascii", "replace").strip())
        return True

    def line_too_long(self) -> bool:
        if self.wants_line:
            self._line.set_result(None)
        return True

    async def run(self) -> None:
        session = self.session
        sasl = session.settings.sasl
        try:
            mechanisms = sasl.allowed(session.tls is not None) if sasl.mechanisms_known else []
            if not mechanisms:
                await sasl.load_mechanisms()
                mechanisms = sasl.allowed(session.tls is not None)
            if self.mechanism not in mechanisms:
                step = failed("Invalid authentication mechanism")
            else:
                step = await self._converse(sasl)
            if step is None:
                return  # the client left, or cancelled (answered already)
            self._finish(step)
        finally:
            self._done()
        session.flush_replies()

    def _done(self) -> None:
        # Before the parser resumes: a pipelined AUTH behind this one starts an exchange of its own.
        if self.session._sasl_exchange is self:
            self.session._sasl_exchange = None

    async def _converse(self, sasl) -> SaslStep | None:
        session = self.session
        sock = session.transport.get_extra_info("sockname") or ("", 0)
        conversation = sasl.backend.conversation(
            client_address=session.client_addr, server_address=str(sock[0]),
            secured=session.tls is not None, client_port=session.client_port,
            server_port=sock[1] if len(sock) > 1 else 0)
        step = await conversation.start(self.mechanism, self.initial)
        while step.outcome == "continue":
            if session.transport is None:
                return None
            session.reply(f"334 {step.challenge}")
            session.flush_replies()
            response = await self._response(session, sasl.response_limit)
            if response is None:
                session.server.log("smtpd", f"warning: {session.client_label}: request longer "
                                            f"than {sasl.response_limit}")
                self._error("500 5.5.6 SASL response limit exceeded")
                return None
            if response == "*":
                session.server.log("smtpd", f"warning: {session.client_label}: SASL "
                                            f"{self.mechanism} authentication aborted")
                self._error("501 5.7.0 Authentication aborted")
                return None
            step = await conversation.step(response)
        return step

    async def _response(self, session, limit: int) -> str | None:
        """The client's next line, up to smtpd_sasl_response_limit instead of
        line_length_limit; None when it was longer (the rest of it is skipped)."""
        parser = session.parser
        self._line = session.server.loop.create_future()
        parser.line_length_limit = max(1, limit - 1)
        try:
            parser.read_line()
            session._resume_parser()
            return await self._line
        finally:
            self._line = None
            parser.line_length_limit = session.settings.line_length_limit

    def _finish(self, step: SaslStep) -> None:
        session = self.session
        self._done()
        if step.outcome == "ok":
            session.sasl_method = self.mechanism
            session.sasl_username = step.username
            session._count("auth", True)
            session.reply("235 2.7.0 Authentication successful")
            session._resume_parser()
            return
        reason = step.reason or NO_REASON
        session.server.log("smtpd", f"warning: {session.client_label}: SASL {self.mechanism} "
                                    f"authentication failed: {reason}, "
                                    f"sasl_username={step.username or '(unavailable)'}")
        if step.temporary:
            self._error(f"454 4.7.0 Temporary authentication failure: {reason}")
        else:
            self._error(f"535 5.7.8 Error: authentication failed: {reason}")

    def _error(self, text: str) -> None:
        session = self.session
        self._done()
        if not session._error("auth", text):
            session._resume_parser()
        else:
            session.flush_replies()


def auth_command(session, arg: bytes):
    """AUTH mechanism [initial-response]: the checks in Postfix's order, then the exchange."""
    settings = session.settings
    sasl = settings.sasl
    if session._limits_counted:
        # smtpd_client_auth_rate_limit: every AUTH counts, before anything else is checked.
        limited = settings.limits.auth(session.client_addr, session.client_label)
        if limited is not None:
            return session._limit_error("auth", limited)
    if settings.restrictions.helo_required and session.helo_name is None:
        return session._error("auth", "503 5.5.1 Error: send HELO/EHLO first")
    if not sasl.enabled:
        return session._error("auth", "503 5.5.1 Error: authentication not enabled")
    if sasl.tls_auth_only and session.tls is None:
        return session._error("auth", "504 5.5.4 Encryption required for requested "
                                      "authentication mechanism")
    if session.sasl_username is not None:
        return session._error("auth", "503 5.5.1 Error: already authenticated")
    if session.in_transaction:
        return session._error("auth", "503 5.5.1 Error: MAIL transaction in progress")
    words = arg.decode("ascii", "replace").split()
    if not 1 <= len(words) <= 2:
        return session._error("auth", "501 5.5.4 Syntax: AUTH mechanism")
    initial = words[1] if len(words) == 2 else None
    if initial == "=" and sasl.type != "dovecot":
        initial = ""  # RFC 4954: an empty initial response (Dovecot's protocol takes "=" as is)
    exchange = AuthExchange(session, words[0], initial)
    session._sasl_exchange = exchange
    session._sasl_task = session.server.loop.create_task(exchange.run())
    return True  # the parser stays paused until the exchange is over


def ehlo_reply(session, reply: bytes) -> bool:
    """Appends the EHLO reply with AUTH when it is offered; True when the parser must wait for
    the backend's mechanisms (asked once per worker), the reply then follows."""
    sasl = session.settings.sasl
    tls = session.tls is not None
    if not sasl.advertised(tls, session.client_addr):
        session._out.append(reply)
        return False
    if sasl.mechanisms_known:
        session._out.append(sasl.ehlo_reply(reply, tls))
        return False

    async def ask() -> None:
        await sasl.load_mechanisms()
        if session.transport is None:
            return
        session._out.append(sasl.ehlo_reply(reply, tls))
        session._resume_parser()

    session._sasl_task = session.server.loop.create_task(ask())
    return True


def mail_auth_parameter(session, value: str | None) -> str | None:
    """MAIL FROM ... AUTH=<address>: recorded for the log (sasl_sender=); an error reply or None."""
    if not session.settings.sasl.enabled:
        return None  # ignored without AUTH, as before
    if session.sasl_sender is not None:
        return "503 5.5.4 Error: multiple AUTH= options"
    if value is None:
        return "501 5.5.4 Bad MAIL parameter syntax"
    if value != "<>":
        session.sasl_sender = "".join(c if c.isprintable() else "?" for c in value)
    return None


def client_log_fields(session) -> str:
    """What follows client=... in the queue ID's first log line."""
    fields = ""
    if session.sasl_method is not None:
        fields += f", sasl_method={session.sasl_method}"
    if session.sasl_username is not None:
        fields += f", sasl_username={session.sasl_username}"
    if session.sasl_sender:
        fields += f", sasl_sender={session.sasl_sender}"
    return fields


def received_clause(session) -> str:
    """smtpd_sasl_authenticated_header: the user in Received: (CRLF-ended line)."""
    if session.sasl_username is None or not session.settings.sasl.authenticated_header:
        return ""
    return f"\t(Authenticated sender: {session.sasl_username})\r\n"
