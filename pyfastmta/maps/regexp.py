"""regexp: (regexp_table(5)) and pcre: (pcre_table(5)) tables.

Each logical line is a rule: `/pattern/flags result`, `!/pattern/flags result`, `if /pattern/flags`
... `endif` (nesting, `if !/pattern/`), and for regexp: also the old two-pattern form
`/pattern1/!/pattern2/ result` (the first matches and the second does not). The delimiter is any
character that is not a letter or digit; a backslash escapes it. Rules are tried in file order on
the whole key; the first that matches answers, with `$1`, `${1}`, `$(1)` replaced by what the
pattern's groups matched (an unmatched group gives nothing) and `$$` by `$`.

The patterns run on the same engines Postfix uses, so they mean exactly what they mean to Postfix:
regexp: on the C library's POSIX regcomp/regexec (extended syntax and case-insensitive unless the
x and i flags toggle them; leftmost-longest matching, GNU extensions, regerror's messages), in the
C locale as Postfix daemons run, and pcre: on the system's PCRE2 library with Postfix's options
(caseless and dotall by default). Both see the key as bytes (no UTF mode): "." is one byte, as
in Postfix.

A rule Postfix skips with a warning (bad pattern, unknown flag, bad $number, endif without if) is
skipped here too, with the warning in `table.warnings` as `file:line: text`; only a table that
cannot be read at all is a TableError. With smtputf8_enable a key that is not UTF-8 is not found,
and a result that is not UTF-8 (a $number that cut a character in two) is a TableError, as
Postfix's lookup fails with a configuration error.

A table's content may also be given inline, `regexp:{ {rule}, {rule} ... }`, one rule per line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref

# The one reader of logical lines, shared with texthash: and cidr:.
from pyfastmta.maps.source import read_logical_lines as logical_lines
from pyfastmta.maps.table import FileSignature, Table, TableError

C_SPACE = b" \t\n\r\x0b\x0c"  # C's isspace() in the C locale
C_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")

_OP_MATCH = 1
_OP_IF = 2
_OP_ENDIF = 3


# --------------------------------------------------------------------------- source text

def _is_space(byte: int) -> bool:
    return byte in C_SPACE


def _trim_end(text: bytes) -> bytes:
    return text.rstrip(C_SPACE)


def _inline_rules(kind: str, name: str) -> bytes:
    """The in-memory file of an inline table, `{ {rule-1}, {rule-2} ... }`: one rule a line,
    whitespace inside each rule's braces removed."""
    text = name.encode("utf-8", "surrogateescape")

    def braced(piece: bytes) -> int:
        level = 0
        for position, byte in enumerate(piece):
            if byte == 0x7B:
                level += 1
            elif byte == 0x7D:
                level -= 1
                if level == 0:
                    return position + 1
        return 0

    def extract(piece: bytes, strip: bool) -> bytes:
        shown = piece.decode("utf-8", "surrogateescape")
        if piece[:1] != b"{":
            raise TableError(f"{kind}:{name}: {kind} map: no '{{' at start of text in \"{shown}\"")
        length = braced(piece)
        if length == 0:
            raise TableError(f"{kind}:{name}: {kind} map: missing '}}' in \"{shown}\"")
        if length != len(piece):
            raise TableError(f"{kind}:{name}: {kind} map: syntax error after '}}' in \"{shown}\"")
        inner = piece[1:-1]
        return inner.strip(C_SPACE) if strip else inner

    body = extract(text, strip=False)
    rules: list[bytes] = []
    position, end = 0, len(body)
    separators = b", \t\r\n\x0b\x0c"
    while True:
        while position < end and body[position] in separators:
            position += 1
        if position >= end:
            break
        start, level = position, 0
        while position < end:
            byte = body[position]
            if byte == 0x7B:
                level += 1
            elif byte == 0x7D and level:
                level -= 1
            elif level == 0 and byte in separators:
                break
            position += 1
        rules.append(extract(body[start:position], strip=True))
    return b"".join(rule + b"\n" for rule in rules)


