"""SMTP server protocol parsing: command lines, the DATA stream, MAIL/RCPT paths.

`SmtpServerParser` is I/O-free: the caller feeds it the bytes it read and the
parser calls methods of a handler object for each event.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr

from buffer cimport (ByteBuffer, Span, bytebuf_append, bytebuf_clear, bytebuf_consume,
                     bytebuf_free, bytebuf_init, bytebuf_len)

# Stands in for an unlimited message_size_limit when bounding the paused buffer.
cdef Py_ssize_t DEF_MESSAGE_SIZE_LIMIT = 10240000

cdef enum:
    CHAR_HT = 9
    CHAR_LF = 10
    CHAR_CR = 13
    CHAR_SP = 32
    CHAR_QUOTE = 34
    CHAR_COMMA = 44
    CHAR_DOT = 46
    CHAR_COLON = 58
    CHAR_LT = 60
    CHAR_EQUALS = 61
    CHAR_GT = 62
    CHAR_AT = 64
    CHAR_BACKSLASH = 92
    CHAR_DEL = 127

# Where the DATA scanner stands within the current line.
cdef enum DataState:
    AT_LINE_START     # nothing of this line seen yet
    AFTER_DOT         # the line so far is one "." (held back: it may be stuffing or end-of-data)
    AFTER_DOT_CR      # the line so far is ".<CR>"
    IN_LINE           # copying the rest of the line

# A message buffer larger than this is released after the message instead of reused.
cdef Py_ssize_t CONTENT_BUFFER_KEEP = 1 << 20

cdef const unsigned char* CRLF = <const unsigned char*>b"\r\n"
cdef const unsigned char* TWO_DOTS = <const unsigned char*>b".."


cdef inline bint is_wsp(unsigned char c) noexcept nogil:
    return c == CHAR_SP or c == CHAR_HT


cdef inline unsigned char ascii_upper(unsigned char c) noexcept nogil:
    if 97 <= c <= 122:
        return c - 32
    return c


cdef inline unsigned char ascii_lower(unsigned char c) noexcept nogil:
    if 65 <= c <= 90:
        return c + 32
    return c


cdef inline bint is_control(unsigned char c) noexcept nogil:
    return c < 32 or c == CHAR_DEL


cdef class SmtpServerParser:
    """Splits an SMTP server's input into commands and messages.

    Handler methods called:
      on_command(verb: bytes, arg: bytes)
      on_line_too_long()  -- once per command line longer than line_length_limit
      on_data_end(content: bytes, too_big: bool, bare_newline: bool)
      on_line(line: bytes)  -- the next line after read_line(), whole (an AUTH response)
    A true return value from any of them pauses the parser (see `resume`). An
    exception raised by one propagates out of feed()/resume() and leaves the
    parser paused with the unprocessed bytes buffered.

    Buffering is bounded: in command mode by line_length_limit + 1 bytes (a
    partial line; the extra byte is a CR that may precede the LF). A pause
    keeps the rest of the input being fed. Bytes fed while paused are kept up
    to a total of line_length_limit + message_size_limit + 2 bytes (10240000
    stands in for an unlimited message_size_limit); bytes beyond that are
    dropped and `overflowed` becomes true, so the caller can end the session.
    A caller that stops reading while paused never reaches the bound.
    """

    cdef object _on_command
    cdef object _on_line_too_long
    cdef object _on_data_end
    cdef object _on_line
    cdef bint _line_requested         # read_line(): the next line goes to on_line, as it is
    cdef ByteBuffer _pending          # bytes received but not processed yet
    cdef ByteBuffer _content          # the message being received
    cdef Py_ssize_t _line_length_limit
    cdef Py_ssize_t _message_size_limit
    cdef Py_ssize_t _progress         # bytes of the current _process input already consumed
    cdef bint _paused
    cdef bint _overflowed
    cdef bint _processing             # inside feed()/resume(): handler callbacks may run
    cdef bint _discard_requested      # discard_buffered() was called from a callback
    cdef bint _skipping_long_line     # dropping the rest of an overlong command line
    cdef bint _last_line_crlf         # the last command line ended with CRLF
    cdef bint _in_data
    cdef bint _data_ended
    cdef DataState _data_state
    cdef bint _prev_line_crlf         # the previous message line ended with CRLF
    cdef bint _line_ends_cr           # the last byte stored for the current line is CR
    cdef bint _too_big
    cdef bint _bare_newline
    cdef Py_ssize_t _content_size
    # The input a callback runs inside: the block being processed (its unprocessed part starts
    # at _progress) and, when that block is _pending, the fed bytes still waiting behind it.
    cdef const unsigned char* _block
    cdef Py_ssize_t _block_size
    cdef const unsigned char* _rest
    cdef Py_ssize_t _rest_size

    def __cinit__(self):
        bytebuf_init(&self._pending)
        bytebuf_init(&self._content)

    def __init__(self, handler, Py_ssize_t line_length_limit=2048,
                 Py_ssize_t message_size_limit=10240000):
        if line_length_limit < 1:
            raise ValueError("line_length_limit must be at least 1")
        self._on_command = handler.on_command
        self._on_line_too_long = handler.on_line_too_long
        self._on_data_end = handler.on_data_end
        self._on_line = getattr(handler, "on_line", None)
        self._line_length_limit = line_length_limit
        self._message_size_limit = message_size_limit
        self._last_line_crlf = True

    def __dealloc__(self):
        bytebuf_free(&self._pending)
        bytebuf_free(&self._content)

    @property
    def paused(self):
        return self._paused

    @property
    def buffered(self):
        """Number of received bytes not processed yet."""
        return bytebuf_len(&self._pending)

    @property
    def in_data(self):
        return self._in_data

    @property
    def received_size(self):
        """Bytes of the message being received, as Postfix counts them when a session ends in
        DATA: whole lines only, without dot-stuffing, each line ending counted as two bytes."""
        cdef const unsigned char* data
        cdef Py_ssize_t size, end, stuffed, i
        if not self._in_data:
            return 0
        if self._too_big or self._content.data == NULL:
            return self._content_size  # the bytes are gone: what was stored is the best count
        data = self._content.data + self._content.start
        size = bytebuf_len(&self._content)
        end = size
        while end > 0 and data[end - 1] != CHAR_LF:
            end -= 1
        # Every stored line that starts with a dot carries the stuffing dot (see _scan_data).
        stuffed = 1 if end >= 2 and data[0] == CHAR_DOT else 0
        for i in range(end - 2):
            if data[i] == CHAR_LF and data[i + 1] == CHAR_DOT:
                stuffed += 1
        return end - stuffed

    def peek(self, Py_ssize_t limit):
        """Up to `limit` received bytes that follow what was processed so far: called from a
        command's callback, what the client sent after that command line."""
        cdef Py_ssize_t start, take
        cdef bytes head
        if limit <= 0:
            return b""
        if not self._processing or self._block == NULL:
            take = min(limit, bytebuf_len(&self._pending))
            return PyBytes_FromStringAndSize(<const char*>self._pending.data + self._pending.start, take)
        start = min(self._progress, self._block_size)
        take = min(limit, self._block_size - start)
        head = PyBytes_FromStringAndSize(<const char*>self._block + start, take)
        if take < limit and self._rest_size > 0:
            head += PyBytes_FromStringAndSize(<const char*>self._rest, min(limit - take, self._rest_size))
        return head

    @property
    def overflowed(self):
        """True once bytes were dropped because the paused-buffer bound was reached."""
        return self._overflowed

    @property
    def line_length_limit(self):
        return self._line_length_limit

    @line_length_limit.setter
    def line_length_limit(self, Py_ssize_t value):
        if value < 1:
            raise ValueError("line_length_limit must be at least 1")
        self._line_length_limit = value

    @property
    def message_size_limit(self):
        """Largest stored message in bytes; 0 or less means no limit (as in Postfix)."""
        return self._message_size_limit

    @message_size_limit.setter
    def message_size_limit(self, Py_ssize_t value):
        self._message_size_limit = value

    def feed(self, data):
        """Process `data` (any bytes-like object); it is not referenced after return."""
        cdef const unsigned char[::1] view
        cdef Py_ssize_t size
        if self._processing:
            raise RuntimeError("feed() called from inside a handler callback")
        view = data
        size = view.shape[0]
        if size == 0:
            return
        if self._paused:
            self._keep(&view[0], size, True)
            return
        self._processing = True
        try:
            self._feed_unpaused(&view[0], size)
        finally:
            self._end_processing()

    def resume(self):
        """Un-pause and process the buffered bytes now (this may pause again)."""
        if self._processing:
            raise RuntimeError("resume() called from inside a handler callback")
        if not self._paused:
            return
        self._paused = False
        self._processing = True
        try:
            self._run_pending()
        finally:
            self._end_processing()

    def discard_buffered(self):
        """Drop every received byte not processed yet (after STARTTLS, for instance).

        Called from a handler callback, it also drops the rest of the input
        being processed.
        """
        self._skipping_long_line = False
        self._overflowed = False
        if self._processing:
            self._discard_requested = True
        else:
            bytebuf_clear(&self._pending)

    def read_line(self):
        """The next line goes to on_line(line) whole, without its line ending, instead of
        to on_command: an AUTH response is base64, where case matters."""
        if self._on_line is None:
            raise TypeError("the handler has no on_line method")
        self._line_requested = True

    def start_data(self):
        """Switch to data mode; the bytes after the current command are message content."""
        if self._in_data:
            raise RuntimeError("start_data() called while already receiving a message")
        self._in_data = True
        self._data_state = AT_LINE_START
        # A "." line right after DATA ends the message only if DATA itself ended
        # with CRLF: end-of-data is the literal <CR><LF>.<CR><LF>.
        self._prev_line_crlf = self._last_line_crlf
        self._line_ends_cr = False
        self._too_big = False
        self._bare_newline = False
        self._content_size = 0
        bytebuf_clear(&self._content)

    cdef void _end_processing(self):
        self._processing = False
        self._block = NULL
        self._block_size = 0
        self._rest = NULL
        self._rest_size = 0
        if self._discard_requested:
            self._discard_requested = False
            bytebuf_clear(&self._pending)

    cdef int _feed_unpaused(self, const unsigned char* data, Py_ssize_t size) except -1:
        cdef Py_ssize_t used = 0
        cdef bint in_place = False
        try:
            if self._in_data and bytebuf_len(&self._pending) > 0:
                # Held bytes that start_data() turned into message content.
                self._rest, self._rest_size = data, size
                self._run_pending()
            if (bytebuf_len(&self._pending) > 0 and not self._in_data
                    and not self._paused and not self._discard_requested):
                used = self._join_pending_line(data, size)
                if self._pending_ready():
                    self._rest, self._rest_size = data + used, size - used
                    self._run_pending()
            self._rest, self._rest_size = NULL, 0
            if used < size and not self._paused and not self._discard_requested:
                in_place = True
                used += self._process(data + used, size - used)
                in_place = False
        except BaseException:
            if in_place:
                used += self._progress
            self._paused = True
            self._keep(data + used, size - used, False)
            raise
        self._keep(data + used, size - used, False)
        return 0

    cdef inline bint _pending_ready(self) noexcept:
        """True when _pending holds a whole command line."""
        return (bytebuf_len(&self._pending) > 0
                and self._pending.data[self._pending.end - 1] == CHAR_LF)

    cdef Py_ssize_t _join_pending_line(self, const unsigned char* data,
                                       Py_ssize_t size) except -1:
        """Moves the start of `data` onto the partial command line held in _pending.

        Returns how many bytes of `data` were used. Takes at most up to the
        first LF, and drops the line instead when it is already too long.
        """
        cdef Py_ssize_t held = bytebuf_len(&self._pending)
        cdef const unsigned char* lf = <const unsigned char*>memchr(data, CHAR_LF, <size_t>size)
        cdef Py_ssize_t used
        if lf == NULL:
            if self._partial_line_too_long(held + size, data[size - 1]):
                bytebuf_clear(&self._pending)
                self._skipping_long_line = True
            else:
                bytebuf_append(&self._pending, data, size)
            return size
        used = lf - data + 1
        # With its CR LF ending, a line within the limit is at most limit + 2 bytes.
        if held + used <= self._line_length_limit + 2:
            bytebuf_append(&self._pending, data, used)
            return used
        bytebuf_clear(&self._pending)
        self._skipping_long_line = True
        return 0

    cdef int _run_pending(self) except -1:
        cdef Py_ssize_t consumed
        try:
            consumed = self._process(self._pending.data + self._pending.start,
                                     bytebuf_len(&self._pending))
        except BaseException:
            bytebuf_consume(&self._pending, self._progress)
            self._paused = True
            raise
        bytebuf_consume(&self._pending, consumed)
        return 0

    cdef int _keep(self, const unsigned char* data, Py_ssize_t size, bint bounded) except -1:
        """Buffers unprocessed bytes: the rest of the input being processed, or
        (`bounded`) bytes fed while paused, which are capped."""
        cdef Py_ssize_t message_limit = self._message_size_limit
        cdef Py_ssize_t room
        if size <= 0 or self._discard_requested:
            return 0
        if not bounded:
            bytebuf_append(&self._pending, data, size)
            return 0
        if message_limit <= 0:
            message_limit = DEF_MESSAGE_SIZE_LIMIT
        room = self._line_length_limit + 2 + message_limit - bytebuf_len(&self._pending)
        if size > room:
            self._overflowed = True
            size = room if room > 0 else 0
        bytebuf_append(&self._pending, data, size)
        return 0

    cdef inline bint _partial_line_too_long(self, Py_ssize_t length,
                                           unsigned char last) noexcept:
        # An unterminated line of limit + 1 bytes may still be within the limit
        # if its last byte is the CR of a CR LF ending.
        return length > self._line_length_limit + 1 or (
            length == self._line_length_limit + 1 and last != CHAR_CR)

    cdef Py_ssize_t _process(self, const unsigned char* data, Py_ssize_t size) except -1:
        """Runs the events in data[:size]; returns the number of bytes consumed.

        Stops early when paused, when discard_buffered() was called, or before
        an incomplete command line. `_progress` tracks the consumed count
        before each callback so a caller can recover when one raises.
        """
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t line_end
        cdef const unsigned char* lf
        cdef object result
        self._progress = 0
        self._block = data
        self._block_size = size
        while pos < size and not self._paused and not self._discard_requested:
            if self._in_data:
                pos = self._scan_data(data, size, pos)
                self._progress = pos
                if self._data_ended:
                    self._data_ended = False
                    result = self._finish_message()
                    if result:
                        self._paused = True
                continue
            lf = <const unsigned char*>memchr(data + pos, CHAR_LF, <size_t>(size - pos))
            if lf == NULL:
                if self._skipping_long_line or self._partial_line_too_long(
                        size - pos, data[size - 1]):
                    self._skipping_long_line = True
                    pos = size
                    self._progress = pos
                break
            line_end = lf - data
            if self._skipping_long_line:
                self._skipping_long_line = False
                self._line_requested = False
                pos = line_end + 1
                self._progress = pos
                result = self._on_line_too_long()
            else:
                result = self._command_line(data, pos, line_end)
                pos = self._progress
            if result:
                self._paused = True
        return pos

    cdef object _command_line(self, const unsigned char* data, Py_ssize_t start,
                              Py_ssize_t lf):
        """Reports the command line data[start:lf] (lf: offset of its LF)."""
        cdef Py_ssize_t end = lf
        cdef Py_ssize_t verb_start, verb_end, arg_start, i
        cdef bint crlf = end > start and data[end - 1] == CHAR_CR
        cdef bytes verb
        cdef char* verb_chars
        if crlf:
            end -= 1
        self._progress = lf + 1
        if end - start > self._line_length_limit:
            self._line_requested = False
            return self._on_line_too_long()
        self._last_line_crlf = crlf
        if self._line_requested:
            self._line_requested = False
            return self._on_line(PyBytes_FromStringAndSize(<const char*>data + start, end - start))
        verb_start = start
        while verb_start < end and is_wsp(data[verb_start]):
            verb_start += 1
        verb_end = verb_start
        while verb_end < end and not is_wsp(data[verb_end]):
            verb_end += 1
        arg_start = verb_end
        while arg_start < end and is_wsp(data[arg_start]):
            arg_start += 1
        while end > arg_start and is_wsp(data[end - 1]):
            end -= 1
        verb = PyBytes_FromStringAndSize(NULL, verb_end - verb_start)
        verb_chars = PyBytes_AS_STRING(verb)
        for i in range(verb_end - verb_start):
            verb_chars[i] = <char>ascii_upper(data[verb_start + i])
        return self._on_command(
            verb, PyBytes_FromStringAndSize(<const char*>data + arg_start, end - arg_start))

    cdef Py_ssize_t _scan_data(self, const unsigned char* data, Py_ssize_t size,
                               Py_ssize_t pos) except -1:
        """Stores message lines from data[pos:size] until the end-of-data line.

        Returns the offset after the last byte used; sets _data_ended when that
        byte completed the end-of-data line.
        """
        cdef DataState state = self._data_state
        cdef const unsigned char* lf
        cdef Py_ssize_t line_end
        cdef unsigned char c
        while pos < size:
            if state == IN_LINE:
                lf = <const unsigned char*>memchr(data + pos, CHAR_LF, <size_t>(size - pos))
                if lf == NULL:
                    self._store(data + pos, size - pos)
                    self._line_ends_cr = data[size - 1] == CHAR_CR
                    pos = size
                    break
                line_end = lf - data
                if line_end > pos:
                    self._store(data + pos, line_end - pos)
                    self._line_ends_cr = data[line_end - 1] == CHAR_CR
                self._end_line(self._line_ends_cr)
                pos = line_end + 1
                state = AT_LINE_START
            elif state == AT_LINE_START:
                if data[pos] == CHAR_DOT:
                    state = AFTER_DOT
                    pos += 1
                else:
                    state = IN_LINE
                    self._line_ends_cr = False
            elif state == AFTER_DOT:
                c = data[pos]
                if c == CHAR_DOT:
                    # ".." stays stuffed: unstuffed it would start with ".".
                    self._store(TWO_DOTS, 2)
                    state = IN_LINE
                    self._line_ends_cr = False
                    pos += 1
                elif c == CHAR_CR:
                    state = AFTER_DOT_CR
                    pos += 1
                elif c == CHAR_LF:
                    self._end_line(False)
                    state = AT_LINE_START
                    pos += 1
                else:
                    # The dot was stuffing: drop it.
                    state = IN_LINE
                    self._line_ends_cr = False
            else:
                c = data[pos]
                if c == CHAR_LF:
                    pos += 1
                    state = AT_LINE_START
                    if self._prev_line_crlf:
                        self._in_data = False
                        self._data_ended = True
                        break
                    # "." CR LF after a bare LF: an empty line, not the end.
                    self._store(CRLF, 2)
                    self._prev_line_crlf = True
                else:
                    self._store(CRLF, 1)
                    state = IN_LINE
                    self._line_ends_cr = True
        self._data_state = state
        return pos

    cdef int _end_line(self, bint after_cr) except -1:
        """Stores the line ending after the line's bytes; a bare LF becomes CR LF.

        `after_cr`: the CR before the LF was stored with the line's bytes.
        """
        if after_cr:
            self._store(CRLF + 1, 1)
        else:
            self._store(CRLF, 2)
            self._bare_newline = True
        self._prev_line_crlf = after_cr
        return 0

    cdef int _store(self, const unsigned char* data, Py_ssize_t size) except -1:
        cdef Py_ssize_t new_size = self._content_size + size
        self._content_size = new_size
        if self._too_big:
            return 0
        if 0 < self._message_size_limit < new_size:
            self._too_big = True
            bytebuf_free(&self._content)
            return 0
        bytebuf_append(&self._content, data, size)
        return 0

    cdef object _finish_message(self):
        cdef bytes content
        cdef bint too_big = self._too_big
        cdef bint bare_newline = self._bare_newline
        if too_big or self._content.data == NULL:
            content = b""
        else:
            content = PyBytes_FromStringAndSize(
                <const char*>self._content.data + self._content.start,
                bytebuf_len(&self._content))
        if self._content.capacity > CONTENT_BUFFER_KEEP:
            bytebuf_free(&self._content)
        else:
            bytebuf_clear(&self._content)
        self._too_big = False
        self._bare_newline = False
        self._content_size = 0
        self._last_line_crlf = True
        return self._on_data_end(content, too_big, bare_newline)


