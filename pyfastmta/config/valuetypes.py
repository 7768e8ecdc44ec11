"""Conversion of expanded parameter text into typed values, with Postfix's value syntax."""
from __future__ import annotations

import re

# Postfix's time units, plus milliseconds for delays shorter than a second.
TIME_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_TIME = re.compile(r"(\d+)(ms|[smhdw])?", re.IGNORECASE)
_INTEGER = re.compile(r"-?\d+")
# Postfix list separators: commas and/or whitespace.
_LIST_SEPARATORS = ", \t\r\n"


class BadValue(ValueError):
    """The text does not fit the parameter's type; str() is the reason."""


def parse_integer(name: str, text: str, minimum: int | None) -> int:
    text = text.strip()
    if not _INTEGER.fullmatch(text):
        raise BadValue(f'bad numerical value for {name}: "{text}"')
    value = int(text)
    if minimum is not None and value < minimum:
        raise BadValue(f"value of {name} is too small: {value} (the least allowed is {minimum})")
    return value


def parse_bool(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word == "yes":
        return True
    if word == "no":
        return False
    raise BadValue(f'bad boolean value for {name}: "{text.strip()}" (use yes or no)')


def parse_time(name: str, text: str, default_unit: str, minimum: float | None) -> float:
    text = text.strip()
    match = _TIME.fullmatch(text)
    if not match:
        raise BadValue(
            f'bad time value for {name}: "{text}" (use a whole number with an optional unit: '
            "ms, s, m, h, d or w)"
        )
    unit = (match.group(2) or default_unit).lower()
    seconds = int(match.group(1)) * TIME_UNITS[unit]
    if minimum is not None and seconds < minimum:
        raise BadValue(f"value of {name} is too small: {text} (the least allowed is {minimum:g}s)")
    return seconds


def parse_choice(name: str, text: str, choices: dict[str, str]) -> str:
    word = text.strip().lower()
    try:
        return choices[word]
    except KeyError:
        allowed = ", ".join(sorted(choices))
        raise BadValue(f'bad value for {name}: "{text.strip()}" (use one of: {allowed})') from None


def split_list(text: str) -> list[str]:
    """Split a Postfix list: separators are commas and whitespace; a {...} group is one item."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if depth == 0 and char in _LIST_SEPARATORS:
            if current:
                items.append("".join(current))
                current = []
            continue
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        current.append(char)
    if current:
        items.append("".join(current))
    return items
