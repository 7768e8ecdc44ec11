"""pyfastmta: a Postfix-compatible mail transfer agent with a compiled hot path."""

__version__ = "0.1.0"
