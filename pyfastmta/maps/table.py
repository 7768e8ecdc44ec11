"""The common shape of a lookup table, and a parameter's list of tables (Postfix's MAPS).

A table answers get(key) with a value or None (not found); it never raises for a key it lacks.
A table whose source or database file changes on disk reports changed(), and a Maps list opens it
again, so a new table is used without a restart (Postfix daemons restart themselves for that).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence


class TableError(Exception):
    """A table that cannot be opened or searched. The message names the table (`type:name`), and
    for a source file the line, as `file:line: ...`."""


class TableTemporaryError(TableError):
    """A lookup that could not be answered now (server down, busy, slow): the caller defers, as
    Postfix does on a table's temporary error, instead of treating the key as not found."""


class Table:
    """One open table.

    kind        the type before the colon ("hash", "regexp" ...)
    name        what follows it (a path, or a `{...}` list for inline:, unionmap:, pipemap:)
    pattern     True for tables matched against whole strings (regexp:, pcre:, cidr:): address
                searches give them the full address only, never user@domain pieces.
    fold        True when keys are compared case-insensitively (lower-cased before lookup), as for
                every Postfix table that is not a pattern table.
    """

    kind = ""
    pattern = False
    fold = True

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.name}"

    def get(self, key: str) -> str | None:
        raise NotImplementedError

    def changed(self) -> bool:
        """Whether what the table was read from has changed since it was opened."""
        return False

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


class FileSignature:
    """What identifies a file's contents cheaply: device, inode, size and modification time."""

    __slots__ = ("path", "value")

    def __init__(self, path: str) -> None:
        self.path = path
        self.value = self._read()

    def _read(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        return self._read() != self.value


# How often a Maps list looks at its files: often enough that an edit shows within a second,
# seldom enough that a busy worker does not stat() per lookup.
_CHECK_INTERVAL = 1.0


class Maps:
    """A parameter's tables, searched in order: the first table that has the key answers
    (Postfix's maps_find). Tables whose files changed are opened again, at most once a second;
    a table that cannot be opened again keeps answering from its last good state."""

    def __init__(self, parameter: str, specs: Sequence[str], opener: Callable[[str], Table],
                 warn: Callable[[str], None] | None = None) -> None:
        self.parameter = parameter
        self._opener = opener
        self._warn = warn
        self.tables = [self._open(spec) for spec in specs]
        self._next_check = time.monotonic() + _CHECK_INTERVAL

    def _open(self, spec: str) -> Table:
        table = self._opener(spec)
        if self._warn is not None:
            # Lines a table skipped (as Postfix skips them), said once per opening.
            for warning in getattr(table, "warnings", ()):
                self._warn(f"{self.parameter}: {warning}")
        return table

    def __bool__(self) -> bool:
        return bool(self.tables)

    @property
    def pattern(self) -> bool:
        return any(table.pattern for table in self.tables)

    def get(self, key: str) -> str | None:
        found = self.search([key])
        return None if found is None else found[1]

    def find(self, keys: Sequence[str]) -> str | None:
        """A search over several keys, most specific first (Postfix's mail_addr_find and
        check_access): each key is tried in every table before the next key, so a more specific
        key in a later table wins over a less specific one in an earlier table. Pattern tables
        see only the first key (the whole address, domain or client), never the pieces."""
        found = self.search(keys)
        return None if found is None else found[1]

    def search(self, keys: Sequence[str]) -> tuple[int, str] | None:
        """As find(), and which key (its position in keys) found the value."""
        self._refresh()
        for position, key in enumerate(keys):
            for table in self.tables:
                if position and table.pattern:
                    continue
                value = table.get(key)
                if value is not None:
                    if not value:
                        # Postfix's maps_find: a table must say "not found", never "".
                        raise TableError(f"{table.spec} lookup of {key} returns an empty string result")
                    return position, value
        return None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + _CHECK_INTERVAL
        for position, table in enumerate(self.tables):
            if table.changed():
                try:
                    fresh = self._open(table.spec)
                except TableError as error:
                    if self._warn is not None:
                        self._warn(f"{self.parameter}: {error}; still using the table as it was")
                    continue
                table.close()
                self.tables[position] = fresh

    def close(self) -> None:
        for table in self.tables:
            table.close()
