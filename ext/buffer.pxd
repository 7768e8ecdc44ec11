# The byte buffer and span types shared by the ext/ parsers.
#
# Only structs and inline functions live here: each .pyx is built into a
# module whose import name differs from its file name, so a cdef class
# declared here could not be imported at run time.

from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove


# Half-open range [start, end) of offsets into a buffer owned by the caller.
cdef struct Span:
    Py_ssize_t start
    Py_ssize_t end


cdef inline Py_ssize_t span_len(Span span) noexcept nogil:
    return span.end - span.start


# A growable byte buffer owned by a parser. Bytes in [start, end) are live;
# consuming from the front moves `start` and appending compacts lazily, so
# neither operation is quadratic.
cdef struct ByteBuffer:
    unsigned char* data
    Py_ssize_t start
    Py_ssize_t end
    Py_ssize_t capacity


cdef inline void bytebuf_init(ByteBuffer* buf) noexcept nogil:
    buf.data = NULL
    buf.start = 0
    buf.end = 0
    buf.capacity = 0


cdef inline Py_ssize_t bytebuf_len(const ByteBuffer* buf) noexcept nogil:
    return buf.end - buf.start


cdef inline void bytebuf_clear(ByteBuffer* buf) noexcept nogil:
    buf.start = 0
    buf.end = 0


cdef inline void bytebuf_free(ByteBuffer* buf) noexcept nogil:
    free(buf.data)
    bytebuf_init(buf)


cdef inline void bytebuf_consume(ByteBuffer* buf, Py_ssize_t count) noexcept nogil:
    buf.start += count
    if buf.start >= buf.end:
        buf.start = 0
        buf.end = 0


cdef inline int bytebuf_reserve(ByteBuffer* buf, Py_ssize_t extra) except -1:
    """Make room for `extra` more bytes after `end`."""
    cdef Py_ssize_t live = buf.end - buf.start
    cdef Py_ssize_t wanted = live + extra
    cdef Py_ssize_t new_capacity
    cdef unsigned char* grown
    if buf.end + extra <= buf.capacity:
        return 0
    # Reuse the consumed front before growing.
    if buf.start > 0 and wanted <= buf.capacity:
        memmove(buf.data, buf.data + buf.start, <size_t>live)
        buf.start = 0
        buf.end = live
        return 0
    new_capacity = buf.capacity * 2 if buf.capacity else 4096
    while new_capacity < wanted:
        new_capacity *= 2
    if buf.start > 0:
        memmove(buf.data, buf.data + buf.start, <size_t>live)
        buf.start = 0
        buf.end = live
    grown = <unsigned char*>realloc(buf.data, <size_t>new_capacity)
    if grown == NULL:
        raise MemoryError()
    buf.data = grown
    buf.capacity = new_capacity
    return 0


cdef inline int bytebuf_append(ByteBuffer* buf, const unsigned char* src,
                               Py_ssize_t count) except -1:
    if count <= 0:
        return 0
    bytebuf_reserve(buf, count)
    memcpy(buf.data + buf.end, src, <size_t>count)
    buf.end += count
    return 0
