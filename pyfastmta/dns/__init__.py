"""DNS for the delivery path: a domain's mail exchangers and their addresses (see resolver.py)."""

from .resolver import Destination, DnsError, DnsResolver, MxHost, Negative

__all__ = ["Destination", "DnsError", "DnsResolver", "MxHost", "Negative"]
