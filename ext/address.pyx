"""RFC 822 / RFC 5322 address lists in header values, read the way Postfix's cleanup reads them.

The tokenizer and the parser follow the behaviour of Postfix's tok822 module, so that a header
that Postfix would rewrite comes out byte for byte as Postfix writes it:

- tokens: atoms, quoted strings, domain literals, comments (kept with their parentheses), and the
  single-character operators ``| % ! ) < > @ , ; : . ]``; white space separates tokens; a backslash
  escapes the next character; an atom that holds a space, a control character or an operator
  (through escapes) is written back as a quoted string.
- parsing, from right to left: comments move out of addresses to the right end of the
  address expression; ``<...>`` is an address and the words before it its phrase; ``name: a, b;``
  is a group; two words in a row without an operator between them are two addresses (a comma is
  inserted); nothing is thrown away.
- externalizing: address by address, the local part quoted when it is not a dot-string, one
  address expression per line (a newline after each comma), more than 250 characters of
  non-address text in one expression reduced to ``<address>``.

Everything is I/O-free and works on ``str`` or on ``bytes`` (each byte one character, so spans
are byte offsets; bytes in, bytes out).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc

cdef enum:
    T_ATOM = 256
    T_QSTRING = 257
    T_COMMENT = 258
    T_DOMLIT = 259
    T_ADDR = 260
    T_STARTGRP = 261

# Non-address text allowed per address expression before it is reduced to <address>.
DEF MAX_NONADDR_LENGTH = 250
# Postfix's token_limit default.
DEF TOKEN_LIMIT = 10240


cdef inline bint is_space(Py_UCS4 c) noexcept:
    return c == 32 or c == 9 or c == 13 or c == 10


cdef inline bint is_opchar(Py_UCS4 c) noexcept:
    # The RFC 822 specials plus % ! and |.
    return (c == 124 or c == 37 or c == 33 or c == 40 or c == 41 or c == 60 or c == 62
            or c == 64 or c == 44 or c == 59 or c == 58 or c == 92 or c == 34 or c == 46
            or c == 91 or c == 93)


cdef inline bint is_cntrl(Py_UCS4 c) noexcept:
    return c < 32 or c == 127


cdef inline bint non_operator(int kind) noexcept:
    return (kind == T_ATOM or kind == T_QSTRING or kind == T_COMMENT or kind == T_DOMLIT
            or kind == T_ADDR)


cdef class _Tokens:
    """A flat token list: kinds, values, and source spans."""
    cdef list kinds
    cdef list values
    cdef list starts
    cdef list ends

    def __cinit__(self):
        self.kinds = []
        self.values = []
        self.starts = []
        self.ends = []


cdef Py_ssize_t _collect(str text, Py_ssize_t pos, Py_ssize_t size, Py_UCS4 stop, bint atom,
                         list out) except -2:
    """Appends the characters from pos to out (one str), undoing backslash escapes and turning
    white space into a space; stops before `stop` (quoted string, domain literal) or, for an atom,
    before white space or an operator. Returns the position where it stopped."""
    cdef Py_UCS4 c
    cdef Py_ssize_t begin = pos
    cdef list chars = []
    cdef bint plain = True
    while pos < size:
        c = text[pos]
        if c == 0:
            break
        if c == 92:
            plain = False
            pos += 1
            if pos >= size or text[pos] == 0:
                break
            c = text[pos]
        elif atom:
            if is_space(c) or is_opchar(c):
                break
        elif c == stop:
            break
        if is_space(c) and c != 32:
            plain = False
            c = 32
        chars.append(c)
        pos += 1
    if plain:
        out.append(text[begin:pos])
    else:
        out.append("".join(chars))
    return pos


cdef _Tokens _scan(str text, Py_ssize_t limit):
    cdef _Tokens tokens = _Tokens()
    cdef Py_ssize_t size = len(text)
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t start, level
    cdef Py_UCS4 c
    cdef int kind
    cdef str value
    cdef list collected = []
    while pos < size:
        c = text[pos]
        if c == 0:
            break
        if is_space(c):
            pos += 1
            continue
        start = pos
        if c == 40:  # (
            level = 1
            pos += 1
            while pos < size:
                c = text[pos]
                if c == 0:
                    break
                pos += 1
                if c == 40:
                    level += 1
                elif c == 41:
                    level -= 1
                    if level == 0:
                        break
                elif c == 92:
                    if pos >= size or text[pos] == 0:
                        break
                    pos += 1
            kind = T_COMMENT
            value = text[start:pos]
        elif c == 91 or c == 34:  # [ or "
            kind = T_DOMLIT if c == 91 else T_QSTRING
            collected.clear()
            pos = _collect(text, pos + 1, size, 93 if c == 91 else 34, False, collected)
            value = collected[0]
            if pos < size and text[pos] != 0:
                pos += 1
        elif c != 92 and is_opchar(c):
            kind = <int>c
            value = None
            pos += 1
        else:
            collected.clear()
            pos = _collect(text, pos, size, 0, True, collected)
            value = collected[0]
            kind = T_ATOM
            for c in value:
                if c == 32 or is_cntrl(c) or is_opchar(c):
                    kind = T_QSTRING
                    break
        tokens.kinds.append(kind)
        tokens.values.append(value)
        tokens.starts.append(start)
        tokens.ends.append(pos)
        if limit > 0 and len(tokens.kinds) >= limit:
            break
    return tokens


cdef inline bint _dot_string(str local) noexcept:
    """The local part is a dot-string: no quoting needed (8-bit characters are left alone)."""
    cdef Py_ssize_t size = len(local)
    cdef Py_ssize_t i
    cdef Py_UCS4 c
    if size == 0 or local[0] == u"." or local[size - 1] == u".":
        return False
    for i in range(size):
        c = local[i]
        if c == 46 and i + 1 < size and local[i + 1] == u".":
            return False
        if c == 32 or is_cntrl(c) or c == 40 or c == 41 or c == 60 or c == 62 or c == 64 \
                or c == 44 or c == 59 or c == 58 or c == 92 or c == 34 or c == 91 or c == 93:
            return False
    return True


cdef str _quote_local(str mailbox):
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end
    cdef Py_ssize_t colon
    cdef str local
    cdef list out
    cdef Py_UCS4 c
    if mailbox.startswith("@"):
        colon = mailbox.find(":")
        if colon >= 0:
            start = colon + 1
    end = mailbox.rfind("@", start)
    if end < 0:
        end = len(mailbox)
    local = mailbox[start:end]
    if _dot_string(local):
        return mailbox
    out = [mailbox[:start], '"']
    for c in local:
        if c == 34 or c == 92 or c == 13:
            out.append("\\")
        out.append(c)
    out.append('"')
    out.append(mailbox[end:])
    return "".join(out)


cdef str _unquote_local(str mailbox):
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t colon, i, size = len(mailbox)
    cdef Py_ssize_t at_out = -1, at_in = -1
    cdef bint quoted = False
    cdef list out = []
    cdef Py_UCS4 c
    if mailbox.startswith("@"):
        colon = mailbox.find(":")
        if colon >= 0:
            start = colon + 1
            out.append(mailbox[:start])
    i = start
    while i < size:
        c = mailbox[i]
        if c == 34:
            quoted = not quoted
            i += 1
            continue
        if c == 64:
            if not quoted:
                at_out = len(out)
                at_in = i
        elif c == 92:
            if i + 1 >= size:
                break
            i += 1
            c = mailbox[i]
        out.append(c)
        i += 1
    if at_out >= 0:
        del out[at_out:]
        out.append(mailbox[at_in:])
    return "".join(out)


cdef str _escaped(str value, bint quote_mark):
    """A quoted string's or domain literal's content with backslashes before \\ CR LF (and ")."""
    cdef list out
    cdef Py_UCS4 c
    for c in value:
        if c == 92 or c == 13 or c == 10 or (quote_mark and c == 34):
            break
    else:
        return value
    out = []
    for c in value:
        if c == 92 or c == 13 or c == 10 or (quote_mark and c == 34):
            out.append("\\")
        out.append(c)
    return "".join(out)


cdef void _internalize_flat(list kinds, list values, list out, bint spaces):
    """Unquoted form of a flat token list; `spaces`: a space between two adjacent words (a token
    list that was never grouped into an address, as a rescanned address is)."""
    cdef Py_ssize_t i, n = len(kinds)
    cdef int kind
    for i in range(n):
        kind = kinds[i]
        if kind == T_ATOM or kind == T_QSTRING or kind == T_COMMENT:
            out.append(values[i])
        elif kind == T_DOMLIT:
            out.append("[")
            out.append(values[i])
            out.append("]")
        elif kind == T_STARTGRP:
            out.append(":")
        else:
            out.append(chr(kind))
        if spaces and i + 1 < n and (kind == 44 or kind == T_STARTGRP or kinds[i + 1] == 60
                                     or (non_operator(kind) and non_operator(kinds[i + 1]))):
            out.append(" ")


cdef str _canonical(str external):
    """An address as Postfix writes it after rewriting: scanned, unquoted, local part requoted."""
    cdef _Tokens tokens = _scan(external, 0)
    cdef list out = []
    _internalize_flat(tokens.kinds, tokens.values, out, True)
    return _quote_local("".join(out))


cdef inline str _as_text(object value):
    if isinstance(value, str):
        return <str>value
    return bytes(value).decode("latin-1")


cdef inline object _like(str text, bint as_bytes):
    return text.encode("latin-1") if as_bytes else text


def canonical_address(external):
    """quote(unquote(address)) as Postfix's rewriting leaves an address: `"a.b"@x` becomes `a.b@x`."""
    return _like(_canonical(_as_text(external)), not isinstance(external, str))


def requote_local(external):
    """An external-form address as Postfix writes it back after reading it (internal form, then
    quoted again): needless quotes go, needed ones come (`"a.b"@x` is `a.b@x`, `a..b@x` is
    `"a..b"@x`)."""
    cdef str text = _as_text(external)
    if '"' in text or "\\" in text:
        text = _unquote_local(text)
    return _like(_quote_local(text), not isinstance(external, str))


def quote_local(internal):
    """The external (quoted) form of an internal address: the local part quoted unless it is a
    dot-string; a source route is left as it is."""
    return _like(_quote_local(_as_text(internal)), not isinstance(internal, str))


def unquote_local(external):
    """The internal form: quotes and backslashes removed before the last unquoted "@"."""
    return _like(_unquote_local(_as_text(external)), not isinstance(external, str))


cdef Py_ssize_t _find(list kinds, Py_ssize_t start, int kind):
    cdef Py_ssize_t i
    for i in range(start, len(kinds)):
        if kinds[i] == kind:
            return i
    return -1


cdef Py_ssize_t _rfind(list kinds, int kind):
    cdef Py_ssize_t i
    for i in range(len(kinds) - 1, -1, -1):
        if kinds[i] == kind:
            return i
    return -1


def rewrite_address(external, str origin, str domain, bint swap_bangpath=True,
                    bint percent_hack=True, bint append_at_origin=True,
                    bint append_dot_domain=False):
    """trivial-rewrite's rule set on one external-form address: source route dropped,
    site!user → user@site, user%site → user@site, @origin appended to a bare user, .domain
    appended to a dotless domain, one trailing dot removed. Returns the canonical external form."""
    cdef bint as_bytes = not isinstance(external, str)
    cdef str text = _as_text(external)
    cdef _Tokens tokens, extra
    cdef list kinds, values, out
    cdef Py_ssize_t at, colon, bang, percent, n
    if not text:
        return external
    tokens = _scan(text, 0)
    kinds = tokens.kinds
    values = tokens.values
    n = len(kinds)
    if n == 0:
        return external
    if not (n == 1 and kinds[0] == T_QSTRING and not values[0]):
        if n == 1 and kinds[0] == 64:
            kinds[0] = T_QSTRING
            values[0] = ""
        else:
            if kinds[0] == 64:
                colon = _find(kinds, 0, 58)
                if colon >= 0 and colon != n - 1:
                    del kinds[:colon + 1]
                    del values[:colon + 1]
            if _rfind(kinds, 64) < 0:
                bang = _find(kinds, 0, 33) if swap_bangpath else -1
                percent = _rfind(kinds, 37) if percent_hack else -1
                if bang >= 0:
                    kinds[:] = kinds[bang + 1:] + [64] + kinds[:bang]
                    values[:] = values[bang + 1:] + [None] + values[:bang]
                elif percent >= 0:
                    kinds[percent] = 64
                elif append_at_origin and origin:
                    extra = _scan(origin, 0)
                    kinds.append(64)
                    values.append(None)
                    kinds.extend(extra.kinds)
                    values.extend(extra.values)
            at = _rfind(kinds, 64)
            if append_dot_domain and domain and at >= 0 and at != len(kinds) - 1 \
                    and _find(kinds, at, T_DOMLIT) < 0 and _find(kinds, at, 46) < 0:
                extra = _scan(domain, 0)
                kinds.append(46)
                values.append(None)
                kinds.extend(extra.kinds)
                values.extend(extra.values)
            n = len(kinds)
            if n >= 2 and kinds[n - 1] == 46 and kinds[n - 2] != 46 and kinds[n - 2] != 64:
                del kinds[n - 1]
                del values[n - 1]
    out = []
    _internalize_flat(kinds, values, out, True)
    return _like(_quote_local("".join(out)), as_bytes)


cdef struct Node:
    int kind
    int prev
    int next
    int head
    int tail
    int owner
    int token      # index into the scanned tokens, -1 for nodes the parser made


cdef class AddressList:
    """The parse tree of one header value (an address list). Addresses are numbered from the
    left; span(i) is where address i is in the value."""

    cdef str _source
    cdef bint _bytes
    cdef _Tokens _tokens
    cdef Node* _nodes
    cdef int _count
    cdef int _capacity
    cdef int _first
    cdef list _addresses

    def __cinit__(self):
        self._nodes = NULL
        self._count = 0
        self._first = -1
        self._addresses = []

    def __dealloc__(self):
        PyMem_Free(self._nodes)

    def __len__(self):
        return len(self._addresses)

    def __repr__(self):
        return f"<AddressList {[self.address(i) for i in range(len(self._addresses))]!r}>"

    # -- building ----------------------------------------------------------------------------

    cdef int _new(self, int kind, int token) except -1:
        cdef int index = self._count
        if index >= self._capacity:
            raise MemoryError("address parser node table full")
        self._count += 1
        self._nodes[index].kind = kind
        self._nodes[index].prev = -1
        self._nodes[index].next = -1
        self._nodes[index].head = -1
        self._nodes[index].tail = -1
        self._nodes[index].owner = -1
        self._nodes[index].token = token
        return index

    cdef int _unlink(self, int t) noexcept:
        cdef Node* n = self._nodes
        cdef int prev = n[t].prev
        cdef int nxt = n[t].next
        if prev >= 0:
            n[prev].next = nxt
        if nxt >= 0:
            n[nxt].prev = prev
        n[t].prev = -1
        n[t].next = -1
        return prev

    cdef void _insert_before(self, int right, int t) noexcept:
        cdef Node* n = self._nodes
        cdef int prev = n[right].prev
        if prev >= 0:
            n[prev].next = t
        n[t].prev = prev
        n[t].next = right
        n[t].owner = n[right].owner
        n[right].prev = t

    cdef void _insert_after(self, int left, int t) noexcept:
        cdef Node* n = self._nodes
        cdef int nxt = n[left].next
        n[left].next = t
        n[t].prev = left
        n[t].next = nxt
        n[t].owner = n[left].owner
        if nxt >= 0:
            n[nxt].prev = t

    cdef int _group(self, int left, int right, bint add_comma) except -2:
        """Puts the nodes strictly between left and right under a new address node (with a
        comma before it when add_comma); returns left."""
        cdef Node* n
        cdef int first, last, group, t, sync
        n = self._nodes
        first = n[left].next
        if left == right or first == right:
            return left
        last = n[right].prev
        group = self._new(T_ADDR, -1)
        n = self._nodes
        n[group].head = first
        n[group].tail = last
        n[first].prev = -1
        n[last].next = -1
        t = first
        while t >= 0:
            n[t].owner = group
            t = n[t].next
        n[left].next = group
        n[group].prev = left
        n[group].next = right
        n[right].prev = group
        n[group].owner = n[left].owner
        if add_comma:
            sync = self._new(44, -1)
            self._insert_after(left, sync)
        return left

    cdef int _parse(self, Py_ssize_t limit) except -1:
        cdef _Tokens tokens = _scan(self._source, limit)
        cdef int ntok = len(tokens.kinds)
        cdef int i, head, tail, right, tp, prev, kind
        cdef int do_word = 1, do_group = 2
        cdef int state
        cdef Node* n
        self._tokens = tokens
        if ntok == 0:
            return 0
        self._capacity = 3 * ntok + 8
        self._nodes = <Node*>PyMem_Malloc(self._capacity * sizeof(Node))
        if self._nodes == NULL:
            raise MemoryError()
        head = self._new(0, -1)
        prev = head
        for i in range(ntok):
            tp = self._new(tokens.kinds[i], i)
            self._nodes[prev].next = tp
            self._nodes[tp].prev = prev
            prev = tp
        tail = self._new(0, -1)
        self._nodes[prev].next = tail
        self._nodes[tail].prev = prev
        n = self._nodes

        state = do_word
        right = tail
        tp = n[tail].prev
        while n[tp].kind != 0:
            kind = n[tp].kind
            if kind == T_COMMENT:
                # A comment goes to the right end of the address expression.
                prev = self._unlink(tp)
                self._insert_before(right, tp)
                right = tp
                tp = prev
                continue
            elif kind == 59:  # ; ends a group
                right = self._group(tp, right, True)
                n = self._nodes
                state = do_group | do_word
            elif kind == 58 and state & do_group:  # : starts a group
                n[tp].kind = T_STARTGRP
                self._group(tp, right, False)
                n = self._nodes
                while n[tp].kind != 0 and n[tp].kind != 44:
                    tp = n[tp].prev
                right = tp
                continue
            elif kind == 62:  # > ends a <route-addr>
                right = self._group(tp, right, True)
                n = self._nodes
                while n[tp].kind != 0 and n[tp].kind != 60:
                    if n[tp].kind == T_COMMENT:
                        prev = self._unlink(tp)
                        self._insert_before(right, tp)
                        right = tp
                        tp = prev
                        continue
                    tp = n[tp].prev
                self._group(tp, right, False)
                n = self._nodes
                while n[tp].kind != 0 and (n[tp].kind > 0xff or n[tp].kind not in (62, 59, 44, 58)):
                    tp = n[tp].prev
                right = tp
                state |= do_word
                continue
            elif kind == T_ATOM or kind == T_QSTRING or kind == T_DOMLIT:
                if not state & do_word:
                    right = self._nodes[self._group(tp, right, True)].next
                    n = self._nodes
                state &= ~do_word
            elif kind == 44:
                right = self._group(tp, right, False)
                n = self._nodes
                state |= do_word
            else:
                state |= do_word
            tp = n[tp].prev
        self._group(tp, right, False)
        n = self._nodes
        self._first = n[head].next if n[head].next != tail else -1
        if self._first >= 0:
            n[self._first].prev = -1
            n[n[tail].prev].next = -1
        tp = self._first
        while tp >= 0:
            if n[tp].kind == T_ADDR:
                self._addresses.append(tp)
            tp = n[tp].next
        return 0

    # -- reading -----------------------------------------------------------------------------

    cdef int _addr(self, Py_ssize_t index) except -1:
        if index < 0:
            index += len(self._addresses)
        if index < 0 or index >= len(self._addresses):
            raise IndexError("address index out of range")
        return self._addresses[index]

    def span(self, Py_ssize_t index):
        """(start, end) of address `index` in the value: its first to its last token."""
        cdef int a = self._addr(index)
        cdef Node* n = self._nodes
        return (self._tokens.starts[n[n[a].head].token], self._tokens.ends[n[n[a].tail].token])

    cdef str _external(self, int a):
        cdef Node* n = self._nodes
        cdef list out = []
        cdef int t = n[a].head
        cdef int kind
        cdef object value
        while t >= 0:
            kind = n[t].kind
            value = self._tokens.values[n[t].token] if n[t].token >= 0 else None
            if kind == T_ATOM:
                out.append(value)
            elif kind == T_QSTRING:
                out.append('"')
                out.append(_escaped(value, True))
                out.append('"')
            elif kind == T_DOMLIT:
                out.append("[")
                out.append(_escaped(value, False))
                out.append("]")
            else:
                out.append(chr(kind))
            t = n[t].next
        return "".join(out)

    def address(self, Py_ssize_t index):
        """Address `index` in external (quoted) form, as Postfix hands it to rewriting."""
        return _like(self._external(self._addr(index)), self._bytes)

    def addresses(self):
        return [_like(self._external(a), self._bytes) for a in self._addresses]

    def externalize(self, replacements=None):
        """The value as Postfix writes a rewritten address header: each address in canonical
        form (replacements[i] in place of address i when given), a newline after each comma."""
        cdef Node* n = self._nodes
        cdef list out = []
        cdef Py_ssize_t length = 0, start = 0, addr_len = 0
        cdef int t, kind, nxt, address_index = 0
        cdef object addr = None   # external form of the expression's address, "" for <>
        cdef str piece, external
        cdef object value
        t = self._first
        while t >= 0:
            kind = n[t].kind
            if kind == 44:
                if addr is not None and length - addr_len > start + MAX_NONADDR_LENGTH:
                    length = self._strip(out, start, addr)
                out.append(",\n")
                length += 2
                start = length
                addr = None
                addr_len = 0
                t = n[t].next
                continue
            value = self._tokens.values[n[t].token] if n[t].token >= 0 else None
            if kind == T_ADDR:
                if replacements is not None:
                    external = _as_text(replacements[address_index])
                else:
                    external = self._external(t)
                address_index += 1
                piece = _canonical(external)
                addr = piece
                addr_len = len(piece)
            elif kind == T_ATOM or kind == T_COMMENT:
                piece = value
            elif kind == T_QSTRING:
                piece = '"' + _escaped(value, True) + '"'
            elif kind == T_DOMLIT:
                piece = "[" + _escaped(value, False) + "]"
            elif kind == T_STARTGRP:
                piece = ":"
            elif kind == 60:
                nxt = n[t].next
                if nxt >= 0 and n[nxt].kind == 62:
                    addr = ""
                    addr_len = 0
                piece = "<"
            else:
                piece = chr(kind)
            out.append(piece)
            length += len(piece)
            nxt = n[t].next
            if nxt >= 0 and (kind == T_STARTGRP or n[nxt].kind == 60
                             or (non_operator(kind) and non_operator(n[nxt].kind))):
                out.append(" ")
                length += 1
            t = nxt
        if addr is not None and length - addr_len > start + MAX_NONADDR_LENGTH:
            self._strip(out, start, addr)
        return _like("".join(out), self._bytes)

    cdef Py_ssize_t _strip(self, list out, Py_ssize_t start, object addr) except -1:
        """Too much non-address text in one expression: keep only <address>."""
        cdef str text = "".join(out)
        out.clear()
        out.append(text[:start])
        out.append("<" + (addr if addr else "") + ">")
        return start + len(addr) + 2


def parse_address_list(value, Py_ssize_t token_limit=TOKEN_LIMIT):
    """Parses a header value (the text after "Name:"); folded lines may stay folded."""
    cdef AddressList result = AddressList.__new__(AddressList)
    result._bytes = not isinstance(value, str)
    result._source = _as_text(value)
    result._parse(token_limit)
    return result


def fold_address_header(name, text):
    """A rewritten address header as Postfix writes it: "Name: " + text, where text has a newline
    after each comma; lines are joined while the line would stay under 70 characters, every
    continuation line starts with a TAB unless it already starts with white space; CRLF endings.
    """
    cdef bint as_bytes = not isinstance(text, str)
    cdef str whole = _as_text(name) + ": " + _as_text(text)
    cdef list pieces = whole.split("\n")
    cdef list lines = []
    cdef str current = pieces[0]
    cdef str piece
    for piece in pieces[1:]:
        if len(current) + 1 + len(piece) < 70:
            current = current + " " + piece
        else:
            lines.append(current)
            current = piece
    lines.append(current)
    out = []
    for index, piece in enumerate(lines):
        if index and not (piece.startswith(" ") or piece.startswith("\t")):
            out.append("\t")
        out.append(piece)
        out.append("\r\n")
    result = "".join(out)
    return result.encode("latin-1") if as_bytes else result