def read_rules_source(kind: str, name: str) -> tuple[bytes, str, FileSignature | None]:
    """(content, name to use in warnings, signature or None) of a pattern table: a file, or the
    `{...}` text of an inline table."""
    if name.startswith("{"):
        return _inline_rules(kind, name), f"{kind}:{name}", None
    signature = FileSignature(name)  # before reading: an edit during the read shows as a change
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise TableError(f"{kind}:{name}: open {name}: No such file or directory") from None
    except OSError as error:
        raise TableError(f"{kind}:{name}: open {name}: {error.strerror}") from None
    return data, name, signature


# --------------------------------------------------------------------------- $number results

class _ReplacementError(Exception):
    pass


def c_atoi(digits: bytes) -> int:
    """atoi() as glibc computes it for a digit string: strtol() saturates at LONG_MAX, the cast to
    int keeps the low 32 bits."""
    value = min(int(digits), 2**63 - 1) & 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def parse_replacement(text: bytes, complain) -> tuple[list[bytes | int], int]:
    """The pieces of a result, literal bytes and group numbers, and the largest group number,
    as Postfix's mac_parse() splits it. complain(message) reports what makes the rule unusable;
    _ReplacementError is raised after it."""
    pieces: list[bytes | int] = []
    literal = bytearray()
    largest = 0
    position, end = 0, len(text)
    while position < end:
        byte = text[position]
        if byte != 0x24:  # "$"
            literal.append(byte)
            position += 1
            continue
        if text[position + 1:position + 2] == b"$":
            literal.append(0x24)
            position += 2
            continue
        if literal:
            pieces.append(bytes(literal))
            literal.clear()
        position += 1
        opener = text[position:position + 1]
        if opener in (b"{", b"("):
            closer = 0x7D if opener == b"{" else 0x29
            level, scan = 1, position + 1
            while level > 0:
                if scan >= end:
                    complain(f'truncated macro reference: "{show_bytes(text)}"')
                    raise _ReplacementError
                if text[scan] == opener[0]:
                    level += 1
                elif text[scan] == closer:
                    level -= 1
                scan += 1
            name = text[position + 1:scan - 1]
            position = scan
        else:
            scan = position
            while scan < end and (text[scan] in C_ALNUM or text[scan] == 0x5F):
                scan += 1
            name = text[position:scan]
            position = scan
        if not name:
            complain(f'empty macro name: "{show_bytes(text)}"')
            raise _ReplacementError
        if not name.isdigit():
            complain(f'non-numeric replacement index "{show_bytes(name)}"')
            raise _ReplacementError
        number = c_atoi(name)
        if number < 1:
            complain(f'{{range}} replacement index "{show_bytes(name)}"')
            raise _ReplacementError
        largest = max(largest, number)
        pieces.append(number)
    if literal:
        pieces.append(bytes(literal))
    return pieces, largest


def show_bytes(text: bytes) -> str:
    return text.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- engines

def _load_library(names: list[str], what: str) -> ctypes.CDLL:
    for candidate in names:
        if not candidate:
            continue
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    raise TableError(what)


