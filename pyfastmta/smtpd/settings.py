"""smtpd's view of the configuration, computed once per service and reload, read per command."""

from __future__ import annotations

import copy
import ipaddress

from pyfastmta.cleanup.message import CleanupSettings
from pyfastmta.cleanup.rewrite import envelope_rewriter, header_rewriter
from pyfastmta.config.interfaces import LocalDomains, host_addresses
from pyfastmta.config import ConfigError
from pyfastmta.maps import TableError
from pyfastmta.maps.matchlist import DomainList, NetworkList
from pyfastmta.smtpd.restrictions import Restrictions
from pyfastmta.smtpd.tls import TlsSettings
from pyfastmta.smtpd.auth import SaslSettings
from pyfastmta.smtpd.queuespace import QueueSpace


class SmtpdSettings:
    def __init__(self, config):
        get = config.get
        self.myhostname: str = get("myhostname")
        # What a policy server is told of this server (Postfix 3.8's request attributes).
        self.compatibility_level: str = get("compatibility_level")
        self.mail_version: str = get("mail_version")
        self.myorigin: str = get("myorigin")
        self.banner = f"220 {get('smtpd_banner')}\r\n".encode()
        self.message_size_limit: int = get("message_size_limit")
        # Free space the queue needs before MAIL FROM is accepted (queuespace.py).
        self.queue_space = QueueSpace(get("queue_minfree"), self.message_size_limit)
        self.recipient_limit: int = get("smtpd_recipient_limit")
        self.recipient_overshoot_limit: int = get("smtpd_recipient_overshoot_limit")
        self.line_length_limit: int = get("line_length_limit")
        self.timeout: float = get("smtpd_timeout")
        self.stress = False  # True in the copy under_stress() makes
        self.hard_error_limit: int = get("smtpd_hard_error_limit")
        self.junk_command_limit: int = get("smtpd_junk_command_limit")
        self.soft_error_limit: int = get("smtpd_soft_error_limit")
        self.error_sleep_time: float = get("smtpd_error_sleep_time")
        self.smtputf8_enable: bool = get("smtputf8_enable")
        self.peername_lookup: bool = get("smtpd_peername_lookup")
        self.client_port_logging: bool = get("smtpd_client_port_logging")
        parent_style = "relay_domains" in get("parent_domain_matches_subdomains")
        try:
            self.mynetworks = NetworkList("mynetworks", get("mynetworks"))
            self.mydestination = DomainList("mydestination", get("mydestination"), "exact")
            self.relay_domains = DomainList("relay_domains", get("relay_domains"),
                                            "parent" if parent_style else "dotted")
        except TableError as error:
            raise ConfigError(config.main_cf_path, None, str(error)) from None
        self.local_domains = LocalDomains(self.mydestination, host_addresses(config))
        self.rewriter = envelope_rewriter(config, self.local_domains.matches)
        self.always_add_missing_headers: bool = get("always_add_missing_headers")
        self.local_header_rewrite_clients = list(get("local_header_rewrite_clients"))
        self.cleanup = CleanupSettings(config, header_rewriter(config, self.rewriter))
        # Restriction lists (smtpd_*_restrictions), compiled and their tables opened once.
        self.restrictions = Restrictions(config, local_domains=self.local_domains,
                                         relay_domains=self.relay_domains)
        # TLS: the context comes from a cache the master fills before the fork (see tls.py).
        self.tls = TlsSettings(config)
        # SMTP AUTH: the backend is asked for its mechanisms on first use, in a worker.
        self.sasl = SaslSettings(config)
        self.ehlo_reply = self._ehlo_reply()
        self.ehlo_reply_starttls = self._ehlo_reply(starttls=True) if self.tls.offered else self.ehlo_reply
        self._clients: dict[str, tuple[bool, bool]] = {}

    def under_stress(self, config) -> SmtpdSettings:
        """The settings for sessions an overloaded worker starts: Postfix's ${stress?...}
        values (short timeouts, one error) with everything else shared."""
        stressed_config = config.under_stress()
        stressed = copy.copy(self)
        stressed.stress = True
        stressed.timeout = stressed_config.get("smtpd_timeout")
        stressed.hard_error_limit = stressed_config.get("smtpd_hard_error_limit")
        stressed.junk_command_limit = stressed_config.get("smtpd_junk_command_limit")
        stressed.tls = copy.copy(self.tls)
        stressed.tls.handshake_timeout = stressed_config.get("smtpd_starttls_timeout")
        return stressed

    def classify_client(self, addr: str) -> tuple[bool, bool]:
        """(in mynetworks, is loopback) for a client address, cached: a busy relay sees the same
        few senders over and over, and parsing an address costs more than the rest of a connect."""
        known = self._clients.get(addr)
        if known is None:
            address = ipaddress.ip_address(addr)
            known = (self.mynetworks.matches(address), address.is_loopback)
            if self.mynetworks.has_tables:
                return known  # a table can change under us: ask it every time
            if len(self._clients) >= 65536:
                self._clients.clear()
            self._clients[addr] = known
        return known

    def _ehlo_reply(self, starttls: bool = False) -> bytes:
        lines = [self.myhostname, "PIPELINING"]
        lines.append(f"SIZE {self.message_size_limit}" if self.message_size_limit else "SIZE")
        lines.append("VRFY")
        if starttls:
            lines.append("STARTTLS")
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN"]
        if self.smtputf8_enable:
            lines.append("SMTPUTF8")
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        return text.encode()

    def domain_is_local_or_relay(self, domain: str) -> bool:
        return self.mydestination.matches(domain) or self.relay_domains.matches(domain)
