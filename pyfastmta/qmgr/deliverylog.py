"""Delivery log lines in Postfix's format, which log tools (pflogsumm and friends) parse:

    ID: to=<rcpt>, relay=host[addr]:port, delay=1.2, delays=0.01/0/0.3/0.9, dsn=2.0.0, status=sent (250 ...)
    ID: to=<rcpt>, orig_to=<as received>, relay=...     (when rewriting changed the recipient)

delays are: before the queue manager (arrival to active), in the queue manager (active to
delivery), connection setup (DNS, connect, greeting, HELO, TLS), and transmission.
"""

from __future__ import annotations


def format_delay(seconds: float) -> str:
    """Two significant digits at most, no more than two decimals (Postfix's
    delay_logging_resolution_limit default), integral seconds from 10 up."""
    if seconds < 0:
        seconds = 0.0
    if seconds >= 10:
        return str(int(seconds + 0.5))
    text = f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2f}"
    text = text.rstrip("0").rstrip(".")
    return text or "0"


def recipient_line(queue_id: str, address: str, *, relay: str, delay: float, delays: tuple[float, float, float, float],
                   dsn: str, status: str, reason: str, conn_use: int = 0, original: str | None = None) -> str:
    a, b, c, d = delays
    reuse = f", conn_use={conn_use}" if conn_use > 1 else ""
    orig = f", orig_to=<{original}>" if original and original != address else ""
    return (f"{queue_id}: to=<{address}>{orig}, relay={relay}{reuse}, delay={format_delay(delay)},"
            f" delays={format_delay(a)}/{format_delay(b)}/{format_delay(c)}/{format_delay(d)},"
            f" dsn={dsn}, status={status} ({reason})")