class PosixEngine:
    """The C library's regcomp()/regexec(), used in the C locale (Postfix daemons run with
    LANG=C), so a pattern works on bytes and case folding is ASCII only."""

    EXTENDED, ICASE, NEWLINE, NOSUB = 1, 2, 4, 8

    class _Regex(ctypes.Structure):
        # glibc's regex_t on LP64: six pointer-sized fields, re_nsub, then flag bits.
        _fields_ = [("opaque", ctypes.c_void_p * 6), ("re_nsub", ctypes.c_size_t),
                    ("bits", ctypes.c_void_p)]

    class _Match(ctypes.Structure):
        _fields_ = [("rm_so", ctypes.c_int), ("rm_eo", ctypes.c_int)]

    def __init__(self) -> None:
        libc = _load_library([ctypes.util.find_library("c"), "libc.so.6"],
                             "regexp: tables need the C library's regcomp()")
        self.regcomp = libc.regcomp
        self.regcomp.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self.regcomp.restype = ctypes.c_int
        self.regexec = libc.regexec
        self.regexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.c_void_p, ctypes.c_int]
        self.regexec.restype = ctypes.c_int
        self.regerror = libc.regerror
        self.regerror.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        self.regerror.restype = ctypes.c_size_t
        self.regfree = libc.regfree
        self.regfree.argtypes = [ctypes.c_void_p]
        self.regfree.restype = None
        newlocale = libc.newlocale
        newlocale.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
        newlocale.restype = ctypes.c_void_p
        self.uselocale = libc.uselocale
        self.uselocale.argtypes = [ctypes.c_void_p]
        self.uselocale.restype = ctypes.c_void_p
        self.c_locale = newlocale(0x1FBF, b"C", None)  # LC_ALL_MASK
        if not self.c_locale:
            raise TableError("regexp: cannot create the C locale")
        probe = self.compile(b"(a)(b)", self.EXTENDED)
        if isinstance(probe, str) or probe.re_nsub != 2:
            raise TableError("regexp: this C library's regex_t layout is not the one expected")
        self.free(probe)

    def compile(self, pattern: bytes, flags: int):
        """A compiled pattern, or regerror()'s message."""
        regex = self._Regex()
        previous = self.uselocale(self.c_locale)
        try:
            error = self.regcomp(ctypes.byref(regex), pattern, flags)
            if error:
                message = ctypes.create_string_buffer(256)
                self.regerror(error, ctypes.byref(regex), message, 256)
                return message.value.decode("utf-8", "replace")
        finally:
            self.uselocale(previous)
        return regex

    def groups(self, regex) -> int:
        return regex.re_nsub

    def free(self, regex) -> None:
        self.regfree(ctypes.byref(regex))

    def match_buffer(self, count: int):
        return (self._Match * count)() if count else None

    def handle(self, regex):
        """What the lookup loop passes to regexec() for this pattern."""
        return ctypes.byref(regex)

    def spans(self, buffer, count: int) -> list[tuple[int, int]]:
        return [(buffer[n].rm_so, buffer[n].rm_eo) for n in range(count)]