cdef str decode_utf8(const unsigned char* data, Py_ssize_t start, Py_ssize_t end):
    return PyUnicode_DecodeUTF8(<const char*>data + start, end - start, "surrogateescape")


cdef int scan_bracketed_path(const unsigned char* data, Py_ssize_t size, Py_ssize_t pos,
                             Span* path) noexcept:
    """Finds the path in "<...>" starting at data[pos] == "<".

    Sets `path` to the text between the brackets; returns 0, or 2 for bad
    address syntax.
    """
    cdef bint quoted = False
    cdef unsigned char c
    cdef Py_ssize_t i = pos + 1
    while i < size:
        c = data[i]
        if is_control(c):
            return 2
        if quoted:
            if c == CHAR_BACKSLASH:
                i += 1
                if i >= size or is_control(data[i]):
                    return 2
            elif c == CHAR_QUOTE:
                quoted = False
        elif c == CHAR_QUOTE:
            quoted = True
        elif c == CHAR_GT:
            path.start = pos + 1
            path.end = i
            return 0
        elif c == CHAR_LT or c == CHAR_SP:
            return 2
        i += 1
    return 2


cdef int scan_bare_path(const unsigned char* data, Py_ssize_t size, Py_ssize_t pos,
                        Span* path) noexcept:
    """Finds an address written without angle brackets: it ends at a space."""
    cdef bint quoted = False
    cdef unsigned char c
    cdef Py_ssize_t i = pos
    while i < size:
        c = data[i]
        if is_control(c) or c == CHAR_LT or c == CHAR_GT:
            return 2
        if quoted:
            if c == CHAR_BACKSLASH:
                i += 1
                if i >= size or is_control(data[i]):
                    return 2
            elif c == CHAR_QUOTE:
                quoted = False
            elif c == CHAR_SP:
                return 2
        elif c == CHAR_QUOTE:
            quoted = True
        elif c == CHAR_SP:
            break
        i += 1
    if quoted:
        return 2
    path.start = pos
    path.end = i
    return 0


