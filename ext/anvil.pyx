"""Client connection and event counts shared by every worker on the machine (Postfix's anvil).

The master makes one anonymous shared mapping before it forks the workers, so each worker counts
into the same table: a connection limit of 10 means 10 on the machine, not 10 per worker. The
mapping holds a header (a process-shared, robust mutex and the time unit) and a fixed number of
64-byte slots, one per (service, client address) seen lately, found by probing at most
MAX_PROBES slots from a hash of the key. Every operation takes the mutex for a few dozen
instructions; a worker killed while it holds it leaves it to the next taker, which goes on (the
counts of that one operation may be off by one).

Rates are counted as anvil counts them: a window opens with a client's first event and every
rate of that client restarts when anvil_rate_time_unit has passed since then. A slot whose client
has no open connection and whose window has passed is free for another client. When the probed
slots are all taken by active clients, a new client is not counted (every answer is 0): the
limits fail open rather than refuse mail.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import os

cdef extern from "<sys/mman.h>":
    int MAP_ANONYMOUS

cdef extern from "<errno.h>":
    int errno
    int EOWNERDEAD

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)
    int AF_INET
    int AF_INET6

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    int pthread_mutexattr_init(pthread_mutexattr_t* attr)
    int pthread_mutexattr_destroy(pthread_mutexattr_t* attr)
    int pthread_mutexattr_setpshared(pthread_mutexattr_t* attr, int shared)
    int pthread_mutexattr_setrobust(pthread_mutexattr_t* attr, int robust)
    int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attr)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    int pthread_mutex_consistent(pthread_mutex_t* mutex)
    int PTHREAD_PROCESS_SHARED
    int PTHREAD_MUTEX_ROBUST

cdef enum:
    KINDS = 5
    MAX_PROBES = 64
    # What each of slot.rates counts.
    RATE_CONNECTION = 0
    RATE_MESSAGE = 1
    RATE_RECIPIENT = 2
    RATE_TLS_SESSION = 3
    RATE_AUTH = 4

# The event kinds, for event().
MESSAGE = RATE_MESSAGE
RECIPIENT = RATE_RECIPIENT
TLS_SESSION = RATE_TLS_SESSION
AUTH = RATE_AUTH

cdef struct Header:
    pthread_mutex_t mutex
    uint32_t time_unit        # seconds
    uint32_t slot_count
    uint64_t uncounted        # events not counted because the probed slots were all in use

cdef struct Slot:
    uint8_t key[16]           # the client address; IPv4 as ::ffff:a.b.c.d
    uint32_t service
    uint32_t used
    uint32_t start            # second (CLOCK_MONOTONIC) the client's rate window opened
    uint32_t connections      # open now
    uint32_t rates[KINDS]     # in the window: connections, messages, recipients, TLS sessions, AUTH
    uint8_t pad[12]

cdef enum:
    HEADER_SIZE = 128


cdef inline uint32_t now_seconds() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <uint32_t>now.tv_sec


cdef inline uint64_t key_hash(const uint8_t* key, uint32_t service) noexcept nogil:
    cdef uint64_t a, b
    memcpy(&a, key, 8)
    memcpy(&b, key + 8, 8)
    cdef uint64_t h = (a ^ (<uint64_t>service << 32)) * 0x9E3779B97F4A7C15ULL
    h ^= (b + 0x632BE59BD9B4E019ULL) * 0xBF58476D1CE4E5B9ULL
    h ^= h >> 31
    h *= 0x94D049BB133111EBULL
    return h ^ (h >> 29)


cdef class ClientEvents:
    """The shared table. Made once in the master; the forked workers use the same mapping."""

    cdef Header* header
    cdef Slot* slots
    cdef size_t size

    def __cinit__(self, uint32_t slot_count=65536, uint32_t time_unit=60):
        if slot_count < MAX_PROBES:
            raise ValueError(f"at least {MAX_PROBES} slots")
        self.size = HEADER_SIZE + <size_t>slot_count * sizeof(Slot)
        cdef void* address = mmap(NULL, self.size, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if address == MAP_FAILED:
            raise OSError(errno, f"mmap of the client event table: {os.strerror(errno)}")
        memset(address, 0, self.size)
        self.header = <Header*>address
        self.slots = <Slot*>(<char*>address + HEADER_SIZE)
        cdef pthread_mutexattr_t attr
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)
        cdef int failed = pthread_mutex_init(&self.header.mutex, &attr)
        pthread_mutexattr_destroy(&attr)
        if failed:
            munmap(address, self.size)
            self.header = NULL
            raise OSError(failed, f"pthread_mutex_init: {os.strerror(failed)}")
        self.header.time_unit = time_unit if time_unit else 1
        self.header.slot_count = slot_count

    def __dealloc__(self):
        if self.header != NULL:
            munmap(self.header, self.size)

    @property
    def time_unit(self) -> int:
        return self.header.time_unit

    @time_unit.setter
    def time_unit(self, uint32_t seconds):
        """anvil_rate_time_unit; a reload may change it."""
        self.header.time_unit = seconds if seconds else 1

    @property
    def uncounted(self) -> int:
        return self.header.uncounted

    cdef inline void _lock(self) noexcept nogil:
        if pthread_mutex_lock(&self.header.mutex) == EOWNERDEAD:
            pthread_mutex_consistent(&self.header.mutex)

    cdef inline void _unlock(self) noexcept nogil:
        pthread_mutex_unlock(&self.header.mutex)

    cdef Slot* _find(self, const uint8_t* key, uint32_t service, bint create, uint32_t now) noexcept nogil:
        """The client's slot (its window renewed when it has passed), or NULL; with create, a
        free slot is taken for a client that has none. Called with the mutex held."""
        cdef uint32_t count = self.header.slot_count, unit = self.header.time_unit
        cdef uint64_t home = key_hash(key, service) % count
        cdef Slot* slot
        cdef Slot* free = NULL
        cdef int i, k
        for i in range(MAX_PROBES):
            slot = &self.slots[(home + i) % count]
            if not slot.used:
                if free == NULL:
                    free = slot
                break
            if slot.service == service and memcmp(slot.key, key, 16) == 0:
                if now - slot.start >= unit:
                    slot.start = now
                    for k in range(KINDS):
                        slot.rates[k] = 0
                return slot
            if free == NULL and slot.connections == 0 and now - slot.start >= unit:
                free = slot
        if not create:
            return NULL
        if free == NULL:
            self.header.uncounted += 1
            return NULL
        memset(free, 0, sizeof(Slot))
        memcpy(free.key, key, 16)
        free.service = service
        free.used = 1
        free.start = now
        return free

    cdef int _key(self, str address, uint8_t* key) except -1:
        cdef bytes text = address.encode("ascii", "replace")
        memset(key, 0, 16)
        if inet_pton(AF_INET, text, key + 12) == 1:
            key[10] = 0xFF
            key[11] = 0xFF
            return 0
        if inet_pton(AF_INET6, text, key) == 1:
            return 0
        raise ValueError(f"not an IP address: {address!r}")

    def connect(self, str address, uint32_t service=0):
        """A new connection: (connections open now, connections in this window), both counting
        this one."""
        cdef uint8_t key[16]
        self._key(address, key)
        cdef uint32_t now = now_seconds(), count = 0, rate = 0
        cdef Slot* slot
        with nogil:
            self._lock()
            slot = self._find(key, service, True, now)
            if slot != NULL:
                slot.connections += 1
                slot.rates[RATE_CONNECTION] += 1
                count = slot.connections
                rate = slot.rates[RATE_CONNECTION]
            self._unlock()
        return count, rate

    def disconnect(self, str address, uint32_t service=0):
        cdef uint8_t key[16]
        self._key(address, key)
        cdef uint32_t now = now_seconds()
        cdef Slot* slot
        with nogil:
            self._lock()
            slot = self._find(key, service, False, now)
            if slot != NULL and slot.connections > 0:
                slot.connections -= 1
            self._unlock()

    def event(self, str address, int kind, uint32_t service=0):
        """One event of a kind (MESSAGE, RECIPIENT, TLS_SESSION, AUTH): how many of that kind the
        client has had in this window, this one included."""
        if kind < RATE_MESSAGE or kind >= KINDS:
            raise ValueError(f"not an event kind: {kind}")
        cdef uint8_t key[16]
        self._key(address, key)
        cdef uint32_t now = now_seconds(), rate = 0
        cdef Slot* slot
        with nogil:
            self._lock()
            slot = self._find(key, service, True, now)
            if slot != NULL:
                slot.rates[kind] += 1
                rate = slot.rates[kind]
            self._unlock()
        return rate

    def counts(self, str address, uint32_t service=0):
        """(connections open, [rate of each kind]) for the client, or None when it has no slot."""
        cdef uint8_t key[16]
        self._key(address, key)
        cdef uint32_t now = now_seconds()
        cdef Slot* slot
        cdef uint32_t connections = 0
        cdef uint32_t rates[KINDS]
        cdef bint found = False
        with nogil:
            self._lock()
            slot = self._find(key, service, False, now)
            if slot != NULL:
                found = True
                connections = slot.connections
                memcpy(rates, slot.rates, sizeof(rates))
            self._unlock()
        if not found:
            return None
        return connections, [rates[k] for k in range(KINDS)]
