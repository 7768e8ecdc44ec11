"""postmap's text format, shared by texthash:, the hash: compiler, inline: and aliases.

A logical line is `key whitespace value`; a line starting with whitespace continues the previous
one; blank lines and lines whose first non-blank character is "#" are skipped and do not end a
logical line. A key may hold whitespace inside double quotes. Keys fold to lower case (full
Unicode folding with smtputf8_enable, ASCII otherwise); values keep their case.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pyfastmta.maps.table import TableError

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_key(text: str, smtputf8_enable: bool = True) -> str:
    if smtputf8_enable and not text.isascii():
        return text.casefold()
    return text.translate(_ASCII_LOWER)


def read_source(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.readlines()
    except FileNotFoundError:
        raise TableError(f"{path}: file not found") from None
    except OSError as error:
        raise TableError(f"{path}: cannot read: {error.strerror}") from None


def logical_lines(lines: Iterable[str], path: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each logical line."""
    start = 0
    parts: list[str] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if not parts:
                raise TableError(f"{path}:{number}: a table's first line must not start with whitespace "
                                 "(whitespace at the start of a line continues the previous line)")
            parts.append(line)
            continue
        if parts:
            yield start, "".join(parts).rstrip()
        start, parts = number, [line]
    if parts:
        yield start, "".join(parts).rstrip()


def split_entry(text: str, path: str, line: int, *, value_required: bool = True) -> tuple[str, str]:
    """`key value`: the key ends at the first whitespace outside double quotes."""
    quoted = escaped = False
    end = len(text)
    for position, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char.isspace():
            end = position
            break
    if quoted:
        raise TableError(f"{path}:{line}: unbalanced '\"' in '{text}'; close the quoted key")
    key, value = text[:end], text[end:].strip()
    if not value and value_required:
        raise TableError(f'{path}:{line}: expected format: key whitespace value, found only "{key}"')
    return key, value


def read_entries(path: str, smtputf8_enable: bool = True,
                 warnings: list[str] | None = None) -> dict[str, str]:
    """The entries of a source file, keys folded; a repeated key keeps its first value (with a
    warning, as postmap gives)."""
    entries: dict[str, str] = {}
    for number, text in logical_lines(read_source(path), path):
        key, value = split_entry(text, path, number)
        key = fold_key(key, smtputf8_enable)
        if key in entries:
            if warnings is not None:
                warnings.append(f'{path}:{number}: duplicate entry: "{key}"')
            continue
        entries[key] = value
    return entries
