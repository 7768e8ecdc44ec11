"""DNS for the delivery path: a domain's mail exchangers and their addresses (see resolver.py)."""

from .resolver import Destination, DnsError, DnsResolver, MxHost

__all__ = ["Destination", "DnsError", "DnsResolver", "MxHost"]
