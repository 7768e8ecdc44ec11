"""The host's own network interfaces, for the mynetworks default and inet_protocols checks, and
the domains that name this host."""
from __future__ import annotations

import array
import fcntl
import ipaddress
import socket
import struct

from pyfastmta.config.errors import ConfigError
from pyfastmta.config.mastercf import protocol_families

InterfaceAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_SIOCGIFCONF = 0x8912
_SIOCGIFNETMASK = 0x891B
_IFNAMSIZ = 16
_MAX_INTERFACES = 256


def _ifreq_size() -> int:
    # struct ifreq is the name plus a union whose largest member is struct ifmap (two longs and
    # five bytes, padded to a long) or a 16-byte sockaddr.
    long_size = struct.calcsize("L")
    ifmap = -(-(2 * long_size + 5) // long_size) * long_size
    return _IFNAMSIZ + max(16, ifmap)


def ipv4_interfaces() -> list[ipaddress.IPv4Interface]:
    """IPv4 address and netmask of every configured interface, in the kernel's order."""
    record = _ifreq_size()
    found: list[ipaddress.IPv4Interface] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            buffer = array.array("B", bytes(record * _MAX_INTERFACES))
            request = struct.pack("iL", len(buffer), buffer.buffer_info()[0])
            used = struct.unpack("iL", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, request))[0]
            data = buffer.tobytes()[:used]
            for offset in range(0, used, record):
                name = data[offset:offset + _IFNAMSIZ]
                address = socket.inet_ntoa(data[offset + 20:offset + 24])
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, name + bytes(record - _IFNAMSIZ))
                netmask = socket.inet_ntoa(reply[20:24])
                found.append(ipaddress.IPv4Interface(f"{address}/{netmask}"))
    except OSError:
        # No SIOCGIFCONF (not Linux): loopback is the one network every host has.
        return [ipaddress.IPv4Interface("127.0.0.1/8")]
    return found


def ipv6_interfaces() -> list[ipaddress.IPv6Interface]:
    """IPv6 address and prefix of every configured interface, ordered by interface index."""
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            rows = [line.split() for line in table if line.strip()]
    except OSError:
        return [ipaddress.IPv6Interface("::1/128")] if ipv6_supported() else []
    entries = []
    for row in rows:
        address = ipaddress.IPv6Address(bytes.fromhex(row[0]))
        entries.append((int(row[1], 16), ipaddress.IPv6Interface(f"{address}/{int(row[2], 16)}")))
    entries.sort(key=lambda entry: entry[0])
    return [interface for _, interface in entries]


def ipv6_supported() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def _classful_network(address: ipaddress.IPv4Address) -> ipaddress.IPv4Network:
    first = int(address) >> 24
    prefix = 8 if first < 128 else 16 if first < 192 else 24 if first < 224 else 4
    return ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)


def networks_for_style(style: str, ipv4: bool, ipv6: bool) -> list[str]:
    """The mynetworks default for mynetworks_style, written the way Postfix writes it."""
    entries: list[str] = []
    if ipv4:
        for interface in ipv4_interfaces():
            if style == "host":
                entries.append(f"{interface.ip}/32")
            elif style == "class":
                entries.append(str(_classful_network(interface.ip)))
            else:
                entries.append(str(interface.network))
    if ipv6:
        for interface in ipv6_interfaces():
            network = ipaddress.IPv6Network(f"{interface.ip}/128") if style == "host" else interface.network
            entries.append(f"[{network.network_address}]/{network.prefixlen}")
    unique: list[str] = []
    for entry in entries:
        if entry not in unique:
            unique.append(entry)
    return unique


def own_addresses(interfaces: list[str], ipv4: bool, ipv6: bool) -> list[str]:
    """The addresses named by inet_interfaces or proxy_interfaces ("all", "loopback-only", or
    addresses and host names): mail sent to one of them comes back to this host. Raises
    ValueError for a name that has no address."""
    words = [word.lower() for word in interfaces]
    if words == ["all"]:
        return ([str(i.ip) for i in ipv4_interfaces()] if ipv4 else []) + \
               ([str(i.ip) for i in ipv6_interfaces()] if ipv6 else [])
    if words == ["loopback-only"]:
        return (["127.0.0.1"] if ipv4 else []) + (["::1"] if ipv6 else [])
    found: list[str] = []
    for interface in interfaces:
        literal = interface[1:-1] if interface.startswith("[") and interface.endswith("]") else interface
        try:
            addresses = [str(ipaddress.ip_address(literal))]
        except ValueError:
            try:
                infos = socket.getaddrinfo(literal, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as error:
                raise ValueError(f'cannot find the address of host "{literal}": {error}') from None
            addresses = [str(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos]
        for address in addresses:
            if address not in found:
                found.append(address)
    return found


def host_addresses(config) -> list[str]:
    """This host's addresses for mail (inet_interfaces and proxy_interfaces): a domain literal
    naming one is local, and an MX host at one is this host."""
    ipv4, ipv6 = protocol_families(config.get("inet_protocols"), ipv6_supported())
    found: list[str] = []
    for name in ("inet_interfaces", "proxy_interfaces"):
        try:
            addresses = own_addresses(config.get(name), ipv4, ipv6)
        except ValueError as error:
            raise ConfigError(config.main_cf_path, None, f"{name}: {error}") from None
        found.extend(address for address in addresses if address not in found)
    return found


def literal_address(domain: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in a [a.b.c.d] or [IPv6:...] domain literal, None when it holds none."""
    body = domain[1:-1]
    if body[:5].lower() == "ipv6:":
        try:
            return ipaddress.IPv6Address(body[5:])
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(body)
    except ValueError:
        return None


class LocalDomains:
    """The domains trivial-rewrite calls local: $mydestination, and address literals of this
    host (inet_interfaces and proxy_interfaces), however the literal spells the address."""

    def __init__(self, mydestination, addresses) -> None:
        self.mydestination = mydestination
        self.addresses = frozenset(ip for ip in map(_ip, addresses) if ip is not None)

    def matches(self, domain: str) -> bool:
        domain = domain.rstrip(".")
        if self.mydestination.matches(domain):
            return True
        return domain.startswith("[") and domain.endswith("]") and \
            literal_address(domain) in self.addresses


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
