"""Per-client limits (smtpd_client_*_limit), counted per machine in the table the master shares
with every worker (ext/anvil.pyx), as Postfix's smtpd counts them through anvil: concurrent
connections, and connections, messages, recipients, new TLS sessions and AUTH commands per
anvil_rate_time_unit, for each service apart. Clients that smtpd_client_event_limit_exceptions
names (by default $mynetworks) are not counted at all.

Each check answers None (go on) or (reply, warning): what the client hears and the line for the
log, in Postfix's words.
"""

from __future__ import annotations

import zlib

from pyfastmta._ext.anvil import AUTH, MESSAGE, RECIPIENT, TLS_SESSION, ClientEvents
from pyfastmta.maps.matchlist import NetworkList

Refusal = tuple[str, str] | None


class ClientLimits:
    def __init__(self, config, events: ClientEvents | None, service: str) -> None:
        get = config.get
        self.events = events
        self.service = service
        self.service_id = zlib.crc32(service.encode())
        self.hostname: str = get("myhostname")
        self.connection_count: int = get("smtpd_client_connection_count_limit")
        self.connection_rate: int = get("smtpd_client_connection_rate_limit")
        self.message_rate: int = get("smtpd_client_message_rate_limit")
        self.recipient_rate: int = get("smtpd_client_recipient_rate_limit")
        self.tls_session_rate: int = get("smtpd_client_new_tls_session_rate_limit")
        self.auth_rate: int = get("smtpd_client_auth_rate_limit")
        self.exceptions = NetworkList("smtpd_client_event_limit_exceptions",
                                      get("smtpd_client_event_limit_exceptions"))
        if events is not None:
            events.time_unit = int(get("anvil_rate_time_unit"))

    def counts(self, address: str) -> bool:
        """Whether this client's events are counted (there is a table, and it is no exception)."""
        return self.events is not None and not self.exceptions.matches(address)

    def connect(self, address: str, client: str) -> Refusal:
        """A new connection, counted; the caller calls disconnect() when it ends."""
        count, rate = self.events.connect(address, self.service_id)
        if self.connection_count and count > self.connection_count:
            return (f"421 4.7.0 {self.hostname} Error: too many connections from {address}",
                    f"warning: Connection concurrency limit exceeded: {count} from {client} "
                    f"for service {self.service}")
        if self.connection_rate and rate > self.connection_rate:
            return (f"421 4.7.0 {self.hostname} Error: too many connections from {address}",
                    f"warning: Connection rate limit exceeded: {rate} from {client} "
                    f"for service {self.service}")
        return None

    def disconnect(self, address: str) -> None:
        self.events.disconnect(address, self.service_id)

    def message(self, address: str, client: str) -> Refusal:
        if not self.message_rate:
            return None
        rate = self.events.event(address, MESSAGE, self.service_id)
        if rate > self.message_rate:
            return (f"450 4.7.1 Error: too much mail from {address}",
                    f"warning: Message delivery request rate limit exceeded: {rate} from {client} "
                    f"for service {self.service}")
        return None

    def recipient(self, address: str, client: str) -> Refusal:
        if not self.recipient_rate:
            return None
        rate = self.events.event(address, RECIPIENT, self.service_id)
        if rate > self.recipient_rate:
            return (f"450 4.7.1 Error: too many recipients from {address}",
                    f"warning: Recipient address rate limit exceeded: {rate} from {client} "
                    f"for service {self.service}")
        return None

    def tls_session(self, address: str, client: str) -> Refusal:
        """Before a TLS handshake: refused when the client has had its new sessions for now."""
        if not self.tls_session_rate:
            return None
        found = self.events.counts(address, self.service_id)
        rate = found[1][TLS_SESSION] if found else 0
        if rate >= self.tls_session_rate:
            return (f"421 4.7.0 {self.hostname} Error: too many new TLS sessions from {address}",
                    f"warning: New TLS session rate limit exceeded: {rate + 1} from {client} "
                    f"for service {self.service}")
        return None

    def new_tls_session(self, address: str) -> None:
        """After a handshake that did not resume a session."""
        if self.tls_session_rate:
            self.events.event(address, TLS_SESSION, self.service_id)

    def auth(self, address: str, client: str) -> Refusal:
        """An AUTH command, counted whatever becomes of it (a syntax error or a failed login
        counts as much as a success, so that guessing passwords costs time)."""
        if not self.auth_rate:
            return None
        rate = self.events.event(address, AUTH, self.service_id)
        if rate > self.auth_rate:
            return (f"450 4.7.1 Error: too many AUTH commands from {address}",
                    f"warning: AUTH command rate limit exceeded: {rate} from {client} "
                    f"for service {self.service}")
        return None