class Pcre2Engine:
    """The system's PCRE2 library (the one Postfix's pcre: tables are built with), 8-bit, no UTF
    mode, patterns JIT-compiled where the library can."""

    CASELESS, MULTILINE, DOTALL, EXTENDED = 0x8, 0x400, 0x20, 0x80
    ANCHORED, DOLLAR_ENDONLY, UNGREEDY = 0x80000000, 0x10, 0x40000
    ERROR_NOMATCH = -1
    _UNSET = 2**64 - 1

    def __init__(self) -> None:
        lib = _load_library([ctypes.util.find_library("pcre2-8"), "libpcre2-8.so.0"],
                            "pcre: tables need the PCRE2 library libpcre2-8 "
                            "(Debian package libpcre2-8-0)")
        c = ctypes
        self._compile = lib.pcre2_compile_8
        self._compile.argtypes = [c.c_char_p, c.c_size_t, c.c_uint32, c.POINTER(c.c_int),
                                  c.POINTER(c.c_size_t), c.c_void_p]
        self._compile.restype = c.c_void_p
        self._jit = lib.pcre2_jit_compile_8
        self._jit.argtypes = [c.c_void_p, c.c_uint32]
        self._jit.restype = c.c_int
        self._jit_match = lib.pcre2_jit_match_8
        self._jit_match.argtypes = [c.c_void_p, c.c_char_p, c.c_size_t, c.c_size_t, c.c_uint32,
                                    c.c_void_p, c.c_void_p]
        self._jit_match.restype = c.c_int
        self._info = lib.pcre2_pattern_info_8
        self._info.argtypes = [c.c_void_p, c.c_uint32, c.c_void_p]
        self._info.restype = c.c_int
        self._data = lib.pcre2_match_data_create_from_pattern_8
        self._data.argtypes = [c.c_void_p, c.c_void_p]
        self._data.restype = c.c_void_p
        self._match = lib.pcre2_match_8
        self._match.argtypes = [c.c_void_p, c.c_char_p, c.c_size_t, c.c_size_t, c.c_uint32,
                                c.c_void_p, c.c_void_p]
        self._match.restype = c.c_int
        self._ovector = lib.pcre2_get_ovector_pointer_8
        self._ovector.argtypes = [c.c_void_p]
        self._ovector.restype = c.POINTER(c.c_size_t)
        self._message = lib.pcre2_get_error_message_8
        self._message.argtypes = [c.c_int, c.c_char_p, c.c_size_t]
        self._message.restype = c.c_int
        self._code_free = lib.pcre2_code_free_8
        self._code_free.argtypes = [c.c_void_p]
        self._code_free.restype = None
        self._data_free = lib.pcre2_match_data_free_8
        self._data_free.argtypes = [c.c_void_p]
        self._data_free.restype = None

    def error_message(self, code: int) -> str:
        buffer = ctypes.create_string_buffer(256)
        if self._message(code, buffer, 256) > 0:
            return buffer.value.decode("utf-8", "replace")
        return f"unexpected pcre2 error code {code}"

    def compile(self, pattern: bytes, options: int):
        """(code, match data), or Postfix's message for a pattern that does not compile."""
        error = ctypes.c_int()
        offset = ctypes.c_size_t()
        code = self._compile(pattern, len(pattern), options, ctypes.byref(error),
                             ctypes.byref(offset), None)
        if not code:
            return f"error in regex at offset {offset.value}: {self.error_message(error.value)}"
        # JIT-compiled code gives the same answers, faster; where the library cannot JIT a
        # pattern, the interpreter runs it.
        jitted = self._jit(code, 1) == 0  # PCRE2_JIT_COMPLETE
        return (code, self._data(code, None), jitted)

    def groups(self, compiled) -> int:
        count = ctypes.c_uint32()
        self._info(compiled[0], 4, ctypes.byref(count))  # PCRE2_INFO_CAPTURECOUNT
        return count.value

    def free(self, compiled) -> None:
        self._data_free(compiled[1])
        self._code_free(compiled[0])

    def handle(self, compiled):
        """(match function, code, match data) for the lookup loop."""
        return (self._jit_match if compiled[2] else self._match, compiled[0], compiled[1])

    def spans(self, compiled, count: int) -> list[tuple[int, int]]:
        vector = self._ovector(compiled[1])
        unset = self._UNSET
        result = []
        for n in range(count):
            start, end = vector[2 * n], vector[2 * n + 1]
            result.append((-1, -1) if start == unset else (start, end))
        return result


_ENGINES: dict[str, object] = {}


def _engine(kind: str):
    engine = _ENGINES.get(kind)
    if engine is None:
        engine = PosixEngine() if kind == "regexp" else Pcre2Engine()
        _ENGINES[kind] = engine
    return engine


# --------------------------------------------------------------------------- rule parsing

class _Pattern:
    __slots__ = ("flags", "match", "text")

    def __init__(self, text: bytes, flags: int, match: bool) -> None:
        self.text = text
        self.flags = flags
        self.match = match


