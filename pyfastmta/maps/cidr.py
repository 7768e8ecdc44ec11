"""cidr: tables (cidr_table(5)): `network/prefix result`, `address result`, `!pattern result`,
`if pattern` ... `endif` (nesting, `if !pattern`), IPv4 and IPv6, first match in file order.

Patterns and keys are converted with the C library's inet_pton(), as Postfix converts them, so the
same spellings are accepted (no leading zeros in IPv4 octets, any valid IPv6 form, IPv4-mapped
IPv6 addresses stay IPv6). A pattern may be written in brackets, `[addr]/len` or `[addr/len]`. A
key that is not an address is not found. A rule Postfix skips (bad address, host bits set, no
result, endif without if) is skipped here with a `file:line:` warning in `table.warnings`.

Matching is compiled: ext/cidr.pyx holds the rules as a C array and answers a lookup with one loop
over it.
"""

from __future__ import annotations

import socket

from pyfastmta._ext.cidr import OP_ENDIF, OP_IF, OP_MATCH, CidrMatcher
from pyfastmta.maps.regexp import (
    C_ALNUM,
    C_SPACE,
    c_atoi,
    logical_lines,
    read_rules_source,
    show_bytes,
)
from pyfastmta.maps.table import Table, TableError


class _RuleError(Exception):
    pass


def _family_of(pattern: str) -> tuple[int, int]:
    # Postfix decides the family by the presence of a colon, before parsing.
    return (6, socket.AF_INET6) if ":" in pattern else (4, socket.AF_INET)


def _pton(family: int, text: str) -> bytes | None:
    try:
        return socket.inet_pton(family, text)
    except (OSError, ValueError, UnicodeError):
        return None


def _masked(address: bytes, prefix: int) -> bytes:
    value = int.from_bytes(address, "big")
    bits = len(address) * 8
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1) if prefix else 0
    return (value & mask).to_bytes(len(address), "big")


def parse_pattern(text: str) -> tuple[int, bytes, int]:
    """(family 4 or 6, network bytes, prefix length) of `address`, `network/prefix` or their
    bracketed forms; _RuleError with Postfix's reason otherwise."""
    pattern = text
    if pattern.startswith("["):
        pattern = pattern[1:]
        inside, bracket, after = pattern.partition("]")
        if not bracket:
            raise _RuleError(f'missing \']\' character after "[{pattern}"')
        pattern = inside
        if after.startswith("/"):
            mask_search = after
        elif after:
            raise _RuleError(f'garbage after "[{inside}]"')
        else:
            mask_search = None
    else:
        mask_search = None
    if mask_search is None:
        pattern, slash, mask = pattern.partition("/")
    else:
        slash, mask = "/", mask_search[1:]
    version, family = _family_of(pattern)
    bits = 32 if version == 4 else 128
    if not slash:
        network = _pton(family, pattern)
        if network is None:
            raise _RuleError(f'bad address pattern: "{pattern}"')
        return version, network, bits
    if not (mask and mask.isascii() and mask.isdigit()):
        raise _RuleError(f'bad mask value in "{pattern}/{mask}"')
    # Postfix keeps the prefix length in an unsigned char: only its low 8 bits count.
    prefix = c_atoi(mask.encode()) & 0xFF
    if prefix > bits:
        raise _RuleError(f'bad mask length in "{pattern}/{mask}"')
    network = _pton(family, pattern)
    if network is None:
        raise _RuleError(f'bad network value in "{pattern}/{mask}"')
    masked = _masked(network, prefix)
    if masked != network:
        suggestion = socket.inet_ntop(family, masked)
        raise _RuleError(f'non-null host address bits in "{pattern}/{mask}", '
                         f'perhaps you should use "{suggestion}/{prefix}" instead')
    return version, network, prefix


def _negations(text: bytes, position: int) -> tuple[bool, int]:
    positive = True
    while position < len(text):
        if text[position] == 0x21:  # "!"
            positive = not positive
        elif text[position] not in C_SPACE:
            break
        position += 1
    return positive, position


def _parse_rule(text: bytes, nesting: int):
    """(op, positive, family, network, prefix, value bytes) of one logical line."""
    if text[:2].lower() == b"if" and (len(text) == 2 or text[2] not in C_ALNUM):
        positive, position = _negations(text, 2)
        rest = text[position:].rstrip(C_SPACE)
        if not rest:
            raise _RuleError("no address pattern")
        family, network, prefix = parse_pattern(show_bytes(rest))
        return OP_IF, positive, family, network, prefix, b""
    if text[:5].lower() == b"endif" and (len(text) == 5 or text[5] not in C_ALNUM):
        if text[5:].lstrip(C_SPACE):
            raise _RuleError("garbage after ENDIF")
        if nesting == 0:
            raise _RuleError("ENDIF without IF")
        return OP_ENDIF, True, 0, b"", 0, b""
    positive, position = _negations(text, 0)
    end = position
    while end < len(text) and text[end] not in C_SPACE:
        end += 1
    pattern = text[position:end]
    value = text[end:].strip(C_SPACE)
    if not pattern:
        raise _RuleError("no address pattern")
    family, network, prefix = parse_pattern(show_bytes(pattern))
    if not value:
        raise _RuleError("no lookup result")
    return OP_MATCH, positive, family, network, prefix, value


class CidrTable(Table):
    kind = "cidr"
    pattern = True
    fold = False

    def __init__(self, name: str, options) -> None:
        super().__init__(name)
        self._smtputf8 = options.smtputf8_enable
        data, where, self._signature = read_rules_source("cidr", name)
        self.warnings: list[str] = []
        rules: list[list] = []
        values: list[str] = []
        valid: list[bool] = []
        stack: list[int] = []
        lines: dict[int, int] = {}
        for line, text in logical_lines(data, where, self.warnings):
            try:
                op, positive, family, network, prefix, value = _parse_rule(text, len(stack))
            except _RuleError as error:
                self.warnings.append(f"{where}:{line}: {error}: skipping this rule")
                continue
            index = -1
            if op == OP_MATCH:
                index = len(values)
                try:
                    values.append(value.decode("utf-8"))
                    valid.append(True)
                except UnicodeDecodeError:
                    values.append(value.decode("utf-8", "surrogateescape"))
                    valid.append(False)
            elif op == OP_IF:
                stack.append(len(rules))
                lines[len(rules)] = line
            else:
                rules[stack.pop()][5] = len(rules)
            rules.append([op, positive, family, network, prefix, -1, index])
        while stack:
            self.warnings.append(f"{where}:{lines[stack.pop()]}: IF has no matching ENDIF")
        self._values = values
        self._valid = valid
        self._matcher = CidrMatcher([tuple(rule) for rule in rules])

    def __len__(self) -> int:
        return len(self._matcher)

    def changed(self) -> bool:
        return self._signature is not None and self._signature.changed()

    def get(self, key: str) -> str | None:
        index = self._matcher.find(key)
        if index < 0:
            return None
        if self._smtputf8 and not self._valid[index]:
            raise TableError(f'{self.spec}: key "{key}": non-UTF-8 value "{self._values[index]}"')
        return self._values[index]


def open_cidr(name: str, options) -> CidrTable:
    return CidrTable(name, options)
