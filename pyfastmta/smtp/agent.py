"""The smtp and lmtp delivery agents: what the queue manager's delivery requests become on the wire.

For a request: parse the nexthop; take a cached connection to it, or find its destinations (MX
hosts and their addresses, a `[host]`'s addresses, or an LMTP socket) and open a connection to
each in turn until one answers; deliver; keep the connection for the next request to the same
nexthop when it can be reused (Postfix's connection cache, smtp_connection_cache_on_demand).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from pyfastmta.dns import Destination, DnsError, DnsResolver
from pyfastmta.qmgr.delivery import DeliveryOutcome, DeliveryRequest
from pyfastmta.resolve.nexthop import parse_nexthop
from pyfastmta.smtp.client import ClientTimeouts, ContentSource, DeliveryError, SmtpConnection

# Failures before MAIL FROM say the destination itself is unwell: they slow it down in qmgr.
_SITE_STAGES = frozenset({"connect", "greeting", "helo", "starttls"})


class ConnectionCache:
    """Idle connections per nexthop, reused while young and not used too often."""

    def __init__(self, *, reuse_time_limit: float, reuse_count_limit: int, idle_time_limit: float = 2.0):
        self.reuse_time_limit = reuse_time_limit
        self.reuse_count_limit = reuse_count_limit
        self.idle_time_limit = idle_time_limit
        self._idle: dict[str, list[tuple[SmtpConnection, asyncio.TimerHandle]]] = {}

    def take(self, nexthop: str) -> SmtpConnection | None:
        idle = self._idle.get(nexthop)
        while idle:
            connection, timer = idle.pop()
            timer.cancel()
            if self._reusable(connection):
                return connection
            asyncio.get_running_loop().create_task(connection.close())
        return None

    def _reusable(self, connection: SmtpConnection, more_uses: int = 0) -> bool:
        if not connection.usable:
            return False
        if self.reuse_count_limit and connection.reuse_count + more_uses >= self.reuse_count_limit:
            return False
        return time.monotonic() - connection.opened_at < self.reuse_time_limit

    def will_keep(self, connection: SmtpConnection) -> bool:
        """Whether the connection will be kept after one more delivery (so it may pipeline its
        RSET behind that delivery)."""
        return self._reusable(connection, 1)

    async def give(self, nexthop: str, connection: SmtpConnection) -> None:
        """Keep a connection that just finished a delivery, or close it."""
        if not self._reusable(connection) or not await connection.reset():
            await connection.close()
            return
        timer = asyncio.get_running_loop().call_later(self.idle_time_limit, self._expire, nexthop, connection)
        self._idle.setdefault(nexthop, []).append((connection, timer))

    def _expire(self, nexthop: str, connection: SmtpConnection) -> None:
        idle = self._idle.get(nexthop, [])
        for position, (cached, _timer) in enumerate(idle):
            if cached is connection:
                del idle[position]
                asyncio.get_running_loop().create_task(connection.close())
                return

    async def close_all(self) -> None:
        connections = []
        for idle in self._idle.values():
            for connection, timer in idle:
                timer.cancel()
                connections.append(connection)
        self._idle.clear()
        await asyncio.gather(*(connection.close() for connection in connections), return_exceptions=True)


class SmtpDeliveryAgent:
    def __init__(self, *, dns: DnsResolver, helo_name: str, timeouts: ClientTimeouts,
                 lmtp: bool = False, tls_security_level: str = "none",
                 cache: ConnectionCache | None = None, mx_address_limit: int = 5,
                 myhostname: str = "", own_addresses: Iterable[str] = (),
                 log: Callable[[str, str], None] | None = None,
                 plaintext_fallback_age: float = 300.0):
        """myhostname and own_addresses detect mail that would loop back to this host (SMTP to
        port 25 only, as in Postfix: other ports are content filters and the like).

        At TLS level "may", a message that has waited plaintext_fallback_age seconds (Postfix:
        minimal_backoff_time) is sent without TLS when a server's TLS handshake fails, on a
        new connection to the same server; younger messages are deferred, as in Postfix."""
        self.plaintext_fallback_age = plaintext_fallback_age
        self.dns = dns
        self.myhostname = myhostname.lower()
        self.own_addresses = frozenset(own_addresses)
        self._log = log
        self.helo_name = helo_name
        self.timeouts = timeouts
        self.lmtp = lmtp
        self.tls_security_level = tls_security_level or "none"
        self.cache = cache
        self.mx_address_limit = mx_address_limit
        self.default_port = 24 if lmtp else 25

    async def deliver(self, request: DeliveryRequest) -> list[DeliveryOutcome]:
        started = time.monotonic()
        started_wall = time.time()
        connection = self.cache.take(request.nexthop) if self.cache is not None else None
        if connection is None:
            try:
                connection = await self._connect(request.nexthop, started_wall - request.envelope.arrival_time)
            except (DnsError, DeliveryError, ValueError) as error:
                return self._all(request, error, time.monotonic() - started)
        setup_time = time.monotonic() - started
        content = ContentSource(*request.content)
        try:
            keep = self.cache is not None and self.cache.will_keep(connection)
            results = await connection.deliver(request.envelope, content, request.recipients, keep)
            site_failure = False
        except DeliveryError as error:
            results = error.results or []
            site_failure = error.stage in _SITE_STAGES
            if not results:
                await connection.close()
                return self._all(request, error, setup_time, relay=connection.peer)
        uses = connection.reuse_count
        outcomes = [DeliveryOutcome(result.index, result.status, result.dsn, result.reply,
                                    relay=connection.peer, setup_time=setup_time, conn_use=uses,
                                    site_failure=site_failure and result.status == "deferred")
                    for result in results]
        if self.cache is not None and connection.usable:
            await self.cache.give(request.nexthop, connection)
        else:
            await connection.close()
        return outcomes

    async def _connect(self, nexthop_text: str, message_age: float = 0.0) -> SmtpConnection:
        nexthop = parse_nexthop(nexthop_text, default_port=self.default_port)
        loop_detect = False
        if nexthop.kind == "unix":
            destinations = [Destination(nexthop.path, nexthop.path, 0)]
        else:
            port = nexthop.port or self.default_port
            destinations = await self.dns.destinations(nexthop.host, mx=nexthop.mx, port=port)
            loop_detect = not self.lmtp and port == 25
            if loop_detect and nexthop.mx:
                destinations = self._without_self(nexthop.host, destinations)
        best_preference = destinations[0].preference if destinations else 0
        last_error: DeliveryError | None = None
        for destination in destinations[:self.mx_address_limit]:
            try:
                connection = await self._open(destination, message_age)
            except DeliveryError as error:
                # The next MX host may well answer (Postfix skips a 5xx greeting too).
                last_error = error
                continue
            if loop_detect and self.myhostname:
                best = destination.preference == best_preference
                loop = self._greeted_as_myself(connection, nexthop_text, best)
                if loop is not None:
                    await connection.close()
                    if not loop.temporary:
                        raise loop
                    last_error = loop
                    continue
            return connection
        if last_error is None:
            raise DeliveryError(True, "4.4.4", f"no address for {nexthop_text}", "connect")
        raise last_error

    async def _open(self, destination: Destination, message_age: float) -> SmtpConnection:
        def attempt(level: str):
            return SmtpConnection.open(destination.hostname, destination.address, destination.port,
                                       helo_name=self.helo_name, lmtp=self.lmtp, timeouts=self.timeouts,
                                       tls_security_level=level)

        try:
            return await attempt(self.tls_security_level)
        except DeliveryError as error:
            # At "may" only a failed handshake raises at this stage.
            if (error.stage != "starttls" or self.tls_security_level != "may"
                    or message_age < self.plaintext_fallback_age):
                raise
        return await attempt("none")

    def _without_self(self, domain: str, destinations: list[Destination]) -> list[Destination]:
        """Only the MX hosts preferred to this host when it is one of them (Postfix's rule:
        mail relayed onward from here goes to better MX hosts only)."""
        mine = next((d for d in destinations if d.address in self.own_addresses), None)
        if mine is None:
            return destinations
        better = [d for d in destinations if d.preference < mine.preference]
        if not better:
            raise DeliveryError(False, "5.4.6", f"mail for {domain} loops back to myself", "connect")
        return better

    def _greeted_as_myself(self, connection: SmtpConnection, nexthop: str,
                           best: bool) -> DeliveryError | None:
        """A server that gives this host's own name in its EHLO reply is this host: the mail
        would loop. Bounced when that server is a best MX host, deferred otherwise."""
        if connection.greeting_name == self.myhostname:
            self._warn(f"host {connection.peer} greeted me with my own hostname {self.myhostname}")
        if connection.hello_name != self.myhostname:
            return None
        self._warn(f"host {connection.peer} replied to HELO/EHLO with my own hostname {self.myhostname}")
        return DeliveryError(not best, "5.4.6" if best else "4.4.6",
                             f"mail for {nexthop} loops back to myself", "helo")

    def _warn(self, text: str) -> None:
        if self._log is not None:
            self._log("smtp", f"warning: {text}")

    @staticmethod
    def _all(request: DeliveryRequest, error, setup_time: float, relay: str = "none") -> list[DeliveryOutcome]:
        """One outcome for every recipient, from a failure of the whole delivery."""
        temporary = getattr(error, "temporary", True)
        dsn = getattr(error, "dsn", "4.3.0")
        reason = getattr(error, "reason", str(error))
        status = "deferred" if temporary else "bounced"
        return [DeliveryOutcome(index, status, dsn, reason, relay=relay, setup_time=setup_time,
                                site_failure=temporary) for index in request.recipients]