class _Parser:
    """Postfix's rule syntax for one table type: kind "regexp" or "pcre"."""

    def __init__(self, kind: str, where: str, warnings: list[str], no_regsub: bool) -> None:
        self.kind = kind
        self.where = where
        self.warnings = warnings
        self.no_regsub = no_regsub
        self.engine = _engine(kind)
        self.compiled: list[object] = []  # everything to free on close

    def warn(self, line: int, text: str) -> None:
        self.warnings.append(f"{self.where}:{line}: {text}")

    def get_pattern(self, text: bytes, position: int, line: int) -> tuple[_Pattern, int] | None:
        match = True
        end = len(text)
        while position < end:
            if text[position] == 0x21:  # "!"
                match = not match
            elif not _is_space(text[position]):
                break
            position += 1
        if position >= end:
            self.warn(line, "no regexp: skipping this rule")
            return None
        delimiter = text[position]
        position += 1
        start = position
        while position < end:
            if text[position] == 0x5C:  # backslash escapes the next byte, the delimiter included
                if position + 1 < end:
                    position += 1
                elif self.kind == "regexp":
                    break  # Postfix's regexp parser ends the pattern at a final backslash
                else:
                    position = end
                    break
            elif text[position] == delimiter:
                break
            position += 1
        if position >= end:
            skipping = "skipping" if self.kind == "regexp" else "ignoring"
            self.warn(line, f'no closing regexp delimiter "{chr(delimiter)}": {skipping} this rule')
            return None
        pattern_text = text[start:position]
        position += 1
        if self.kind == "regexp":
            flags = PosixEngine.EXTENDED | PosixEngine.ICASE
            toggles = {0x69: PosixEngine.ICASE, 0x6D: PosixEngine.NEWLINE, 0x78: PosixEngine.EXTENDED}
            stop = b"!"
        else:
            flags = Pcre2Engine.CASELESS | Pcre2Engine.DOTALL
            toggles = {0x69: Pcre2Engine.CASELESS, 0x6D: Pcre2Engine.MULTILINE,
                       0x73: Pcre2Engine.DOTALL, 0x78: Pcre2Engine.EXTENDED,
                       0x41: Pcre2Engine.ANCHORED, 0x45: Pcre2Engine.DOLLAR_ENDONLY,
                       0x55: Pcre2Engine.UNGREEDY}
            stop = b""
        while position < end and not _is_space(text[position]) and text[position] not in stop:
            flag = text[position]
            if flag in toggles:
                flags ^= toggles[flag]
            elif self.kind == "pcre" and flag == 0x58:  # "X": PCRE_EXTRA, gone in PCRE2
                self.warn(line, f'ignoring obsolete regexp option "{chr(flag)}"')
            else:
                self.warn(line, f'unknown regexp option "{show_bytes(bytes([flag]))}": skipping this rule')
                return None
            position += 1
        return _Pattern(pattern_text, flags, match), position

    def compile(self, pattern: _Pattern, line: int, nosub: bool = False):
        flags = pattern.flags | (PosixEngine.NOSUB if nosub and self.kind == "regexp" else 0)
        compiled = self.engine.compile(pattern.text, flags)
        if isinstance(compiled, str):
            self.warn(line, compiled)
            return None
        self.compiled.append(compiled)
        return compiled

    def discard(self, compiled) -> None:
        self.compiled.remove(compiled)
        self.engine.free(compiled)

    def parse(self, line: int, text: bytes, nesting: int):
        text = _trim_end(text)
        if not text:
            return None
        first = text[0]
        if first not in C_ALNUM:
            return self.parse_match(line, text)
        if text[:2].lower() == b"if" and (len(text) == 2 or text[2] not in C_ALNUM):
            position = 2
            while position < len(text) and _is_space(text[position]):
                position += 1
            got = self.get_pattern(text, position, line)
            if got is None:
                return None
            pattern, position = got
            rest = text[position:].lstrip(C_SPACE)
            if rest:
                self.warn(line, f'ignoring extra text after IF statement: "{show_bytes(rest)}"')
                self.warn(line, "do not prepend whitespace to statements between IF and ENDIF")
            compiled = self.compile(pattern, line)
            if compiled is None:
                return None
            return [_OP_IF, compiled, pattern.match, -1, line]
        if text[:5].lower() == b"endif" and (len(text) == 5 or text[5] not in C_ALNUM):
            if nesting == 0:
                self.warn(line, "ignoring ENDIF without matching IF")
                return None
            if text[5:].lstrip(C_SPACE):
                self.warn(line, "ignoring extra text after ENDIF")
            return [_OP_ENDIF, line]
        self.warn(line, "ignoring unrecognized request")
        return None

    def parse_match(self, line: int, text: bytes):
        got = self.get_pattern(text, 0, line)
        if got is None:
            return None
        first, position = got
        second = None
        if self.kind == "regexp" and text[position:position + 1] == b"!":
            got = self.get_pattern(text, position, line)
            if got is None:
                return None
            second, position = got
        replacement = text[position:].lstrip(C_SPACE)
        if not replacement:
            self.warn(line, "no replacement text: using empty string")
        range_word = "out-of-range" if self.kind == "regexp" else "out of range"
        try:
            pieces, largest = parse_replacement(
                replacement, lambda message: self.warn(line, message.replace("{range}", range_word)))
        except _ReplacementError:
            self.warn(line, "bad replacement syntax: skipping this rule")
            return None
        if largest and not first.match:
            self.warn(line, "$number found in negative match replacement text: skipping this rule")
            return None
        if largest and self.no_regsub:
            self.warn(line, "regular expression substitution is not allowed: skipping this rule")
            return None
        first_compiled = self.compile(first, line, nosub=not largest)
        if first_compiled is None:
            return None
        if largest > self.engine.groups(first_compiled):
            self.warn(line, f'out of range replacement index "{largest}": skipping this rule')
            self.discard(first_compiled)
            return None
        second_compiled = None
        if second is not None:
            second_compiled = self.compile(second, line, nosub=True)
            if second_compiled is None:
                self.discard(first_compiled)
                return None
        if largest:
            result: object = pieces
        else:
            result = _Value(b"".join(pieces))
        return [_OP_MATCH, first_compiled, first.match, second_compiled,
                second.match if second is not None else True, largest, result, line]


