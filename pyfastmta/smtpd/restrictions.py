"""smtpd's restriction lists (smtpd_client_restrictions ... smtpd_end_of_data_restrictions) with
Postfix's semantics.

The lists are compiled once, when the settings are built: every name is checked, every table is
opened, and a mistake is a ConfigError naming main.cf and the parameter. Evaluating them is
synchronous and pure: a check reads the facts of one request (client, HELO name, sender,
recipient, pipelining) and the session's carried-over flags (CheckState), and returns the reply
to send or None, with the log lines ("reject:", "reject_warning:", "warn:" ...) for the session to
write. Nothing is written while a list runs, so a session may evaluate a stage again once it
knows more (a restriction that needs an answer from DNS can be given one fact at a time).

Results of one restriction, as in Postfix: DUNNO goes on with the next restriction, OK ends
the list (the stage passes; the next stage still runs), REJECT ends the whole check.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyfastmta.config import ConfigError
from pyfastmta._ext.address import unquote_local
from pyfastmta.maps.addresses import find_unquoted
from pyfastmta.maps.matchlist import DomainList
from pyfastmta.maps.registry import TableOptions, open_table, split_table_list
from pyfastmta.maps.table import Maps, TableError, TableTemporaryError
from pyfastmta.resolve.resolver import valid_hostname
from pyfastmta.smtpd import access
from pyfastmta.smtpd.access import CLIENT, DATA, END_OF_DATA, HELO, RECIPIENT, SENDER

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
# One of these must be in smtpd_relay_restrictions or smtpd_recipient_restrictions, else any
# client could relay.
_RELAY_REQUIRED = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer",
                   "defer_if_permit")
SERVER_ERROR = (451, "4.3.5", "Server configuration error")


class Request:
    """The facts one check reads. recipient: the RCPT TO address being checked (None outside
    RCPT); sender: None before MAIL FROM, "" for the null sender."""

    __slots__ = ("client_name", "client_addr", "in_mynetworks", "helo", "sender", "recipient",
                 "smtputf8", "illegal_pipelining", "sasl_username")

    def __init__(self, *, client_name: str, client_addr: str, in_mynetworks: bool,
                 helo: str | None = None, sender: str | None = None, recipient: str | None = None,
                 smtputf8: bool = False, illegal_pipelining: bool = False,
                 sasl_username: str | None = None) -> None:
        self.client_name = client_name
        self.client_addr = client_addr
        self.in_mynetworks = in_mynetworks
        self.helo = helo
        self.sender = sender
        self.recipient = recipient
        self.smtputf8 = smtputf8
        self.illegal_pipelining = illegal_pipelining
        self.sasl_username = sasl_username

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
    state): the defer_if_permit raised by each stage, and DISCARD."""

    __slots__ = ("defer_if_permit_client", "defer_if_permit_helo", "defer_if_permit_sender",
                 "discard")

    def __init__(self) -> None:
        self.defer_if_permit_client: _Deferral | None = None
        self.defer_if_permit_helo: _Deferral | None = None
        self.defer_if_permit_sender: _Deferral | None = None
        self.discard: str | None = None

    def reset_transaction(self) -> None:
        self.defer_if_permit_sender = None
        self.discard = None


class Verdict:
    """The outcome of one check: reply (None: go on), and (what, text) log events, what being
    "reject", "reject_warning", "warn", "info", "discard" or "warning" (a configuration
    problem, written as "warning: text")."""

    __slots__ = ("reply", "events")

    def __init__(self) -> None:
        self.reply: str | None = None
        self.events: list[tuple[str, str]] = []


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
                 default_access: str | None) -> int:
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
                if lowered in TABLE_RESTRICTIONS:
                    table = words[position] if position < len(words) else None
                    position += 1
                    if table is None:
                        status = self.server_error(f"restriction {lowered} requires a table argument")
                    else:
                        status = self.table_restriction(lowered, table, reply_class, default_access)
                else:
                    status = self.simple(lowered, name, reply_name, reply_class, default_access,
                                         more=position < len(words))
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

    def simple(self, lowered: str, name: str, reply_name: str, reply_class: str,
               default_access: str | None, more: bool) -> int:
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
        words = owner.classes.get(lowered)
        if words is not None:
            return self.run_list(words, reply_name, reply_class, default_access)
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
        except TableTemporaryError as error:
            self.verdict.events.append(("warning", str(error)))
            return self.reject(451, "4.3.0", f"<{reply_name}>: Temporary lookup failure", policy=False)
        except TableError as error:
            return self.server_error(str(error))
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

    # ---- access tables ----------------------------------------------------------------------

    def table_restriction(self, restriction: str, spec: str, reply_class: str,
                          default_access: str | None) -> int:
        owner = self.owner
        # The reply names what the table was asked about, whatever the stage.
        reply_class = TABLE_RESTRICTIONS[restriction]
        maps = owner.tables[spec]
        request = self.request
        try:
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
            for keys in searches:
                found = maps.search(keys) if keys else None
                if found is not None:
                    status = self.table_result(spec, found[1], reply_name, reply_class, default_access)
                    if (status == OK and restriction == "check_recipient_access"
                            and not owner.allow_untrusted_routing
                            and owner.resolve(request.recipient).routed):
                        # A source-routed recipient is never let through by a table's OK.
                        return DUNNO
                    return status
        except TableTemporaryError as error:
            self.verdict.events.append(("warning", str(error)))
            return self.reject(451, "4.3.0", f"<{reply_name}>: Temporary lookup failure", policy=False)
        except TableError as error:
            return self.server_error(str(error))
        return DUNNO

    def table_result(self, spec: str, value: str, reply_name: str, reply_class: str,
                     default_access: str | None) -> int:
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
        if kind == "discard":
            self.verdict.events.append(("discard", f"<{reply_name}>: {reply_class} "
                                        f"{action.text or 'triggers DISCARD action'}"))
            self.state.discard = action.text or "triggers DISCARD action"
            return OK
        if kind == "unsupported":
            return self.server_error(f"access table {spec}: action {action.text} is not supported")
        if any(":" in word for word in action.words):
            return self.server_error(f"access table {spec} has entry with lookup table: {value}")
        if self.recursion > 100:
            return self.server_error(f"access table {spec} entry {value} causes unreasonable recursion")
        if not action.words:
            return OK
        return self.run_list(action.words, reply_name, reply_class, default_access)


