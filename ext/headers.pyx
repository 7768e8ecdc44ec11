"""RFC 5322 header sections: field spans into the message buffer, unfolding, folding."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdlib cimport free, realloc
from libc.string cimport memchr

from buffer cimport ByteBuffer, Span, bytebuf_append, bytebuf_free, bytebuf_init, span_len

cdef enum:
    CHAR_HT = 9
    CHAR_LF = 10
    CHAR_CR = 13
    CHAR_SP = 32
    CHAR_COLON = 58


cdef struct HeaderField:
    Span name
    Span value        # after the colon and leading SP/HT, up to the final line ending
    Span field        # the whole field with continuation lines and final line ending


cdef inline bint is_wsp(unsigned char c) noexcept nogil:
    return c == CHAR_SP or c == CHAR_HT


cdef inline bint is_name_char(unsigned char c) noexcept nogil:
    return 33 <= c <= 126 and c != CHAR_COLON


cdef inline unsigned char ascii_lower(unsigned char c) noexcept nogil:
    if 65 <= c <= 90:
        return c + 32
    return c


cdef class HeaderBlock:
    """The fields of a header section, as spans into the scanned buffer.

    Holds a view of that buffer: a bytearray cannot be resized while its
    HeaderBlock is alive.
    """

    cdef const unsigned char[::1] _view
    cdef const unsigned char* _data
    cdef HeaderField* _fields
    cdef Py_ssize_t _count
    cdef Py_ssize_t _capacity
    cdef readonly Py_ssize_t body_offset
    cdef readonly Py_ssize_t header_end
    cdef readonly bint oversized

    def __cinit__(self):
        self._fields = NULL
        self._count = 0
        self._capacity = 0

    def __dealloc__(self):
        free(self._fields)

    def __init__(self):
        raise TypeError("HeaderBlock is created by scan_headers()")

    def __len__(self):
        return self._count

    def __repr__(self):
        return (f"<HeaderBlock fields={self._count} header_end={self.header_end} "
                f"body_offset={self.body_offset} oversized={self.oversized}>")

    cdef HeaderField* _add_field(self) except NULL:
        cdef Py_ssize_t capacity
        cdef HeaderField* grown
        if self._count == self._capacity:
            capacity = self._capacity * 2 if self._capacity else 32
            grown = <HeaderField*>realloc(self._fields, capacity * sizeof(HeaderField))
            if grown == NULL:
                raise MemoryError()
            self._fields = grown
            self._capacity = capacity
        self._count += 1
        return &self._fields[self._count - 1]

    cdef HeaderField* _field(self, Py_ssize_t index) except NULL:
        if index < 0:
            index += self._count
        if index < 0 or index >= self._count:
            raise IndexError("header field index out of range")
        return &self._fields[index]

    cdef bytes _span_bytes(self, Span span):
        return PyBytes_FromStringAndSize(<const char*>self._data + span.start, span_len(span))

    cdef bint _name_is(self, Py_ssize_t index, const unsigned char* name,
                       Py_ssize_t size) noexcept:
        cdef Span span = self._fields[index].name
        cdef Py_ssize_t i
        if span_len(span) != size:
            return False
        for i in range(size):
            if ascii_lower(self._data[span.start + i]) != ascii_lower(name[i]):
                return False
        return True

    def name(self, Py_ssize_t index):
        """The field name as written."""
        return self._span_bytes(self._field(index).name)

    def name_lower(self, Py_ssize_t index):
        cdef Span span = self._field(index).name
        cdef bytes lowered = PyBytes_FromStringAndSize(NULL, span_len(span))
        cdef char* out = PyBytes_AS_STRING(lowered)
        cdef Py_ssize_t i
        for i in range(span_len(span)):
            out[i] = <char>ascii_lower(self._data[span.start + i])
        return lowered

    def field_span(self, Py_ssize_t index):
        """(start, end) of the whole field, continuation lines and line ending included."""
        cdef Span span = self._field(index).field
        return span.start, span.end

    def value_span(self, Py_ssize_t index):
        """(start, end) of the still folded value, without the final line ending."""
        cdef Span span = self._field(index).value
        return span.start, span.end

    def value(self, Py_ssize_t index):
        """The unfolded value: every line ending inside it removed, the WSP after it kept."""
        cdef Span span = self._field(index).value
        cdef bytes unfolded = PyBytes_FromStringAndSize(NULL, span_len(span))
        cdef char* out = PyBytes_AS_STRING(unfolded)
        cdef Py_ssize_t length = 0
        cdef Py_ssize_t i
        cdef unsigned char c
        # Inside a value every LF starts a continuation line (the scanner made
        # sure), so unfolding drops each LF and the CR right before it.
        for i in range(span.start, span.end):
            c = self._data[i]
            if c == CHAR_LF:
                if length > 0 and out[length - 1] == <char>CHAR_CR:
                    length -= 1
                continue
            out[length] = <char>c
            length += 1
        return unfolded[:length]

    def find(self, name_lower):
        """Index of the first field with this name (ASCII case-insensitive), or -1."""
        cdef const unsigned char[::1] name = name_lower
        cdef Py_ssize_t size = name.shape[0]
        cdef Py_ssize_t i
        if size == 0:
            return -1
        for i in range(self._count):
            if self._name_is(i, &name[0], size):
                return i
        return -1

    def count(self, *names_lower):
        """Number of fields whose name is any of the given names."""
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t i
        cdef bytes name
        cdef list names = [bytes(n) for n in names_lower if len(n)]
        for i in range(self._count):
            for name in names:
                if self._name_is(i, <const unsigned char*>PyBytes_AS_STRING(name), len(name)):
                    total += 1
                    break
        return total


def scan_headers(buf, Py_ssize_t max_header_size=102400):
    """Splits the header section at the front of `buf` (CRLF lines; bare LF tolerated).

    The section ends at the first empty line (the body starts after it), or
    at the first line that is neither a field nor a continuation line (the
    body starts at that line). A field longer than max_header_size sets
    `oversized` but does not stop the scan.
    """
    cdef HeaderBlock block = HeaderBlock.__new__(HeaderBlock)
    cdef Py_ssize_t size, pos, line_start, line_end, next_line, name_end, colon, value_start
    cdef const unsigned char* data
    cdef const unsigned char* lf
    cdef HeaderField* current = NULL
    block._view = buf
    size = block._view.shape[0]
    pos = 0
    block.header_end = 0
    block.body_offset = size
    if size == 0:
        return block
    data = &block._view[0]
    block._data = data
    while pos < size:
        line_start = pos
        lf = <const unsigned char*>memchr(data + pos, CHAR_LF, <size_t>(size - pos))
        if lf == NULL:
            line_end = size
            next_line = size
        else:
            line_end = lf - data
            next_line = line_end + 1
            if line_end > line_start and data[line_end - 1] == CHAR_CR:
                line_end -= 1
            if line_end == line_start:
                block.header_end = line_start
                block.body_offset = next_line
                break
        if is_wsp(data[line_start]):
            if current == NULL:
                block.header_end = line_start
                block.body_offset = line_start
                break
            current.value.end = line_end
            current.field.end = next_line
        else:
            name_end = line_start
            while name_end < line_end and is_name_char(data[name_end]):
                name_end += 1
            # RFC 5322's obsolete syntax (and Postfix's is_header) allow SP/HT before the colon.
            colon = name_end
            while colon < line_end and is_wsp(data[colon]):
                colon += 1
            if name_end == line_start or colon == line_end or data[colon] != CHAR_COLON:
                block.header_end = line_start
                block.body_offset = line_start
                break
            value_start = colon + 1
            while value_start < line_end and is_wsp(data[value_start]):
                value_start += 1
            current = block._add_field()
            current.name.start = line_start
            current.name.end = name_end
            current.value.start = value_start
            current.value.end = line_end
            current.field.start = line_start
            current.field.end = next_line
        if span_len(current.field) > max_header_size:
            block.oversized = True
        block.header_end = next_line
        pos = next_line
    return block


def fold_header(name, value, Py_ssize_t width=78):
    """Builds the field "name: value" CRLF, folded before whitespace to fit `width`.

    Folds only where the line before ends in a non-whitespace character and
    the continuation line has some, so no line is whitespace only; a word
    longer than `width` stays whole. Unfolding the result gives back
    "name: value" exactly.
    """
    cdef const unsigned char[::1] name_view = name
    cdef const unsigned char[::1] value_view = value
    cdef Py_ssize_t name_size = name_view.shape[0]
    cdef Py_ssize_t size = value_view.shape[0]
    cdef const unsigned char* text = &value_view[0] if size else NULL
    cdef Py_ssize_t i, segment_start, segment_end, line_length
    cdef ByteBuffer out
    if name_size == 0:
        raise ValueError("empty header name")
    for i in range(name_size):
        if not is_name_char(name_view[i]):
            raise ValueError(f"invalid character {name_view[i]:#04x} in header name")
    for i in range(size):
        if text[i] == CHAR_CR or text[i] == CHAR_LF:
            raise ValueError("CR or LF in header value")
    bytebuf_init(&out)
    try:
        bytebuf_append(&out, &name_view[0], name_size)
        bytebuf_append(&out, <const unsigned char*>b": ", 2)
        line_length = name_size + 2
        # A segment is a whitespace run followed by a word (the first may lack
        # the run); trailing whitespace belongs to the last segment.
        segment_start = 0
        while segment_start < size:
            segment_end = segment_start
            while segment_end < size and is_wsp(text[segment_end]):
                segment_end += 1
            while segment_end < size and not is_wsp(text[segment_end]):
                segment_end += 1
            i = segment_end
            while i < size and is_wsp(text[i]):
                i += 1
            if i == size:
                segment_end = size
            if (segment_start > 0 and line_length + segment_end - segment_start > width):
                bytebuf_append(&out, <const unsigned char*>b"\r\n", 2)
                line_length = 0
            bytebuf_append(&out, text + segment_start, segment_end - segment_start)
            line_length += segment_end - segment_start
            segment_start = segment_end
        bytebuf_append(&out, <const unsigned char*>b"\r\n", 2)
        return PyBytes_FromStringAndSize(<const char*>out.data, out.end)
    finally:
        bytebuf_free(&out)
