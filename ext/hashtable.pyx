"""The compiled hash table file that postmap writes for hash: tables, opened with mmap.

HashWriter compiles postmap's source syntax (or entries given one by one) into the file described
in hashtable.pxd; HashFile maps a file and answers lookups in constant time, most of them with a
single cache line read. Opening reads only the 64-byte header and checks it against the file's
size, so it costs the same for any table size; every lookup checks the cell and the record it
lands on against the file's bounds, so a damaged file gives an error naming it, never a crash.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetContext, PyCapsule_New, PyCapsule_SetContext
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, madvise, mmap, munmap
from posix.unistd cimport fsync, write

from hashtable cimport (PFM_CELL, PFM_EXTERNAL, PFM_LE32, PFM_LE64, PFM_MAX_DISTANCE, PFM_PREFIX,
                        PFM_ROOM, PFM_WINDOW, HashQuery, HashView, ascii_fold, high_bytes,
                        hashview_find, hashview_find_folding, hashview_find_many, memcmp, memcmp_eq, pfm_hash, pfm_home, pfm_load32,
                        pfm_load64)

import os

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    PyObject* PyList_GET_ITEM(object list, Py_ssize_t i)
    bint PyUnicode_CheckExact(object text)
    bint PyUnicode_IS_COMPACT_ASCII(object text)
    void* PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)

cdef extern from "<sys/mman.h>":
    int MADV_HUGEPAGE

cdef enum:
    VERSION = 2
    HEADER_SIZE = 64
# Bounds that keep every offset computation far from overflowing 64 bits.
cdef uint64_t MAX_DATA = (<uint64_t>1 << 48) - 1
cdef uint64_t MAX_CELLS = (<uint64_t>1 << 40)
# Entries per home cell: at 0.6, 82% of the entries sit in their home cell or the next one, and a
# miss reads 2 cells on average (cells are 64 bytes: a 10M-entry table of short entries is 1 GB).
cdef double LOAD = 0.6

MAGIC = b"PFMHASH\0"
FORMAT_VERSION = VERSION


class HashFileError(Exception):
    """A hash table file that cannot be opened, read or written; the message names the file."""


cdef inline bint is_space(unsigned char c) noexcept nogil:
    # Postfix's ISSPACE: the ASCII white space characters, never anything above 0x7f.
    return c == 32 or (c >= 9 and c <= 13)


cdef inline bint has_high(const unsigned char* p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if p[i] >= 0x80:
            return True
    return False


cdef inline void store64(unsigned char* p, uint64_t v) noexcept nogil:
    v = PFM_LE64(v)
    memcpy(p, &v, 8)


cdef inline void store32(unsigned char* p, uint32_t v) noexcept nogil:
    v = PFM_LE32(v)
    memcpy(p, &v, 4)


cdef bytes _header(uint64_t count, uint64_t homes, uint64_t cells, uint64_t seed,
                   uint64_t data_size):
    cdef unsigned char header[64]
    memset(header, 0, 64)
    memcpy(header, b"PFMHASH\0", 8)
    store32(header + 8, VERSION)
    store32(header + 12, 0)
    store64(header + 16, count)
    store64(header + 24, homes)
    store64(header + 32, cells)
    store64(header + 40, seed)
    store64(header + 48, data_size)
    store64(header + 56, pfm_hash(header, 56, 0))
    return PyBytes_FromStringAndSize(<char*>header, 64)


def _display(const unsigned char[:] text):
    return bytes(text).decode("utf-8", "replace")


cdef bytes _unicode_fold(const unsigned char* key, size_t key_len):
    """Full Unicode case folding of a UTF-8 key (Postfix's casefold with smtputf8_enable)."""
    return PyUnicode_DecodeUTF8(<char*>key, key_len, "surrogateescape").casefold().encode(
        "utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# Reading

cdef class HashFile:
    """One mapped hash table file.

    fold        lower-case lookup keys first (Postfix folds keys of hash: tables; postmap -f
                does not)
    smtputf8    full Unicode case folding of non-ASCII keys (ASCII only when off)
    """

    cdef HashView view
    cdef const unsigned char* base
    cdef size_t size
    cdef readonly str path
    cdef readonly bint fold
    cdef readonly bint smtputf8
    cdef bint closed
    cdef int exports

    def __cinit__(self, str path, bint fold=True, bint smtputf8=True):
        self.base = NULL
        self.size = 0
        self.path = path
        self.fold = fold
        self.smtputf8 = smtputf8
        self.closed = True
        self.exports = 0
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise HashFileError(f"open database {path}: {error.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise HashFileError(f"{path}: not a pyfastmta hash table file "
                                    f"(truncated: {size} bytes)")
            self._map(fd, size)
        finally:
            os.close(fd)
        self._check_header()
        self.closed = False

    cdef _map(self, int fd, size_t size):
        cdef void* address = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0)
        if address == MAP_FAILED:
            raise HashFileError(f"{self.path}: mmap: {os.strerror(errno)}")
        # Lookups land anywhere in the file, and one 4 KiB page per lookup would cost a TLB miss
        # on almost every search of a large table: ask for the file in 2 MiB pages where the
        # kernel and file system can map it so (page cache folios read through this mapping).
        madvise(address, size, MADV_HUGEPAGE)
        self.base = <const unsigned char*>address
        self.size = size

    cdef _check_header(self):
        cdef const unsigned char* h = self.base
        cdef uint64_t count, homes, cells, seed, data_offset, data_size
        if memcmp(h, <const char*>b"PFMHASH\0", 8) != 0:
            raise HashFileError(f"{self.path}: not a pyfastmta hash table file (bad magic number)")
        if pfm_load64(h + 56) != pfm_hash(h, 56, 0):
            raise HashFileError(f"{self.path}: damaged hash table file (header check failed)")
        if pfm_load32(h + 8) != VERSION:
            raise HashFileError(f"{self.path}: hash table file format version "
                                f"{pfm_load32(h + 8)}, this program reads version {VERSION}: "
                                f"rebuild it with pyfastmta postmap")
        count = pfm_load64(h + 16)
        homes = pfm_load64(h + 24)
        cells = pfm_load64(h + 32)
        seed = pfm_load64(h + 40)
        data_size = pfm_load64(h + 48)
        if (homes < 1 or cells > MAX_CELLS or cells < homes + PFM_WINDOW - 1
                or cells - homes > PFM_MAX_DISTANCE or count > cells or data_size > MAX_DATA):
            raise HashFileError(f"{self.path}: damaged hash table file (impossible header values)")
        data_offset = HEADER_SIZE + cells * PFM_CELL
        if data_offset + data_size != self.size:
            raise HashFileError(f"{self.path}: damaged hash table file (size {self.size}, "
                                f"header says {data_offset + data_size}: truncated or extended)")
        self.view.cells = self.base + HEADER_SIZE
        self.view.homes = homes
        self.view.cell_count = cells
        self.view.data = self.base + data_offset
        self.view.data_size = data_size
        self.view.seed = seed
        self.view.count = count

    def __dealloc__(self):
        if self.base != NULL:
            munmap(<void*>self.base, self.size)
            self.base = NULL

    def close(self):
        """No more lookups through this object. The mapping goes when no view capsule is left."""
        self.closed = True
        if self.exports == 0 and self.base != NULL:
            munmap(<void*>self.base, self.size)
            self.base = NULL

    def __len__(self):
        return self.view.count

    @property
    def cell_count(self):
        return self.view.cell_count

    cdef inline int _check_open(self) except -1:
        if self.closed:
            raise HashFileError(f"{self.path}: lookup in a closed table")
        return 0

    def get(self, str key):
        """The value for key (folded as the table says), or None."""
        cdef Py_ssize_t n
        cdef const unsigned char* raw
        cdef const unsigned char* value
        cdef size_t value_len
        cdef bytes encoded
        cdef int found
        self._check_open()
        try:
            raw = <const unsigned char*>PyUnicode_AsUTF8AndSize(key, &n)
        except UnicodeEncodeError:
            encoded = key.encode("utf-8", "surrogateescape")
            raw = <const unsigned char*>PyBytes_AS_STRING(encoded)
            n = PyBytes_GET_SIZE(encoded)
        if not self.fold:
            found = hashview_find(&self.view, raw, n, &value, &value_len)
        elif self.smtputf8 and high_bytes(raw, n):
            return self._get_bytes(_unicode_fold(raw, n))
        else:
            found = hashview_find_folding(&self.view, raw, n, &value, &value_len)
        if found == 1:
            return PyUnicode_DecodeUTF8(<const char*>value, value_len, "surrogateescape")
        if found < 0:
            raise HashFileError(f"{self.path}: damaged hash table file (a cell or record out "
                                "of bounds)")
        return None

    def get_bytes(self, bytes key):
        """The value's bytes for key as given (no folding), or None."""
        self._check_open()
        return self._get_bytes(key)

    cdef _get_bytes(self, bytes key):
        cdef const unsigned char* value
        cdef size_t value_len
        cdef int found = hashview_find(&self.view, <const unsigned char*>PyBytes_AS_STRING(key),
                                       PyBytes_GET_SIZE(key), &value, &value_len)
        if found == 1:
            return PyUnicode_DecodeUTF8(<const char*>value, value_len, "surrogateescape")
        if found < 0:
            raise HashFileError(f"{self.path}: damaged hash table file (a cell or record out "
                                "of bounds)")
        return None

    def records(self):
        """(key bytes, value bytes) of every entry, in cell order."""
        cdef uint64_t index, offset, klen, vlen
        cdef const unsigned char* cell
        cdef const unsigned char* record
        self._check_open()
        for index in range(self.view.cell_count):
            cell = self.view.cells + index * PFM_CELL
            if cell[0] == 0:
                continue
            if cell[1] != PFM_EXTERNAL:
                if cell[1] + cell[2] > PFM_ROOM:
                    raise HashFileError(f"{self.path}: damaged hash table file (cell {index})")
                record = cell + 4
                klen = cell[1]
                vlen = cell[2]
            else:
                klen = pfm_load32(cell + 4)
                vlen = pfm_load32(cell + 8)
                offset = pfm_load64(cell + 12)
                if offset > self.view.data_size or klen + vlen > self.view.data_size - offset:
                    raise HashFileError(f"{self.path}: damaged hash table file (record outside "
                                        "the file)")
                record = self.view.data + offset
            yield (PyBytes_FromStringAndSize(<const char*>record, klen),
                   PyBytes_FromStringAndSize(<const char*>record + klen, vlen))

    def items(self):
        """(key, value) strings of every entry, in slot order (postmap -s)."""
        for key, value in self.records():
            yield key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")

    def view_capsule(self):
        """A capsule holding this file's HashView for hashview_from_capsule() in other Cython
        modules; the mapping stays valid while the capsule lives, even after close()."""
        self._check_open()
        capsule = PyCapsule_New(<void*>&self.view, "pyfastmta._ext.hashtable.HashView",
                                _capsule_gone)
        PyCapsule_SetContext(capsule, <void*>self)
        Py_INCREF(self)
        self.exports += 1
        return capsule


cdef void _capsule_gone(object capsule) noexcept:
    cdef HashFile owner = <HashFile>PyCapsule_GetContext(capsule)
    owner.exports -= 1
    if owner.closed and owner.exports == 0 and owner.base != NULL:
        munmap(<void*>owner.base, owner.size)
        owner.base = NULL
    Py_DECREF(owner)


# ---------------------------------------------------------------------------------------------
# Writing

cdef enum Duplicates:
    DUP_WARN = 0      # keep the first value, warn (postmap's default)
    DUP_REPLACE = 1   # keep the last value (postmap -r)
    DUP_IGNORE = 2    # keep the first value quietly (postmap -w)


cdef struct Growable:
    unsigned char* data
    size_t size
    size_t capacity


cdef int grow(Growable* buf, size_t extra) except -1:
    cdef size_t capacity
    cdef unsigned char* grown
    if buf.size + extra <= buf.capacity:
        return 0
    capacity = buf.capacity * 2 if buf.capacity else 65536
    while capacity < buf.size + extra:
        capacity *= 2
    grown = <unsigned char*>realloc(buf.data, capacity)
    if grown == NULL:
        raise MemoryError()
    buf.data = grown
    buf.capacity = capacity
    return 0


cdef int append(Growable* buf, const unsigned char* p, size_t n) except -1:
    grow(buf, n)
    memcpy(buf.data + buf.size, p, n)
    buf.size += n
    return 0


cdef int write_all(int fd, const unsigned char* p, size_t n) except -1:
    cdef ssize_t done
    while n:
        with nogil:
            done = write(fd, p, n if n < (1 << 30) else (1 << 30))
        if done < 0:
            if errno == EINTR:
                continue
            raise OSError(errno, os.strerror(errno))
        p += done
        n -= done
    return 0


cdef class HashWriter:
    """Entries collected in memory and written as one hash table file.

    Keys are stored as given (add()) or folded as postmap folds them (add_source()). A key given
    twice keeps its first value with a warning, unless on_duplicate is "replace" (the last value
    wins, postmap -r) or "ignore" (the first wins quietly, postmap -w).
    """

    cdef Growable data           # the records
    cdef Growable index          # per record: offset u64, line u64
    cdef Growable scratch        # a logical line joined from continuation lines
    cdef Growable keybuf         # a folded key
    cdef int duplicates
    cdef readonly list warnings
    cdef readonly str label

    def __cinit__(self, str on_duplicate="warn", str label=""):
        memset(&self.data, 0, sizeof(Growable))
        memset(&self.index, 0, sizeof(Growable))
        memset(&self.scratch, 0, sizeof(Growable))
        memset(&self.keybuf, 0, sizeof(Growable))
        modes = {"warn": DUP_WARN, "replace": DUP_REPLACE, "ignore": DUP_IGNORE}
        if on_duplicate not in modes:
            raise ValueError(f"on_duplicate: one of {', '.join(modes)}")
        self.duplicates = modes[on_duplicate]
        self.warnings = []
        self.label = label

    def __dealloc__(self):
        free(self.data.data)
        free(self.index.data)
        free(self.scratch.data)
        free(self.keybuf.data)

    def __len__(self):
        """Entries added so far, repeated keys included."""
        return self.index.size // 16

    cdef int _add(self, const unsigned char* key, size_t klen, const unsigned char* value,
                  size_t vlen, uint64_t line) except -1:
        cdef uint64_t entry[2]
        cdef unsigned char lengths[8]
        if klen > 0xffffffff or vlen > 0xffffffff:
            raise HashFileError(f"{self.label}:{line}: entry longer than 4 GiB")
        if self.data.size + 8 + klen + vlen > MAX_DATA:
            raise HashFileError(f"{self.label}: table larger than 256 TiB")
        entry[0] = self.data.size
        entry[1] = line
        store32(lengths, <uint32_t>klen)
        store32(lengths + 4, <uint32_t>vlen)
        grow(&self.data, 8 + klen + vlen)
        memcpy(self.data.data + self.data.size, lengths, 8)
        memcpy(self.data.data + self.data.size + 8, key, klen)
        memcpy(self.data.data + self.data.size + 8 + klen, value, vlen)
        self.data.size += 8 + klen + vlen
        append(&self.index, <unsigned char*>entry, 16)
        return 0

    def add(self, bytes key, bytes value, uint64_t line=0):
        """One entry; key exactly as it will be looked up (already folded)."""
        self._add(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                  <const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), line)

    def add_source(self, const unsigned char[:] source, bint fold=True, bint smtputf8=True):
        """Entries in postmap's source syntax. Lines postmap would skip are skipped with its
        warning (in self.warnings, as "label:line: text"): a line that starts a table with
        white space, a logical line without a value, an unbalanced quote, non-UTF-8 text when
        smtputf8_enable is on. Returns the number of entries added."""
        cdef const unsigned char* p = &source[0] if source.shape[0] else NULL
        cdef size_t n = source.shape[0]
        cdef size_t pos = 0, end, first, length
        cdef const unsigned char* newline
        cdef const unsigned char* current = NULL
        cdef size_t current_len = 0
        cdef uint64_t line = 0, current_line = 0
        cdef bint joined = False, orphan = False
        cdef size_t added = 0
        while pos < n:
            newline = <const unsigned char*>memchr(p + pos, 10, n - pos)
            end = (newline - p) if newline != NULL else n
            line += 1
            length = end - pos
            first = 0
            while first < length and is_space(p[pos + first]):
                first += 1
            if first == length or p[pos + first] == 35:  # blank, or a comment
                pos = end + 1
                continue
            if first > 0:
                if current == NULL:
                    # Nothing to continue: postmap warns and drops the line.
                    self.warnings.append(f"{self.label}:{line}: logical line must not start "
                                         f'with whitespace: "{_display(p[pos:end])}"')
                    pos = end + 1
                    continue
                if not joined:
                    self.scratch.size = 0
                    append(&self.scratch, current, current_len)
                    joined = True
                append(&self.scratch, p + pos, length)
                pos = end + 1
                continue
            if current != NULL:
                added += self._entry(self.scratch.data if joined else current,
                                     self.scratch.size if joined else current_len,
                                     current_line, fold, smtputf8)
            current = p + pos
            current_len = length
            current_line = line
            joined = False
            pos = end + 1
        if current != NULL:
            added += self._entry(self.scratch.data if joined else current,
                                 self.scratch.size if joined else current_len,
                                 current_line, fold, smtputf8)
        return added

    cdef int _entry(self, const unsigned char* text, size_t n, uint64_t line, bint fold,
                    bint smtputf8) except -1:
        """One logical line `key whitespace value`; 1 when it became an entry, 0 when skipped."""
        cdef size_t k = 0, v, vend
        cdef bint quoted = False
        cdef unsigned char c
        cdef bytes folded
        # Postfix reads the line as a C string: a NUL byte ends it. Its UTF-8 check (3.7) still
        # covers the whole line unless the text before the NUL is plain, non-empty ASCII.
        cdef const unsigned char* nul = <const unsigned char*>memchr(text, 0, n)
        cdef size_t visible = <size_t>(nul - text) if nul != NULL else n
        if smtputf8 and (visible == 0 or has_high(text, visible)) and has_high(text, n):
            try:
                PyUnicode_DecodeUTF8(<const char*>text, n, NULL)
            except UnicodeDecodeError:
                shown = _display(<const unsigned char[:visible]>text) if visible else ""
                self.warnings.append(f'{self.label}:{line}: non-UTF-8 input "{shown}" -- ignoring this line')
                return 0
        n = visible
        # The key ends at the first white space outside double quotes; a backslash takes the
        # next character as it is (postmap keeps the quotes and backslashes in the key).
        while k < n:
            c = text[k]
            if c == 92:
                k += 2
                continue
            if c == 34:
                quoted = not quoted
            elif not quoted and is_space(c):
                break
            k += 1
        if k > n:
            k = n
        if quoted:
            self.warnings.append(f"{self.label}:{line}: unbalanced '\"' in "
                                 f"'{_display(<const unsigned char[:n]>text)}' -- ignoring this line")
            return 0
        v = k
        while v < n and is_space(text[v]):
            v += 1
        vend = n
        while vend > v and is_space(text[vend - 1]):
            vend -= 1
        if vend == v:
            self.warnings.append(f"{self.label}:{line}: expected format: key whitespace value")
            return 0
        if text[k - 1] == 58:
            self.warnings.append(f'{self.label}:{line}: record is in "key: value" format; '
                                 "is this an alias file?")
        if not fold:
            self._add(text, k, text + v, vend - v, line)
            return 1
        self.keybuf.size = 0
        grow(&self.keybuf, k)
        if ascii_fold(text, k, self.keybuf.data) and smtputf8:
            folded = _unicode_fold(text, k)
            self._add(<const unsigned char*>PyBytes_AS_STRING(folded), PyBytes_GET_SIZE(folded),
                      text + v, vend - v, line)
        else:
            self._add(self.keybuf.data, k, text + v, vend - v, line)
        return 1

    def write(self, str path, int mode=0o644, bint sync=True):
        """Write the table to a temporary file beside path, then rename it over path, so a
        reader sees either the old table or the new one. Returns the number of entries."""
        cdef uint64_t records = self.index.size // 16
        cdef uint64_t homes = <uint64_t>(records / LOAD) + 1
        cdef uint64_t seed = 0, cell_count, i, klen, vlen, source
        cdef int64_t live = -1
        cdef unsigned char* cells = NULL
        cdef unsigned char* cell
        cdef Growable external
        cdef list duplicates = []
        memset(&external, 0, sizeof(Growable))
        try:
            for attempt in range(8):
                seed = int.from_bytes(os.urandom(8), "little") | 1
                if homes + PFM_MAX_DISTANCE > MAX_CELLS:
                    raise HashFileError(f"{self.label}: too many entries")
                cells = <unsigned char*>calloc(homes + PFM_MAX_DISTANCE, PFM_CELL)
                if cells == NULL:
                    raise MemoryError()
                duplicates = []
                live = self._place(cells, homes, seed, duplicates)
                if live >= 0:
                    break
                # A run of more than 255 cells: only keys that hash alike in bulk do that.
                # Another seed and more room break it up.
                free(cells)
                cells = NULL
                homes += homes // 4 + 1
            if live < 0:
                raise HashFileError(f"{self.label}: cannot place the entries in a hash table")
            cell_count = homes + PFM_WINDOW - 1
            for i in range(homes + PFM_MAX_DISTANCE - 1, cell_count - 1, -1):
                if cells[i * PFM_CELL] != 0:
                    cell_count = i + 1
                    break
            # Entries too long for a cell move to the data area, in cell order; their cells
            # pointed into the records so far.
            for i in range(cell_count):
                cell = cells + i * PFM_CELL
                if cell[0] == 0 or cell[1] != PFM_EXTERNAL:
                    continue
                klen = pfm_load32(cell + 4)
                vlen = pfm_load32(cell + 8)
                source = pfm_load64(cell + 12)
                store64(cell + 12, external.size)
                append(&external, self.data.data + source + 8, klen + vlen)
            for offset, line in duplicates:
                klen = pfm_load32(self.data.data + <uint64_t>offset)
                key = PyBytes_FromStringAndSize(<const char*>self.data.data + <uint64_t>offset + 8,
                                                klen)
                where = f"{self.label}:{line}" if line else self.label
                self.warnings.append(f'{where}: duplicate entry: "{key.decode("utf-8", "replace")}"')
            header = _header(live, homes, cell_count, seed, external.size)
            directory, name = os.path.split(os.path.abspath(path))
            temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
            except OSError as error:
                raise HashFileError(f"create {temporary}: {error.strerror}") from None
            try:
                try:
                    os.fchmod(fd, mode)  # exactly mode, whatever the umask
                    write_all(fd, <const unsigned char*>PyBytes_AS_STRING(header), HEADER_SIZE)
                    write_all(fd, cells, cell_count * PFM_CELL)
                    if external.size:
                        write_all(fd, external.data, external.size)
                    if sync and fsync(fd) != 0:
                        raise OSError(errno, os.strerror(errno))
                finally:
                    os.close(fd)
                os.rename(temporary, path)
            except OSError as error:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
                raise HashFileError(f"write {path}: {error.strerror or error}") from None
        finally:
            free(cells)
            free(external.data)
        return live

    cdef int64_t _place(self, unsigned char* cells, uint64_t homes, uint64_t seed,
                        list duplicates) except -2:
        """Every record into its cell, Robin Hood style: a new entry takes the cell of one that
        is nearer its own home, which moves on. The number of distinct keys, or -1 when some
        entry would end up more than 255 cells from its home."""
        cdef uint64_t records = self.index.size // 16
        cdef uint64_t i, offset, h, at
        cdef int64_t live = 0
        cdef uint32_t klen, vlen
        cdef unsigned int distance
        cdef const unsigned char* key
        cdef unsigned char* cell
        cdef unsigned char carry[64]
        cdef unsigned char moved[64]
        cdef bint own
        for i in range(records):
            offset = (<uint64_t*>(self.index.data + i * 16))[0]
            klen = pfm_load32(self.data.data + offset)
            vlen = pfm_load32(self.data.data + offset + 4)
            key = self.data.data + offset + 8
            h = pfm_hash(key, klen, seed)
            make_cell(carry, key, klen, vlen, h, offset)
            at = pfm_home(h, homes)
            distance = 1
            own = True
            while True:
                if distance > PFM_MAX_DISTANCE:
                    return -1
                cell = cells + at * PFM_CELL
                if cell[0] == 0:
                    carry[0] = distance
                    memcpy(cell, carry, PFM_CELL)
                    live += own
                    break
                # A key already there sits among the entries of its home, at this distance.
                if own and cell[0] == distance and cell[3] == carry[3] and self._cell_has(
                        cell, key, klen):
                    if self.duplicates == DUP_REPLACE:
                        carry[0] = distance
                        memcpy(cell, carry, PFM_CELL)
                    elif self.duplicates == DUP_WARN:
                        duplicates.append((offset, (<uint64_t*>(self.index.data + i * 16))[1]))
                    break
                if cell[0] < distance:
                    carry[0] = distance
                    memcpy(moved, cell, PFM_CELL)
                    memcpy(cell, carry, PFM_CELL)
                    memcpy(carry, moved, PFM_CELL)
                    distance = carry[0]
                    live += own
                    own = False
                at += 1
                distance += 1
        return live

    cdef bint _cell_has(self, const unsigned char* cell, const unsigned char* key,
                        uint32_t klen) noexcept:
        if cell[1] != PFM_EXTERNAL:
            return cell[1] == klen and memcmp_eq(cell + 4, key, klen)
        return pfm_load32(cell + 4) == klen and memcmp_eq(
            self.data.data + pfm_load64(cell + 12) + 8, key, klen)


