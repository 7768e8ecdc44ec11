"""Reading master.cf: one service per logical line, Postfix syntax.

Columns: service type private unpriv chroot wakeup maxproc command [args]. Arguments may be
grouped with `{ ... }` (whitespace inside kept); `-o name=value` and `-o { name = value }`
override main.cf parameters for that service.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from pyfastmta.config.errors import ConfigError
from pyfastmta.config.expansion import NAME_CHARS
from pyfastmta.config.maincf import Setting, read_lines

SERVICE_TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
COLUMNS = ("service", "type", "private", "unpriv", "chroot", "wakeup", "maxproc", "command")
# What "-" means in the private, unpriv and chroot columns (Postfix 3 defaults).
_FLAG_DEFAULTS = {"private": True, "unpriv": True, "chroot": False}


@dataclass(slots=True)
class Service:
    """One master.cf entry."""

    name: str
    type: str
    private: bool
    unpriv: bool
    chroot: bool
    wakeup: int  # seconds between wake-up requests; 0 for none
    maxproc: int  # 0 means no limit
    command: str
    args: list[str]  # the arguments after the command, -o overrides not included
    overrides: dict[str, str]
    file: str
    line: int
    listen: list[tuple[str, int]] = field(default_factory=list)  # (host, port) for inet services
    # The eight columns and the arguments as written (-o normalised to name=value), for postconf -M.
    words: tuple[str, ...] = ()
    override_settings: dict[str, Setting] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    line: int
    braced: bool


def _entries(lines: list[str], path: str) -> list[list[_Token]]:
    """Logical lines as token lists; a {...} group is one token and may span lines."""
    entries: list[list[_Token]] = []
    current: list[_Token] | None = None
    chars: list[str] = []
    depth = 0
    token_line = 0
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        if depth == 0 and (not stripped or stripped.startswith("#")):
            continue
        if depth == 0 and not line[0].isspace():
            current = []
            entries.append(current)
        elif current is None:
            raise ConfigError(path, number, "a first line must not start with whitespace")
        for char in line + "\n":
            if depth == 0 and char.isspace():
                if chars:
                    current.append(_Token("".join(chars), token_line, chars[0] == "{"))
                    chars = []
                continue
            if not chars:
                token_line = number
            if char == "{":
                depth += 1
            elif char == "}" and depth:
                depth -= 1
            chars.append(char)
    if depth:
        raise ConfigError(path, token_line, 'missing "}"')
    return entries


def _flag(value: str, column: str, path: str, line: int) -> bool:
    if value == "-":
        return _FLAG_DEFAULTS[column]
    if value in ("y", "n"):
        return value == "y"
    raise ConfigError(path, line, f'bad {column} field "{value}": use y, n or -')


def _number(value: str, column: str, path: str, line: int, default: int) -> int:
    if value == "-":
        return default
    digits = value[:-1] if column == "wakeup" and value.endswith("?") else value
    if not digits.isdigit():
        raise ConfigError(path, line, f'bad {column} field "{value}": use a number or -')
    return int(digits)


def _unbrace(token: _Token) -> str:
    return token.text[1:-1].strip() if token.braced else token.text


def _needs_braces(word: str) -> bool:
    return any(char.isspace() for char in word)


def _override(tokens: list[_Token], index: int, path: str, line: int) -> Setting:
    if index >= len(tokens):
        raise ConfigError(path, line, '"-o" at the end of the line: use -o name=value')
    token = tokens[index]
    name, equals, value = _unbrace(token).partition("=")
    name = name.strip()
    if not equals or not name:
        raise ConfigError(path, token.line, f'bad "-o {token.text}": use -o name=value')
    if not set(name) <= NAME_CHARS:
        raise ConfigError(path, token.line, f'bad parameter name "{name}" in "-o {token.text}"')
    return Setting(name, value.strip(), path, token.line)


def parse_master_cf(path: str, default_process_limit: int) -> list[Service]:
    """The services of master.cf; listen addresses are filled in by the caller."""
    lines = read_lines(path)
    services: list[Service] = []
    seen: dict[tuple[str, str], int] = {}
    for tokens in _entries(lines, path):
        line = tokens[0].line
        if len(tokens) < len(COLUMNS):
            raise ConfigError(path, line, f"bad field count: {len(tokens)} fields where at least 8 are needed")
        columns = tuple(token.text for token in tokens[: len(COLUMNS)])
        name, kind = columns[0], columns[1]
        if kind not in SERVICE_TYPES:
            raise ConfigError(path, line, f'bad service type "{kind}": use one of {", ".join(SERVICE_TYPES)}')
        if (name, kind) in seen:
            raise ConfigError(path, line, f"duplicate service {name}/{kind} (first defined on line {seen[name, kind]})")
        seen[name, kind] = line
        args: list[str] = []
        overrides: dict[str, Setting] = {}
        words = list(columns)
        index = len(COLUMNS)
        while index < len(tokens):
            token = tokens[index]
            if token.text == "-o":
                setting = _override(tokens, index + 1, path, token.line)
                overrides.pop(setting.name, None)
                overrides[setting.name] = setting
                assignment = f"{setting.name}={setting.value}"
                words += ["-o", f"{{{assignment}}}" if _needs_braces(assignment) else assignment]
                index += 2
            else:
                args.append(_unbrace(token))
                words.append(f"{{{args[-1]}}}" if token.braced else token.text)
                index += 1
        services.append(Service(
            name=name,
            type=kind,
            private=_flag(columns[2], "private", path, line),
            unpriv=_flag(columns[3], "unpriv", path, line),
            chroot=_flag(columns[4], "chroot", path, line),
            wakeup=_number(columns[5], "wakeup", path, line, 0),
            maxproc=_number(columns[6], "maxproc", path, line, default_process_limit),
            command=columns[7],
            args=args,
            overrides={setting.name: setting.value for setting in overrides.values()},
            file=path,
            line=line,
            words=tuple(words),
            override_settings=overrides,
        ))
    return services


def protocol_families(protocols: list[str], ipv6_available: bool) -> tuple[bool, bool]:
    words = {word.lower() for word in protocols}
    everything = "all" in words
    return everything or "ipv4" in words, (everything and ipv6_available) or "ipv6" in words


def _resolve_host(host: str, port: int, ipv4: bool, ipv6: bool, where: tuple[str, int]) -> list[tuple[str, int]]:
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        address = None
    if address is not None:
        if (address.version == 4 and not ipv4) or (address.version == 6 and not ipv6):
            raise ConfigError(*where, f"address {literal} is of an IP version that inet_protocols excludes")
        return [(str(address), port)]
    family = socket.AF_UNSPEC if ipv4 and ipv6 else socket.AF_INET if ipv4 else socket.AF_INET6
    try:
        infos = socket.getaddrinfo(literal, port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ConfigError(*where, f'cannot find the address of host "{literal}": {error}') from None
    found: list[tuple[str, int]] = []
    for info in infos:
        entry = (str(ipaddress.ip_address(info[4][0].split("%")[0])), port)
        if entry not in found:
            found.append(entry)
    return found


def _split_host_port(name: str) -> tuple[str | None, str]:
    if name.startswith("["):
        close = name.find("]")
        if close > 0 and name[close + 1:close + 2] == ":":
            return name[:close + 1], name[close + 2:]
    host, colon, port = name.rpartition(":")
    return (host if colon else None), port


def listen_addresses(
    service: Service, inet_interfaces: list[str], inet_protocols: list[str], ipv6_available: bool
) -> list[tuple[str, int]]:
    """(host, port) pairs an inet service listens on, from its name and inet_interfaces."""
    where = (service.file, service.line)
    host, port_text = _split_host_port(service.name)
    if port_text.isdigit():
        port = int(port_text)
        if not 0 < port < 65536:
            raise ConfigError(*where, f"port {port} is out of range in service name {service.name}")
    else:
        try:
            port = socket.getservbyname(port_text, "tcp")
        except OSError:
            raise ConfigError(*where, f'unknown port or service name "{port_text}" in {service.name}') from None
    ipv4, ipv6 = protocol_families(inet_protocols, ipv6_available)
    if host:
        return _resolve_host(host, port, ipv4, ipv6, where)
    words = [word.lower() for word in inet_interfaces]
    if words == ["all"]:
        return ([("0.0.0.0", port)] if ipv4 else []) + ([("::", port)] if ipv6 else [])
    if words == ["loopback-only"]:
        return ([("127.0.0.1", port)] if ipv4 else []) + ([("::1", port)] if ipv6 else [])
    found: list[tuple[str, int]] = []
    for interface in inet_interfaces:
        for entry in _resolve_host(interface, port, ipv4, ipv6, where):
            if entry not in found:
                found.append(entry)
    return found
