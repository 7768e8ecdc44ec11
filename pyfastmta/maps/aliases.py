"""aliases(5) files, compiled by postalias and newaliases into the same hash table file as postmap.

A logical line (continued by lines that start with white space, as in postmap's source) is
`name: value`. Both sides are read as RFC 822 tokens, as Postfix's postalias reads them: the name
is stored unquoted and folded (`"Jane Doe": ...` is found as `jane doe`), the value is stored
re-quoted with one canonical spacing (`a ,b` becomes `a, b`), so that it parses the same way when
it is looked up. A name with `@` or `%` in it is not local and is skipped with a warning. As
postalias does, the table also gets the entry `@` -> `@` that tells Sendmail-style readers the
database is complete.
"""

from __future__ import annotations

from pyfastmta._ext.hashtable import HashFileError, HashWriter
from pyfastmta.maps.hashfile import database_mode, database_path, read_source_file
from pyfastmta.maps.source import fold_key, read_logical_lines
from pyfastmta.maps.table import TableError

_SPACE = " \t\n\v\f\r"
_SPECIALS = '()<>@,;:\\".[]'
# Characters a quoted string escapes with a backslash when it is written back.
_QUOTE_ESCAPED = '"\\\r\n'

ATOM, QSTRING, COMMENT, DOMLIT = "atom", "qstring", "comment", "domlit"
_WORDS = (ATOM, QSTRING, COMMENT, DOMLIT)


def tokenize(text: str) -> list[tuple[str, str]]:
    """RFC 822 tokens (kind, text): atoms, quoted strings (text unquoted), comments (with their
    parentheses), domain literals (without brackets), and one-character operators (kind == text).
    Unterminated quotes, comments and literals end at the end of the text."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif c == "(":
            depth, j = 0, i
            while j < n:
                if text[j] == "\\" and j + 1 < n:
                    j += 2
                    continue
                if text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    depth -= 1
                    if depth == 0:
                        j += 1
                        break
                j += 1
            # An unterminated comment is closed at the end of the text.
            tokens.append((COMMENT, text[i:j] + ")" * max(depth, 0)))
            i = j
        elif c == '"':
            value, i = _until(text, i + 1, '"')
            tokens.append((QSTRING, value))
        elif c == "[":
            value, i = _until(text, i + 1, "]")
            tokens.append((DOMLIT, value))
        elif c in _SPECIALS and c != "\\":
            tokens.append((c, c))
            i += 1
        else:
            # An atom; a backslash takes the next character into it, whatever it is.
            chars: list[str] = []
            quoted = False
            while i < n:
                c = text[i]
                if c == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    quoted = True
                    i += 2
                    continue
                if c in _SPACE or c in _SPECIALS or ord(c) < 32 or ord(c) == 127:
                    break
                chars.append(c)
                i += 1
            if not chars and i < n:  # a lone control character or trailing backslash
                chars.append(text[i])
                i += 1
            word = "".join(chars)
            needs_quotes = quoted and any(ch in _SPACE or ch in _SPECIALS for ch in word)
            tokens.append((QSTRING if needs_quotes else ATOM, word))
    return tokens


def _until(text: str, i: int, close: str) -> tuple[str, int]:
    chars: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            chars.append(text[i + 1])
            i += 2
            continue
        if c == close:
            return "".join(chars), i + 1
        chars.append(c)
        i += 1
    return "".join(chars), n


def _space_after(token: tuple[str, str], following: tuple[str, str] | None) -> bool:
    if token[0] == ",":  # even at the end: "a," is written "a, "
        return True
    if following is None:
        return False
    if following[0] == "<":
        return True
    return token[0] in _WORDS and following[0] in _WORDS


def _join(tokens: list[tuple[str, str]], external: bool) -> str:
    out: list[str] = []
    for position, token in enumerate(tokens):
        kind, text = token
        if kind == QSTRING:
            if external:
                out.append('"' + "".join("\\" + c if c in _QUOTE_ESCAPED else c for c in text) + '"')
            else:
                out.append(text)
        elif kind == DOMLIT:
            out.append(f"[{text}]")
        else:
            out.append(text)
        if _space_after(token, tokens[position + 1] if position + 1 < len(tokens) else None):
            out.append(" ")
    return "".join(out)


def internalize(tokens: list[tuple[str, str]]) -> str:
    """Tokens as one string with quotes removed (how an address is compared)."""
    return _join(tokens, False)


def externalize(tokens: list[tuple[str, str]]) -> str:
    """Tokens as one string, quoted where needed (how it is parsed again)."""
    return _join(tokens, True)


def parse_entry(text: str) -> tuple[str, str] | str:
    """(name, value) of one logical line, or the warning for a line that is not an alias."""
    tokens = tokenize(text)
    colon = next((i for i, token in enumerate(tokens) if token[0] == ":"), None)
    if colon is None or colon == 0 or colon == len(tokens) - 1:
        return "need name:value pair"
    if any(token[0] in ("@", "%") or (token[0] == ATOM and "%" in token[1])
           for token in tokens[:colon]):
        return "name must be local"
    name = internalize(tokens[:colon])
    if not name:
        return "zero-length key"
    return name, externalize(tokens[colon + 1:])


def add_aliases(writer: HashWriter, source: bytes, label: str, *, fold: bool = True,
                smtputf8: bool = True) -> int:
    """The aliases in source added to writer; warnings go to writer's list through add()."""
    warnings: list[str] = []
    added = 0
    for number, raw in read_logical_lines(source, label, warnings, utf8=smtputf8):
        try:
            text = raw.decode("utf-8") if smtputf8 else raw.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:
            warnings.append(f'{label}:{number}: non-UTF-8 input "{raw.decode("utf-8", "replace")}" '
                            "-- ignoring this line")
            continue
        entry = parse_entry(text)
        if isinstance(entry, str):
            warnings.append(f"{label}:{number}: {entry}")
            continue
        name, value = entry
        if fold:
            name = fold_key(name, smtputf8)
        writer.add(name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"),
                   number)
        added += 1
    writer.warnings[:0] = warnings
    return added


def compile_aliases(name: str, *, fold: bool = True, smtputf8: bool = True,
                    on_duplicate: str = "warn", inherit_mode: bool = True) -> tuple[int, list[str]]:
    """Compile the aliases file `name` into its database; (entries, warnings)."""
    source = read_source_file(name)
    writer = HashWriter(on_duplicate, name)
    add_aliases(writer, source, name, fold=fold, smtputf8=smtputf8)
    # Sendmail's readers take an "@" entry to mean the database is complete.
    writer.add(b"@", b"@")
    try:
        count = writer.write(database_path(name), database_mode(name, inherit_mode))
    except HashFileError as error:
        raise TableError(str(error)) from None
    return count, list(writer.warnings)


__all__ = ["add_aliases", "compile_aliases", "externalize",
           "internalize", "parse_entry", "tokenize"]