cdef void make_cell(unsigned char* cell, const unsigned char* key, uint32_t klen, uint32_t vlen,
                    uint64_t h, uint64_t record) noexcept nogil:
    """The cell for an entry (distance left 0); `record` is where its record is for now."""
    memset(cell, 0, PFM_CELL)
    cell[3] = h & 0xff
    if <uint64_t>klen + vlen <= PFM_ROOM:
        cell[1] = klen
        cell[2] = vlen
        memcpy(cell + 4, key, klen + vlen)  # the value follows the key in the record too
        return
    cell[1] = PFM_EXTERNAL
    store32(cell + 4, klen)
    store32(cell + 8, vlen)
    store64(cell + 12, record)
    memcpy(cell + 20, key, klen if klen < PFM_PREFIX else PFM_PREFIX)


# ---------------------------------------------------------------------------------------------
# Benchmark support

def bench_lookups(HashFile table, list keys, int rounds=1, int batch=0):
    """Search every key (ASCII, in any case) `rounds` times at the C level, as a Cython caller
    would: one hashview_find_folding() per key (hashview_find() for a table that does not fold),
    or with batch > 0 hashview_find_many() over batches of that many keys. Returns the number of keys found; no Python object is made per
    lookup."""
    cdef Py_ssize_t i, j, m, n, count = len(keys)
    cdef int r
    cdef const unsigned char* raw
    cdef HashQuery queries[64]
    cdef const unsigned char* value
    cdef size_t value_len
    cdef Py_ssize_t found = 0
    cdef object key
    cdef PyObject* item
    cdef const HashView* view = &table.view
    cdef bint fold = table.fold
    table._check_open()
    if batch > 64:
        batch = 64
    for r in range(rounds):
        if batch > 0:
            i = 0
            while i < count:
                m = 0
                while m < batch and i < count:
                    key = keys[i]
                    i += 1
                    queries[m].key = <const unsigned char*>PyUnicode_AsUTF8AndSize(key, &n)
                    queries[m].key_len = n
                    m += 1
                hashview_find_many(&table.view, queries, m, fold)
                for j in range(m):
                    found += queries[j].found == 1
            continue
        # Borrowed references and the str's own bytes: only the search itself in the loop.
        for i in range(count):
            item = PyList_GET_ITEM(keys, i)
            if PyUnicode_CheckExact(<object>item) and PyUnicode_IS_COMPACT_ASCII(<object>item):
                raw = <const unsigned char*>PyUnicode_DATA(<object>item)
                n = PyUnicode_GET_LENGTH(<object>item)
            else:
                raw = <const unsigned char*>PyUnicode_AsUTF8AndSize(<object>item, &n)
            if fold:
                found += hashview_find_folding(view, raw, n, &value, &value_len) == 1
            else:
                found += hashview_find(view, raw, n, &value, &value_len) == 1
    return found
