"""RFC 5322 dates as Postfix writes them: `Mon, 23 Nov 2026 12:39:22 +0000 (UTC)`."""

import time

_cached_second = -1
_cached_text = ""


def mail_date(now: float) -> str:
    global _cached_second, _cached_text
    second = int(now)
    if second != _cached_second:
        local = time.localtime(second)
        _cached_text = time.strftime("%a, %d %b %Y %H:%M:%S %z (%Z)", local)
        _cached_second = second
    return _cached_text
