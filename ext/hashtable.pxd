# The compiled hash table file (hash: tables), as other Cython modules search it.
#
# Layout, little-endian, all offsets from the start of the file:
#   header   64 bytes: magic "PFMHASH\0", version u32, flags u32, count u64, slot count u64 (a
#            power of two), seed u64, data offset u64, data size u64, header check u64
#   slots    slot count x u64: 0 = empty, else fingerprint (top 24 bits of the key's hash) << 40
#            | (record offset in the data area + 1); open addressing, linear probing from
#            hash & (slot count - 1)
#   data     records: key length u32, value length u32, key bytes (folded UTF-8), value bytes
#
# Only structs and inline functions live here (see buffer.pxd for why). A module that wants the
# C-level search takes a HashView from HashFile.view_capsule() with hashview_from_capsule(), keeps
# the capsule for as long as it uses the view, and calls hashview_find().

from libc.stdint cimport uint32_t, uint64_t
from cpython.pycapsule cimport PyCapsule_GetPointer

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define PFM_LE64(v) __builtin_bswap64(v)
    #define PFM_LE32(v) __builtin_bswap32(v)
    #else
    #define PFM_LE64(v) (v)
    #define PFM_LE32(v) (v)
    #endif

    static inline uint64_t pfm_load64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return PFM_LE64(v);
    }
    static inline uint32_t pfm_load32(const unsigned char *p) {
        uint32_t v; memcpy(&v, p, 4); return PFM_LE32(v);
    }
    static inline uint64_t pfm_mix(uint64_t a, uint64_t b) {
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    }
    /* A multiply-mix hash in the style of wyhash: fast on short keys, seeded per file. */
    static inline uint64_t pfm_hash(const unsigned char *p, size_t n, uint64_t seed) {
        const uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull,
                       k2 = 0x8ebc6af09c88c6e3ull, k3 = 0x589965cc75374cc3ull;
        uint64_t h = seed ^ pfm_mix(seed ^ k0, k1);
        uint64_t a = 0, b = 0;
        size_t left = n;
        while (left > 16) {
            h = pfm_mix(pfm_load64(p) ^ k1, pfm_load64(p + 8) ^ h);
            p += 16;
            left -= 16;
        }
        if (left > 8) {
            a = pfm_load64(p);
            b = pfm_load64(p + left - 8);
        } else if (left >= 4) {
            a = pfm_load32(p);
            b = pfm_load32(p + left - 4);
        } else if (left > 0) {
            a = ((uint64_t)p[0] << 16) | ((uint64_t)p[left >> 1] << 8) | p[left - 1];
        }
        return pfm_mix(k1 ^ (uint64_t)n, pfm_mix(a ^ k1, b ^ h ^ k2) ^ k3);
    }
    #define PFM_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 0)
    #define PFM_FP_SHIFT 40
    #define PFM_OFFSET_MASK ((((uint64_t)1) << 40) - 1)
    """
    uint64_t pfm_load64(const unsigned char* p) noexcept nogil
    uint32_t pfm_load32(const unsigned char* p) noexcept nogil
    uint64_t pfm_hash(const unsigned char* p, size_t n, uint64_t seed) noexcept nogil
    uint64_t PFM_LE64(uint64_t v) noexcept nogil
    uint32_t PFM_LE32(uint32_t v) noexcept nogil
    void PFM_PREFETCH(const void* p) noexcept nogil
    int PFM_FP_SHIFT
    uint64_t PFM_OFFSET_MASK


cdef extern from "<string.h>":
    int memcmp(const void* a, const void* b, size_t n) noexcept nogil


cdef inline bint memcmp_eq(const unsigned char* a, const unsigned char* b, size_t n) noexcept nogil:
    return memcmp(a, b, n) == 0


# Where one mapped file's parts are.
cdef struct HashView:
    const unsigned char* slots
    uint64_t mask                 # slot count - 1
    const unsigned char* data
    uint64_t data_size
    uint64_t seed
    uint64_t count


cdef inline int hashview_find_hashed(const HashView* view, const unsigned char* key,
                                     size_t key_len, uint64_t h, const unsigned char** value,
                                     size_t* value_len) noexcept nogil:
    """hashview_find() for a key whose pfm_hash(key, key_len, view.seed) is h."""
    cdef uint64_t index = h & view.mask
    cdef uint64_t fingerprint = h >> PFM_FP_SHIFT
    cdef uint64_t slot, offset, klen, vlen
    cdef uint64_t probes = 0
    cdef const unsigned char* record
    while True:
        slot = pfm_load64(view.slots + index * 8)
        if slot == 0:
            return 0
        if (slot >> PFM_FP_SHIFT) == fingerprint:
            offset = (slot & PFM_OFFSET_MASK) - 1
            if offset + 8 > view.data_size:
                return -1
            record = view.data + offset
            klen = pfm_load32(record)
            vlen = pfm_load32(record + 4)
            if offset + 8 + klen + vlen > view.data_size:
                return -1
            if klen == key_len and memcmp_eq(record + 8, key, key_len):
                value[0] = record + 8 + klen
                value_len[0] = vlen
                return 1
        index = (index + 1) & view.mask
        probes += 1
        if probes > view.mask:
            return 0


cdef inline int hashview_find(const HashView* view, const unsigned char* key, size_t key_len,
                              const unsigned char** value, size_t* value_len) noexcept nogil:
    """1 and the value's bytes when the (already folded) key is there, 0 when not, -1 when a
    slot points outside the file (a damaged file)."""
    return hashview_find_hashed(view, key, key_len, pfm_hash(key, key_len, view.seed), value,
                                value_len)


# One key of a batch search.
cdef struct HashQuery:
    const unsigned char* key      # in: the folded key
    size_t key_len                # in
    uint64_t hash                 # scratch
    const unsigned char* value    # out, when found == 1
    size_t value_len              # out
    int found                     # out: as hashview_find returns


cdef inline void hashview_find_many(const HashView* view, HashQuery* queries,
                                    size_t n) noexcept nogil:
    """hashview_find() for n keys at once. A lookup in a large table waits on memory twice (the
    slot, then the record); asking for all the slots of a batch, then all the records, before
    reading any overlaps those waits. Batches of 8 to 32 keys suit it."""
    cdef size_t i
    cdef uint64_t slot, offset
    for i in range(n):
        queries[i].hash = pfm_hash(queries[i].key, queries[i].key_len, view.seed)
        PFM_PREFETCH(view.slots + (queries[i].hash & view.mask) * 8)
    for i in range(n):
        slot = pfm_load64(view.slots + (queries[i].hash & view.mask) * 8)
        offset = (slot & PFM_OFFSET_MASK) - 1
        if slot != 0 and offset < view.data_size:
            PFM_PREFETCH(view.data + offset)
    for i in range(n):
        queries[i].found = hashview_find_hashed(view, queries[i].key, queries[i].key_len,
                                                queries[i].hash, &queries[i].value,
                                                &queries[i].value_len)


cdef inline size_t ascii_fold(const unsigned char* key, size_t key_len, unsigned char* out) noexcept nogil:
    """Copy key into out lower-casing A-Z; the number of bytes of 0x80 and above (keys that need
    full Unicode folding when smtputf8_enable is on)."""
    cdef size_t i
    cdef size_t high = 0
    cdef unsigned char c
    for i in range(key_len):
        c = key[i]
        if c >= 65 and c <= 90:
            c += 32
        elif c >= 0x80:
            high += 1
        out[i] = c
    return high


cdef inline const HashView* hashview_from_capsule(object capsule) except NULL:
    return <const HashView*>PyCapsule_GetPointer(capsule, "pyfastmta._ext.hashtable.HashView")
