"""The DSN parameters of MAIL and RCPT (RFC 3461: NOTIFY, RET, ENVID, ORCPT) as smtpd receives them.

Each parse_* function takes the text after `KEYWORD=` and returns the value in the form the queue
keeps, or raises DsnParameterError carrying the reply smtpd sends. Whatever is returned is free of
control characters, so a value decoded from xtext (`+0D`, `+0A`, `+00`) can never put a line break
or a NUL into a queue record or a header of a later notice.
"""

from __future__ import annotations

import re

# RFC 3461 section 4.4 and 4.2: lengths of the parameter as sent, before xtext decoding.
ENVID_MAX_LENGTH = 100
ORCPT_MAX_LENGTH = 500

_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")
_HEX = "0123456789ABCDEF"
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
# RFC 6533 utf-8-addr-xtext / unitext escape of one code point.
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DsnParameterError(ValueError):
    """A DSN parameter smtpd must refuse; `reply` is the SMTP reply to send."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _bad(keyword: str) -> DsnParameterError:
    return DsnParameterError(f"501 5.5.4 Bad {keyword} parameter syntax")


def xtext_decode(text: str) -> str:
    """Decodes RFC 3461 xtext; `+XX` escapes are bytes of UTF-8.

    Raises DsnParameterError for a character xtext does not allow, a bad `+XX` escape, or escaped
    bytes that are not UTF-8. Characters above ASCII pass through (RFC 6533 unitext).
    """
    if "+" not in text and "=" not in text and all(33 <= ord(c) <= 126 or ord(c) > 127 for c in text):
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "+":
            pair = text[i + 1:i + 3].upper()
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise DsnParameterError("501 5.5.4 Bad xtext escape: '+' must be followed by two hex digits")
            out.append(int(pair, 16))
            i += 3
            continue
        code = ord(c)
        if code == 61 or code < 33 or code == 127:  # "=", space, controls
            raise DsnParameterError("501 5.5.4 Bad xtext character")
        out += c.encode("utf-8")
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise DsnParameterError("501 5.5.4 Bad xtext: escaped bytes are not UTF-8") from None


def xtext_encode(text: str) -> str:
    """Encodes text as xtext: printable ASCII except `+` and `=` as is, all else as `+XX` bytes."""
    out = []
    for c in text:
        code = ord(c)
        if 33 <= code <= 126 and c != "+" and c != "=":
            out.append(c)
        else:
            out.extend(f"+{byte:02X}" for byte in c.encode("utf-8"))
    return "".join(out)


def parse_notify(value: str) -> str:
    """NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY; returns it upper case, in a fixed
    order, without duplicates."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return "NEVER"
    chosen = set()
    for word in words:
        if word not in _NOTIFY_ORDER:
            raise _bad("NOTIFY")
        chosen.add(word)
    return ",".join(word for word in _NOTIFY_ORDER if word in chosen)


def parse_ret(value: str) -> str:
    """RET=FULL or RET=HDRS, case-insensitive; returns it upper case."""
    upper = value.upper()
    if upper not in ("FULL", "HDRS"):
        raise _bad("RET")
    return upper


def parse_envid(value: str) -> str:
    """ENVID=xtext of at most 100 characters; returns the decoded text (printable ASCII)."""
    if not value or len(value) > ENVID_MAX_LENGTH:
        raise _bad("ENVID")
    try:
        decoded = xtext_decode(value)
    except DsnParameterError:
        raise _bad("ENVID") from None
    # RFC 3461: the decoded ENVID is printable US-ASCII (space allowed).
    if not decoded.isascii() or _CONTROL.search(decoded):
        raise _bad("ENVID")
    return decoded


def parse_orcpt(value: str) -> str:
    """ORCPT=addr-type;xtext; returns `type;decoded-address` with the type in lower case.

    The `utf-8` type (RFC 6533) also has its `\\x{HEX}` escapes decoded.
    """
    if len(value) > ORCPT_MAX_LENGTH:
        raise _bad("ORCPT")
    addr_type, semicolon, encoded = value.partition(";")
    if not semicolon or not encoded or not _ATOM.fullmatch(addr_type):
        raise _bad("ORCPT")
    addr_type = addr_type.lower()
    try:
        address = xtext_decode(encoded)
    except DsnParameterError:
        raise _bad("ORCPT") from None
    if addr_type == "utf-8":
        try:
            address = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), address)
        except (ValueError, OverflowError):
            raise _bad("ORCPT") from None
    if _CONTROL.search(address) or any(0xD800 <= ord(c) <= 0xDFFF for c in address):
        raise _bad("ORCPT")
    return f"{addr_type};{address}"
