"""Compiled prefix matching for cidr: tables.

pyfastmta.maps.cidr parses a table into rules; CidrMatcher holds them as one C array of
(operation, positive/negative, family, network bytes, mask bytes, end of if-block, result index)
and answers a lookup with one loop over that array: the key is converted with the C library's
inet_pton() (as Postfix converts it, so the same spellings are accepted), then compared with each
rule of its address family under the rule's mask. First match in file order wins; an `if` whose
test fails jumps past its `endif`.
"""

from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport strchr

cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "sys/socket.h" nogil:
    int AF_INET
    int AF_INET6

cdef enum:
    RULE_MATCH = 1
    RULE_IF = 2
    RULE_ENDIF = 3

# The operation codes of a rule tuple, for the Python side.
OP_MATCH = RULE_MATCH
OP_IF = RULE_IF
OP_ENDIF = RULE_ENDIF

cdef struct Rule:
    uint8_t op
    uint8_t positive
    uint8_t family          # 4 or 6; 0 for endif
    uint8_t size            # address bytes: 4 or 16
    uint8_t net[16]
    uint8_t mask[16]
    int32_t block_end       # index of the endif closing an if, -1 when it has none
    int32_t value           # result index for a match rule


cdef inline bint rule_matches(const Rule *rule, const uint8_t *address) noexcept nogil:
    cdef int i
    for i in range(rule.size):
        if (address[i] & rule.mask[i]) != rule.net[i]:
            return not rule.positive
    return rule.positive


cdef class CidrMatcher:
    """rules: a sequence of (op, positive, family, network bytes, prefix length, block end,
    value index); network bytes already have their host bits zero."""

    cdef Rule *rules
    cdef int32_t count

    def __cinit__(self, rules):
        cdef Rule *rule
        cdef int i, j, bits, size
        self.count = len(rules)
        self.rules = <Rule *> calloc(self.count if self.count else 1, sizeof(Rule))
        if self.rules == NULL:
            raise MemoryError()
        for i, (op, positive, family, net, prefix, block_end, value) in enumerate(rules):
            rule = &self.rules[i]
            rule.op = op
            rule.positive = 1 if positive else 0
            rule.family = family
            rule.block_end = block_end
            rule.value = value
            if op == RULE_ENDIF:
                continue
            size = 16 if family == 6 else 4
            if len(net) != size or not 0 <= prefix <= size * 8:
                raise ValueError(f"rule {i}: bad network or prefix for IPv{family}")
            rule.size = size
            bits = prefix
            for j in range(size):
                rule.net[j] = net[j]
                if bits >= 8:
                    rule.mask[j] = 0xFF
                    bits -= 8
                elif bits > 0:
                    rule.mask[j] = (0xFF << (8 - bits)) & 0xFF
                    bits = 0
                else:
                    rule.mask[j] = 0

    def __dealloc__(self):
        free(self.rules)

    def __len__(self):
        return self.count

    cdef int32_t _find(self, const char *key) noexcept nogil:
        cdef uint8_t address[16]
        cdef int family
        cdef int32_t index = 0
        cdef const Rule *rule
        family = 6 if strchr(key, b':') != NULL else 4
        if inet_pton(AF_INET6 if family == 6 else AF_INET, key, address) != 1:
            return -1
        while index < self.count:
            rule = &self.rules[index]
            if rule.op == RULE_MATCH:
                if rule.family == family and rule_matches(rule, address):
                    return rule.value
            elif rule.op == RULE_IF:
                if not (rule.family == family and rule_matches(rule, address)):
                    if rule.block_end < 0:
                        return -1
                    index = rule.block_end
            index += 1
        return -1

    cpdef int find(self, str key):
        """The result index of the first rule that matches the address `key`, or -1 (also when
        the key is not an IPv4 or IPv6 address)."""
        cdef bytes data
        if not key.isascii():
            return -1
        data = key.encode("ascii")
        return self._find(data)
