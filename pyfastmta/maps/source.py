"""postmap's text format: the one reader of logical lines (Postfix's readllines()) shared by the
table types that read source files, and the `key whitespace value` entries of texthash:.

The text is bytes, read as Postfix reads it: lines end at "\\n" only, and white space is the C
locale's (space, \\t, \\n, \\v, \\f, \\r), so a "\\r" before the newline is white space that ends or
trims a field, never a line break. A logical line is a line that starts with non-blank text plus
the lines that follow it and start with white space (joined as they are, without the newline);
blank lines and lines whose first non-blank character is "#" are skipped and do not end a logical
line. A logical line that itself starts with white space (the file's first text is indented) is
skipped with a warning. The C code sees each logical line as a string, so a NUL byte ends it.

An entry is `key whitespace value`: the key ends at the first white space outside double quotes (a
backslash takes the next character as it is; quotes and backslashes stay in the key), the value is
the rest without surrounding white space. Lines that Postfix's texthash: skips with a warning
(no value, an unbalanced quote, non-UTF-8 text with smtputf8_enable) are skipped here with the
same warning, as `file:line: text`. Keys fold to lower case (full Unicode folding with
smtputf8_enable, ASCII otherwise); values keep their case. A repeated key keeps its first value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from pyfastmta.maps.table import TableError

C_SPACE = b" \t\n\r\x0b\x0c"  # C's isspace() in the C locale; Postfix's ISSPACE
_SPACE = re.compile(rb"[ \t\n\r\x0b\x0c]")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_key(text: str, smtputf8_enable: bool = True) -> str:
    """A key as Postfix folds it: ASCII keys (the common case) to lower case, others with full
    Unicode case folding when smtputf8_enable is on, or only their ASCII letters when off."""
    if text.isascii():
        return text.lower()  # for ASCII text exactly the ASCII fold, and far faster than translate
    if smtputf8_enable:
        return text.casefold()
    return text.translate(_ASCII_LOWER)


def printable(text: bytes, utf8: bool = True) -> str:
    """text as Postfix's logging shows it (printable(..., '?')): a byte that is not printable
    ASCII becomes "?", except, with smtputf8_enable, a UTF-8 lead byte and the continuation bytes
    after it. Bytes kept that are not valid UTF-8 stay as surrogate escapes."""
    if _PRINTABLE.fullmatch(text):
        return text.decode("ascii")
    shown = bytearray(text)
    position, end = 0, len(shown)
    while position < end:
        byte = shown[position]
        if 0x20 <= byte <= 0x7E:
            pass
        elif utf8 and 194 <= byte <= 254 and position + 1 < end and 0x80 <= shown[position + 1] < 0xC0:
            position += 1
            while position + 1 < end and 0x80 <= shown[position + 1] < 0xC0:
                position += 1
        else:
            shown[position] = 0x3F
        position += 1
    return shown.decode("utf-8", "surrogateescape")


def read_source(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise TableError(f"{path}: file not found") from None
    except OSError as error:
        raise TableError(f"{path}: cannot read: {error.strerror}") from None


def read_logical_lines(data: bytes, where: str, warnings: list[str], *,
                       utf8: bool = True) -> list[tuple[int, bytes]]:
    """(first line number, text) of each logical line, as Postfix's readllines() makes them and
    the C code sees them (up to a NUL byte). A logical line that starts with white space is left
    out, with Postfix's warning (its first 30 bytes, shown as Postfix logs them: utf8 is
    smtputf8_enable) in warnings as `where:line: ...`."""
    lines = _raw_logical_lines(data, where, warnings, utf8)
    return [(number, text.split(b"\0", 1)[0]) for number, text in lines]


def _raw_logical_lines(data: bytes, where: str, warnings: list[str],
                       utf8: bool) -> list[tuple[int, bytes]]:
    """As read_logical_lines, with any NUL bytes and the text after them still in place."""
    result: list[tuple[int, bytes]] = []
    current: list[bytes] | None = None
    first = 0

    def finish() -> None:
        text = current[0] if len(current) == 1 else b"".join(current)
        if text[0] in C_SPACE:
            visible = text.split(b"\0", 1)[0]  # "%.30s" stops at a NUL byte
            warnings.append(f'{where}:{first}: logical line must not start with whitespace: '
                            f'"{printable(visible[:30], utf8)}{"..." if len(text) > 30 else ""}"')
            return
        result.append((first, text))

    physical = data.split(b"\n")
    if physical[-1] == b"":
        physical.pop()
    for number, line in enumerate(physical, 1):
        if not line:
            continue
        head = line[0]
        if head in C_SPACE:
            content = line.lstrip(C_SPACE)
            if not content or content[0] == 0x23:  # blank, or a comment
                continue
            if current is not None:
                current.append(line)
                continue
        elif head == 0x23:
            continue
        if current is not None:
            finish()
        current, first = [line], number
    if current is not None:
        finish()
    return result


def logical_lines(source: bytes | str | Iterable[str], path: str,
                  warnings: list[str] | None = None) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each logical line, as text (undecodable bytes as surrogate
    escapes). A logical line that starts with white space goes to warnings, or, for a caller that
    gives no list, is a TableError."""
    if isinstance(source, str):
        data = source.encode("utf-8", "surrogateescape")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = "".join(source).encode("utf-8", "surrogateescape")
    found: list[str] = []
    lines = read_logical_lines(data, path, found)
    if found and warnings is None:
        raise TableError(found[0])
    if warnings is not None:
        warnings.extend(found)
    for number, text in lines:
        yield number, text.decode("utf-8", "surrogateescape")


