"""A worker's delivery side, built from the configuration: the scheduler over its partition, the
smtp/relay/lmtp agents with their DNS resolver and connection caches, and the notice sender."""

from __future__ import annotations

import asyncio

from pyfastmta.bounce.notices import NoticeSender
from pyfastmta.config import ConfigError
from pyfastmta.config.interfaces import host_addresses
from pyfastmta.dns import DnsResolver
from pyfastmta.dns.resolver import configured_nameservers
from pyfastmta.qmgr.scheduler import Scheduler
from pyfastmta.resolve.resolver import AddressResolver
from pyfastmta.maps.registry import parameter_maps
from pyfastmta.smtp.agent import ConnectionCache, SmtpDeliveryAgent
from pyfastmta.smtp.client import ClientTimeouts

# Per-transport overrides a main.cf may set as <transport>_<name>, as in Postfix.
_TRANSPORT_SETTINGS = (
    "destination_recipient_limit", "destination_concurrency_limit",
    "initial_destination_concurrency", "destination_concurrency_positive_feedback",
    "destination_concurrency_negative_feedback", "destination_concurrency_failed_cohort_limit",
)
_INTEGER_SETTINGS = {"destination_recipient_limit", "destination_concurrency_limit",
                     "initial_destination_concurrency", "destination_concurrency_failed_cohort_limit"}


def _warner(log):
    return (lambda text: log("qmgr", f"warning: {text}")) if log is not None else None


def address_resolver(config, addresses: list[str] | None = None, log=None) -> AddressResolver:
    get = config.get
    return AddressResolver(
        myhostname=get("myhostname"), mydomain=get("mydomain"), myorigin=get("myorigin"),
        mydestination=get("mydestination"), relay_domains=get("relay_domains"),
        relayhost=get("relayhost"), transport_maps=parameter_maps(config, "transport_maps", _warner(log)),
        relocated_maps=parameter_maps(config, "relocated_maps", _warner(log)),
        sender_dependent_relayhost_maps=parameter_maps(config, "sender_dependent_relayhost_maps", _warner(log)),
        empty_address_relayhost_maps_lookup_key=get("empty_address_relayhost_maps_lookup_key"),
        default_transport=get("default_transport"), relay_transport=get("relay_transport"),
        local_transport=get("local_transport"),
        parent_domain_matches_subdomains=get("parent_domain_matches_subdomains"),
        recipient_delimiter=get("recipient_delimiter"),
        inet_interfaces_addresses=host_addresses(config) if addresses is None else addresses,
        empty_address_recipient=get("empty_address_recipient"),
        double_bounce_sender=get("double_bounce_sender"), smtputf8_enable=get("smtputf8_enable"))


