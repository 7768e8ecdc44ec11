"""Access tables for smtpd (access(5)): which keys a client, HELO name or address is looked up
under, in Postfix's order, and what a table's answer means.

Keys, most specific first (Maps.search tries every table for one key before the next key;
pattern tables see only the first key of each search):
  client    host name, then its parent domains; then the address, then its network prefixes
            (1.2.3.4, 1.2.3, 1.2, 1; an IPv6 address loses one ":group" at a time)
  helo      the name, then its parent domains (a name that is an IP address: itself only)
  address   user+ext@domain, user@domain, domain, its parent domains, user+ext@, user@
Parent domains are "example.com" when smtpd_access_maps is in parent_domain_matches_subdomains
(the default) and ".example.com" when it is not.
"""

from __future__ import annotations

import functools
import ipaddress

from pyfastmta.maps.addresses import find_unquoted, split_extension

# What is being refused, as Postfix names it in replies.
CLIENT = "Client host"
HELO = "Helo command"
SENDER = "Sender address"
RECIPIENT = "Recipient address"
DATA = "Data command"
END_OF_DATA = "End-of-data"

# Enhanced status codes that describe an address, corrected for the address being refused.
_SENDER_DSN = {"1": "4.1.7", "2": "4.1.8", "3": "4.1.7", "4": "4.1.7", "5": "4.1.0", "6": "4.1.7",
               "7": "4.1.7", "8": "4.1.8"}
_RECIPIENT_DSN = {"1": "4.1.1", "2": "4.1.2", "3": "4.1.3", "4": "4.1.4", "5": "4.1.5", "6": "4.1.6",
                  "7": "4.1.3", "8": "4.1.2"}


def dsn_valid(text: str) -> int:
    """Length of the RFC 3463 status code at the start of text (2/4/5.d{1,3}.d{1,3}), or 0."""
    if len(text) < 2 or text[0] not in "245" or text[1] != ".":
        return 0
    position = 2
    for limit, end_ok in ((3, "."), (3, None)):
        start = position
        while position < len(text) and text[position].isdigit() and position - start < limit:
            position += 1
        if position == start:
            return 0
        if end_ok is not None:
            if position >= len(text) or text[position] != ".":
                return 0
            position += 1
        elif position < len(text) and not text[position].isspace():
            return 0
    return position


def dsn_split(default: str, text: str) -> tuple[str, str]:
    """(status code, free text): the status code that starts text, else the default."""
    text = text.lstrip()
    length = dsn_valid(text)
    if length:
        return text[:length], text[length:].lstrip()
    return default, text


def dsn_fix(status: str, reply_class: str) -> str:
    """An address status code (X.1.Y) made to fit what is refused: a sender, a recipient, or
    something that is not an address."""
    if not (status[:1].isdigit() and status[1:4] == ".1."):
        return status
    if reply_class == SENDER:
        return _SENDER_DSN.get(status[4:], "4.1.0")
    if reply_class == RECIPIENT:
        return _RECIPIENT_DSN.get(status[4:], "4.1.0")
    return "4.0.0"


def _parents(domain: str, parent_style: bool) -> list[str]:
    keys = [domain]
    dot = domain.find(".", 1)
    while dot >= 0:
        keys.append(domain[dot + 1:] if parent_style else domain[dot:])
        dot = domain.find(".", dot + 1)
    return keys


@functools.lru_cache(maxsize=4096)  # client names and addresses repeat; parsing one does not
def is_host_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def domain_keys(domain: str, parent_style: bool) -> list[str]:
    """A host name and its parent domains; an IP address, or a name ending in a dot, as is."""
    if not domain:
        return []
    if is_host_address(domain):
        return [domain]
    return _parents(domain, parent_style)


def network_keys(address: str) -> list[str]:
    """An address and its shorter prefixes, cut at "." (IPv4) or ":" (IPv6)."""
    separator = ":" if ":" in address else "."
    keys = [address]
    cut = address.rfind(separator)
    while cut > 0:
        address = address[:cut]
        keys.append(address)
        cut = address.rfind(separator)
    return keys


