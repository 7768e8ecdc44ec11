"""Next-hop resolution for the delivery path: address class, transport_maps and nexthop syntax."""
from pyfastmta.resolve.nexthop import Nexthop, parse_nexthop, parse_nexthops
from pyfastmta.resolve.resolver import AddressResolver, DomainList, Resolution
from pyfastmta.resolve.transport import transport_lookup

__all__ = [
    "AddressResolver", "DomainList", "Nexthop", "Resolution",
    "parse_nexthop", "parse_nexthops", "transport_lookup",
]