class DeliveryService:
    def __init__(self, config, partition, log):
        self.partition = partition
        self.log = log
        self.caches: list[ConnectionCache] = []
        settings = self._build(config)
        self.scheduler = Scheduler(partition, **settings)

    def _build(self, config) -> dict:
        """The resolver, agents, caches and notice sender of a configuration; the scheduler's
        settings. Raises ConfigError or ValueError for a bad configuration, changing nothing."""
        get = config.get
        self.own_addresses = host_addresses(config)
        self.dns = DnsResolver(configured_nameservers(config), inet_protocols=",".join(get("inet_protocols")),
                               smtp_address_preference=get("smtp_address_preference"))
        self.caches = []
        smtp = self._agent(config, lmtp=False)
        lmtp = self._agent(config, lmtp=True)
        agents = {"smtp": smtp, "relay": smtp, "lmtp": lmtp}
        self.notices = NoticeSender(
            self.partition, myhostname=get("myhostname"), myorigin=get("myorigin"),
            mail_name=get("mail_name"), double_bounce_sender=get("double_bounce_sender"),
            bounce_notice_recipient=get("2bounce_notice_recipient"),
            bounce_size_limit=get("bounce_size_limit"), log=self.log, wake=self.wake)
        return dict(
            resolve=address_resolver(config, self.own_addresses, self.log).resolve, agents=agents,
            log=self.log, on_bounce=self.notices.bounced, on_delay_warning=self.notices.delayed,
            qmgr_message_active_limit=get("qmgr_message_active_limit"),
            qmgr_message_recipient_limit=get("qmgr_message_recipient_limit"),
            default_destination_recipient_limit=get("default_destination_recipient_limit"),
            initial_destination_concurrency=get("initial_destination_concurrency"),
            default_destination_concurrency_limit=get("default_destination_concurrency_limit"),
            default_destination_concurrency_positive_feedback=get(
                "default_destination_concurrency_positive_feedback"),
            default_destination_concurrency_negative_feedback=get(
                "default_destination_concurrency_negative_feedback"),
            default_destination_concurrency_failed_cohort_limit=get(
                "default_destination_concurrency_failed_cohort_limit"),
            transport_limits=self._transport_limits(config, agents),
            minimal_backoff_time=get("minimal_backoff_time"),
            maximal_backoff_time=get("maximal_backoff_time"), queue_run_delay=get("queue_run_delay"),
            maximal_queue_lifetime=get("maximal_queue_lifetime"),
            bounce_queue_lifetime=get("bounce_queue_lifetime"),
            delay_warning_time=get("delay_warning_time"))

    def reload(self, config) -> None:
        """Deliver by a new configuration from now on (postfix reload): deliveries under way
        finish with the agents they have; idle cached connections of the old ones are closed."""
        old = (self.own_addresses, self.dns, self.caches, self.notices)
        try:
            self.scheduler.configure(**self._build(config))
        except BaseException:
            self.own_addresses, self.dns, self.caches, self.notices = old
            raise
        for cache in old[2]:
            asyncio.get_running_loop().create_task(cache.close_all())

    def _agent(self, config, *, lmtp: bool) -> SmtpDeliveryAgent:
        get = config.get
        prefix = "lmtp" if lmtp else "smtp"
        limits = {name: get(name) for name in ClientTimeouts.parameter_names(prefix)}
        timeouts = ClientTimeouts.for_lmtp(**limits) if lmtp else ClientTimeouts.for_smtp(**limits)
        cache = None
        if get("smtp_connection_cache_on_demand"):
            cache = ConnectionCache(reuse_time_limit=get("smtp_connection_reuse_time_limit"),
                                    reuse_count_limit=get("smtp_connection_reuse_count_limit"),
                                    idle_time_limit=get("smtp_connection_cache_time_limit"))
            self.caches.append(cache)
        return SmtpDeliveryAgent(
            dns=self.dns, helo_name=get("lmtp_lhlo_name" if lmtp else "smtp_helo_name"),
            timeouts=timeouts, lmtp=lmtp, tls_security_level=get(f"{prefix}_tls_security_level"),
            cache=cache, mx_address_limit=get("smtp_mx_address_limit") or 1000,
            myhostname=get("myhostname"), own_addresses=self.own_addresses, log=self.log,
            plaintext_fallback_age=get("minimal_backoff_time"))

    @staticmethod
    def _transport_limits(config, agents) -> dict:
        limits = {}
        for transport in agents:
            for setting in _TRANSPORT_SETTINGS:
                name = f"{transport}_{setting}"
                if config.is_set(name):
                    value = config.expanded(name)
                    try:
                        limits[name] = int(value) if setting in _INTEGER_SETTINGS else value
                    except ValueError:
                        raise ConfigError(config.main_cf_path, None,
                                          f"bad numerical value for {name}: {value!r}") from None
        return limits

    def wake(self) -> None:
        self.scheduler.wake()

    def flush(self, site: str | None = None) -> None:
        self.scheduler.flush(site)

    async def run(self) -> None:
        await self.scheduler.run()

    async def stop(self, timeout: float) -> None:
        await self.scheduler.stop(timeout)
        for cache in self.caches:
            await cache.close_all()