def address_keys(address: str, recipient_delimiter: str, parent_style: bool) -> list[str]:
    """The search order of check_sender_access and check_recipient_access."""
    at = find_unquoted(address, "@", last=True)
    if at < 0:
        local, domain = address, ""
    else:
        local, domain = address[:at], address[at + 1:]
    base, extension = split_extension(local, recipient_delimiter)
    keys = [address]
    if extension:
        keys.append(f"{base}@{domain}" if at >= 0 else base)
    if at >= 0:
        if domain:
            keys.extend(_parents(domain, parent_style))
        keys.append(f"{local}@")
        if extension:
            keys.append(f"{base}@")
    return keys


class Action:
    """One parsed access table value.

    kind: "ok", "dunno", "reject" (code, dsn and text set), "defer_if_permit", "defer_if_reject",
    "warn", "info", "discard", "restrictions" (words: a restriction list to evaluate), one of
    the actions that change the message ("hold", "prepend", "redirect", "bcc", "filter"), or
    "unsupported" (text names the action). text is the text after the action word.
    """

    __slots__ = ("kind", "code", "dsn", "text", "words")

    def __init__(self, kind: str, code: int = 0, dsn: str = "", text: str = "",
                 words: list[str] | None = None) -> None:
        self.kind = kind
        self.code = code
        self.dsn = dsn
        self.text = text
        self.words = words or []


# Actions that change the message rather than the reply: smtpd keeps them for the queueing of
# the message (restrictions.CheckState), cleanup and the queue manager carry them out.
MESSAGE_ACTIONS = {"HOLD": "hold", "PREPEND": "prepend", "REDIRECT": "redirect", "BCC": "bcc",
                   "FILTER": "filter"}
# Known to Postfix, not carried out by this server.
_UNSUPPORTED_ACTIONS = {"HANGUP"}


def is_header(text: str) -> bool:
    """Whether text starts like a message header: a name of printable ASCII characters other
    than space and colon, optional blanks, then a colon (what PREPEND must give)."""
    position = 0
    length = len(text)
    while position < length:
        char = text[position]
        if char == ":":
            return position > 0
        if char in " \t":
            if position == 0:
                return False
            while position < length and text[position] in " \t":
                position += 1
            return position < length and text[position] == ":"
        if not (" " < char < "\x7f"):
            return False
        position += 1
    return False


def parse_action(value: str, *, reject_code: int, defer_code: int, split_list) -> Action:
    """What an access table value means. reject_code/defer_code: access_map_reject_code and
    access_map_defer_code. The dsn is not yet fixed for the reply class."""
    word, _, rest = value.strip().partition(" ")
    if "\t" in word:
        word, _, more = word.partition("\t")
        rest = f"{more} {rest}" if rest else more
    rest = rest.strip()
    upper = word.upper()
    if upper == "DUNNO":
        return Action("dunno")
    if upper in ("OK", "RELAY") or value.strip().isdigit():
        return Action("ok", text=word)
    if upper == "REJECT":
        dsn, text = dsn_split("5.7.1", rest)
        return Action("reject", reject_code, dsn, text or "Access denied")
    if upper == "DEFER":
        dsn, text = dsn_split("4.7.1", rest)
        return Action("reject", defer_code, dsn, text or "Access denied")
    if upper == "DEFER_IF_PERMIT":
        dsn, text = dsn_split("4.7.1", rest)
        return Action("defer_if_permit", defer_code, dsn, text or "Service unavailable")
    if upper == "DEFER_IF_REJECT":
        dsn, text = dsn_split("4.7.1", rest)
        return Action("defer_if_reject", defer_code, dsn, text or "Service unavailable")
    if upper == "WARN":
        return Action("warn", text=rest)
    if upper == "INFO":
        return Action("info", text=rest)
    if upper == "DISCARD":
        return Action("discard", text=rest)
    if upper in MESSAGE_ACTIONS:
        return Action(MESSAGE_ACTIONS[upper], text=rest)
    if upper in _UNSUPPORTED_ACTIONS:
        return Action("unsupported", text=upper)
    if len(word) == 3 and word[0] in "45" and word[1:].isdigit() and rest:
        dsn, text = dsn_split(f"{word[0]}.7.1", rest)
        return Action("reject", int(word), dsn, text or "Access denied")
    return Action("restrictions", words=split_list(value))