cdef int drop_source_route(const unsigned char* data, Span* path) noexcept:
    """Removes "@a,@b:" from the front of a path; returns 0 or 2 (bad route)."""
    cdef Py_ssize_t i = path.start
    cdef Py_ssize_t element_start
    if path.end == path.start or data[i] != CHAR_AT:
        return 0
    while True:
        # Each route element is "@" followed by a non-empty domain.
        if i >= path.end or data[i] != CHAR_AT:
            return 2
        i += 1
        element_start = i
        while i < path.end and data[i] != CHAR_COMMA and data[i] != CHAR_COLON:
            if data[i] == CHAR_QUOTE or data[i] == CHAR_AT:
                return 2
            i += 1
        if i == element_start or i >= path.end:
            return 2
        if data[i] == CHAR_COLON:
            break
        i += 1
    if i + 1 >= path.end:
        return 2
    path.start = i + 1
    return 0


cdef inline bint is_keyword_char(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 45


def parse_path_argument(arg, keyword):
    """Parses the argument of MAIL (keyword b"FROM") or RCPT (keyword b"TO").

    Returns (status, address, parameters): status 0 for success, 1 for command
    syntax, 2 for address syntax, 3 for parameter syntax. On success the
    address is the path without brackets and source route ("" for "<>") and
    parameters maps upper-cased ESMTP keywords to their value or None.
    """
    cdef const unsigned char[::1] arg_view = arg
    cdef const unsigned char[::1] keyword_view = keyword
    cdef Py_ssize_t size = arg_view.shape[0]
    cdef Py_ssize_t keyword_size = keyword_view.shape[0]
    cdef const unsigned char* data
    cdef Py_ssize_t pos, i, token_start, token_end, key_end
    cdef Span path
    cdef int status
    cdef bint bracketed
    cdef dict params = {}
    cdef str key
    if size <= keyword_size:
        return 1, None, {}
    data = &arg_view[0]
    for i in range(keyword_size):
        if ascii_lower(data[i]) != ascii_lower(keyword_view[i]):
            return 1, None, {}
    if data[keyword_size] != CHAR_COLON:
        return 1, None, {}
    pos = keyword_size + 1
    while pos < size and data[pos] == CHAR_SP:
        pos += 1
    if pos == size:
        return 1, None, {}
    bracketed = data[pos] == CHAR_LT
    if bracketed:
        status = scan_bracketed_path(data, size, pos, &path)
    else:
        status = scan_bare_path(data, size, pos, &path)
    if status != 0:
        return status, None, {}
    pos = path.end + 1 if bracketed else path.end
    if pos < size and data[pos] != CHAR_SP:
        return 2, None, {}
    if drop_source_route(data, &path) != 0:
        return 2, None, {}
    while True:
        while pos < size and data[pos] == CHAR_SP:
            pos += 1
        if pos >= size:
            break
        token_start = pos
        while pos < size and data[pos] != CHAR_SP:
            pos += 1
        token_end = pos
        key_end = token_start
        while key_end < token_end and data[key_end] != CHAR_EQUALS:
            key_end += 1
        if not bracketed:
            # Without brackets the address's end is a guess: a space followed
            # by more address text is an address error, not a parameter one.
            for i in range(token_start, key_end):
                if data[i] == CHAR_AT or data[i] == CHAR_QUOTE:
                    return 2, None, {}
        if key_end == token_start:
            return 3, None, {}
        for i in range(token_start, key_end):
            if not is_keyword_char(data[i]):
                return 3, None, {}
        for i in range(key_end, token_end):
            if is_control(data[i]):
                return 3, None, {}
        key = decode_utf8(data, token_start, key_end).upper()
        if key_end < token_end:
            params[key] = decode_utf8(data, key_end + 1, token_end)
        else:
            params[key] = None
    return 0, decode_utf8(data, path.start, path.end), params
