# The compiled hash table file (hash: tables), as other Cython modules search it.
#
# Layout, version 2, little-endian, all offsets from the start of the file:
#   header   64 bytes: magic "PFMHASH\0", version u32, flags u32, count u64, home cell count u64,
#            cell count u64, seed u64, data size u64, header check u64
#   cells    cell count x 64 bytes, each one cache line; data offset = 64 + cell count x 64
#   data     the key and value bytes of entries too long for a cell, one after the other
#
# A key's hash h picks its home cell, (h x home cell count) >> 64. Entries are placed by linear
# probing with Robin Hood ordering: an entry sits `distance - 1` cells after its home, and the
# entries of one home are contiguous, so a search stops at the first cell whose distance is
# smaller than its own. Probing never wraps: the cells after the last home (at least one) are the
# overflow of the last homes. A cell:
#   byte 0   distance: 0 = empty, else 1 + cells from its home (at most 255)
#   byte 1   key length (0..60) for an entry held in the cell, 255 for one in the data area
#   byte 2   value length (in the cell)
#   byte 3   tag: the low 8 bits of h
#   in the cell      4..63  key bytes (folded UTF-8), then value bytes: key + value <= 60 bytes
#   in the data area 4..7 key length u32, 8..11 value length u32, 12..19 data offset u64,
#                    20..63 the key's first bytes (up to 44), so that most misses stay in the cell
# A search for a short entry reads its home cell and the next one at once (one memory round trip:
# at 0.6 entries per home cell, 82% of the entries and 73% of the misses are decided there), and
# the round trip that finds the cell also brings the value.
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

    #define PFM_CELL 64
    #define PFM_ROOM 60             /* key + value bytes a cell holds */
    #define PFM_EXTERNAL 255        /* key length byte of a cell whose entry is in the data area */
    #define PFM_PREFIX 44           /* key bytes an external cell repeats */
    #define PFM_MAX_DISTANCE 255
    #define PFM_WINDOW 2            /* cells every search reads at once */
    #define PFM_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 0)
    /* The search's common path is inlined into its caller whole; the rare ones (a long run of
       cells, an entry in the data area) stay out of line so that it stays short. */
    #define PFM_HOT static inline __attribute__((always_inline))
    #define PFM_COLD static __attribute__((noinline, unused))

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
    /* A-Z lower-cased in the eight bytes of w, without a branch or a carry between bytes. */
    static inline uint64_t pfm_fold64(uint64_t w) {
        const uint64_t high = 0x8080808080808080ull;
        uint64_t low = w & ~high;
        uint64_t above_z = low + 0x2525252525252525ull;   /* bit 7 set where the byte > 'Z' */
        uint64_t from_a = low + 0x3f3f3f3f3f3f3f3full;    /* bit 7 set where the byte >= 'A' */
        return w | (((from_a & ~above_z & ~w) & high) >> 2);
    }
    /* Key bytes as the table holds them: with fold, as pfm_ascii_fold() would have copied them.
       Searches fold while they read, rather than copying the key first: a copy made of byte
       stores and read back in words cannot be forwarded from the store buffer, and would hold
       every search up until the one before it has finished waiting for memory. */
    static inline uint64_t pfm_key64(const unsigned char *p, int fold) {
        uint64_t v = pfm_load64(p); return fold ? pfm_fold64(v) : v;
    }
    static inline uint64_t pfm_key32(const unsigned char *p, int fold) {
        uint64_t v = pfm_load32(p); return fold ? pfm_fold64(v) : v;
    }
    static inline uint64_t pfm_key8(unsigned char c, int fold) {
        return (fold && c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    /* A multiply-mix hash in the style of wyhash: fast on short keys, seeded per file. */
    static inline uint64_t pfm_hash_key(const unsigned char *p, size_t n, uint64_t seed,
                                        int fold) {
        const uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull,
                       k2 = 0x8ebc6af09c88c6e3ull, k3 = 0x589965cc75374cc3ull;
        uint64_t h = seed ^ pfm_mix(seed ^ k0, k1);
        uint64_t a = 0, b = 0;
        size_t left = n;
        while (left > 16) {
            h = pfm_mix(pfm_key64(p, fold) ^ k1, pfm_key64(p + 8, fold) ^ h);
            p += 16;
            left -= 16;
        }
        if (left > 8) {
            a = pfm_key64(p, fold);
            b = pfm_key64(p + left - 8, fold);
        } else if (left >= 4) {
            a = pfm_key32(p, fold);
            b = pfm_key32(p + left - 4, fold);
        } else if (left > 0) {
            a = (pfm_key8(p[0], fold) << 16) | (pfm_key8(p[left >> 1], fold) << 8)
                | pfm_key8(p[left - 1], fold);
        }
        return pfm_mix(k1 ^ (uint64_t)n, pfm_mix(a ^ k1, b ^ h ^ k2) ^ k3);
    }
    static inline uint64_t pfm_hash(const unsigned char *p, size_t n, uint64_t seed) {
        return pfm_hash_key(p, n, seed, 0);
    }
    /* The home cell: the high part of h x home cells, any cell count without a modulo. */
    static inline uint64_t pfm_home(uint64_t h, uint64_t homes) {
        return (uint64_t)(((__uint128_t)h * homes) >> 64);
    }

    /* Copy key into out lower-casing A-Z, eight bytes at a time; nonzero when the key has bytes
       of 0x80 and above (keys that need full Unicode folding when smtputf8_enable is on). */
    static inline uint64_t pfm_ascii_fold(const unsigned char *key, size_t n, unsigned char *out) {
        const uint64_t high = 0x8080808080808080ull;
        uint64_t seen = 0, w;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, key + i, 8);
            seen |= w;
            w = pfm_fold64(w);
            memcpy(out + i, &w, 8);
        }
        for (; i < n; i++) {
            unsigned char c = key[i];
            seen |= c;
            out[i] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        }
        return seen & high;
    }

    /* Nonzero when the key has bytes of 0x80 and above; reads only. */
    static inline uint64_t pfm_high_bytes(const unsigned char *key, size_t n) {
        uint64_t seen = 0, w;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, key + i, 8);
            seen |= w;
        }
        for (; i < n; i++)
            seen |= key[i];
        return seen & 0x8080808080808080ull;
    }

    /* Whether the n bytes at a (in the file) are the key's n bytes (folded with fold): eight
       at a time, without a branch on the bytes themselves. */
    static inline int pfm_equal(const unsigned char *a, const unsigned char *key, size_t n,
                                int fold) {
        uint64_t diff = 0;
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            diff |= pfm_load64(a + i) ^ pfm_key64(key + i, fold);
        if (i < n) {
            if (n >= 8) {   /* the last eight bytes, overlapping what was compared */
                diff |= pfm_load64(a + n - 8) ^ pfm_key64(key + n - 8, fold);
            } else {
                for (; i < n; i++)
                    diff |= a[i] ^ pfm_key8(key[i], fold);
            }
        }
        return diff == 0;
    }

    /* A key of 8 to 64 bytes read (and folded) once, as its whole words and its last eight
       bytes: the hash and the comparison both take them from here, so a search folds each
       word once. */
    typedef struct {
        uint64_t w[8];
        uint64_t tail;
        size_t n;
    } PfmWords;

    static inline void pfm_words(PfmWords *k, const unsigned char *key, size_t n, int fold) {
        size_t j;
        for (j = 0; j < n / 8; j++)
            k->w[j] = pfm_key64(key + 8 * j, fold);
        k->tail = pfm_key64(key + n - 8, fold);
        k->n = n;
    }

    /* pfm_hash_key() of the key k holds. */
    static inline uint64_t pfm_hash_words(const PfmWords *k, uint64_t seed) {
        const uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull,
                       k2 = 0x8ebc6af09c88c6e3ull, k3 = 0x589965cc75374cc3ull;
        uint64_t h = seed ^ pfm_mix(seed ^ k0, k1);
        uint64_t a, b, t;
        size_t left = k->n, j = 0;
        while (left > 16) {
            h = pfm_mix(k->w[j] ^ k1, k->w[j + 1] ^ h);
            j += 2;
            left -= 16;
        }
        if (left > 8) {
            a = k->w[j];
            b = k->tail;
        } else {
            /* The last `left` bytes are the top of tail: t starts at the first of them. */
            t = k->tail >> (8 * (8 - left));
            if (left >= 4) {
                a = t & 0xffffffffu;
                b = k->tail >> 32;
            } else {
                a = ((t & 0xff) << 16) | (((t >> (8 * (left >> 1))) & 0xff) << 8)
                    | ((t >> (8 * (left - 1))) & 0xff);
                b = 0;
            }
        }
        return pfm_mix(k1 ^ (uint64_t)k->n, pfm_mix(a ^ k1, b ^ h ^ k2) ^ k3);
    }

    /* Whether the k->n bytes at a (in a cell) are the key's. */
    static inline int pfm_equal_words(const unsigned char *a, const PfmWords *k) {
        uint64_t diff = pfm_load64(a + k->n - 8) ^ k->tail;
        size_t j;
        for (j = 0; j < k->n / 8; j++)
            diff |= pfm_load64(a + 8 * j) ^ k->w[j];
        return diff == 0;
    }

    typedef struct {
        const unsigned char *cells;
        uint64_t homes;            /* home cell count */
        uint64_t cell_count;       /* homes and their overflow */
        const unsigned char *data;
        uint64_t data_size;
        uint64_t seed;
        uint64_t count;
    } PfmHashView;

    /* The cell holding the key, or NULL; *damaged when a cell or the record it points to lies
       outside what the file holds. An external cell is returned once its length, tag and prefix
       match: pfm_external() finishes the comparison. */
    PFM_COLD const unsigned char *pfm_probe(const PfmHashView *v, const unsigned char *key,
                                            size_t n, uint64_t h, int *damaged, int fold) {
        uint64_t i = pfm_home(h, v->homes);
        unsigned tag = (unsigned)(h & 0xff);
        unsigned distance = 1;
        const unsigned char *c;
        for (;; i++, distance++) {
            if (i >= v->cell_count)
                return NULL;
            c = v->cells + i * PFM_CELL;
            if (c[0] < distance)   /* empty, or nearer its home than this key would be */
                return NULL;
            if (c[0] != distance || c[3] != tag)
                continue;
            if (c[1] == PFM_EXTERNAL) {
                if (pfm_load32(c + 4) == n
                        && pfm_equal(c + 20, key, n < PFM_PREFIX ? n : PFM_PREFIX, fold))
                    return c;
            } else if (c[1] == n) {
                if (n + c[2] > PFM_ROOM) {
                    *damaged = 1;
                    return NULL;
                }
                if (pfm_equal(c + 4, key, n, fold))
                    return c;
            }
        }
    }

    /* For an external cell from pfm_locate(): 1 and the value when the whole key matches, 0 when
       not, -1 when the record lies outside the data area. */
    PFM_COLD int pfm_external(const PfmHashView *v, const unsigned char *c,
                                   const unsigned char *key, size_t n,
                                   const unsigned char **value, size_t *value_len, int fold) {
        uint64_t klen = pfm_load32(c + 4), vlen = pfm_load32(c + 8), offset = pfm_load64(c + 12);
        if (offset > v->data_size || klen + vlen > v->data_size - offset)
            return -1;
        if (n > PFM_PREFIX && !pfm_equal(v->data + offset + PFM_PREFIX, key + PFM_PREFIX,
                                         n - PFM_PREFIX, fold))
            return 0;
        *value = v->data + offset + klen;
        *value_len = vlen;
        return 1;
    }

    /* pfm_probe() for any key, quicker for the keys that fit a cell: most searches end in the
       home cell or the next one (PFM_WINDOW cells), which are read and compared with few
       branches and few instructions, so that the processor can go on to the caller's next
       search while this one waits for memory. */
    PFM_HOT const unsigned char *pfm_locate(const PfmHashView *v, const unsigned char *key,
                                                  size_t n, uint64_t h, int *damaged, int fold,
                                                  const PfmWords *words) {
        /* A file has a cell after the last home cell, so both exist. */
        const unsigned char *c0 = v->cells + pfm_home(h, v->homes) * PFM_CELL;
        const unsigned char *c1 = c0 + PFM_CELL, *c;
        if (n <= PFM_ROOM) {
            /* Distance, key length and tag in one word per cell. */
            uint32_t tag = (uint32_t)(h & 0xff) << 24;
            uint32_t w0 = pfm_load32(c0) & 0xff00ffffu, w1 = pfm_load32(c1) & 0xff00ffffu;
            int m0 = w0 == (tag | ((uint32_t)n << 8) | 1);
            int m1 = w1 == (tag | ((uint32_t)n << 8) | 2);
            c = m0 ? c0 : c1;
            if ((m0 | m1) && (words ? pfm_equal_words(c + 4, words)
                                    : pfm_equal(c + 4, key, n, fold))) {
                if (n + c[2] > PFM_ROOM) {
                    *damaged = 1;
                    return NULL;
                }
                return c;
            }
            /* No entry of its home, or one only, in the home cell, that is not the key
               (Robin Hood order: the entries of a home end at a cell nearer its own home). */
            if (c0[0] == 0 || (c1[0] < 2 && !m0 && w0 != (tag | (PFM_EXTERNAL << 8) | 1)))
                return NULL;
        }
        return pfm_probe(v, key, n, h, damaged, fold);
    }

    /* 1 and the value when the key (folded with fold) is there, 0 when not, -1 when a cell
       points outside the file. */
    PFM_HOT int pfm_find_key(const PfmHashView *v, const unsigned char *key, size_t n,
                                   int fold, const unsigned char **value, size_t *value_len) {
        int damaged = 0;
        const unsigned char *c;
        PfmWords words;
        if (n >= 8 && n <= PFM_ROOM) {
            pfm_words(&words, key, n, fold);
            c = pfm_locate(v, key, n, pfm_hash_words(&words, v->seed), &damaged, fold, &words);
        } else {
            c = pfm_locate(v, key, n, pfm_hash_key(key, n, v->seed, fold), &damaged, fold, NULL);
        }
        if (c == NULL)
            return -damaged;
        if (c[1] != PFM_EXTERNAL) {
            *value = c + 4 + n;
            *value_len = c[2];
            return 1;
        }
        return pfm_external(v, c, key, n, value, value_len, fold);
    }
    """
    ctypedef struct HashView "PfmHashView":
        const unsigned char* cells
        uint64_t homes
        uint64_t cell_count
        const unsigned char* data
        uint64_t data_size
        uint64_t seed
        uint64_t count

    uint64_t pfm_load64(const unsigned char* p) noexcept nogil
    uint32_t pfm_load32(const unsigned char* p) noexcept nogil
    uint64_t pfm_hash(const unsigned char* p, size_t n, uint64_t seed) noexcept nogil
    uint64_t pfm_home(uint64_t h, uint64_t homes) noexcept nogil
    uint64_t pfm_ascii_fold(const unsigned char* key, size_t n, unsigned char* out) noexcept nogil
    uint64_t pfm_hash_key(const unsigned char* p, size_t n, uint64_t seed, int fold) noexcept nogil
    uint64_t pfm_high_bytes(const unsigned char* key, size_t n) noexcept nogil
    ctypedef struct PfmWords:
        pass
    const unsigned char* pfm_locate(const HashView* v, const unsigned char* key, size_t n,
                                    uint64_t h, int* damaged, int fold,
                                    const PfmWords* words) noexcept nogil
    int pfm_external(const HashView* v, const unsigned char* c, const unsigned char* key,
                     size_t n, const unsigned char** value, size_t* value_len,
                     int fold) noexcept nogil
    int pfm_find_key(const HashView* v, const unsigned char* key, size_t n, int fold,
                     const unsigned char** value, size_t* value_len) noexcept nogil
    uint64_t PFM_LE64(uint64_t v) noexcept nogil
    uint32_t PFM_LE32(uint32_t v) noexcept nogil
    void PFM_PREFETCH(const void* p) noexcept nogil
    int PFM_CELL
    int PFM_ROOM
    int PFM_EXTERNAL
    int PFM_PREFIX
    int PFM_MAX_DISTANCE
    int PFM_WINDOW


cdef extern from "<string.h>":
    int memcmp(const void* a, const void* b, size_t n) noexcept nogil


cdef inline bint memcmp_eq(const unsigned char* a, const unsigned char* b, size_t n) noexcept nogil:
    return memcmp(a, b, n) == 0


cdef inline int hashview_find(const HashView* view, const unsigned char* key, size_t key_len,
                              const unsigned char** value, size_t* value_len) noexcept nogil:
    """1 and the value's bytes when the key, as given, is there, 0 when not, -1 when a cell
    points outside the file (a damaged file)."""
    return pfm_find_key(view, key, key_len, 0, value, value_len)


cdef inline int hashview_find_folding(const HashView* view, const unsigned char* key,
                                      size_t key_len, const unsigned char** value,
                                      size_t* value_len) noexcept nogil:
    """hashview_find() for the key with A-Z lower-cased, as a folding table holds it; the key
    itself is not copied. A key with bytes of 0x80 and above (high_bytes() is nonzero) needs
    Unicode folding first when smtputf8_enable is on."""
    return pfm_find_key(view, key, key_len, 1, value, value_len)


cdef inline uint64_t high_bytes(const unsigned char* key, size_t key_len) noexcept nogil:
    return pfm_high_bytes(key, key_len)


# One key of a batch search.
cdef struct HashQuery:
    const unsigned char* key      # in: the key, folded unless the search folds
    size_t key_len                # in
    uint64_t hash                 # scratch
    const unsigned char* value    # out, when found == 1
    size_t value_len              # out
    int found                     # out: as hashview_find returns


cdef inline void hashview_find_many(const HashView* view, HashQuery* queries, size_t n,
                                    int fold) noexcept nogil:
    """hashview_find() (or with fold, hashview_find_folding()) for n keys at once: the cells of all their windows are asked for before
    any is read, so the batch waits on memory about once; an entry kept in the data area costs
    one more round trip, shared by the batch too. Batches of 8 to 32 keys suit it."""
    cdef size_t i
    cdef int damaged, k
    cdef const unsigned char* cell
    for i in range(n):
        queries[i].hash = pfm_hash_key(queries[i].key, queries[i].key_len, view.seed, fold)
        cell = view.cells + pfm_home(queries[i].hash, view.homes) * PFM_CELL
        for k in range(PFM_WINDOW):
            PFM_PREFETCH(cell + k * PFM_CELL)
    for i in range(n):
        damaged = 0
        cell = pfm_locate(view, queries[i].key, queries[i].key_len, queries[i].hash, &damaged,
                          fold, NULL)
        if cell == NULL:
            queries[i].found = -damaged
        elif cell[1] != PFM_EXTERNAL:
            queries[i].value = cell + 4 + queries[i].key_len
            queries[i].value_len = cell[2]
            queries[i].found = 1
        else:
            # Finished below, once the record has been asked for.
            queries[i].value = cell
            queries[i].found = 2
            if pfm_load64(cell + 12) < view.data_size:
                PFM_PREFETCH(view.data + pfm_load64(cell + 12))
    for i in range(n):
        if queries[i].found == 2:
            cell = queries[i].value
            queries[i].found = pfm_external(view, cell, queries[i].key, queries[i].key_len,
                                            &queries[i].value, &queries[i].value_len, fold)


cdef inline uint64_t ascii_fold(const unsigned char* key, size_t key_len, unsigned char* out) noexcept nogil:
    """Copy key into out lower-casing A-Z; nonzero when the key has bytes of 0x80 and above
    (keys that need full Unicode folding when smtputf8_enable is on)."""
    return pfm_ascii_fold(key, key_len, out)


cdef inline const HashView* hashview_from_capsule(object capsule) except NULL:
    return <const HashView*>PyCapsule_GetPointer(capsule, "pyfastmta._ext.hashtable.HashView")
