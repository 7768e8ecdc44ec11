"""Lookup tables ("maps"), named `type:name` as in Postfix: what they answer for a key, and the
search orders that turn an address, a domain or a client into keys."""

from pyfastmta.maps.registry import open_table, split_table_list, table_types
from pyfastmta.maps.table import Maps, Table, TableError, TableTemporaryError

__all__ = ["Maps", "Table", "TableError", "TableTemporaryError", "open_table", "split_table_list", "table_types"]
