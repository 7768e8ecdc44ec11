"""inline:{key=value, ...} and static:value — tables written into the parameter itself.

inline:{ key1=value1, { key2 = value with spaces, or commas } } — entries are separated by commas
or whitespace; an entry in braces may hold both, with whitespace around its "=" and at its ends
removed. Keys fold like any fixed table's; a repeated key takes the last value (no duplicate
check, as Postfix's inline table). static:text answers text for every key; static:{ text } strips
the braces and the whitespace inside them.
"""

from __future__ import annotations

from pyfastmta.maps.source import fold_key
from pyfastmta.maps.table import Table, TableError

# Postfix's separators inside {...} lists (comma and whitespace) and its ISSPACE (ASCII only).
LIST_SEPARATORS = ", \t\r\n"
SPACE = " \t\n\r\f\v"


def balanced_length(text: str, start: int = 0) -> int:
    """Length of the `{...}` group opening at text[start], closing brace included; 0 when
    text[start] is not "{" or the group never closes."""
    if start >= len(text) or text[start] != "{":
        return 0
    level = 1
    for position in range(start + 1, len(text)):
        char = text[position]
        if char == "}":
            level -= 1
            if level == 0:
                return position - start + 1
        elif char == "{":
            level += 1
    return 0


def split_braced_list(text: str) -> list[str]:
    """Tokens separated by runs of commas and whitespace, a `{...}` group never split (a
    closing brace outside any group is plain text)."""
    tokens: list[str] = []
    position, end = 0, len(text)
    while True:
        while position < end and text[position] in LIST_SEPARATORS:
            position += 1
        if position >= end:
            return tokens
        start, level = position, 0
        while position < end:
            char = text[position]
            if char == "{":
                level += 1
            elif char == "}" and level:
                level -= 1
            elif level == 0 and char in LIST_SEPARATORS:
                break
            position += 1
        tokens.append(text[start:position])


def strip_braces(text: str) -> tuple[str, str | None]:
    """The text inside a leading `{...}` with whitespace stripped, and an error message when
    the braces do not close or something follows the closing one."""
    length = balanced_length(text)
    if length == 0:
        return text[1:].strip(SPACE), f"missing '}}' in \"{text}\""
    inner = text[1:length - 1].strip(SPACE)
    if length != len(text):
        return inner, f"syntax error after '}}' in \"{text}\""
    return inner, None


def braced_list(kind: str, name: str, expected: str) -> str:
    """The text between the braces of a `{...}` table name; a TableError unless the name is
    exactly one non-empty brace group."""
    if len(name) < 3 or balanced_length(name) != len(name):
        raise TableError(f'{kind}:{name}: bad syntax; expected "{kind}:{expected}"')
    return name[1:-1]


def split_name_value(text: str) -> tuple[str, str]:
    """`name = value`: the name ends at whitespace or "="; whitespace around both is removed."""
    start = 0
    while start < len(text) and text[start] in SPACE:
        start += 1
    if start == len(text):
        raise ValueError("no key found; expected key=value")
    end = start
    while end < len(text) and text[end] not in SPACE and text[end] != "=":
        end += 1
    equals = end
    while equals < len(text) and text[equals] in SPACE:
        equals += 1
    if equals == len(text) or text[equals] != "=":
        raise ValueError(f"missing '=' after \"{text[start:end]}\"")
    return text[start:end], text[equals + 1:].strip(SPACE)


class InlineTable(Table):
    kind = "inline"

    def __init__(self, name: str, entries: dict[str, str], smtputf8_enable: bool) -> None:
        super().__init__(name)
        self._entries = entries
        self._smtputf8_enable = smtputf8_enable

    def get(self, key: str) -> str | None:
        return self._entries.get(fold_key(key, self._smtputf8_enable))

    def __len__(self) -> int:
        return len(self._entries)


class StaticTable(Table):
    kind = "static"

    def __init__(self, name: str, value: str) -> None:
        super().__init__(name)
        self.value = value

    def get(self, key: str) -> str | None:
        return self.value


def open_inline(name: str, options) -> InlineTable:
    expected = "{key=value, ...}"
    body = braced_list("inline", name, expected)
    entries: dict[str, str] = {}
    for token in split_braced_list(body):
        text = token
        if token.startswith("{"):
            text, error = strip_braces(token)
            if error:
                raise TableError(f'inline:{name}: {error}; expected "inline:{expected}"')
        try:
            key, value = split_name_value(text)
        except ValueError as error:
            raise TableError(f'inline:{name}: {error}; expected "inline:{expected}"') from None
        entries[fold_key(key, options.smtputf8_enable)] = value
    if not entries:
        raise TableError(f'inline:{name}: empty table; expected "inline:{expected}"')
    return InlineTable(name, entries, options.smtputf8_enable)


def open_static(name: str, options) -> StaticTable:
    value = name
    if name.startswith("{"):
        value, error = strip_braces(name)
        if error:
            raise TableError(f"static:{name}: bad syntax: {error}")
    return StaticTable(name, value)
