"""Next-hop destinations as the SMTP and LMTP clients take them (smtp(8), lmtp(8) syntax).

Forms: ``host`` and ``host:port`` (MX lookup), ``[host]`` and ``[host]:port`` (no MX lookup),
``[addr]``, ``[ipv6:addr]`` or ``[addr]:port`` for an IP address, ``inet:host[:port]`` (LMTP's TCP
form, which connects to the host itself), and ``unix:/path`` (LMTP over a UNIX-domain socket).
A port may be a number or a service name from /etc/services.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pyfastmta.config.valuetypes import split_list


@dataclass(frozen=True, slots=True)
class Nexthop:
    """Where to connect: an inet host (and whether to look up its MX records) or a UNIX socket."""

    kind: str  # "inet" or "unix"
    host: str  # host name or address without brackets; "" for unix
    port: int | None  # None: the client's default port
    mx: bool  # look up MX records for host (False for [host], addresses, inet: and unix:)
    path: str | None = None  # socket path for unix


def parse_nexthop(text: str, *, default_port: int | None = None) -> Nexthop:
    """One destination; ValueError says what is wrong with it and how it should look."""
    text = text.strip()
    if not text:
        raise ValueError("empty next-hop destination: name a host, [host], host:port or unix:/path")
    lowered = text.lower()
    if lowered.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError(f'next-hop "{text}": unix: needs a socket path, as in unix:/var/run/lmtp')
        return Nexthop("unix", "", None, False, path)
    explicit_inet = lowered.startswith("inet:")
    rest = text[5:] if explicit_inet else text
    host, port_text, bracketed = _split_host_port(rest, text)
    port = _port(port_text, text) if port_text is not None else default_port
    address = _address(host)
    if address is not None:
        return Nexthop("inet", address, port, False)
    if bracketed and host.lower().startswith("ipv6:"):
        raise ValueError(f'next-hop "{text}": "{host[5:]}" is not an IPv6 address')
    _check_hostname(host, text)
    return Nexthop("inet", host.lower(), port, not (bracketed or explicit_inet))


def parse_nexthops(text: str, *, default_port: int | None = None) -> list[Nexthop]:
    """A list of destinations separated by commas or whitespace, tried in order."""
    items = split_list(text)
    if not items:
        raise ValueError("empty next-hop destination: name a host, [host], host:port or unix:/path")
    return [parse_nexthop(item, default_port=default_port) for item in items]


def _split_host_port(rest: str, text: str) -> tuple[str, str | None, bool]:
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError(f'next-hop "{text}": missing "]" after the host')
        host, after = rest[1:close], rest[close + 1:]
        if after and not after.startswith(":"):
            raise ValueError(f'next-hop "{text}": unexpected "{after}" after "]"; use [host]:port')
        return host, (after[1:] if after else None), True
    if rest.count(":") > 1:
        raise ValueError(f'next-hop "{text}": put an IPv6 address in brackets, as in [ipv6:{rest}]')
    host, colon, port = rest.partition(":")
    return host, (port if colon else None), False


def _port(port_text: str, text: str) -> int:
    if port_text.isdigit():
        port = int(port_text)
        if 0 < port < 65536:
            return port
        raise ValueError(f'next-hop "{text}": port {port_text} is out of range (1 to 65535)')
    if not port_text:
        raise ValueError(f'next-hop "{text}": missing port after ":"')
    try:
        return socket.getservbyname(port_text, "tcp")
    except OSError:
        raise ValueError(
            f'next-hop "{text}": unknown service "{port_text}"; give a port number instead'
        ) from None


def _address(host: str) -> str | None:
    """The IP address host names (with or without the ipv6: prefix), else None."""
    candidate = host[5:] if host.lower().startswith("ipv6:") else host
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _check_hostname(host: str, text: str) -> None:
    if not host:
        raise ValueError(f'next-hop "{text}": missing host name')
    for label in host.rstrip(".").split("."):
        if not label or not all(char.isalnum() or char in "-_" for char in label):
            raise ValueError(
                f'next-hop "{text}": "{host}" is not a host name (letters, digits, "-" and "_" '
                "between dots)"
            )
