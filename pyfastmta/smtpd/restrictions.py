"""smtpd's restriction lists (smtpd_client_restrictions ... smtpd_end_of_data_restrictions) with
Postfix's semantics.

The lists are compiled once, when the settings are built: every name is checked, every table is
opened, and a mistake is a ConfigError naming main.cf and the parameter. A check reads the facts
of one request (client, HELO name, sender, recipient, pipelining) and the session's
carried-over flags (CheckState), and returns the reply to send or None, with the log lines
("reject:", "reject_warning:", "warn:" ...) for the session to write; it writes nothing itself.

A check is a generator (Restrictions.evaluate drives it): a restriction that needs an answer
the worker does not have at hand (DNS, a policy server; lookups.py) raises Pending, and the list
walker yields those questions. The session asks them and resumes the check where it stopped,
so nothing before that restriction runs twice. A restriction asks before it acts: it raises
Pending before it logs or changes anything, so that it can simply be run again.

Results of one restriction, as in Postfix: DUNNO goes on with the next restriction, OK ends
the list (the stage passes; the next stage still runs), REJECT ends the whole check.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyfastmta.config import ConfigError
from pyfastmta.config.expansion import expand
from pyfastmta.config.errors import ExpansionError
from pyfastmta.dns import DnsError, Negative
from pyfastmta._ext.address import unquote_local
from pyfastmta.maps.addresses import find_unquoted
from pyfastmta.maps.matchlist import DomainList
from pyfastmta.maps.registry import TableOptions, open_table, split_table_list
from pyfastmta.maps.table import Maps, TableError, TableTemporaryError
from pyfastmta.resolve.resolver import valid_hostname
from pyfastmta.smtpd import access, lookups
from pyfastmta.smtpd.access import CLIENT, DATA, END_OF_DATA, HELO, RECIPIENT, SENDER
from pyfastmta.smtpd.lookups import A, AAAA, MX, NS, Pending
from pyfastmta.smtpd.policy import PolicyClient, parse_policy_service

DUNNO, OK, REJECT = 0, 1, 2

STAGE_PARAMETERS = {
    "client": "smtpd_client_restrictions",
    "helo": "smtpd_helo_restrictions",
    "sender": "smtpd_sender_restrictions",
    "relay": "smtpd_relay_restrictions",
    "recipient": "smtpd_recipient_restrictions",
    "data": "smtpd_data_restrictions",
    "end_of_data": "smtpd_end_of_data_restrictions",
}

# Restrictions that take a table as the next word, and what they look up.
TABLE_RESTRICTIONS = {
    "check_client_access": CLIENT,
    "check_helo_access": HELO,
    "check_sender_access": SENDER,
    "check_recipient_access": RECIPIENT,
}
# The table restriction that a bare type:table in a list stands for, per stage.
_DEFAULT_ACCESS = {"client": "check_client_access", "helo": "check_helo_access",
                   "sender": "check_sender_access", "relay": "check_recipient_access",
                   "recipient": "check_recipient_access"}
SIMPLE_RESTRICTIONS = frozenset({
    "permit", "reject", "defer", "defer_if_permit", "defer_if_reject", "warn_if_reject",
    "permit_mynetworks", "permit_sasl_authenticated", "reject_unauth_destination",
    "defer_unauth_destination", "permit_auth_destination", "reject_unauth_pipelining",
    "reject_non_fqdn_helo_hostname", "reject_non_fqdn_hostname", "reject_invalid_helo_hostname",
    "reject_invalid_hostname", "reject_non_fqdn_sender", "reject_non_fqdn_recipient",
})
# SMTP AUTH: the sender must be owned (smtpd_sender_login_maps) by the login name.
SENDER_LOGIN_RESTRICTIONS = frozenset({
    "reject_sender_login_mismatch", "reject_authenticated_sender_login_mismatch",
    "reject_known_sender_login_mismatch", "reject_unauthenticated_sender_login_mismatch",
})
SIMPLE_RESTRICTIONS = SIMPLE_RESTRICTIONS | SENDER_LOGIN_RESTRICTIONS
# Restrictions that ask the DNS about the client, the HELO name or an address's domain.
UNKNOWN_RESTRICTIONS = frozenset({
    "reject_unknown_client_hostname", "reject_unknown_client", "reject_unknown_reverse_client_hostname",
    "reject_unknown_helo_hostname", "reject_unknown_hostname", "reject_unknown_sender_domain",
    "reject_unknown_recipient_domain",
})
# TLS client certificates: any trusted one, or one whose fingerprint relay_clientcerts lists.
CERTIFICATE_RESTRICTIONS = frozenset({"permit_tls_clientcerts", "permit_tls_all_clientcerts"})
SIMPLE_RESTRICTIONS = SIMPLE_RESTRICTIONS | UNKNOWN_RESTRICTIONS | CERTIFICATE_RESTRICTIONS
# DNS block and allow lists (the next word names the list, `domain` or `domain=filter`):
# restriction -> (what is looked up, True for an allow list).
DNSXL_RESTRICTIONS = {
    "reject_rbl_client": ("client", False), "reject_rbl": ("client", False),
    "permit_dnswl_client": ("client", True),
    "reject_rhsbl_client": ("client_name", False), "permit_rhswl_client": ("client_name", True),
    "reject_rhsbl_reverse_client": ("reverse_client_name", False),
    "reject_rhsbl_helo": ("helo", False), "reject_rhsbl_sender": ("sender", False),
    "reject_rhsbl_recipient": ("recipient", False),
}
# Access tables searched with the names and addresses of a domain's mail exchangers (MX),
# name servers (NS), or of the host itself (A): restriction -> (what, record type).
SERVER_ACCESS_RESTRICTIONS = {
    f"check_{what}_{kind}_access": (what, rdtype)
    for what in ("client", "reverse_client", "helo", "sender", "recipient")
    for kind, rdtype in (("mx", MX), ("ns", NS), ("a", A))
}
POLICY_RESTRICTION = "check_policy_service"
# Every restriction whose next word is its argument.
ARGUMENT_RESTRICTIONS = (set(TABLE_RESTRICTIONS) | set(DNSXL_RESTRICTIONS)
                         | set(SERVER_ACCESS_RESTRICTIONS) | {POLICY_RESTRICTION})
# Restrictions whose answer may have to wait for the DNS or a policy server.
ASKING_RESTRICTIONS = (UNKNOWN_RESTRICTIONS | set(DNSXL_RESTRICTIONS) | set(SERVER_ACCESS_RESTRICTIONS)
                       | {POLICY_RESTRICTION})
# One of these must be in smtpd_relay_restrictions or smtpd_recipient_restrictions, else any
# client could relay.
_RELAY_REQUIRED = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer",
                   "defer_if_permit")
SERVER_ERROR = (451, "4.3.5", "Server configuration error")
# Most mail exchanger or name server addresses a check_*_mx/ns/a_access searches.
SERVER_ADDRESS_LIMIT = 100


class Request:
    """The facts one check reads. recipient: the RCPT TO address being checked (None outside
    RCPT); sender: None before MAIL FROM, "" for the null sender."""

    __slots__ = ("client_name", "client_addr", "in_mynetworks", "helo", "sender", "recipient",
                 "smtputf8", "illegal_pipelining", "sasl_username", "client_name_status",
                 "reverse_client_name", "reverse_client_name_status", "tls", "answers",
                 "policy_request", "walk")

    def __init__(self, *, client_name: str, client_addr: str, in_mynetworks: bool,
                 helo: str | None = None, sender: str | None = None, recipient: str | None = None,
                 smtputf8: bool = False, illegal_pipelining: bool = False,
                 sasl_username: str | None = None, client_name_status: str = "ok",
                 reverse_client_name: str | None = None, reverse_client_name_status: str = "ok",
                 tls=None, answers: lookups.Answers | None = None, policy_request=None) -> None:
        self.client_name = client_name
        self.client_addr = client_addr
        self.in_mynetworks = in_mynetworks
        self.helo = helo
        self.sender = sender
        self.recipient = recipient
        self.smtputf8 = smtputf8
        self.illegal_pipelining = illegal_pipelining
        self.sasl_username = sasl_username
        # "ok", "temporary" (the DNS failed for now) or "permanent", as Postfix keeps them.
        self.client_name_status = client_name_status
        self.reverse_client_name = client_name if reverse_client_name is None else reverse_client_name
        self.reverse_client_name_status = reverse_client_name_status
        self.tls = tls  # the session's TlsInfo, None in plain text
        self.answers = answers  # DNS and policy answers (lookups.py); None when no check asks
        # (helo, sender, recipient, policy_context) -> the session's policy request, as sent
        self.policy_request = policy_request
        self.walk = None  # the check that stopped for answers (Restrictions.evaluate)

    @property
    def client_label(self) -> str:
        return f"{self.client_name}[{self.client_addr}]"


@dataclass(slots=True)
class _Deferral:
    code: int
    dsn: str
    text: str


class CheckState:
    """What a session carries from one check to the next (Postfix keeps these in its session
    state): the defer_if_permit raised by each stage, DISCARD, and the access actions that
    change the message (HOLD, PREPEND, REDIRECT, BCC, FILTER), which the session carries out
    when it queues the message. end_of_data: the end-of-data restrictions are running (PREPEND
    comes too late there)."""

    __slots__ = ("defer_if_permit_client", "defer_if_permit_helo", "defer_if_permit_sender",
                 "discard", "hold", "prepend", "redirect", "bcc", "filter", "end_of_data")

    def __init__(self) -> None:
        self.defer_if_permit_client: _Deferral | None = None
        self.defer_if_permit_helo: _Deferral | None = None
        self.defer_if_permit_sender: _Deferral | None = None
        self.discard: str | None = None
        self.reset_message_actions()

    def reset_message_actions(self) -> None:
        self.hold = False
        self.prepend: list[str] = []  # header lines, in the order the actions fired
        self.redirect: str | None = None  # the last REDIRECT wins
        self.bcc: list[str] = []  # every BCC adds a recipient
        self.filter: str | None = None  # transport:nexthop; the last FILTER wins
        self.end_of_data = False

    def reset_transaction(self) -> None:
        self.defer_if_permit_sender = None
        self.discard = None
        self.reset_message_actions()


class Verdict:
    """The outcome of one check: reply (None: go on), and (what, text) log events, what being
    "reject", "reject_warning", "warn", "info", "discard" or "warning" (a configuration
    problem, written as "warning: text")."""

    __slots__ = ("reply", "events", "pending")

    def __init__(self) -> None:
        self.reply: str | None = None
        self.events: list[tuple[str, str]] = []
        # Questions to answer before the check can decide (lookups.py); None when it decided.
        self.pending: list[tuple] | None = None


class _Nested:
    """A restriction's outcome that is another list to walk: a restriction class, or the
    restrictions an access table or a policy server answered with. ok_status: what the list's
    OK counts as (DUNNO for a source-routed recipient, which a table never lets through)."""

    __slots__ = ("words", "ok_status")

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.ok_status = OK


class _Run:
    """One evaluation: Postfix's per-check state (warn_if_reject, defer_if_permit,
    defer_if_reject, recursion)."""

    __slots__ = ("owner", "request", "verdict", "warn_if_reject", "defer_if_permit",
                 "defer_if_reject", "recursion", "state")

    def __init__(self, owner: Restrictions, request: Request, state: CheckState,
                 defer_if_permit: _Deferral | None) -> None:
        self.owner = owner
        self.request = request
        self.state = state
        self.verdict = Verdict()
        self.warn_if_reject = 0
        self.defer_if_permit = defer_if_permit
        self.defer_if_reject: _Deferral | None = None
        self.recursion = 0

    # ---- outcomes ---------------------------------------------------------------------------

    def reject(self, code: int, dsn: str, text: str, *, policy: bool = True) -> int:
        """Refuse (or only log, under warn_if_reject); configuration errors are never warnings."""
        warn_only = bool(self.warn_if_reject) and policy
        reply = f"{code} {dsn} {text}"
        if not (400 <= code <= 599):
            self.verdict.events.append(("warning", f"SMTP reply code configuration error: {reply}"))
            reply = "450 4.7.1 Service unavailable"
        elif access.dsn_valid(dsn) != len(dsn):
            self.verdict.events.append(("warning", f"DSN detail code configuration error: {reply}"))
            reply = "450 4.7.1 Service unavailable"
        reply = "".join(c if c.isprintable() else " " for c in reply[:510])
        if not warn_only and self.defer_if_reject is not None and reply[0] == "5":
            deferral, self.defer_if_reject = self.defer_if_reject, None
            self.warn_if_reject = 0
            return self.reject(deferral.code, deferral.dsn, deferral.text)
        # The enhanced status code's class follows the reply code's.
        reply = reply[:4] + reply[0] + reply[5:]
        self.verdict.events.append(("reject_warning" if warn_only else "reject", reply))
        if warn_only:
            return DUNNO
        self.verdict.reply = reply
        return REJECT

    def table_error(self, error: TableError, reply_name: str) -> int:
        """A table that failed: for now (451 4.3.0, as Postfix), or for good (server error)."""
        if isinstance(error, TableTemporaryError):
            self.verdict.events.append(("warning", str(error)))
            return self.reject(451, "4.3.0", f"<{reply_name}>: Temporary lookup failure", policy=False)
        return self.server_error(str(error))

    def server_error(self, warning: str) -> int:
        self.verdict.events.append(("warning", warning))
        return self.reject(*SERVER_ERROR, policy=False)

    def set_defer_if_permit(self, code: int, dsn: str, text: str) -> int:
        if self.defer_if_permit is None:
            self.defer_if_permit = _Deferral(code, dsn, text)
        return DUNNO

    def set_defer_if_reject(self, code: int, dsn: str, text: str) -> int:
        if self.defer_if_reject is None:
            self.defer_if_reject = _Deferral(code, dsn, text)
        return DUNNO

    def finish(self, status: int) -> None:
        """A permitted stage that met a defer_if_permit on the way is deferred after all."""
        deferral = self.defer_if_permit
        if status != REJECT and deferral is not None:
            self.reject(deferral.code, deferral.dsn, deferral.text)

    # ---- the list walker --------------------------------------------------------------------

    def run_list(self, words: list[str], reply_name: str, reply_class: str,
                 default_access: str | None):
        """Walks one list (a generator: it yields the questions a restriction is waiting for
        and returns the list's status)."""
        self.recursion += 1
        saved = self.recursion - 1
        status = DUNNO
        position = 0
        try:
            while position < len(words):
                if self.state.discard is not None:
                    break
                name = words[position]
                position += 1
                lowered = name.lower()
                if lowered == "warn_if_reject":
                    if not self.warn_if_reject:
                        self.warn_if_reject = self.recursion
                    continue
                if ":" in name or name.startswith("{"):
                    if default_access is None:
                        status = self.server_error(
                            f'specify one of (check_client_access, check_helo_access, '
                            f'check_sender_access, check_recipient_access) before {reply_class} '
                            f'restriction "{name}"')
                        break
                    lowered, position = default_access, position - 1
                argument = None
                if lowered in ARGUMENT_RESTRICTIONS:
                    argument = words[position] if position < len(words) else None
                    position += 1
                while True:
                    try:
                        status = self.restriction(lowered, name, argument, reply_name, reply_class)
                        break
                    except Pending as pending:
                        questions = pending.questions
                    yield questions  # the same restriction runs again once they are answered
                if type(status) is _Nested:
                    nested = status
                    status = yield from self.run_list(nested.words, reply_name, reply_class, default_access)
                    if status == OK:
                        status = nested.ok_status
                if self.warn_if_reject >= self.recursion:
                    self.warn_if_reject = 0
                if status != DUNNO:
                    break
                if self.defer_if_permit is not None and self.defer_if_reject is not None:
                    break
        finally:
            self.recursion = saved
            if self.warn_if_reject > self.recursion:
                self.warn_if_reject = 0
        return status

    def restriction(self, lowered: str, name: str, argument: str | None, reply_name: str,
                    reply_class: str) -> int | _Nested:
        """One restriction's status, or the list it stands for; raises Pending."""
        if argument is not None:
            if lowered in TABLE_RESTRICTIONS:
                return self.table_restriction(lowered, argument)
            return self.asking(lowered, argument, reply_name, reply_class)
        if lowered in ARGUMENT_RESTRICTIONS:
            return self.server_error(f"restriction {lowered} requires an argument")
        return self.simple(lowered, name, reply_name, reply_class)

    def simple(self, lowered: str, name: str, reply_name: str, reply_class: str) -> int | _Nested:
        owner = self.owner
        request = self.request
        recipient = request.recipient
        if lowered == "permit":
            return OK
        if lowered == "reject":
            return self.reject(owner.reject_code, "5.7.1", f"<{reply_name}>: {reply_class} rejected: Access denied")
        if lowered == "defer":
            return self.reject(owner.defer_code, "4.3.2", f"<{reply_name}>: {reply_class} rejected: Try again later")
        if lowered == "defer_if_permit":
            return self.set_defer_if_permit(450, "4.7.0", f"<{reply_name}>: {reply_class} rejected: "
                                                           "defer_if_permit requested")
        if lowered == "defer_if_reject":
            return self.set_defer_if_reject(450, "4.7.0", f"<{reply_name}>: {reply_class} rejected: "
                                                           "defer_if_reject requested")
        if lowered == "reject_unauth_pipelining":
            if request.illegal_pipelining:
                return self.reject(503, "5.5.0", f"<{reply_name}>: {reply_class} rejected: "
                                                 "Improper use of SMTP command pipelining")
            return DUNNO
        if lowered == "permit_mynetworks":
            return OK if request.in_mynetworks else DUNNO
        if lowered == "permit_sasl_authenticated":
            return OK if request.sasl_username else DUNNO
        if lowered in SENDER_LOGIN_RESTRICTIONS:
            return self.check_sender_login(lowered)
        if lowered in ("reject_invalid_helo_hostname", "reject_invalid_hostname"):
            return self.check_helo_syntax(request.helo, fqdn=False) if request.helo else DUNNO
        if lowered in ("reject_non_fqdn_helo_hostname", "reject_non_fqdn_hostname"):
            return self.check_helo_syntax(request.helo, fqdn=True) if request.helo else DUNNO
        if lowered == "reject_non_fqdn_sender":
            if request.sender:
                return self.check_fqdn_address(request.sender, SENDER)
            return DUNNO
        if lowered == "reject_non_fqdn_recipient":
            return self.check_fqdn_address(recipient, RECIPIENT) if recipient is not None else DUNNO
        if lowered == "permit_auth_destination":
            if recipient is None:
                return DUNNO
            return OK if owner.authorized_destination(recipient) else DUNNO
        if lowered in ("reject_unauth_destination", "defer_unauth_destination"):
            if recipient is None or owner.authorized_destination(recipient):
                return DUNNO
            if lowered == "reject_unauth_destination":
                return self.reject(owner.relay_domains_reject_code, "5.7.1",
                                   f"<{internal_form(recipient)}>: Relay access denied")
            return self.reject(owner.relay_domains_reject_code - 100, "4.7.1",
                               f"<{internal_form(recipient)}>: Relay access denied")
        if lowered in UNKNOWN_RESTRICTIONS:
            return self.check_unknown(lowered)
        if lowered in CERTIFICATE_RESTRICTIONS:
            return self.check_client_certificate(lowered == "permit_tls_all_clientcerts")
        words = owner.classes.get(lowered)
        if words is not None:
            return _Nested(words)
        return self.server_error(f'unknown smtpd restriction: "{name}"')

    def check_sender_login(self, restriction: str) -> int:
        """reject_*sender_login_mismatch: the MAIL FROM address's owners, as
        smtpd_sender_login_maps lists them (any of several names, separated by commas or
        spaces), against the SASL login name."""
        request = self.request
        sender = request.sender
        maps = self.owner.sender_login_maps
        if not sender or maps is None:
            return DUNNO
        user = request.sasl_username
        authenticated_check = restriction != "reject_unauthenticated_sender_login_mismatch"
        unauthenticated_check = restriction != "reject_authenticated_sender_login_mismatch"
        reply_name = internal_form(sender)
        address = self.owner.resolve(sender).address if "@" not in sender else sender
        local, _, domain = address.rpartition("@")
        keys = [address.lower(), f"@{domain.lower()}"]
        if self.owner.local_domains.matches(domain):
            keys.insert(1, local.lower())
        try:
            found = maps.find(keys)
        except TableError as error:
            return self.table_error(error, reply_name)
        owners = [name for name in found.replace(",", " ").split()] if found else []
        if user:
            if not authenticated_check:
                return DUNNO
            if restriction == "reject_known_sender_login_mismatch" and not owners:
                return DUNNO
            if user not in owners:
                return self.reject(553, "5.7.1", f"<{reply_name}>: {SENDER} rejected: not owned "
                                                 f"by user {user}")
            return DUNNO
        if unauthenticated_check and owners:
            return self.reject(553, "5.7.1", f"<{reply_name}>: {SENDER} rejected: not logged in")
        return DUNNO

    def check_helo_syntax(self, helo: str, fqdn: bool) -> int:
        owner = self.owner
        if helo.startswith("["):
            if not _valid_literal_host(helo):
                return self.reject(owner.invalid_hostname_reject_code, "5.5.2",
                                   f"<{helo}>: {HELO} rejected: invalid ip address")
            return DUNNO
        name = _truncate_dot(helo)
        if fqdn:
            if not valid_hostname(name, self.request.smtputf8) or "." not in name:
                return self.reject(owner.non_fqdn_reject_code, "5.5.2",
                                   f"<{helo}>: {HELO} rejected: need fully-qualified hostname")
            return DUNNO
        if not (valid_hostname(name, False) or access.is_host_address(name)):
            return self.reject(owner.invalid_hostname_reject_code, "5.5.2",
                               f"<{helo}>: {HELO} rejected: Invalid name")
        return DUNNO

    def check_fqdn_address(self, address: str, reply_class: str) -> int:
        at = address.rfind("@")
        domain = address[at + 1:] if at >= 0 else ""
        if domain.startswith("[") and domain.endswith("]"):
            return DUNNO
        domain = _truncate_dot(domain)
        if not domain or not valid_hostname(domain, self.request.smtputf8) or "." not in domain:
            return self.reject(self.owner.non_fqdn_reject_code, "4.5.2",
                               f"<{internal_form(address)}>: {reply_class} rejected: need fully-qualified address")
        return DUNNO

    # ---- names the DNS must know --------------------------------------------------------------

    def tempfail(self, action: str, dsn: str, text: str) -> int:
        """A DNS lookup that failed for now: defer_if_permit, or defer at once."""
        if action == "defer":
            return self.reject(450, dsn, text)
        return self.set_defer_if_permit(450, dsn, text)

    def check_unknown(self, restriction: str) -> int:
        owner = self.owner
        request = self.request
        if restriction in ("reject_unknown_client_hostname", "reject_unknown_client",
                           "reject_unknown_reverse_client_hostname"):
            reverse = restriction == "reject_unknown_reverse_client_hostname"
            status = request.reverse_client_name_status if reverse else request.client_name_status
            if status == "ok":
                return DUNNO
            code = owner.unknown_client_reject_code if status == "permanent" else 450
            return self.reject(code, "4.7.1" if reverse else "4.7.25",
                               f"Client host rejected: cannot find your {'reverse ' if reverse else ''}"
                               f"hostname, [{request.client_addr}]")
        if restriction in ("reject_unknown_helo_hostname", "reject_unknown_hostname"):
            helo = request.helo
            if not helo or helo.startswith("["):
                return DUNNO
            # Any address or MX record will do; a null MX is allowed for an MTA's name.
            found = self.name_exists(helo, (A, AAAA, MX))
            if found == "temporary":
                return self.tempfail(owner.unknown_helo_hostname_tempfail_action, "4.7.1",
                                     f"<{helo}>: {HELO} rejected: Host not found")
            if found == "no":
                return self.reject(owner.unknown_hostname_reject_code, "4.7.1",
                                   f"<{helo}>: {HELO} rejected: Host not found")
            return DUNNO
        sender_check = restriction == "reject_unknown_sender_domain"
        address = request.sender if sender_check else request.recipient
        if not address:
            return DUNNO
        reply_class = SENDER if sender_check else RECIPIENT
        reply_name = internal_form(address)
        resolved = owner.resolve(address)
        if resolved.address_class in ("local", "virtual"):
            return DUNNO
        domain = resolved.address[find_unquoted(resolved.address, "@", last=True) + 1:]
        if not domain or domain.startswith("["):
            return DUNNO
        found = self.name_exists(domain, (MX, A, AAAA))
        dsn = "4.1.8" if sender_check else "4.1.2"
        if found == "nullmx":
            return self.reject(550 if sender_check else 556, "4.7.27" if sender_check else "4.1.10",
                               f"<{reply_name}>: {reply_class} rejected: Domain {domain} does not "
                               "accept mail (nullMX)")
        if found == "temporary":
            return self.tempfail(owner.unknown_address_tempfail_action, dsn,
                                 f"<{reply_name}>: {reply_class} rejected: Domain not found")
        if found == "no":
            return self.reject(owner.unknown_address_reject_code, dsn,
                               f"<{reply_name}>: {reply_class} rejected: Domain not found")
        return DUNNO

    def name_exists(self, name: str, types: tuple[int, ...]) -> str:
        """"yes", "no", "nullmx" or "temporary": the record types are asked in order and the
        first that has records decides. Only a failure that no later type overrides counts."""
        answers = self.request.answers
        failed = False
        for rdtype in types:
            try:
                records = answers.records(name, rdtype)
            except DnsError as error:
                if not error.temporary:
                    return "no"  # a malformed name
                failed = True
                continue
            if isinstance(records, Negative):
                if records.nxdomain:
                    break
                continue
            if rdtype == MX and all(not host for _, host in records):
                return "nullmx"
            return "yes"
        return "temporary" if failed else "no"

    def check_client_certificate(self, any_trusted: bool) -> int:
        tls = self.request.tls
        if tls is None or not tls.peer_fingerprint:
            return DUNNO
        if any_trusted:
            return OK
        maps = self.owner.relay_clientcerts
        if maps is None:
            return DUNNO
        try:
            found = maps.find([tls.peer_fingerprint])
        except TableError as error:
            return self.table_error(error, self.request.client_label)
        return OK if found is not None else DUNNO

    # ---- restrictions with an argument that ask the DNS or a policy server --------------------

    def asking(self, restriction: str, argument: str, reply_name: str, reply_class: str) -> int | _Nested:
        if restriction in DNSXL_RESTRICTIONS:
            return self.dns_list(restriction, argument)
        if restriction in SERVER_ACCESS_RESTRICTIONS:
            return self.server_access(restriction, argument)
        return self.policy(argument, reply_name, reply_class)

    def dns_list(self, restriction: str, argument: str) -> int:
        owner = self.owner
        request = self.request
        what, allow = DNSXL_RESTRICTIONS[restriction]
        domain, reply_filter = owner.dns_lists[argument]
        if what == "client":
            subject = request.client_addr
            query = lookups.reversed_address_name(subject, domain)
            reply_class = CLIENT
        else:
            if what in ("client_name", "reverse_client_name"):
                subject = request.client_name if what == "client_name" else request.reverse_client_name
                if subject.lower() == "unknown":
                    return DUNNO
                reply_class = CLIENT
            elif what == "helo":
                subject = request.helo
                reply_class = HELO
            else:
                subject = request.sender if what == "sender" else request.recipient
                reply_class = SENDER if what == "sender" else RECIPIENT
            if not subject:
                return DUNNO
            query = lookups.domain_list_name(subject, domain)
            if query is None or not valid_hostname(query[:-len(domain) - 1], False):
                return DUNNO
        if allow and request.recipient is not None and not owner.authorized_destination(request.recipient):
            return DUNNO  # an allow list never lets a client relay
        try:
            addresses, text = lookups.listed(request.answers, query, reply_filter)
        except DnsError as error:
            if allow:
                return self.set_defer_if_reject(450, "4.7.1", f"<{subject}>: {reply_class} rejected: "
                                                              "Service unavailable")
            self.verdict.events.append(("warning", f"{query}: RBL lookup error: {error.reason}"))
            return DUNNO
        if addresses is None:
            return DUNNO
        if allow:
            return OK
        return self.dns_list_reply(argument, domain, subject, reply_class, text)

    def dns_list_reply(self, argument: str, domain: str, subject: str, reply_class: str,
                       reason: str) -> int:
        owner = self.owner
        template = None
        if owner.rbl_reply_maps is not None:
            try:
                template = owner.rbl_reply_maps.find([argument.lower()])
                if template is None and argument != domain:
                    template = owner.rbl_reply_maps.find([domain.lower()])
            except TableError as error:
                return self.server_error(str(error))
        names = {"rbl_code": str(owner.maps_rbl_reject_code), "rbl_domain": domain,
                 "rbl_reason": reason, "rbl_txt": reason, "rbl_what": subject, "rbl_class": reply_class}
        reply = None
        for candidate in (template, owner.default_rbl_reply):
            if candidate is None:
                continue
            try:
                reply = expand(candidate, _ReplyNames(names, self.request))
                break
            except ExpansionError:
                self.verdict.events.append(("warning", f"bad rbl reply template for domain {argument}: "
                                                       f"{candidate}"))
        if reply is None or len(reply) < 4 or reply[0] not in "45" or not reply[1:3].isdigit() or reply[3] != " ":
            self.verdict.events.append(("warning", f"rbl response code configuration error: {reply}"))
            return self.reject(450, "4.7.1", "Service unavailable")
        dsn, text = access.dsn_split("4.7.1", reply[4:])
        return self.reject(int(reply[:3]), access.dsn_fix(dsn, reply_class), text or "Service unavailable")

    def server_access(self, restriction: str, spec: str) -> int | _Nested:
        """check_*_mx_access, _ns_access, _a_access: the table is searched with the names of the
        domain's mail exchangers or name servers (or the host itself), then their addresses."""
        owner = self.owner
        request = self.request
        what, rdtype = SERVER_ACCESS_RESTRICTIONS[restriction]
        if what in ("client", "reverse_client"):
            name = request.client_name if what == "client" else request.reverse_client_name
            if name.lower() == "unknown":
                return DUNNO
            reply_name, reply_class = request.client_label, CLIENT
        elif what == "helo":
            name = request.helo
            reply_name, reply_class = name, HELO
        else:
            name = request.sender if what == "sender" else request.recipient
            reply_class = SENDER if what == "sender" else RECIPIENT
            reply_name = internal_form(name) if name else name
        if not name:
            return DUNNO
        domain = name[find_unquoted(name, "@", last=True) + 1:] if "@" in name else name
        maps = owner.tables[spec]
        answers = request.answers
        if domain.startswith("["):
            literal = _literal_address(domain)
            if rdtype == NS or literal is None:
                return DUNNO
            return self.search_keys(maps, spec, [access.network_keys(literal)], reply_name, reply_class)
        try:
            ascii_name = domain if domain.isascii() else domain.encode("idna").decode("ascii")
        except UnicodeError:
            return DUNNO
        if rdtype == A:
            servers = [ascii_name]
        else:
            servers = self.server_names(ascii_name, rdtype, name)
            if servers is None:
                return DUNNO
        family_types = [t for t, family in ((A, "ipv4"), (AAAA, "ipv6")) if family in owner.inet_protocols]
        # Every server's addresses at once: the names are searched first, in order, but the
        # addresses can be asked for together.
        wanted = [(server, t) for server in servers if not access.is_host_address(server)
                  for t in family_types]
        found = dict(zip(wanted, answers.record_sets(wanted))) if wanted else {}
        counted = 0
        for server in servers:
            if access.is_host_address(server):
                status = self.search_keys(maps, spec, [access.network_keys(server)], reply_name,
                                          reply_class)
                if status is not None:
                    return status
                continue
            if rdtype != A:
                status = self.search_keys(maps, spec, [access.domain_keys(server, owner.parent_style)],
                                          reply_name, reply_class)
                if status is not None:
                    return status
            for t in family_types:
                records = found[(server, t)]
                if isinstance(records, (Negative, DnsError)):
                    continue
                for address in records:
                    counted += 1
                    if counted > SERVER_ADDRESS_LIMIT:
                        self.verdict.events.append(("warning", f"{restriction}: server address count "
                                                    f"limit ({SERVER_ADDRESS_LIMIT}) exceeded for "
                                                    f"{reply_class} {reply_name} -- ignoring the remainder"))
                        return DUNNO
                    status = self.search_keys(maps, spec, [access.network_keys(address)], reply_name,
                                              reply_class)
                    if status is not None:
                        return status
        return DUNNO

    def server_names(self, domain: str, rdtype: int, name: str) -> list[str] | None:
        """The MX or NS host names of a domain, as Postfix finds them: a domain without MX
        records is its own mail exchanger; one without NS records has its parents' servers."""
        answers = self.request.answers
        type_name = "MX" if rdtype == MX else "NS"
        zone = domain
        while True:
            try:
                records = answers.records(zone, rdtype)
            except DnsError as error:
                self.verdict.events.append(("warning", f"Unable to look up {type_name} host for "
                                                       f"{zone}: {error.reason}"))
                return None
            if not isinstance(records, Negative):
                break
            if rdtype == MX:
                return [domain]
            dot = zone.find(".")
            if dot < 0 or not zone[dot + 1:]:
                self.verdict.events.append(("warning", f"Unable to look up NS host for {name}: "
                                                       "no NS records"))
                return None
            zone = zone[dot + 1:]
        if rdtype == MX:
            hosts = [host for _, host in sorted(records)]
            if not any(hosts):
                return None  # null MX
            return [host for host in hosts if host]
        return list(records)

    def search_keys(self, maps, spec: str, searches: list[list[str]], reply_name: str,
                    reply_class: str) -> int | _Nested | None:
        """A table result for the first key found (its status), or None when no key is."""
        try:
            for keys in searches:
                found = maps.search(keys) if keys else None
                if found is not None:
                    return self.table_result(spec, found[1], reply_name, reply_class)
        except TableError as error:
            return self.table_error(error, reply_name)
        return None

    def policy(self, spec: str, reply_name: str, reply_class: str) -> int | _Nested:
        """check_policy_service: the server's action is read as an access table's."""
        request = self.request

        def build() -> bytes:
            return request.policy_request(request.helo or "", request.sender or "", request.recipient or "",
                                          self.owner.policy_services[spec].policy_context)

        answers = request.answers
        action = answers.policy(spec, answers.policy_request(spec, build))
        if self.owner.smtputf8_enable and not action.isascii():
            try:
                action.encode("utf-8")
            except UnicodeEncodeError:
                self.verdict.events.append(("warning", f"malformed UTF-8 in policy server {spec} "
                                                       f"response: \"{action}\""))
                action = self.owner.policy_services[spec].default_action
        return self.table_result(spec, action, reply_name, reply_class)

    # ---- access tables ----------------------------------------------------------------------

    def table_restriction(self, restriction: str, spec: str) -> int | _Nested:
        owner = self.owner
        # The reply names what the table was asked about, whatever the stage.
        reply_class = TABLE_RESTRICTIONS[restriction]
        request = self.request
        if restriction == "check_client_access":
            searches = [access.domain_keys(request.client_name, owner.parent_style),
                        access.network_keys(request.client_addr)]
            reply_name = request.client_label
        elif restriction == "check_helo_access":
            if not request.helo:
                return DUNNO
            searches = [access.domain_keys(request.helo, owner.parent_style)]
            reply_name = request.helo
        else:
            address = request.sender if restriction == "check_sender_access" else request.recipient
            if address is None:
                return DUNNO
            reply_name = internal_form(address)
            if address == "":
                searches = [[owner.null_access_lookup_key]]
            else:
                searches = [access.address_keys(owner.resolve(address).address,
                                                owner.recipient_delimiter, owner.parent_style)]
        status = self.search_keys(owner.tables[spec], spec, searches, reply_name, reply_class)
        if status is None:
            return DUNNO
        if ((status == OK or type(status) is _Nested) and restriction == "check_recipient_access"
                and not owner.allow_untrusted_routing and owner.resolve(request.recipient).routed):
            # A source-routed recipient is never let through by a table's OK.
            if status == OK:
                return DUNNO
            status.ok_status = DUNNO
        return status

    def table_result(self, spec: str, value: str, reply_name: str, reply_class: str) -> int | _Nested:
        owner = self.owner
        action = access.parse_action(value, reject_code=owner.access_map_reject_code,
                                     defer_code=owner.access_map_defer_code,
                                     split_list=split_table_list)
        kind = action.kind
        if kind == "dunno":
            return DUNNO
        if kind == "ok":
            return OK
        if kind == "reject":
            return self.reject(action.code, access.dsn_fix(action.dsn, reply_class),
                               f"<{reply_name}>: {reply_class} rejected: {action.text}")
        if kind == "defer_if_permit":
            return self.set_defer_if_permit(action.code, access.dsn_fix(action.dsn, reply_class),
                                            f"<{reply_name}>: {reply_class} rejected: {action.text}")
        if kind == "defer_if_reject":
            return self.set_defer_if_reject(action.code, access.dsn_fix(action.dsn, reply_class),
                                            f"<{reply_name}>: {reply_class} rejected: {action.text}")
        if kind in ("warn", "info"):
            self.verdict.events.append((kind, action.text))
            return DUNNO
        if kind == "discard" or kind in access.MESSAGE_ACTIONS.values():
            # Actions carried out when the message is queued. With smtpd_delay_reject = no the
            # client and HELO restrictions run before any MAIL FROM: no message to act on.
            events = self.verdict.events
            name = kind.upper()
            text = action.text
            if self.request.sender is None:
                events.append(("warning", f"access table {spec}: with smtpd_delay_reject=no, action "
                                          f"{name} is always skipped in {CLIENT} or {HELO} restrictions"))
                return DUNNO
            state = self.state
            if kind == "discard":
                events.append(("discard", f"<{reply_name}>: {reply_class} {text or 'triggers DISCARD action'}"))
                state.discard = text or "triggers DISCARD action"
                return OK
            if kind == "hold":
                if not state.hold:  # logged once per message
                    events.append(("hold", f"<{reply_name}>: {reply_class} {text or 'triggers HOLD action'}"))
                    state.hold = True
                return DUNNO
            # What the table entry was looked up under, as the warnings name it.
            if spec in owner.policy_services and spec not in owner.tables:
                entry = "policy query"
            else:
                entry = self.request.client_addr if reply_class == CLIENT else reply_name
            if kind == "prepend":
                if state.end_of_data:
                    events.append(("warning", f"access table {spec}: action PREPEND must be used before "
                                              "smtpd_end_of_data_restrictions"))
                elif not access.is_header(text):
                    events.append(("warning", f'access table {spec} entry "{entry}" requires header: text'))
                else:
                    state.prepend.append(text)
                return DUNNO
            if kind == "filter" and not text:
                problem = "has FILTER entry without value"
            elif kind == "filter" and ":" not in text:
                problem = "requires transport:destination"
            elif kind != "filter" and "@" not in text:
                problem = "requires user@domain target"
            else:
                problem = None
            if problem is not None:
                events.append(("warning", f'access table {spec} entry "{entry}" {problem}'))
                return DUNNO
            events.append((kind, f"<{reply_name}>: {reply_class} triggers {name} {text}"))
            if kind == "filter":
                state.filter = text
            elif kind == "redirect":
                state.redirect = text
            else:
                state.bcc.append(text)
            return DUNNO
        if kind == "unsupported":
            return self.server_error(f"access table {spec}: action {action.text} is not supported")
        if any(":" in word for word in action.words):
            return self.server_error(f"access table {spec} has entry with lookup table: {value}")
        if self.recursion > 100:
            return self.server_error(f"access table {spec} entry {value} causes unreasonable recursion")
        if not action.words:
            return OK
        return _Nested(action.words)


def internal_form(address: str) -> str:
    """The address with its local part unquoted, as Postfix's smtpd names it in replies."""
    if '"' not in address and "\\" not in address:
        return address
    at = find_unquoted(address, "@", last=True)
    if at < 0:
        return unquote_local(address)
    return f"{unquote_local(address[:at])}@{address[at + 1:]}"


class _ReplyNames:
    """The names a DNS list's reply template may use: $rbl_* and the request's own, with
    client-supplied text reduced to printable ASCII."""

    def __init__(self, names: dict[str, str], request: Request) -> None:
        sender = request.sender or ""
        recipient = request.recipient or ""
        self.names = dict(names)
        self.names.update(
            client_address=request.client_addr, client_name=request.client_name,
            reverse_client_name=request.reverse_client_name, helo_name=request.helo or "",
            sender=sender, sender_name=sender.rpartition("@")[0] if "@" in sender else sender,
            sender_domain=sender.rpartition("@")[2] if "@" in sender else "",
            recipient=recipient,
            recipient_name=recipient.rpartition("@")[0] if "@" in recipient else recipient,
            recipient_domain=recipient.rpartition("@")[2] if "@" in recipient else "")
        for name, value in self.names.items():
            if not (value.isascii() and value.isprintable()):
                self.names[name] = "".join(c if c.isascii() and c.isprintable() else "_" for c in value)

    def raw_value(self, name: str) -> str | None:
        return self.names.get(name)

    expanded_value = raw_value

    def undefined(self, name: str) -> None:
        pass


def _literal_address(text: str) -> str | None:
    """The address inside [1.2.3.4] or [IPv6:...], None when it is not one."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    return inner if access.is_host_address(inner) else None


def _truncate_dot(name: str) -> str:
    if len(name) > 1 and name.endswith(".") and name[-2] != ".":
        return name[:-1]
    return name


def _valid_literal_host(text: str) -> bool:
    if text.startswith("[") and text.endswith("]") and len(text) > 2:
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
        return ":" in text and access.is_host_address(text)
    return access.is_host_address(text)


@dataclass(frozen=True, slots=True)
class Resolved:
    address: str  # user@domain after trivial-rewrite's resolver loop
    routed: bool  # a routing operator (@ ! %) is left in the local part
    address_class: str  # "local", "virtual", "relay", "default" or "error"


class Restrictions:
    """The compiled lists of one smtpd service."""

    def __init__(self, config, *, local_domains, relay_domains: DomainList,
                 warn=None) -> None:
        get = config.get
        self.main_cf = config.main_cf_path
        self.delay_reject: bool = get("smtpd_delay_reject")
        self.helo_required: bool = get("smtpd_helo_required")
        self.relay_before_recipient: bool = get("smtpd_relay_before_recipient_restrictions")
        self.reject_code: int = get("reject_code")
        self.defer_code: int = get("defer_code")
        self.access_map_reject_code: int = get("access_map_reject_code")
        self.access_map_defer_code: int = get("access_map_defer_code")
        self.relay_domains_reject_code: int = get("relay_domains_reject_code")
        self.non_fqdn_reject_code: int = get("non_fqdn_reject_code")
        self.invalid_hostname_reject_code: int = get("invalid_hostname_reject_code")
        self.unknown_address_reject_code: int = get("unknown_address_reject_code")
        self.unknown_client_reject_code: int = get("unknown_client_reject_code")
        self.unknown_hostname_reject_code: int = get("unknown_hostname_reject_code")
        self.unknown_address_tempfail_action: str = get("unknown_address_tempfail_action")
        self.unknown_helo_hostname_tempfail_action: str = get("unknown_helo_hostname_tempfail_action")
        self.maps_rbl_reject_code: int = get("maps_rbl_reject_code")
        self.default_rbl_reply: str = get("default_rbl_reply")
        self.inet_protocols = {word.lower() for word in get("inet_protocols")}
        if "all" in self.inet_protocols:
            self.inet_protocols = {"ipv4", "ipv6"}
        self.null_access_lookup_key: str = get("smtpd_null_access_lookup_key")
        self.allow_untrusted_routing: bool = get("allow_untrusted_routing")
        self.resolve_dequoted_address: bool = get("resolve_dequoted_address")
        self.recipient_delimiter: str = get("recipient_delimiter")
        self.swap_bangpath: bool = get("swap_bangpath")
        self.allow_percent_hack: bool = get("allow_percent_hack")
        self.append_at_myorigin: bool = get("append_at_myorigin")
        self.append_dot_mydomain: bool = get("append_dot_mydomain")
        self.myorigin: str = get("myorigin")
        self.mydomain: str = get("mydomain")
        self.myhostname: str = get("myhostname")
        self.empty_address_recipient: str = get("empty_address_recipient")
        self.smtputf8_enable: bool = get("smtputf8_enable")
        self.parent_style = "smtpd_access_maps" in get("parent_domain_matches_subdomains")
        self.local_domains = local_domains
        self.relay_domains = relay_domains
        self._options = TableOptions(smtputf8_enable=self.smtputf8_enable,
                                     config_directory=config.config_dir or "", duplicates_fail=True)
        self._warn = warn
        self.warn = warn  # where a policy client's complaints go (the worker's log)
        self.tables: dict[str, Maps] = {}
        self.classes: dict[str, list[str]] = {}
        # DNS lists by their argument (domain=filter), policy services by theirs.
        self.dns_lists: dict[str, tuple[str, lookups.ReplyFilter | None]] = {}
        self.policy_services = {}
        self._policy_clients: dict[str, PolicyClient] = {}
        self._queue_directory: str = get("queue_directory")
        self._get = get
        # Whether a check may have to wait for the DNS or a policy server. An access table's
        # answer may name any restriction, so a list with a table counts as one that may ask.
        self.may_ask = False
        self.rbl_reply_maps = self._optional_maps(config, "rbl_reply_maps")
        self.relay_clientcerts = self._optional_maps(config, "relay_clientcerts")
        try:
            self.virtual_alias_domains = DomainList("virtual_alias_domains",
                                                    get("virtual_alias_domains"), "exact")
        except TableError as error:
            raise ConfigError(self.main_cf, None, str(error)) from None
        class_names = [name.lower() for name in split_table_list(config.expanded("smtpd_restriction_classes"))]
        for name in class_names:
            self.classes[name] = []
        for name in class_names:
            try:
                text = config.expanded(name)
            except KeyError:
                raise ConfigError(self.main_cf, None, f"smtpd_restriction_classes: restriction class "
                                                      f'"{name}" has no definition in main.cf') from None
            # A bare type:table in a class stands for the access check of the stage that uses it.
            self.classes[name] = self._compile(name, text, "check_recipient_access")
        # smtpd_sender_login_maps, for reject_sender_login_mismatch and its variants.
        self.sender_login_maps = self._optional_maps(config, "smtpd_sender_login_maps")
        self.lists = {stage: self._compile(parameter, config.expanded(parameter), _DEFAULT_ACCESS.get(stage))
                      for stage, parameter in STAGE_PARAMETERS.items()}
        if not (self._has_required(self.lists["relay"]) or self._has_required(self.lists["recipient"])):
            raise ConfigError(self.main_cf, None, "in parameter smtpd_relay_restrictions or "
                              "smtpd_recipient_restrictions, specify at least one working instance of: "
                              + ", ".join(_RELAY_REQUIRED))
        self._resolved: dict[str, Resolved] = {}

    # ---- compiling --------------------------------------------------------------------------

    def _compile(self, parameter: str, text: str, default_access: str | None) -> list[str]:
        try:
            words = split_table_list(text)
        except TableError as error:
            raise ConfigError(self.main_cf, None, f"{parameter}: {error}") from None
        position = 0
        while position < len(words):
            word = words[position]
            lowered = word.lower()
            position += 1
            if ":" in word or word.startswith("{"):
                if default_access is None:
                    raise ConfigError(self.main_cf, None, f'{parameter}: a table ("{word}") needs '
                                      "check_client_access, check_helo_access, check_sender_access "
                                      "or check_recipient_access before it")
                self._open(parameter, word)
                self.may_ask = True
            elif lowered in ARGUMENT_RESTRICTIONS:
                self._compile_argument(parameter, lowered, words[position] if position < len(words) else None)
                position += 1
            elif lowered not in SIMPLE_RESTRICTIONS and lowered not in self.classes:
                raise ConfigError(self.main_cf, None, f'{parameter}: unknown restriction "{word}"')
            elif lowered in ASKING_RESTRICTIONS:
                self.may_ask = True
        return words

    def _optional_maps(self, config, parameter: str) -> Maps | None:
        specs = [spec for spec in config.get(parameter) if spec]
        if not specs:
            return None
        try:
            return Maps(parameter, specs, lambda spec: open_table(spec, self._options), self._warn)
        except TableError as error:
            raise ConfigError(self.main_cf, None, f"{parameter}: {error}") from None

    def _compile_argument(self, parameter: str, restriction: str, argument: str | None) -> None:
        if argument is None:
            raise ConfigError(self.main_cf, None, f"{parameter}: {restriction} must be followed by "
                              + ("a table (type:name)" if restriction in TABLE_RESTRICTIONS
                                 or restriction in SERVER_ACCESS_RESTRICTIONS
                                 else "a policy service" if restriction == POLICY_RESTRICTION
                                 else "a DNS list domain"))
        if restriction in ASKING_RESTRICTIONS:
            self.may_ask = True
        if restriction in TABLE_RESTRICTIONS or restriction in SERVER_ACCESS_RESTRICTIONS:
            if ":" not in argument:
                raise ConfigError(self.main_cf, None, f"{parameter}: {restriction} must be followed "
                                  f'by a table (type:name), not "{argument}"')
            self._open(parameter, argument)
            self.may_ask = True
        elif restriction == POLICY_RESTRICTION:
            try:
                self.policy_services[argument] = parse_policy_service(argument, self._get,
                                                                      self._queue_directory)
            except ValueError as error:
                raise ConfigError(self.main_cf, None, f"{parameter}: {restriction} {error}") from None
        else:
            try:
                self.dns_lists[argument] = lookups.split_dnsxl(argument)
            except ValueError as error:
                raise ConfigError(self.main_cf, None, f"{parameter}: {restriction} {error}") from None

    def policy_client(self, spec: str) -> PolicyClient:
        """The worker's client of one policy service, made on first use (after the fork)."""
        client = self._policy_clients.get(spec)
        if client is None:
            client = self._policy_clients[spec] = PolicyClient(self.policy_services[spec], self.warn)
        return client

    def close_policy_clients(self) -> None:
        for client in self._policy_clients.values():
            client.close()
        self._policy_clients.clear()

    def _open(self, parameter: str, spec: str) -> None:
        if spec in self.tables:
            return
        try:
            self.tables[spec] = Maps(parameter, [spec], lambda s: open_table(s, self._options), self._warn)
        except TableError as error:
            raise ConfigError(self.main_cf, None, f"{parameter}: {error}") from None

    def _has_required(self, words: list[str], depth: int = 0) -> bool:
        skip = False
        for word in words:
            lowered = word.lower()
            if skip:
                skip = False
                continue
            if lowered == "warn_if_reject":
                skip = True
                continue
            if lowered == "permit":
                return False
            if lowered in _RELAY_REQUIRED:
                return True
            if depth < 100 and lowered in self.classes and self._has_required(self.classes[lowered], depth + 1):
                return True
        return False

    # ---- address resolution (trivial-rewrite's view, for relay decisions and table keys) ---

    def resolve(self, address: str) -> Resolved:
        known = self._resolved.get(address)
        if known is None:
            known = self._resolve(address)
            if len(self._resolved) >= 4096:
                self._resolved.clear()
            self._resolved[address] = known
        return known

    def _canonical(self, address: str) -> str:
        """The local rewriting context: no source route, site!user and user%site as
        user@site, @$myorigin added."""
        if address.startswith("@"):
            colon = find_unquoted(address, ":")
            if colon > 0:
                address = address[colon + 1:]
        if find_unquoted(address, "@") < 0:
            bang = find_unquoted(address, "!")
            percent = find_unquoted(address, "%", last=True)
            if self.swap_bangpath and bang > 0:
                address = f"{address[bang + 1:]}@{address[:bang]}"
            elif self.allow_percent_hack and percent > 0:
                address = f"{address[:percent]}@{address[percent + 1:]}"
            elif self.append_at_myorigin and address:
                address = f"{address}@{self.myorigin}"
        at = find_unquoted(address, "@", last=True)
        if at >= 0 and self.append_dot_mydomain:
            domain = address[at + 1:]
            if domain and "." not in domain and not domain.startswith("["):
                address = f"{address}.{self.mydomain}"
        return address

    def _resolve(self, address: str) -> Resolved:
        address = self._canonical(address)
        saved_domain = None
        for _ in range(len(address) + 100):
            at = find_unquoted(address, "@", last=True)
            if at >= 0:
                domain = address[at + 1:]
                if len(domain) > 1 and domain.endswith(".") and domain[-2] not in ".@":
                    domain = domain[:-1]
                    address = address[:at + 1] + domain
                if not domain or not self.local_domains.matches(domain):
                    break
                saved_domain, address = domain, address[:at]
            local = address
            if (find_unquoted(local, "@") >= 0 or (self.swap_bangpath and find_unquoted(local, "!") >= 0)
                    or (self.allow_percent_hack and find_unquoted(local, "%") >= 0)):
                address = self._canonical(local)
                continue
            if self.resolve_dequoted_address and len(local) >= 2 and local[0] == '"' and local[-1] == '"':
                inner = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                if "@" in inner or (self.allow_percent_hack and "%" in inner) or (
                        self.swap_bangpath and "!" in inner):
                    if "@" not in inner and self.allow_percent_hack and "%" in inner:
                        cut = inner.rfind("%")
                        inner = inner[:cut] + "@" + inner[cut + 1:]
                    address = self._canonical(inner)
                    continue
            if local in ("", '""'):
                address = self.empty_address_recipient
                continue
            if saved_domain is None:
                address = f"{local}@{self.myhostname}"
                continue
            break
        at = find_unquoted(address, "@", last=True)
        if at < 0:
            address = f"{address}@{saved_domain}" if saved_domain is not None else f"{address}@{self.myhostname}"
        elif saved_domain is not None and not address[at + 1:]:
            address = f"{address}{saved_domain}"
        at = find_unquoted(address, "@", last=True)
        local, domain = address[:at], address[at + 1:]
        if domain.startswith("["):
            valid = domain.endswith("]") and _valid_literal_host(domain)
        else:
            valid = valid_hostname(domain, self.smtputf8_enable)
        if not valid:
            return Resolved(address, False, "error")
        unquoted = local[1:-1] if len(local) >= 2 and local[0] == '"' and local[-1] == '"' else local
        routed = any(char in unquoted for char in "@!%")
        if self.local_domains.matches(domain):
            address_class = "local"
        elif self.virtual_alias_domains.matches(domain):
            address_class = "virtual"
        elif self.relay_domains.matches(domain):
            address_class = "relay"
        else:
            address_class = "default"
        return Resolved(address, routed, address_class)

    def authorized_destination(self, recipient: str) -> bool:
        """permit_auth_destination: mail for this host or for relay_domains, never source-routed."""
        resolved = self.resolve(recipient)
        if resolved.address_class == "error":
            return False
        if resolved.routed and not self.allow_untrusted_routing:
            return False
        return resolved.address_class in ("local", "virtual", "relay")

    # ---- the stages, as smtpd runs them ------------------------------------------------------
    # Each check is a generator: it yields the questions it waits for and returns its Verdict
    # (evaluate drives it).

    def _stage(self, stage: str, request: Request, state: CheckState, defer_if_permit,
               reply_name: str, reply_class: str):
        run = _Run(self, request, state, defer_if_permit)
        words = self.lists[stage]
        status = DUNNO
        if words:
            status = yield from run.run_list(words, reply_name, reply_class, _DEFAULT_ACCESS.get(stage))
        return run, status

    def check_client(self, request: Request, state: CheckState):
        run, status = yield from self._stage("client", request, state, None, request.client_label, CLIENT)
        state.defer_if_permit_client = run.defer_if_permit
        return run.verdict

    def check_helo(self, request: Request, state: CheckState):
        if request.helo is None:
            return Verdict()
        run, status = yield from self._stage("helo", request, state, state.defer_if_permit_client,
                                             request.helo, HELO)
        state.defer_if_permit_helo = run.defer_if_permit
        return run.verdict

    def check_mail(self, request: Request, state: CheckState):
        if request.sender is None:
            return Verdict()
        run, status = yield from self._stage("sender", request, state,
                                             state.defer_if_permit_client or state.defer_if_permit_helo,
                                             internal_form(request.sender), SENDER)
        state.defer_if_permit_sender = run.defer_if_permit
        return run.verdict

    def check_rcpt(self, request: Request, state: CheckState):
        recipient = request.recipient
        if recipient.lower() == "postmaster":
            return Verdict()
        events: list[tuple[str, str]] = []
        if self.delay_reject:
            for check in (self.check_client, self.check_helo, self.check_mail):
                verdict = yield from check(request, state)
                events += verdict.events
                if verdict.reply is not None:
                    verdict.events = events
                    return verdict
        run = _Run(self, request, state, state.defer_if_permit_sender)
        order = ("relay", "recipient") if self.relay_before_recipient else ("recipient", "relay")
        status = DUNNO
        for stage in order:
            run.warn_if_reject = 0
            run.defer_if_reject = None
            run.recursion = 0
            words = self.lists[stage]
            if words:
                status = yield from run.run_list(words, internal_form(recipient), RECIPIENT,
                                                 "check_recipient_access")
            else:
                status = DUNNO
            if status == REJECT:
                break
        run.finish(status)
        run.verdict.events[:0] = events
        return run.verdict

    def check_data(self, request: Request, state: CheckState):
        run, status = yield from self._stage("data", request, state, None, "DATA", DATA)
        run.finish(status)
        return run.verdict

    def check_end_of_data(self, request: Request, state: CheckState):
        run, status = yield from self._stage("end_of_data", request, state, None, "END-OF-MESSAGE",
                                             END_OF_DATA)
        run.finish(status)
        return run.verdict

    def evaluate(self, check, request: Request, state: CheckState) -> Verdict:
        """Runs check (one of the check_* generators) for request, or resumes the one that
        stopped for answers (now in request.answers). Returns its Verdict, or a Verdict whose
        pending names the questions to answer before evaluate is called again."""
        walk = request.walk
        if walk is None:
            walk = check(request, state)
        try:
            questions = walk.send(None)
        except StopIteration as finished:
            request.walk = None
            return finished.value
        except BaseException:
            request.walk = None
            raise
        request.walk = walk
        verdict = Verdict()
        verdict.pending = questions
        return verdict

    def close(self) -> None:
        self.close_policy_clients()
        for maps in (self.rbl_reply_maps, self.relay_clientcerts, self.sender_login_maps,
                     *self.tables.values()):
            if maps is not None:
                maps.close()
