"""The parameter table: every main.cf parameter pyfastmta knows, declared once.

Each entry has Postfix's name where Postfix has one, its type, its default written the way
`postconf -d` shows it (or computed from the host, like Postfix's myhostname), and one line of
help. The reader, validation and `pyfastmta postconf -d` all come from this table.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pyfastmta import __version__
from pyfastmta.config import interfaces
from pyfastmta.config.valuetypes import (
    parse_bool,
    parse_choice,
    parse_integer,
    parse_time,
    split_list,
)

STRING = "string"
BOOL = "bool"
INT = "int"
SIZE = "size"
TIME = "time"
LIST = "list"
CHOICE = "choice"
# Text kept as written: its $names are filled in when it is used (default_rbl_reply's $rbl_code).
RAW = "raw"
# A list that may later name lookup tables (type:name); kept as a plain list for now.
TABLE_OR_LIST = "table-or-list"

DEFAULT_CONFIG_DIRECTORY = "/etc/pyfastmta"


class DefaultContext(Protocol):
    """What a computed default may consult."""

    config_dir: str | None

    def is_set(self, name: str) -> bool:
        """True when main.cf (or a master.cf -o override) sets name."""

    def expanded(self, name: str) -> str:
        """The expanded value of another parameter."""


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    kind: str
    default: str | Callable[[DefaultContext], str]
    help: str
    unit: str = "s"
    minimum: int | None = None
    choices: dict[str, str] = field(default_factory=dict)

    def default_text(self, context: DefaultContext) -> str:
        return self.default(context) if callable(self.default) else self.default

    def convert(self, text: str) -> object:
        """The typed value of expanded text; raises BadValue."""
        if self.kind in (STRING, RAW):
            return text.strip()
        if self.kind in (INT, SIZE):
            return parse_integer(self.name, text, self.minimum)
        if self.kind == BOOL:
            return parse_bool(self.name, text)
        if self.kind == TIME:
            return parse_time(self.name, text, self.unit, self.minimum)
        if self.kind == CHOICE:
            return parse_choice(self.name, text, self.choices)
        items = split_list(text)
        if self.choices:
            for item in items:
                parse_choice(self.name, item, self.choices)
        return items


def _hostname(context: DefaultContext) -> str:
    # Postfix's rule: the kernel's host name, completed with $mydomain (or "localdomain")
    # when it has no dot; no DNS lookup, so start-up never waits on a resolver.
    name = socket.gethostname()
    if "." in name:
        return name
    domain = context.expanded("mydomain") if context.is_set("mydomain") else "localdomain"
    return f"{name}.{domain}"


def _domain(context: DefaultContext) -> str:
    hostname = context.expanded("myhostname")
    _, dot, rest = hostname.partition(".")
    if not dot or "." not in rest:
        return "localdomain"
    return rest


def _protocols(context: DefaultContext) -> tuple[bool, bool]:
    words = {word.lower() for word in split_list(context.expanded("inet_protocols"))}
    everything = "all" in words
    return everything or "ipv4" in words, (everything or "ipv6" in words) and interfaces.ipv6_supported()


def _networks(context: DefaultContext) -> str:
    style = context.expanded("mynetworks_style").strip().lower()
    ipv4, ipv6 = _protocols(context)
    return " ".join(interfaces.networks_for_style(style, ipv4, ipv6))


def _config_directory(context: DefaultContext) -> str:
    return context.config_dir or DEFAULT_CONFIG_DIRECTORY


def _cpu_count(context: DefaultContext) -> str:
    return str(os.cpu_count() or 1)


def _version(context: DefaultContext) -> str:
    return __version__


_TABLE = [
    # Where things are.
    Parameter("config_directory", STRING, _config_directory,
              "Directory holding main.cf and master.cf."),
    Parameter("queue_directory", STRING, "/var/spool/pyfastmta",
              "Directory of the mail queue; a relative path is taken from the current directory at start."),
    Parameter("maillog_file", STRING, "",
              "File to write log lines to instead of syslog; empty means syslog."),
    Parameter("mail_owner", STRING, "postfix",
              "Unprivileged account that owns the queue and runs the workers."),
    # Identity.
    Parameter("mail_name", STRING, "pyfastmta",
              "Name of the mail system, shown in the SMTP greeting and in Received: headers."),
    Parameter("mail_version", STRING, _version,
              "Version of pyfastmta (read only: the value comes from the software)."),
    Parameter("syslog_name", STRING, "pyfastmta",
              "Prefix of the program name in log lines."),
    Parameter("myhostname", STRING, _hostname,
              "Fully qualified name of this host; default: the kernel's host name, with $mydomain added "
              "when it has no dot."),
    Parameter("mydomain", STRING, _domain,
              "Internet domain of this host; default: $myhostname without its first label."),
    Parameter("myorigin", STRING, "$myhostname",
              "Domain that locally posted mail appears to come from."),
    Parameter("compatibility_level", STRING, "3.6",
              "Postfix compatibility level whose default behaviour pyfastmta follows."),
    # Who and what is local or trusted.
    Parameter("mydestination", TABLE_OR_LIST, "$myhostname, localhost.$mydomain, localhost",
              "Domains this machine delivers locally."),
    Parameter("relay_domains", TABLE_OR_LIST, "",
              "Domains (besides $mydestination) this machine accepts mail for from any client."),
    Parameter("mynetworks_style", CHOICE, "host",
              "How the mynetworks default is computed: host, subnet or class.",
              choices={"host": "host", "subnet": "subnet", "class": "class"}),
    Parameter("mynetworks", TABLE_OR_LIST, _networks,
              "Trusted client networks; default: computed from the interfaces per $mynetworks_style."),
    Parameter("inet_interfaces", LIST, "all",
              "Addresses to listen on when a master.cf inet service names no host: all, loopback-only "
              "or a list of addresses."),
    Parameter("proxy_interfaces", LIST, "",
              "Addresses of a proxy or NAT in front of this host that forward mail to it: mail "
              "for them is local, and an MX host there is this host."),
    Parameter("inet_protocols", LIST, "all",
              "IP versions to use: all, ipv4, ipv6, or ipv4, ipv6.",
              choices={"all": "all", "ipv4": "ipv4", "ipv6": "ipv6"}),
    Parameter("local_header_rewrite_clients", LIST, "permit_inet_interfaces",
              "Clients whose message headers get incomplete addresses completed."),
    Parameter("empty_address_recipient", STRING, "MAILER-DAEMON",
              "Recipient of mail that is addressed to the null sender."),
    # Limits.
    Parameter("message_size_limit", SIZE, "10240000",
              "Largest message accepted, in bytes, envelope included; 0 means no limit.", minimum=0),
    Parameter("queue_minfree", SIZE, "0",
              "Free bytes the queue file system needs for smtpd to accept MAIL FROM (it also needs "
              "1.5 times message_size_limit).", minimum=0),
    Parameter("header_size_limit", INT, "102400",
              "Most bytes of one message header kept before the rest of the header is dropped.",
              minimum=1),
    Parameter("line_length_limit", INT, "2048",
              "Longest line kept in one piece; longer lines are split into pieces of this length.",
              minimum=1),
    Parameter("hopcount_limit", INT, "50",
              "Most Received: headers a message may carry before it is bounced as looping.",
              minimum=1),
    Parameter("smtpd_recipient_limit", INT, "1000",
              "Most recipients accepted in one SMTP transaction.", minimum=1),
    Parameter("smtpd_recipient_overshoot_limit", INT, "1000",
              "Recipients beyond smtpd_recipient_limit that count as errors towards the error limits.",
              minimum=0),
    Parameter("smtpd_junk_command_limit", INT, "${stress?{1}:{100}}",
              "NOOP, VRFY and RSET commands a client may send before each one counts as an error."),
    Parameter("smtpd_hard_error_limit", INT, "${stress?{1}:{20}}",
              "Errors after which the SMTP server disconnects.", minimum=1),
    Parameter("smtpd_soft_error_limit", INT, "10",
              "Errors after which the SMTP server delays each error reply by $smtpd_error_sleep_time.",
              minimum=0),
    Parameter("smtpd_error_sleep_time", TIME, "1s",
              "Delay before an error reply once the soft error limit is passed.", minimum=0),
    Parameter("smtpd_timeout", TIME, "${stress?{10}:{300}}s",
              "Time the SMTP server waits for a client's request or data before it disconnects.",
              minimum=1),
    Parameter("max_use", INT, "100",
              "Clients a process serves before it is replaced.", minimum=1),
    Parameter("max_idle", TIME, "100s",
              "Time an idle process waits for a client before it exits.", minimum=1),
    Parameter("stress", STRING, "",
              "\"yes\" in the settings of sessions a worker starts while it is overloaded (set by "
              "pyfastmta, not in main.cf): ${stress?...} defaults then pick their short values."),
    Parameter("default_process_limit", INT, "100",
              "Process limit of a master.cf service whose maxproc column is \"-\".", minimum=0),
    # SMTP server behaviour.
    Parameter("smtpd_banner", STRING, "$myhostname ESMTP $mail_name",
              "Text after the 220 code in the SMTP greeting."),
    Parameter("smtpd_peername_lookup", BOOL, "yes",
              "Look up the client's host name in DNS."),
    Parameter("smtpd_client_port_logging", BOOL, "no",
              "Log the client's port number with its address."),
    Parameter("smtpd_forbid_bare_newline", CHOICE, "normalize",
              "Lines ending in a bare LF: normalize (accept as CRLF; only CRLF.CRLF ends DATA), "
              "reject, or no.",
              choices={"normalize": "normalize", "yes": "normalize", "reject": "reject", "no": "no"}),
    Parameter("smtputf8_enable", BOOL, "yes",
              "Offer SMTPUTF8 and accept UTF-8 addresses and headers."),
    Parameter("strict_rfc821_envelopes", BOOL, "no",
              "Require <> around MAIL FROM and RCPT TO addresses and refuse RFC 822 syntax in them."),
    # SMTP server restriction lists (pyfastmta/smtpd/restrictions.py).
    Parameter("smtpd_client_restrictions", STRING, "",
              "Restrictions on the client's name and address."),
    Parameter("smtpd_helo_restrictions", STRING, "",
              "Restrictions on the HELO/EHLO name."),
    Parameter("smtpd_sender_restrictions", STRING, "",
              "Restrictions on the MAIL FROM address."),
    Parameter("smtpd_relay_restrictions", STRING,
              "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
              "Restrictions on RCPT TO that decide relaying (evaluated with smtpd_recipient_restrictions)."),
    Parameter("smtpd_recipient_restrictions", STRING, "",
              "Restrictions on the RCPT TO address."),
    Parameter("smtpd_data_restrictions", STRING, "",
              "Restrictions applied at DATA."),
    Parameter("smtpd_end_of_data_restrictions", STRING, "",
              "Restrictions applied after the end of the message."),
    Parameter("smtpd_restriction_classes", STRING, "",
              "Names of restriction lists defined in main.cf, usable in lists and as table results."),
    Parameter("smtpd_delay_reject", BOOL, "yes",
              "Evaluate client, HELO and sender restrictions at RCPT TO instead of when they are known."),
    Parameter("smtpd_helo_required", BOOL, "no",
              "Require HELO or EHLO before MAIL FROM."),
    Parameter("smtpd_relay_before_recipient_restrictions", BOOL, "yes",
              "Evaluate smtpd_relay_restrictions before smtpd_recipient_restrictions."),
    Parameter("smtpd_null_access_lookup_key", STRING, "<>",
              "Key under which access tables are asked about the null sender."),
    Parameter("smtpd_client_connection_count_limit", INT, "50",
              "Connections one client may have open to a service at once, machine-wide (0: no limit)."),
    Parameter("smtpd_client_connection_rate_limit", INT, "0",
              "Connections one client may make to a service per anvil_rate_time_unit (0: no limit)."),
    Parameter("smtpd_client_message_rate_limit", INT, "0",
              "MAIL FROM requests one client may make per anvil_rate_time_unit (0: no limit)."),
    Parameter("smtpd_client_recipient_rate_limit", INT, "0",
              "RCPT TO requests one client may make per anvil_rate_time_unit (0: no limit)."),
    Parameter("smtpd_client_new_tls_session_rate_limit", INT, "0",
              "New (not resumed) TLS sessions one client may start per anvil_rate_time_unit (0: no limit)."),
    Parameter("smtpd_client_auth_rate_limit", INT, "0",
              "AUTH commands one client may send to a service per anvil_rate_time_unit (0: no limit)."),
    Parameter("smtpd_client_event_limit_exceptions", TABLE_OR_LIST,
              "${smtpd_client_connection_limit_exceptions:$mynetworks}",
              "Clients whose connections and events are not counted against the client limits."),
    Parameter("anvil_rate_time_unit", TIME, "60s",
              "The time unit of the client rate limits."),
    Parameter("smtpd_policy_service_timeout", TIME, "100s",
              "Time limit to connect to, write to or read from a policy server."),
    Parameter("smtpd_policy_service_max_idle", TIME, "300s",
              "Close a policy server connection unused for this long."),
    Parameter("smtpd_policy_service_max_ttl", TIME, "1000s",
              "Close a policy server connection this long after it was opened."),
    Parameter("smtpd_policy_service_try_limit", INT, "2",
              "Attempts at a policy request before the default action stands in."),
    Parameter("smtpd_policy_service_retry_delay", TIME, "1s",
              "Wait between attempts at a policy request."),
    Parameter("smtpd_policy_service_default_action", STRING, "451 4.3.5 Server configuration problem",
              "Action when a policy server cannot be asked."),
    Parameter("smtpd_policy_service_request_limit", INT, "0",
              "Requests per policy server connection (0: no limit)."),
    Parameter("smtpd_policy_service_policy_context", STRING, "",
              "policy_context attribute sent with each policy request."),
    Parameter("allow_untrusted_routing", BOOL, "no",
              "Let an access table's OK pass a recipient with routing characters (@ ! %) in its local part."),
    Parameter("resolve_dequoted_address", BOOL, "yes",
              "Look for routing operators inside a quoted local part when resolving an address."),
    Parameter("reject_code", INT, "554", "Reply code of the reject restriction."),
    Parameter("defer_code", INT, "450", "Reply code of the defer restriction."),
    Parameter("access_map_reject_code", INT, "554", "Reply code of an access table's REJECT."),
    Parameter("access_map_defer_code", INT, "450",
              "Reply code of an access table's DEFER, DEFER_IF_PERMIT and DEFER_IF_REJECT."),
    Parameter("relay_domains_reject_code", INT, "554",
              "Reply code of reject_unauth_destination (less 100 for defer_unauth_destination)."),
    Parameter("non_fqdn_reject_code", INT, "504",
              "Reply code of reject_non_fqdn_helo_hostname, _sender and _recipient."),
    Parameter("invalid_hostname_reject_code", INT, "501",
              "Reply code of reject_invalid_helo_hostname."),
    Parameter("unknown_address_reject_code", INT, "450",
              "Reply code of reject_unknown_sender_domain and reject_unknown_recipient_domain."),
    Parameter("unknown_client_reject_code", INT, "450",
              "Reply code of reject_unknown_client_hostname and _reverse_client_hostname."),
    Parameter("unknown_hostname_reject_code", INT, "450",
              "Reply code of reject_unknown_helo_hostname."),
    Parameter("reject_tempfail_action", CHOICE, "defer_if_permit",
              "What a DNS lookup that fails for now makes of a reject_unknown_* restriction.",
              choices={"defer_if_permit": "defer_if_permit", "defer": "defer"}),
    Parameter("unknown_address_tempfail_action", CHOICE, "$reject_tempfail_action",
              "reject_tempfail_action for reject_unknown_sender_domain and _recipient_domain.",
              choices={"defer_if_permit": "defer_if_permit", "defer": "defer"}),
    Parameter("unknown_helo_hostname_tempfail_action", CHOICE, "$reject_tempfail_action",
              "reject_tempfail_action for reject_unknown_helo_hostname.",
              choices={"defer_if_permit": "defer_if_permit", "defer": "defer"}),
    # DNS block and allow lists.
    Parameter("maps_rbl_reject_code", INT, "554", "Reply code ($rbl_code) of a DNS block list's refusal."),
    Parameter("default_rbl_reply", RAW,
              "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using "
              "$rbl_domain${rbl_reason?; $rbl_reason}",
              "Reply template of a DNS block list's refusal; rbl_reply_maps may give one per list."),
    Parameter("rbl_reply_maps", LIST, "",
              "Tables of reply templates by DNS list domain (domain=filter first, then domain)."),
    Parameter("relay_clientcerts", LIST, "",
              "Tables of client certificate fingerprints that permit_tls_clientcerts lets relay."),
    # Message cleanup.
    Parameter("always_add_missing_headers", BOOL, "no",
              "Add missing From:, To:, Date: and Message-ID: headers for mail from remote clients too."),
    Parameter("undisclosed_recipients_header", STRING, "",
              "Header to add when a message has no To:, Cc: or Bcc:; empty adds none."),
    # Address rewriting (trivial-rewrite's local context, and cleanup's tables).
    Parameter("append_at_myorigin", BOOL, "yes",
              "Append @$myorigin to an address without a domain."),
    Parameter("append_dot_mydomain", BOOL, "no",
              "Append .$mydomain to a domain without a dot."),
    Parameter("swap_bangpath", BOOL, "yes",
              "Rewrite site!user as user@site."),
    Parameter("allow_percent_hack", BOOL, "yes",
              "Rewrite user%domain as user@domain."),
    Parameter("canonical_maps", LIST, "",
              "Lookup tables that rewrite envelope and header addresses (canonical(5))."),
    Parameter("sender_canonical_maps", LIST, "",
              "Lookup tables that rewrite sender addresses only."),
    Parameter("recipient_canonical_maps", LIST, "",
              "Lookup tables that rewrite recipient addresses only."),
    Parameter("canonical_classes", LIST, "envelope_sender, envelope_recipient, header_sender, header_recipient",
              "Addresses that canonical_maps rewrite."),
    Parameter("sender_canonical_classes", LIST, "envelope_sender, header_sender",
              "Addresses that sender_canonical_maps rewrite."),
    Parameter("recipient_canonical_classes", LIST, "envelope_recipient, header_recipient",
              "Addresses that recipient_canonical_maps rewrite."),
    Parameter("masquerade_domains", LIST, "",
              "Domains whose subdomains are replaced by the domain itself (a !domain keeps its subdomains)."),
    Parameter("masquerade_exceptions", LIST, "",
              "User names that are never masqueraded."),
    Parameter("masquerade_classes", LIST, "envelope_sender, header_sender, header_recipient",
              "Addresses that are masqueraded."),
    Parameter("virtual_maps", LIST, "",
              "Older name of virtual_alias_maps."),
    Parameter("virtual_alias_maps", LIST, "$virtual_maps",
              "Lookup tables that turn a recipient into one or more others (virtual(5))."),
    Parameter("virtual_alias_domains", LIST, "$virtual_alias_maps",
              "Domains whose every address is an alias."),
    Parameter("virtual_alias_recursion_limit", INT, "1000",
              "Most nested expansions of one virtual alias.", minimum=1),
    Parameter("virtual_alias_expansion_limit", INT, "1000",
              "Most recipients one virtual alias expands to.", minimum=1),
    Parameter("propagate_unmatched_extensions", LIST, "canonical, virtual",
              "Tables whose results get the address extension that their lookup cut off."),
    Parameter("remote_header_rewrite_domain", STRING, "",
              "Domain that completes header addresses of mail from remote clients; empty: their "
              "headers are not rewritten."),
    Parameter("message_drop_headers", LIST, "bcc, content-length, resent-bcc, return-path",
              "Headers that cleanup removes."),
    Parameter("alias_maps", LIST, "hash:/etc/aliases, nis:mail.aliases",
              "Alias tables of local delivery (aliases(5))."),
    Parameter("alias_database", LIST, "hash:/etc/aliases",
              "Alias tables that newaliases builds."),
    # Content filter: cleanup marks each message, the queue manager routes it (FILTER_README).
    Parameter("content_filter", STRING, "",
              "transport:nexthop through which every message is delivered instead of its normal "
              "route; empty: none. An access table's FILTER action overrides it."),
    # Delivery: next hops (trivial-rewrite).
    Parameter("relayhost", STRING, "",
              "Next hop for mail of the default address class; empty: the recipient domain's MX hosts."),
    Parameter("default_transport", STRING, "smtp",
              "Transport (and optional :nexthop) for mail of the default address class."),
    Parameter("relay_transport", STRING, "relay",
              "Transport (and optional :nexthop) for mail to $relay_domains."),
    Parameter("local_transport", STRING, "local:$myhostname",
              "Transport for mail to $mydestination."),
    Parameter("sender_dependent_relayhost_maps", LIST, "",
              "Lookup tables that choose the relayhost by envelope sender (address, then @domain)."),
    Parameter("empty_address_relayhost_maps_lookup_key", STRING, "<>",
              "Key under which sender_dependent_relayhost_maps are asked for the null sender."),
    Parameter("relocated_maps", LIST, "",
              "Lookup tables of users or domains that have moved: mail to them bounces with the new "
              "address (relocated(5))."),
    Parameter("transport_maps", LIST, "",
              "Lookup tables (type:name, any table type) that map recipients or domains to transport:nexthop."),
    Parameter("parent_domain_matches_subdomains", LIST,
              "debug_peer_list,fast_flush_domains,mynetworks,permit_mx_backup_networks,"
              "qmqpd_authorized_clients,relay_domains,smtpd_access_maps",
              "Features whose domain patterns also match subdomains."),
    Parameter("recipient_delimiter", STRING, "",
              "Characters that separate a user name from an address extension (user+ext)."),
    # Delivery: the queue manager.
    Parameter("qmgr_message_active_limit", INT, "20000",
              "Most messages in the active queue.", minimum=1),
    Parameter("qmgr_message_recipient_limit", INT, "20000",
              "Most recipients the queue manager holds in memory.", minimum=1),
    Parameter("default_destination_recipient_limit", INT, "50",
              "Most recipients per delivery to one destination.", minimum=1),
    Parameter("initial_destination_concurrency", INT, "5",
              "Parallel deliveries to a destination to start with.", minimum=1),
    Parameter("default_destination_concurrency_limit", INT, "20",
              "Most parallel deliveries to one destination.", minimum=1),
    Parameter("default_destination_concurrency_positive_feedback", STRING, "1",
              "Growth of a destination's window per successful delivery (number or 1/concurrency)."),
    Parameter("default_destination_concurrency_negative_feedback", STRING, "1",
              "Shrinking of a destination's window per failed connection (number or 1/concurrency)."),
    Parameter("default_destination_concurrency_failed_cohort_limit", INT, "1",
              "Failed cohorts of deliveries after which a destination counts as dead.", minimum=1),
    Parameter("minimal_backoff_time", TIME, "300s",
              "Shortest time before a deferred message is tried again; also how long a dead "
              "destination is left alone.", minimum=1),
    Parameter("maximal_backoff_time", TIME, "4000s",
              "Longest time before a deferred message is tried again.", minimum=1),
    Parameter("queue_run_delay", TIME, "300s",
              "Time between scans of the deferred queue.", minimum=1),
    Parameter("maximal_queue_lifetime", TIME, "5d",
              "Age at which undeliverable mail is returned to its sender.", unit="d", minimum=0),
    Parameter("bounce_queue_lifetime", TIME, "5d",
              "Age at which undeliverable mail from the null sender is given up.", unit="d", minimum=0),
    Parameter("delay_warning_time", TIME, "0h",
              "Age at which the sender is told once that the mail is delayed; 0: never.", unit="h",
              minimum=0),
    # Delivery: notices (bounce).
    Parameter("bounce_size_limit", SIZE, "50000",
              "Largest original returned whole in a failure notice; larger ones return their headers.",
              minimum=0),
    Parameter("double_bounce_sender", STRING, "double-bounce",
              "Sender of notices to the postmaster; mail to it is discarded to end bounce loops."),
    Parameter("2bounce_notice_recipient", STRING, "postmaster",
              "Recipient of failure notices about mail that cannot go back to its sender."),
    # Delivery: the SMTP and LMTP clients.
    Parameter("smtp_helo_name", STRING, "$myhostname", "Host name the SMTP client sends in EHLO/HELO."),
    Parameter("lmtp_lhlo_name", STRING, "$myhostname", "Host name the LMTP client sends in LHLO."),
    Parameter("smtp_tls_security_level", CHOICE, "",
              "SMTP client TLS: empty or none, may (opportunistic), encrypt (required).",
              choices={"": "none", "none": "none", "may": "may", "encrypt": "encrypt"}),
    Parameter("lmtp_tls_security_level", CHOICE, "",
              "LMTP client TLS: empty or none, may, encrypt.",
              choices={"": "none", "none": "none", "may": "may", "encrypt": "encrypt"}),
    Parameter("smtp_connection_cache_on_demand", BOOL, "yes",
              "Keep SMTP connections open for reuse by later deliveries to the same nexthop."),
    Parameter("smtp_connection_reuse_time_limit", TIME, "300s",
              "Age after which a cached SMTP connection is no longer reused.", minimum=1),
    Parameter("smtp_connection_reuse_count_limit", INT, "0",
              "Deliveries after which a cached SMTP connection is no longer reused; 0: no limit.",
              minimum=0),
    Parameter("smtp_connection_cache_time_limit", TIME, "2s",
              "Time an idle cached SMTP connection is kept.", minimum=1),
    Parameter("smtp_mx_address_limit", INT, "5",
              "Most MX host addresses the SMTP client tries for one delivery; 0: no limit.", minimum=0),
    Parameter("smtp_address_preference", CHOICE, "any",
              "Address family tried first among MX hosts of equal preference: any, ipv4, ipv6.",
              choices={"any": "any", "ipv4": "ipv4", "ipv6": "ipv6"}),
    Parameter("smtp_connect_timeout", TIME, "30s", "SMTP client time limit for TCP connection set-up.", minimum=0),
    Parameter("smtp_helo_timeout", TIME, "300s", "SMTP client time limit for the greeting and the EHLO/HELO reply.", minimum=0),
    Parameter("smtp_starttls_timeout", TIME, "300s", "SMTP client time limit for STARTTLS and the TLS handshake.", minimum=0),
    Parameter("smtp_mail_timeout", TIME, "300s", "SMTP client time limit for the MAIL FROM reply.", minimum=0),
    Parameter("smtp_rcpt_timeout", TIME, "300s", "SMTP client time limit for the RCPT TO reply.", minimum=0),
    Parameter("smtp_data_init_timeout", TIME, "120s", "SMTP client time limit for the DATA reply.", minimum=0),
    Parameter("smtp_data_xfer_timeout", TIME, "180s", "SMTP client time limit for sending content without progress.", minimum=0),
    Parameter("smtp_data_done_timeout", TIME, "600s", "SMTP client time limit for the reply after the final dot.", minimum=0),
    Parameter("smtp_rset_timeout", TIME, "20s", "SMTP client time limit for the RSET reply.", minimum=0),
    Parameter("smtp_quit_timeout", TIME, "300s", "SMTP client time limit for the QUIT reply.", minimum=0),
    Parameter("lmtp_connect_timeout", TIME, "0s", "LMTP client time limit for TCP connection set-up.", minimum=0),
    Parameter("lmtp_lhlo_timeout", TIME, "300s", "LMTP client time limit for the greeting and the LHLO reply.", minimum=0),
    Parameter("lmtp_starttls_timeout", TIME, "300s", "LMTP client time limit for STARTTLS and the TLS handshake.", minimum=0),
    Parameter("lmtp_mail_timeout", TIME, "300s", "LMTP client time limit for the MAIL FROM reply.", minimum=0),
    Parameter("lmtp_rcpt_timeout", TIME, "300s", "LMTP client time limit for the RCPT TO reply.", minimum=0),
    Parameter("lmtp_data_init_timeout", TIME, "120s", "LMTP client time limit for the DATA reply.", minimum=0),
    Parameter("lmtp_data_xfer_timeout", TIME, "180s", "LMTP client time limit for sending content without progress.", minimum=0),
    Parameter("lmtp_data_done_timeout", TIME, "600s", "LMTP client time limit for the reply after the final dot.", minimum=0),
    Parameter("lmtp_rset_timeout", TIME, "20s", "LMTP client time limit for the RSET reply.", minimum=0),
    Parameter("lmtp_quit_timeout", TIME, "300s", "LMTP client time limit for the QUIT reply.", minimum=0),
    Parameter("dns_nameservers", LIST, "",
              "Name servers (address or address:port) the delivery path asks; empty: those of "
              "/etc/resolv.conf."),
    # SMTP server TLS (pyfastmta/smtpd/tls.py).
    Parameter("smtpd_tls_security_level", CHOICE, "",
              "SMTP server TLS: empty (from smtpd_use_tls/smtpd_enforce_tls), none, may (offer "
              "STARTTLS), encrypt (require it before MAIL).",
              choices={"": "", "none": "none", "may": "may", "encrypt": "encrypt"}),
    Parameter("smtpd_use_tls", BOOL, "no",
              "Older form of smtpd_tls_security_level = may; used when that is empty."),
    Parameter("smtpd_enforce_tls", BOOL, "no",
              "Older form of smtpd_tls_security_level = encrypt; used when that is empty."),
    Parameter("smtpd_tls_cert_file", STRING, "",
              "PEM file with the server certificate (and its chain)."),
    Parameter("smtpd_tls_key_file", STRING, "$smtpd_tls_cert_file",
              "PEM file with the private key of smtpd_tls_cert_file."),
    Parameter("smtpd_tls_chain_files", LIST, "",
              "PEM files, each with a private key followed by its certificate chain (one per key type)."),
    Parameter("smtpd_tls_CAfile", STRING, "",
              "PEM file of CA certificates that verify client certificates."),
    Parameter("smtpd_tls_protocols", STRING, ">=TLSv1",
              "TLS protocols offered at level may, e.g. \">=TLSv1.2\" or \"!SSLv2, !SSLv3\"."),
    Parameter("smtpd_tls_mandatory_protocols", STRING, ">=TLSv1",
              "TLS protocols accepted at level encrypt."),
    Parameter("smtpd_tls_ciphers", CHOICE, "medium",
              "Cipher grade at level may: high, medium, low, export, null.",
              choices={g: g for g in ("high", "medium", "low", "export", "null")}),
    Parameter("smtpd_tls_mandatory_ciphers", CHOICE, "medium",
              "Cipher grade at level encrypt.",
              choices={g: g for g in ("high", "medium", "low", "export", "null")}),
    Parameter("smtpd_tls_exclude_ciphers", LIST, "",
              "Ciphers or cipher types removed from the grade's list (e.g. aNULL, RC4, MD5)."),
    Parameter("smtpd_tls_mandatory_exclude_ciphers", LIST, "",
              "Ciphers removed additionally at level encrypt."),
    Parameter("tls_high_cipherlist", STRING, "aNULL:-aNULL:HIGH:@STRENGTH",
              "OpenSSL cipher list of the high grade."),
    Parameter("tls_medium_cipherlist", STRING, "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
              "OpenSSL cipher list of the medium grade."),
    Parameter("tls_low_cipherlist", STRING, "aNULL:-aNULL:HIGH:MEDIUM:LOW:+RC4:@STRENGTH",
              "OpenSSL cipher list of the low grade."),
    Parameter("tls_export_cipherlist", STRING, "aNULL:-aNULL:HIGH:MEDIUM:LOW:EXPORT:+RC4:@STRENGTH",
              "OpenSSL cipher list of the export grade."),
    Parameter("tls_null_cipherlist", STRING, "eNULL:!aNULL",
              "OpenSSL cipher list of the null grade (no encryption)."),
    Parameter("smtpd_tls_auth_only", BOOL, "no",
              "Offer and accept SASL AUTH only over TLS."),
    # SMTP AUTH (pyfastmta/smtpd/auth.py).
    Parameter("smtpd_sasl_auth_enable", BOOL, "no",
              "Offer and accept SMTP AUTH (RFC 4954)."),
    Parameter("smtpd_sasl_type", STRING, "cyrus",
              "SASL backend: dovecot (Dovecot's auth socket) or passwd-file; cyrus is not supported."),
    Parameter("smtpd_sasl_path", STRING, "smtpd",
              "Dovecot's auth socket, or the passwd-file; a relative name is under queue_directory."),
    Parameter("smtpd_sasl_service", STRING, "smtp",
              "The service name passed to the SASL backend."),
    Parameter("smtpd_sasl_security_options", LIST, "noanonymous",
              "Mechanisms to hide without TLS: noplaintext, noactive, nodictionary, noanonymous, "
              "mutual_auth, forward_secrecy."),
    Parameter("smtpd_sasl_tls_security_options", LIST, "$smtpd_sasl_security_options",
              "As smtpd_sasl_security_options, for sessions under TLS."),
    Parameter("broken_sasl_auth_clients", BOOL, "no",
              "Also advertise AUTH=mechanisms for clients that know only that old form."),
    Parameter("smtpd_sasl_authenticated_header", BOOL, "no",
              "Name the authenticated user in the Received: header."),
    Parameter("smtpd_sasl_local_domain", STRING, "",
              "Realm for SASL user names (passed to the backend as the realm)."),
    Parameter("smtpd_sender_login_maps", LIST, "",
              "Tables from a MAIL FROM address to the SASL login names that own it."),
    Parameter("smtpd_sasl_exceptions_networks", LIST, "",
              "Clients to which AUTH is not advertised (they may still use it)."),
    Parameter("smtpd_sasl_response_limit", INT, "12288",
              "Longest line a client may send in answer to an AUTH challenge.", minimum=12288),
    Parameter("smtpd_sasl_mechanism_filter", LIST, "!external, static:rest",
              "Which of the backend's mechanisms EHLO announces: names, /file/name, type:table, "
              "!pattern; empty announces them all."),
    Parameter("smtpd_tls_wrappermode", BOOL, "no",
              "Implicit TLS: the handshake comes before the greeting (for a master.cf service on 465)."),
    Parameter("smtpd_tls_received_header", BOOL, "no",
              "Put the TLS protocol and cipher in the Received: header."),
    Parameter("smtpd_tls_loglevel", INT, "0",
              "TLS logging: 0 none, 1 one line per established TLS session.", minimum=0),
    Parameter("smtpd_tls_ask_ccert", BOOL, "no",
              "Ask the client for a certificate (verified against smtpd_tls_CAfile)."),
    Parameter("smtpd_tls_fingerprint_digest", CHOICE, "sha256",
              "Digest of client certificate fingerprints: md5, sha1, sha256, sha512.",
              choices={d: d for d in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")}),
    Parameter("smtpd_starttls_timeout", TIME, "${stress?{10}:{300}}s",
              "Time limit for the TLS handshake after STARTTLS or on a wrappermode connection.",
              minimum=1),
    # pyfastmta's own.
    Parameter("worker_count", INT, _cpu_count,
              "Worker processes, each with its own event loop and queue partition; default: CPU count.",
              minimum=1),
    Parameter("queue_commit_delay", TIME, "0",
              "Time the group commit waits to gather records before fsync; 0 starts an fsync as soon "
              "as one record waits and none is in flight.", minimum=0),
    Parameter("queue_commit_batch", INT, "256",
              "Most records that one fsync of the queue covers.", minimum=1),
    Parameter("queue_segment_size", SIZE, "67108864",
              "Size in bytes at which a queue segment file is closed and a new one started.",
              minimum=4096),
    Parameter("worker_stop_timeout", TIME, "60s",
              "Time stop and reload wait for SMTP sessions to finish their transaction.", minimum=0),
]

PARAMETERS: dict[str, Parameter] = {parameter.name: parameter for parameter in _TABLE}
