"""Reading main.cf: `name = value` lines, Postfix syntax."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyfastmta.config.errors import ConfigError
from pyfastmta.config.expansion import NAME_CHARS


@dataclass(frozen=True, slots=True)
class Setting:
    """One parameter value as written, and where."""

    name: str
    value: str
    path: str | None
    line: int | None


def logical_lines(lines: Iterable[str], path: str, warnings: list[str]) -> Iterator[tuple[int, str]]:
    """Join continuation lines; yield (first line number, text) for each logical line.

    A line starting with whitespace continues the previous one (joined by one space); comment
    and blank lines are skipped and do not end a logical line, as in Postfix.
    """
    start = 0
    parts: list[str] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if parts:
                parts.append(stripped)
            else:
                warnings.append(f"{path}:{number}: ignored: a first line must not start with whitespace")
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = number, [stripped]
    if parts:
        yield start, " ".join(parts)


def parse_assignment(text: str, path: str, line: int) -> tuple[str, str]:
    """Split `name = value`; the name must be made of letters, digits and underscores."""
    name, equals, value = text.partition("=")
    name = name.strip()
    if not equals:
        raise ConfigError(path, line, f'missing "=" after parameter name: "{text}"')
    if not name:
        raise ConfigError(path, line, f'missing parameter name before "=": "{text}"')
    if not set(name) <= NAME_CHARS:
        raise ConfigError(path, line, f'bad parameter name "{name}": use letters, digits and "_" only')
    return name, value.strip()


def read_lines(path: str) -> list[str]:
    """The lines of a configuration file; a missing or unreadable file is a ConfigError."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readlines()
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, None, f"cannot read: {error}") from None


def read_main_cf(path: str, warnings: list[str]) -> dict[str, Setting]:
    """The settings of a main.cf file; a later definition of a name replaces an earlier one."""
    lines = read_lines(path)
    settings: dict[str, Setting] = {}
    for line, text in logical_lines(lines, path, warnings):
        name, value = parse_assignment(text, path, line)
        settings.pop(name, None)
        settings[name] = Setting(name, value, path, line)
    return settings