class _Value:
    """A result without $number: decoded once, its UTF-8 validity known."""

    __slots__ = ("text", "valid")

    def __init__(self, data: bytes) -> None:
        try:
            self.text = data.decode("utf-8")
            self.valid = True
        except UnicodeDecodeError:
            self.text = data.decode("utf-8", "surrogateescape")
            self.valid = False


# --------------------------------------------------------------------------- the table

class PatternTable(Table):
    pattern = True
    fold = False

    def __init__(self, kind: str, name: str, options, *, no_regsub: bool = False) -> None:
        super().__init__(name)
        self.kind = kind
        self._smtputf8 = options.smtputf8_enable
        data, where, self._signature = read_rules_source(kind, name)
        self.warnings: list[str] = []
        parser = _Parser(kind, where, self.warnings, no_regsub)
        self._engine = parser.engine
        rules: list[list] = []
        stack: list[int] = []
        for line, text in logical_lines(data, where, self.warnings):
            rule = parser.parse(line, text, len(stack))
            if rule is None:
                continue
            if rule[0] == _OP_IF:
                stack.append(len(rules))
            elif rule[0] == _OP_ENDIF:
                rules[stack.pop()][3] = len(rules)
            rules.append(rule)
        while stack:
            parser.warn(rules[stack.pop()][4], "IF has no matching ENDIF")
        # The compiled patterns live in C memory: freed on close(), or when the table goes away.
        self._release = weakref.finalize(self, _free_all, self._engine, parser.compiled)
        handle = self._engine.handle
        for rule in rules:
            if rule[0] == _OP_ENDIF:
                continue
            rule.append(rule[1])  # the compiled pattern itself, for $number spans
            rule[1] = handle(rule[1])
            if rule[0] == _OP_MATCH and rule[3] is not None:
                rule[3] = handle(rule[3])
        self._rules = [tuple(rule) for rule in rules]
        if kind == "regexp":
            largest = max((rule[5] for rule in self._rules if rule[0] == _OP_MATCH), default=0)
            self._buffer = self._engine.match_buffer(largest + 1) if largest else None

    def __len__(self) -> int:
        return len(self._rules)

    def changed(self) -> bool:
        return self._signature is not None and self._signature.changed()

    def close(self) -> None:
        self._rules = []
        self._release()

    def _key_bytes(self, key: str) -> bytes | None:
        if key.isascii():
            data = key.encode("ascii")
        else:
            try:
                data = key.encode("utf-8")
            except UnicodeEncodeError:
                if self._smtputf8:
                    return None  # not UTF-8: Postfix skips the lookup
                data = key.encode("utf-8", "surrogateescape")
        return data.split(b"\0", 1)[0] if b"\0" in data else data

    def _answer(self, key: str, result, spans: list[tuple[int, int]] | None, subject: bytes) -> str:
        if isinstance(result, _Value):
            if not result.valid and self._smtputf8:
                raise TableError(f'{self.spec}: key "{key}": non-UTF-8 value "{result.text}"')
            return result.text
        parts = []
        for piece in result:
            if isinstance(piece, int):
                start, end = spans[piece]
                if start >= 0 and end > start:
                    parts.append(subject[start:end])
            else:
                parts.append(piece)
        data = b"".join(parts)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", "surrogateescape")
            if self._smtputf8:
                raise TableError(f'{self.spec}: key "{key}": non-UTF-8 value "{text}"') from None
            return text

    def get(self, key: str) -> str | None:
        subject = self._key_bytes(key)
        if subject is None:
            return None
        if self.kind == "regexp":
            return self._get_posix(key, subject)
        return self._get_pcre(key, subject)

    def _get_posix(self, key: str, subject: bytes) -> str | None:
        engine = self._engine
        regexec = engine.regexec
        buffer = self._buffer
        rules = self._rules
        count = len(rules)
        index = 0
        previous = engine.uselocale(engine.c_locale)
        try:
            while index < count:
                rule = rules[index]
                index += 1
                op = rule[0]
                if op == _OP_MATCH:
                    wanted = rule[5] + 1 if rule[5] else 0
                    status = regexec(rule[1], subject, wanted, buffer if wanted else None, 0)
                    if not (rule[2] if status == 0 else (not rule[2]) if status == 1 else False):
                        continue
                    if rule[3] is not None:
                        status = regexec(rule[3], subject, 0, None, 0)
                        if not (rule[4] if status == 0 else (not rule[4]) if status == 1 else False):
                            continue
                    spans = engine.spans(buffer, wanted) if wanted else None
                    return self._answer(key, rule[6], spans, subject)
                if op == _OP_IF:
                    status = regexec(rule[1], subject, 0, None, 0)
                    if rule[2] if status == 0 else (not rule[2]) if status == 1 else False:
                        continue
                    if rule[3] < 0:
                        return None
                    index = rule[3] + 1
            return None
        finally:
            engine.uselocale(previous)

    def _get_pcre(self, key: str, subject: bytes) -> str | None:
        engine = self._engine
        nomatch = engine.ERROR_NOMATCH
        length = len(subject)
        rules = self._rules
        count = len(rules)
        index = 0
        while index < count:
            rule = rules[index]
            index += 1
            op = rule[0]
            if op == _OP_MATCH:
                run, code, data = rule[1]
                status = run(code, subject, length, 0, 0, data, None)
                if not (rule[2] if status > 0 else (not rule[2]) if status == nomatch else False):
                    continue
                spans = engine.spans(rule[-1], rule[5] + 1) if rule[5] else None
                return self._answer(key, rule[6], spans, subject)
            if op == _OP_IF:
                run, code, data = rule[1]
                status = run(code, subject, length, 0, 0, data, None)
                if rule[2] if status > 0 else (not rule[2]) if status == nomatch else False:
                    continue
                if rule[3] < 0:
                    return None
                index = rule[3] + 1
        return None


def _free_all(engine, compiled: list) -> None:
    while compiled:
        engine.free(compiled.pop())


def _no_regsub(options, no_regsub: bool) -> bool:
    # Tables whose results must never carry text from the key (Postfix's no_regsub flag:
    # transport_maps, mailbox_command_maps ...) refuse $number rules.
    return no_regsub or bool(getattr(options, "no_regsub", False))


def open_regexp(name: str, options, *, no_regsub: bool = False) -> PatternTable:
    return PatternTable("regexp", name, options, no_regsub=_no_regsub(options, no_regsub))


def open_pcre(name: str, options, *, no_regsub: bool = False) -> PatternTable:
    return PatternTable("pcre", name, options, no_regsub=_no_regsub(options, no_regsub))
