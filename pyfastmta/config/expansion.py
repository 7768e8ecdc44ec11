"""Postfix's $name expansion of parameter values.

Supported forms, as in main.cf(5): ``$name``, ``${name}``, ``$(name)``, ``$$``,
``${name?value}``, ``${name:value}``, ``${name?{value1}:{value2}}`` and the relational
form ``${{text1} op {text2} ? {value1} : {value2}}`` with op one of ``== != < <= > >=``
(numeric when both sides are all digits) or the same followed by ``level`` (compatibility
levels such as ``3.6`` compared field by field).

Whether ``name`` counts as set for ``?`` and ``:`` is decided on its value as written,
before expansion, which is what Postfix does.
"""
from __future__ import annotations

import re
from typing import Protocol

from pyfastmta.config.errors import ExpansionError

NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_REFERENCE = re.compile(r"\$\$|\$[{(]?\s*([A-Za-z0-9_]+)")
_RELATIONAL_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")


class Resolver(Protocol):
    def raw_value(self, name: str) -> str | None:
        """The value of name as written, None when the name is not defined."""

    def expanded_value(self, name: str) -> str | None:
        """The value of name after expansion, None when the name is not defined."""

    def undefined(self, name: str) -> None:
        """Told about a $name reference to a name that is not defined."""


def referenced_names(text: str) -> set[str]:
    """Every parameter name that text refers to, in any branch of a conditional."""
    return {match.group(1) for match in _REFERENCE.finditer(text) if match.group(1)}


def expand(text: str, resolver: Resolver) -> str:
    """Expand every $ expression in text; raises ExpansionError on bad syntax."""
    if "$" not in text:
        return text
    out: list[str] = []
    pos = 0
    length = len(text)
    while pos < length:
        dollar = text.find("$", pos)
        if dollar < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:dollar])
        pos = dollar + 1
        if pos >= length:
            raise ExpansionError(f'"$" at the end of "{text}" names no parameter (write $$ for a literal $)')
        char = text[pos]
        if char == "$":
            out.append("$")
            pos += 1
        elif char in "{(":
            close = _matching_close(text, pos)
            out.append(_expand_braced(text[pos + 1:close], resolver))
            pos = close + 1
        else:
            end = pos
            while end < length and text[end] in NAME_CHARS:
                end += 1
            if end == pos:
                raise ExpansionError(f'"$" in "{text}" is not followed by a parameter name (write $$ for a literal $)')
            out.append(_lookup(text[pos:end], resolver))
            pos = end
    return "".join(out)


def _lookup(name: str, resolver: Resolver) -> str:
    value = resolver.expanded_value(name)
    if value is None:
        resolver.undefined(name)
        return ""
    return value


def _matching_close(text: str, open_pos: int) -> int:
    opening = text[open_pos]
    closing = "}" if opening == "{" else ")"
    depth = 0
    for pos in range(open_pos, len(text)):
        char = text[pos]
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return pos
    raise ExpansionError(f'missing "{closing}" in "{text}"')


def _expand_braced(body: str, resolver: Resolver) -> str:
    stripped = body.lstrip()
    if stripped.startswith("{"):
        return _expand_relational(stripped, body, resolver)
    end = 0
    while end < len(stripped) and stripped[end] in NAME_CHARS:
        end += 1
    name = stripped[:end]
    if not name:
        raise ExpansionError(f'empty parameter name in "${{{body}}}"')
    rest = stripped[end:].lstrip()
    if not rest:
        return _lookup(name, resolver)
    operator, value = rest[0], rest[1:]
    if operator not in "?:":
        raise ExpansionError(f'unexpected "{rest}" after parameter name in "${{{body}}}"')
    written = resolver.raw_value(name)
    is_set = bool(written)
    if value.lstrip().startswith("{"):
        when_set, when_empty = _braced_alternatives(value, body, second_needs_braces=False)
        if operator == ":":
            if when_empty is not None:
                raise ExpansionError(f'"${{name:{{value}}}}" takes one value in "${{{body}}}"')
            when_set, when_empty = None, when_set
        chosen = when_set if is_set else when_empty
        return expand(chosen, resolver) if chosen is not None else ""
    if is_set == (operator == "?"):
        return expand(value, resolver)
    return ""


def _take_braced(text: str, pos: int, body: str) -> tuple[str, int]:
    """The content of the {...} group starting at pos (kept as is), and the position after it."""
    if pos >= len(text) or text[pos] != "{":
        raise ExpansionError(f'expected "{{" in "${{{body}}}"')
    close = _matching_close(text, pos)
    return text[pos + 1:close], close + 1


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _braced_alternatives(text: str, body: str, second_needs_braces: bool) -> tuple[str, str | None]:
    """Parse "{value1}" or "{value1} : {value2}" (value2 may be bare unless told otherwise)."""
    first, pos = _take_braced(text, _skip_space(text, 0), body)
    pos = _skip_space(text, pos)
    if pos == len(text):
        return first, None
    if text[pos] != ":":
        raise ExpansionError(f'expected ":" after "{{{first}}}" in "${{{body}}}"')
    pos = _skip_space(text, pos + 1)
    if pos < len(text) and text[pos] == "{":
        second, pos = _take_braced(text, pos, body)
        if _skip_space(text, pos) != len(text):
            raise ExpansionError(f'unexpected text after the last "}}" in "${{{body}}}"')
        return first, second
    if second_needs_braces:
        raise ExpansionError(f'expected "{{" after ":" in "${{{body}}}"')
    return first, text[pos:]


def _expand_relational(stripped: str, body: str, resolver: Resolver) -> str:
    left, pos = _take_braced(stripped, 0, body)
    pos = _skip_space(stripped, pos)
    operator = next((op for op in _RELATIONAL_OPERATORS if stripped.startswith(op, pos)), None)
    if operator is None:
        raise ExpansionError(f'expected a comparison operator after "{{{left}}}" in "${{{body}}}"')
    pos += len(operator)
    by_level = stripped.startswith("level", pos)
    if by_level:
        pos += len("level")
    right, pos = _take_braced(stripped, _skip_space(stripped, pos), body)
    pos = _skip_space(stripped, pos)
    if pos >= len(stripped) or stripped[pos] not in "?:":
        raise ExpansionError(f'expected "?" or ":" after the comparison in "${{{body}}}"')
    branch = stripped[pos]
    when_true, when_false = _braced_alternatives(stripped[pos + 1:], body, second_needs_braces=True)
    if branch == ":":
        if when_false is not None:
            raise ExpansionError(f'":" takes one value in "${{{body}}}"')
        when_true, when_false = None, when_true
    outcome = _compare(expand(left, resolver), operator, expand(right, resolver), by_level, body)
    chosen = when_true if outcome else when_false
    return expand(chosen, resolver) if chosen is not None else ""


def _compare(left: str, operator: str, right: str, by_level: bool, body: str) -> bool:
    a: object
    b: object
    if by_level:
        a, b = _level(left, body), _level(right, body)
    elif left.isdigit() and right.isdigit():
        a, b = int(left), int(right)
    else:
        a, b = left, right
    if operator == "==":
        return a == b
    if operator == "!=":
        return a != b
    if operator == "<":
        return a < b  # type: ignore[operator]
    if operator == "<=":
        return a <= b  # type: ignore[operator]
    if operator == ">":
        return a > b  # type: ignore[operator]
    return a >= b  # type: ignore[operator]


def _level(text: str, body: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        raise ExpansionError(f'"{text}" is not a compatibility level in "${{{body}}}"')
    numbers = [int(part) for part in parts] + [0, 0]
    return numbers[0], numbers[1], numbers[2]
