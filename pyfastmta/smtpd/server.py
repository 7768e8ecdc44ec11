"""The SMTP service of one worker: its sessions, its queue partition, its settings."""

from __future__ import annotations

import asyncio
import resource
import time

from pyfastmta.dns import DnsResolver
from pyfastmta.dns.resolver import configured_nameservers
from pyfastmta.smtpd.limits import ClientLimits
from pyfastmta.smtpd.peername import PeernameCache
from pyfastmta.smtpd.session import SmtpSession
from pyfastmta.smtpd.settings import SmtpdSettings


# Descriptors a worker keeps for everything but client connections.
SPARE_DESCRIPTORS = 128
# Seconds between two warnings that a worker is overloaded.
STRESS_WARNING_INTERVAL = 60.0


class SmtpServer:
    def __init__(self, loop, partition, maillog, delivery=None, client_events=None):
        self.loop = loop
        self.partition = partition
        self.maillog = maillog
        self.delivery = delivery  # the worker's DeliveryService: woken for each queued message
        self.peernames: PeernameCache | None = None
        self.resolver: DnsResolver | None = None
        self.client_events = client_events
        self._service_settings: dict[str, SmtpdSettings] = {}
        self.sessions: set[SmtpSession] = set()
        self.stopping = False
        self.session_count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Sessions are bounded by the open-file limit (the master raises it to the hard limit):
        # a few descriptors stay for queue files, DNS and policy servers. Past 80% of the
        # bound, new sessions get Postfix's stress values; at the bound, new clients hear 421.
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.session_limit = max(16, soft - SPARE_DESCRIPTORS) if soft != resource.RLIM_INFINITY else 1 << 20
        self.stress_threshold = self.session_limit * 4 // 5
        self._stress_noted = 0.0

    def log(self, program: str, text: str) -> None:
        self.maillog.log(program, text)

    def message_queued(self) -> None:
        if self.delivery is not None:
            self.delivery.wake()

    def protocol_factory(self, config, service: str = "smtp"):
        """A factory for loop.create_server; reload swaps it by calling this again."""
        settings = SmtpdSettings(config)
        settings.limits = ClientLimits(config, self.client_events, service)
        if settings.sasl.backend is not None:
            settings.sasl.backend.warn = lambda text: self.log("smtpd", f"warning: {text}")
        previous = self._service_settings.get(service)
        if previous is not None:
            previous.sasl.close()  # a reload: the old backend's connection goes
        self._service_settings[service] = settings
        # One resolver (and one DNS cache) for client names and the restriction lists' lookups.
        self.resolver = DnsResolver(configured_nameservers(config),
                                    inet_protocols=",".join(config.get("inet_protocols")))
        self.peernames = PeernameCache(self.resolver)
        settings.restrictions.warn = lambda text: self.log("smtpd", f"warning: {text}")
        if previous is not None:
            previous.restrictions.close_policy_clients()

        stressed = settings.under_stress(config)

        def make_session() -> SmtpSession:
            if len(self.sessions) >= self.stress_threshold:
                self._note_stress(service)
                return SmtpSession(self, stressed)
            return SmtpSession(self, settings)

        return make_session

    def _note_stress(self, service: str) -> None:
        now = time.monotonic()
        if now - self._stress_noted >= STRESS_WARNING_INTERVAL:
            self._stress_noted = now
            self.log("smtpd", f'warning: service "{service}": {len(self.sessions)} sessions of at '
                              f"most {self.session_limit} in this worker: new sessions run with "
                              "stress=yes (short timeouts)")

    def overloaded(self) -> bool:
        return len(self.sessions) >= self.session_limit

    def session_started(self, session: SmtpSession) -> None:
        self.sessions.add(session)
        self.session_count += 1
        self._idle.clear()

    def session_ended(self, session: SmtpSession) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Stop: idle sessions are told 421 at their next command; transactions may finish."""
        self.stopping = True
        for session in list(self.sessions):
            if not session.in_transaction and session.transport is not None and session.greeted \
                    and not session.parser.paused:
                session.reply(f"421 4.3.2 {session.settings.myhostname} Service shutting down,"
                              " closing transmission channel")
                session.closing = True
                session.flush_replies()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            for session in list(self.sessions):
                if session.transport is not None:
                    session.closing = True  # ended here, not lost by the client
                    session.transport.abort()