def internal_form(address: str) -> str:
    """The address with its local part unquoted, as Postfix's smtpd names it in replies."""
    if '"' not in address and "\\" not in address:
        return address
    at = find_unquoted(address, "@", last=True)
    if at < 0:
        return unquote_local(address)
    return f"{unquote_local(address[:at])}@{address[at + 1:]}"


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
        self.tables: dict[str, Maps] = {}
        self.classes: dict[str, list[str]] = {}
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
        self.sender_login_maps: Maps | None = None
        login_maps = [spec for spec in get("smtpd_sender_login_maps") if spec]
        if login_maps:
            try:
                self.sender_login_maps = Maps("smtpd_sender_login_maps", login_maps,
                                              lambda spec: open_table(spec, self._options), self._warn)
            except TableError as error:
                raise ConfigError(self.main_cf, None, f"smtpd_sender_login_maps: {error}") from None
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
            elif lowered in TABLE_RESTRICTIONS:
                if position >= len(words) or ":" not in words[position]:
                    raise ConfigError(self.main_cf, None, f"{parameter}: {word} must be followed by "
                                      "a table (type:name)")
                self._open(parameter, words[position])
                position += 1
            elif lowered not in SIMPLE_RESTRICTIONS and lowered not in self.classes:
                raise ConfigError(self.main_cf, None, f'{parameter}: unknown restriction "{word}"')
        return words

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

    def _stage(self, stage: str, request: Request, state: CheckState, defer_if_permit,
               reply_name: str, reply_class: str) -> tuple[_Run, int]:
        run = _Run(self, request, state, defer_if_permit)
        words = self.lists[stage]
        status = run.run_list(words, reply_name, reply_class, _DEFAULT_ACCESS.get(stage)) if words else DUNNO
        return run, status

    def check_client(self, request: Request, state: CheckState) -> Verdict:
        run, status = self._stage("client", request, state, None, request.client_label, CLIENT)
        state.defer_if_permit_client = run.defer_if_permit
        return run.verdict

    def check_helo(self, request: Request, state: CheckState) -> Verdict:
        if request.helo is None:
            return Verdict()
        run, status = self._stage("helo", request, state, state.defer_if_permit_client, request.helo, HELO)
        state.defer_if_permit_helo = run.defer_if_permit
        return run.verdict

    def check_mail(self, request: Request, state: CheckState) -> Verdict:
        if request.sender is None:
            return Verdict()
        run, status = self._stage("sender", request, state,
                                  state.defer_if_permit_client or state.defer_if_permit_helo,
                                  internal_form(request.sender), SENDER)
        state.defer_if_permit_sender = run.defer_if_permit
        return run.verdict

    def check_rcpt(self, request: Request, state: CheckState) -> Verdict:
        recipient = request.recipient
        if recipient.lower() == "postmaster":
            return Verdict()
        events: list[tuple[str, str]] = []
        if self.delay_reject:
            for check in (self.check_client, self.check_helo, self.check_mail):
                verdict = check(request, state)
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
            status = run.run_list(words, internal_form(recipient), RECIPIENT, "check_recipient_access") if words else DUNNO
            if status == REJECT:
                break
        run.finish(status)
        run.verdict.events[:0] = events
        return run.verdict

    def check_data(self, request: Request, state: CheckState) -> Verdict:
        run, status = self._stage("data", request, state, None, "DATA", DATA)
        run.finish(status)
        return run.verdict

    def check_end_of_data(self, request: Request, state: CheckState) -> Verdict:
        run, status = self._stage("end_of_data", request, state, None, "END-OF-MESSAGE", END_OF_DATA)
        run.finish(status)
        return run.verdict

    def close(self) -> None:
        for maps in self.tables.values():
            maps.close()
        if self.sender_login_maps is not None:
            self.sender_login_maps.close()
