"""SMTP/LMTP server reply parsing for the delivery clients.

`SmtpReplyParser` is I/O-free: the caller feeds it the bytes it read from a
server and the parser calls the handler once per complete reply.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

from buffer cimport (ByteBuffer, bytebuf_append, bytebuf_clear, bytebuf_free,
                     bytebuf_init, bytebuf_len)

cdef enum:
    CHAR_LF = 10
    CHAR_CR = 13
    CHAR_SP = 32
    CHAR_DASH = 45
    CHAR_0 = 48
    CHAR_9 = 57


cdef inline bint is_digit(unsigned char c) noexcept nogil:
    return CHAR_0 <= c <= CHAR_9


cdef class SmtpReplyParser:
    """Splits a server's output into replies.

    Handler methods called:
      on_reply(code: int, lines: list[bytes])  -- one complete reply; each
          line without its "NNN-" / "NNN " prefix and without CRLF or LF
      on_bad_reply(line: bytes)  -- a line without a 3-digit code and a space
          or dash after it, a continuation line whose code differs from the
          first line's, a line longer than max_line (its first max_line bytes
          are passed), or the line that takes a reply past max_lines lines.
          The reply in progress is dropped; the next line starts a new one.

    Lines end with CRLF or a bare LF. Buffering is bounded: at most max_line
    + 1 bytes of a partial line and max_lines lines of one reply are kept.
    An exception raised by a handler method propagates out of feed(); the
    bytes after the line being handled stay buffered and are parsed by the
    next feed().
    """

    cdef object _on_reply
    cdef object _on_bad_reply
    cdef ByteBuffer _pending          # a line received in part
    cdef Py_ssize_t _max_line
    cdef Py_ssize_t _max_lines
    cdef int _code                    # code of the reply in progress, -1 if none
    cdef list _lines
    cdef bytes _unparsed              # complete lines left when a handler raised
    cdef bint _skipping_long_line     # dropping the rest of an overlong line
    cdef bint _discard_requested      # discard_buffered() was called from a callback
    cdef bint _processing

    def __cinit__(self):
        bytebuf_init(&self._pending)

    def __init__(self, handler, Py_ssize_t max_line=2048, Py_ssize_t max_lines=1000):
        if max_line < 4:
            raise ValueError("max_line must be at least 4")
        if max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        self._on_reply = handler.on_reply
        self._on_bad_reply = handler.on_bad_reply
        self._max_line = max_line
        self._max_lines = max_lines
        self._code = -1
        self._lines = []

    def __dealloc__(self):
        bytebuf_free(&self._pending)

    @property
    def buffered(self):
        """Bytes received but not parsed yet."""
        if self._unparsed is not None:
            return bytebuf_len(&self._pending) + len(self._unparsed)
        return bytebuf_len(&self._pending)

    @property
    def in_reply(self):
        """True while the lines of a multi-line reply are arriving."""
        return self._code >= 0

    def discard_buffered(self):
        """Forget everything not reported yet: the partial line, the reply in
        progress and, when called from a handler method, the rest of the bytes
        being fed (after a STARTTLS reply, for instance)."""
        bytebuf_clear(&self._pending)
        self._code = -1
        self._lines = []
        self._unparsed = None
        self._skipping_long_line = False
        if self._processing:
            self._discard_requested = True

    def feed(self, data):
        """Parse `data` (any bytes-like object); it is not referenced after return."""
        cdef const unsigned char[::1] view
        cdef const unsigned char* p
        cdef const unsigned char* lf
        cdef Py_ssize_t size, pos = 0, start, line_end, room
        cdef bytes head
        if self._processing:
            raise RuntimeError("feed() called from inside a handler callback")
        if self._unparsed is not None:
            data = self._unparsed + bytes(data)
            self._unparsed = None
        view = data
        size = view.shape[0]
        if size == 0:
            return
        p = &view[0]
        self._processing = True
        self._discard_requested = False
        try:
            while pos < size:
                lf = <const unsigned char*>memchr(p + pos, CHAR_LF, <size_t>(size - pos))
                if lf == NULL:
                    self._keep_partial(p + pos, size - pos)
                    pos = size
                    break
                line_end = lf - p
                if self._skipping_long_line:
                    self._skipping_long_line = False
                    pos = line_end + 1
                    continue
                if bytebuf_len(&self._pending) > 0:
                    # The line started in an earlier feed: complete it in the buffer.
                    if bytebuf_len(&self._pending) + line_end - pos <= self._max_line + 1:
                        bytebuf_append(&self._pending, p + pos, line_end - pos)
                        pos = line_end + 1
                        try:
                            self._line(self._pending.data + self._pending.start,
                                       bytebuf_len(&self._pending))
                        finally:
                            bytebuf_clear(&self._pending)
                    else:
                        room = self._max_line - bytebuf_len(&self._pending)
                        if room > 0:
                            bytebuf_append(&self._pending, p + pos, room)
                        pos = line_end + 1
                        head = PyBytes_FromStringAndSize(
                            <const char*>(self._pending.data + self._pending.start), self._max_line)
                        bytebuf_clear(&self._pending)
                        self._bad(head)
                else:
                    start = pos
                    pos = line_end + 1
                    self._line(p + start, line_end - start)
                if self._discard_requested:
                    pos = size
                    break
        except BaseException:
            if not self._discard_requested and pos < size:
                self._unparsed = PyBytes_FromStringAndSize(<const char*>(p + pos), size - pos)
            raise
        finally:
            self._processing = False
            self._discard_requested = False

    cdef int _keep_partial(self, const unsigned char* data, Py_ssize_t count) except -1:
        """Buffer the start of a line; an overlong one is reported now and skipped."""
        cdef Py_ssize_t held
        cdef bytes head
        if self._skipping_long_line:
            return 0
        held = bytebuf_len(&self._pending)
        if held + count <= self._max_line + 1:
            bytebuf_append(&self._pending, data, count)
            return 0
        # Longer than max_line even if the next byte is the LF after a CR.
        if held < self._max_line:
            bytebuf_append(&self._pending, data, self._max_line - held)
        head = PyBytes_FromStringAndSize(<const char*>(self._pending.data + self._pending.start),
                                         self._max_line)
        bytebuf_clear(&self._pending)
        self._skipping_long_line = True
        self._bad(head)
        return 0

    cdef int _line(self, const unsigned char* data, Py_ssize_t length) except -1:
        """One line without its LF (a CR before the LF is still there)."""
        cdef int code
        cdef bint last
        cdef bytes text
        if length > 0 and data[length - 1] == CHAR_CR:
            length -= 1
        if length > self._max_line:
            self._bad(PyBytes_FromStringAndSize(<const char*>data, self._max_line))
            return 0
        if length < 3 or not (is_digit(data[0]) and is_digit(data[1]) and is_digit(data[2])):
            self._bad(PyBytes_FromStringAndSize(<const char*>data, length))
            return 0
        if length == 3 or data[3] == CHAR_SP:
            last = True
        elif data[3] == CHAR_DASH:
            last = False
        else:
            self._bad(PyBytes_FromStringAndSize(<const char*>data, length))
            return 0
        code = (data[0] - CHAR_0) * 100 + (data[1] - CHAR_0) * 10 + (data[2] - CHAR_0)
        if self._code >= 0 and code != self._code:
            self._bad(PyBytes_FromStringAndSize(<const char*>data, length))
            return 0
        if len(self._lines) >= self._max_lines:
            self._bad(PyBytes_FromStringAndSize(<const char*>data, length))
            return 0
        if length > 4:
            text = PyBytes_FromStringAndSize(<const char*>(data + 4), length - 4)
        else:
            text = b""
        self._lines.append(text)
        if not last:
            self._code = code
            return 0
        lines = self._lines
        self._lines = []
        self._code = -1
        self._on_reply(code, lines)
        return 0

    cdef int _bad(self, bytes line) except -1:
        self._lines = []
        self._code = -1
        self._on_bad_reply(line)
        return 0