def split_entry(text: bytes) -> tuple[bytes, bytes] | None:
    """(key, value) of a logical line as texthash: and postmap split it, or None when a double
    quote in the key is not closed. The value may be empty (the caller warns)."""
    match = _SPACE.search(text)
    end = match.start() if match else len(text)
    if b'"' in text[:end] or b"\\" in text[:end]:
        quoted = False
        end, size = 0, len(text)
        while end < size:
            byte = text[end]
            if byte == 0x5C:  # a backslash takes the next byte as it is
                end += 1
                if end >= size:
                    break
            elif byte in C_SPACE:
                if not quoted:
                    break
            elif byte == 0x22:
                quoted = not quoted
            end += 1
        if quoted:
            return None
    return text[:end], text[end + 1:].strip(C_SPACE)


def _valid_utf8(text: bytes) -> bool:
    if text.isascii():
        return True
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parse_entries(data: bytes, where: str, smtputf8_enable: bool = True,
                  warnings: list[str] | None = None, duplicates_fail: bool = False) -> dict[str, str]:
    """The entries of postmap source text, keys folded, as Postfix's texthash: reads them: a line
    it skips is skipped with its warning; a repeated key keeps its first value with a warning, or
    with duplicates_fail (as Postfix's daemons open a texthash: table) is a TableError."""
    if warnings is None:
        warnings = []
    entries: dict[str, str] = {}
    for number, raw in _raw_logical_lines(data, where, warnings, smtputf8_enable):
        text = raw.split(b"\0", 1)[0] if b"\0" in raw else raw
        # Postfix 3.7 checks the whole line, NUL bytes and what follows them included, unless the
        # text before the first NUL is plain ASCII (and not empty).
        if smtputf8_enable and (not text or not text.isascii()) and not _valid_utf8(raw):
            warnings.append(f'{where}:{number}: non-UTF-8 input "{printable(text, True)}" '
                            "-- ignoring this line")
            continue
        entry = split_entry(text)
        if entry is None:
            warnings.append(f"{where}:{number}: unbalanced '\"' in '{printable(text, smtputf8_enable)}' "
                            "-- ignoring this line")
            continue
        written, value = entry
        if not written or not value:
            warnings.append(f"{where}:{number}: expected format: key whitespace value "
                            "-- ignoring this line")
            continue
        if written[-1] == 0x3A:
            warnings.append(f'{where}:{number}: record is in "key: value" format; '
                            "is this an alias file?")
        key = fold_key(written.decode("utf-8", "surrogateescape"), smtputf8_enable)
        if key in entries:
            # Postfix names the key as the file spells it, not folded.
            message = f'{where}:{number}: duplicate entry: "{printable(written, smtputf8_enable)}"'
            if duplicates_fail:
                raise TableError(message)
            warnings.append(message)
            continue
        entries[key] = value.decode("utf-8", "surrogateescape")
    return entries


def read_entries(path: str, smtputf8_enable: bool = True, warnings: list[str] | None = None,
                 duplicates_fail: bool = False) -> dict[str, str]:
    """The entries of the source file at path (see parse_entries)."""
    return parse_entries(read_source(path), path, smtputf8_enable, warnings, duplicates_fail)
