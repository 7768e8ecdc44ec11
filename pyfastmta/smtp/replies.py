"""Server replies as the delivery clients see them: status class, enhanced status code, log text."""

from __future__ import annotations

import re

# RFC 3463 enhanced status code at the start of a reply line.
_ENHANCED = re.compile(rb"([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


class Reply:
    __slots__ = ("code", "lines")

    def __init__(self, code: int, lines: list[bytes]):
        self.code = code
        self.lines = lines

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        """4xx, and anything outside 2xx..5xx: a reply the client cannot act on is never final."""
        return not (200 <= self.code < 300 or 500 <= self.code < 600)

    @property
    def dsn(self) -> str:
        """The enhanced status code the server gave when its class agrees with the reply
        code, otherwise one made from the reply code's class (as Postfix does)."""
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        if match and int(match.group(1)) == self.code // 100:
            return match.group(0).strip().decode("ascii")
        return f"{4 if self.temporary else self.code // 100}.0.0"

    @property
    def text(self) -> str:
        """The whole reply on one line, as log lines and bounces show it."""
        last = len(self.lines) - 1
        parts = [f"{self.code}{' ' if i == last else '-'}{line.decode('utf-8', 'replace')}"
                 for i, line in enumerate(self.lines)]
        # Control characters from the server never reach a log line.
        return "".join(c if c >= " " and c != "\x7f" else "?" for c in " ".join(parts)).rstrip()

    def __repr__(self) -> str:
        return f"Reply({self.text!r})"
