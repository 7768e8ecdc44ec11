"""hash: tables: a postmap source file compiled into a hash table file (ext/hashtable) beside it.

`hash:/etc/postfix/access` is searched in /etc/postfix/access.pfm, which `pyfastmta postmap`
writes; the suffix differs from Postfix's `.db` so that both programs can keep their own database
next to the same source file. A lookup goes straight to the compiled code: the table's get is the
mapped file's get.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pyfastmta._ext.hashtable import HashFile, HashFileError, HashWriter
from pyfastmta.maps.table import FileSignature, Table, TableError

SUFFIX = ".pfm"


def database_path(name: str) -> str:
    return name + SUFFIX


def database_mode(source: str, inherit: bool = True) -> int:
    """Postfix's rule: the database gets its source file's group and other read permissions
    (postmap -p: 0644 instead)."""
    if not inherit:
        return 0o644
    try:
        return 0o600 | (os.stat(source).st_mode & 0o044)
    except OSError:
        return 0o644


class HashTable(Table):
    kind = "hash"

    def __init__(self, name: str, file: HashFile, signature: FileSignature,
                 warnings: list[str]) -> None:
        super().__init__(name)
        self.file = file
        # An instance attribute in front of Table.get: no Python frame between a caller and the
        # compiled lookup.
        self.get = file.get
        self.fold = file.fold
        self._signature = signature
        self.warnings = warnings

    def changed(self) -> bool:
        return self._signature.changed()

    def close(self) -> None:
        self.file.close()

    def items(self):
        """(key, value) of every entry, in the file's order (postmap -s)."""
        return self.file.items()

    def __len__(self) -> int:
        return len(self.file)


def open_hash(name: str, options, *, fold: bool = True) -> HashTable:
    path = database_path(name)
    signature = FileSignature(path)  # before opening: a replacement during the open shows as a change
    try:
        file = HashFile(path, fold, options.smtputf8_enable)
    except HashFileError as error:
        if not os.path.exists(path):
            raise TableError(f"hash:{name}: open database {path}: No such file or directory "
                             f"(run pyfastmta postmap hash:{name} to create it)") from None
        raise TableError(f"hash:{name}: {error}") from None
    warnings: list[str] = []
    try:
        if os.stat(name).st_mtime_ns > os.stat(path).st_mtime_ns:
            warnings.append(f"database {path} is older than source file {name}")
    except OSError:
        pass
    return HashTable(name, file, signature, warnings)


def read_source_file(name: str) -> bytes:
    """The bytes of a source file that postmap or postalias compiles."""
    try:
        with open(name, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise TableError(f"open {name}: {error.strerror}") from None


def compile_source(name: str, *, fold: bool = True, smtputf8: bool = True,
                   on_duplicate: str = "warn", inherit_mode: bool = True,
                   sync: bool = True) -> tuple[int, list[str]]:
    """Compile the postmap source file `name` into its database; (entries, warnings)."""
    source = read_source_file(name)
    writer = HashWriter(on_duplicate, name)
    writer.add_source(source, fold, smtputf8)
    del source
    try:
        count = writer.write(database_path(name), database_mode(name, inherit_mode), sync)
    except HashFileError as error:
        raise TableError(str(error)) from None
    return count, list(writer.warnings)


def rewrite(name: str, *, fold: bool = True, smtputf8: bool = True, on_duplicate: str = "warn",
            delete: list[bytes] | None = None,
            add: Callable[[HashWriter], int] | None = None, source_label: str = "stdin",
            inherit_mode: bool = True, create: bool = False) -> tuple[int, set[bytes], list[str]]:
    """A new database from an existing one: keys in `delete` (already folded) left out, then
    add(writer) puts in new entries and says how many (postmap -i: writer.add_source). The file
    is written only when something changed. (entries, deleted keys, warnings)."""
    path = database_path(name)
    writer = HashWriter(on_duplicate, source_label)
    deleted: set[bytes] = set()
    wanted = set(delete or ())
    try:
        existing = HashFile(path, fold, smtputf8)
    except HashFileError as error:
        if not (create and not os.path.exists(path)):
            raise TableError(str(error)) from None
        existing = None
    if existing is not None:
        try:
            for key, value in existing.records():
                if key in wanted and key not in deleted:
                    deleted.add(key)
                    continue
                writer.add(key, value)
        except HashFileError as error:
            raise TableError(str(error)) from None
        finally:
            existing.close()
    added = add(writer) if add is not None else 0
    if existing is not None and not deleted and not added:
        return len(writer), deleted, list(writer.warnings)
    try:
        count = writer.write(path, database_mode(name, inherit_mode))
    except HashFileError as error:
        raise TableError(str(error)) from None
    return count, deleted, list(writer.warnings)
