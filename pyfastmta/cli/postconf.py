"""`pyfastmta postconf`: show configuration parameters and services, as Postfix's postconf does.

    postconf [-c dir] [-d | -n] [-h] [-x] [name ...]   main.cf parameters
    postconf [-c dir] -M [-f] [service[/type] ...]      master.cf services
    postconf [-c dir] -P [service[/type] ...]           master.cf -o overrides
"""
from __future__ import annotations

import getopt
import sys
from typing import TextIO

from pyfastmta.config import PARAMETERS, Config, ConfigError, Service, default_config, load_config

PROGRAM = "pyfastmta postconf"
USAGE = f"usage: {PROGRAM} [-c config_dir] [-d | -n] [-h] [-x] [-M [-f] | -P] [name ...]"
# Where `postconf -M` starts each column (Postfix's layout).
COLUMN_STARTS = (0, 11, 17, 25, 33, 41, 49, 57)
FOLD_WIDTH = 80
FOLD_INDENT = "    "


def run(argv: list[str], config_dir: str | None) -> int:
    try:
        options, names = getopt.getopt(argv, "c:dfhnxMP")
    except getopt.GetoptError as error:
        print(f"{PROGRAM}: {error}\n{USAGE}", file=sys.stderr)
        return 2
    flags = {flag for flag, _ in options}
    for flag, value in options:
        if flag == "-c":
            config_dir = value
    if "-d" in flags and "-n" in flags or "-M" in flags and "-P" in flags:
        print(f"{PROGRAM}: -d and -n, and -M and -P, cannot be combined\n{USAGE}", file=sys.stderr)
        return 2
    out = sys.stdout
    if "-d" in flags and not flags & {"-M", "-P"}:
        return _print_parameters(default_config(), names, flags, out)
    try:
        config = load_config(config_dir)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    for warning in config.warnings:
        _warn(warning)
    if "-M" in flags:
        for service in _selected_services(config, names):
            out.write(format_service(service, fold="-f" in flags))
        return 0
    if "-P" in flags:
        for service in _selected_services(config, names):
            for name, value in sorted(service.overrides.items()):
                out.write(_assignment(f"{service.name}/{service.type}/{name}", value, False))
        return 0
    return _print_parameters(config, names, flags, out)


def _warn(message: str) -> None:
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr)


def _assignment(name: str, value: str, value_only: bool) -> str:
    # Postfix's postconf shows each run of whitespace in a value as one space.
    value = " ".join(value.split())
    if value_only:
        return f"{value}\n"
    return f"{name} = {value}\n" if value else f"{name} =\n"


def _print_parameters(config: Config, names: list[str], flags: set[str], out: TextIO) -> int:
    explicit_directory = config.config_dir is not None and not config.is_set("config_directory")
    if names:
        known = set(config.names())
        shown = []
        for name in names:
            if name not in known:
                _warn(f"{name}: not a known parameter")
            elif "-n" not in flags or config.is_set(name) or name == "config_directory" and explicit_directory:
                shown.append(name)
    elif "-d" in flags:
        shown = sorted(PARAMETERS)
    else:
        unused = set(config.unused_user_names())
        candidates = [name for name in config.names() if name not in unused]
        if "-n" in flags:
            # As with Postfix, a configuration directory given explicitly counts as set.
            candidates = [name for name in candidates
                          if config.is_set(name) or name == "config_directory" and explicit_directory]
        shown = candidates
    expand = "-x" in flags
    for name in shown:
        value = config.expanded(name) if expand else config.text(name)
        out.write(_assignment(name, value, "-h" in flags))
    return 0


def _selected_services(config: Config, patterns: list[str]) -> list[Service]:
    if not patterns:
        return config.services
    selected = []
    for service in config.services:
        for pattern in patterns:
            name, _, kind = pattern.partition("/")
            if service.name == name and (not kind or service.type == kind):
                selected.append(service)
                break
    return selected


def format_service(service: Service, fold: bool) -> str:
    """One master.cf entry the way `postconf -M` prints it (folded with -f)."""
    line = ""
    for start, word in zip(COLUMN_STARTS, service.words):
        line += " " * (start - len(line)) if len(line) < start else (" " if line else "")
        line += word
    lines = [line]
    arguments = service.words[len(COLUMN_STARTS):]
    index = 0
    while index < len(arguments):
        word = arguments[index]
        if word == "-o" and index + 1 < len(arguments):
            word = f"-o {arguments[index + 1]}"
            index += 1
        index += 1
        if not fold:
            lines[-1] += f" {word}"
        elif word.startswith("-o ") or lines[-1].startswith(f"{FOLD_INDENT}-o "):
            lines.append(FOLD_INDENT + word)
        elif len(lines[-1]) + 1 + len(word) > FOLD_WIDTH - 1:
            lines.append(FOLD_INDENT + word)
        else:
            lines[-1] += f" {word}"
    return "".join(f"{text}\n" for text in lines)
