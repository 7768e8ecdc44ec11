"""texthash: a postmap source file read straight into memory (no database file), as Postfix's
texthash: reads it (see pyfastmta.maps.source for the format and the lines it skips)."""

from __future__ import annotations

from collections.abc import Iterator

from pyfastmta.maps.source import fold_key, read_entries
from pyfastmta.maps.table import FileSignature, Table


class TextHashTable(Table):
    kind = "texthash"

    def __init__(self, name: str, entries: dict[str, str], smtputf8_enable: bool,
                 signature: FileSignature | None = None, warnings: list[str] | None = None) -> None:
        super().__init__(name)
        self._entries = entries
        self._smtputf8_enable = smtputf8_enable
        self._signature = signature
        self.warnings = warnings or []

    def get(self, key: str) -> str | None:
        if key.isascii():  # the common case, folded inline: one call less per lookup
            return self._entries.get(key.lower())
        return self._entries.get(fold_key(key, self._smtputf8_enable))

    def items(self) -> Iterator[tuple[str, str]]:
        """(folded key, value) of every entry, in the file's order (postmap -s)."""
        return iter(self._entries.items())

    def changed(self) -> bool:
        return self._signature is not None and self._signature.changed()

    def __len__(self) -> int:
        return len(self._entries)


def open_texthash(name: str, options) -> TextHashTable:
    signature = FileSignature(name)  # before reading: an edit during the read shows as a change
    warnings: list[str] = []
    entries = read_entries(name, options.smtputf8_enable, warnings, options.duplicates_fail)
    return TextHashTable(name, entries, options.smtputf8_enable, signature, warnings)
