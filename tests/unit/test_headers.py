"""Tests of pyfastmta._ext.headers: golden header blocks, the email package as oracle.

Golden files: tests/golden/headers/NAME.in is message content written as
text with Python escapes (\\r \\n \\x20 ...; the file's own newlines are not
content). Lines starting with "#" are comments; "%max_header_size N" sets the
limit. NAME.ref lists the fields and offsets. To add a case, write the .in
file, run with PYFASTMTA_UPDATE_GOLDEN=1, and check the .ref by hand.
"""
import email.parser
import email.policy
import os
import pathlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfastmta._ext.headers import HeaderBlock, fold_header, scan_headers

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent.parent / "golden" / "headers"
UPDATE_GOLDEN = os.environ.get("PYFASTMTA_UPDATE_GOLDEN") == "1"


def escape(data: bytes) -> str:
    return data.decode("latin-1").encode("unicode_escape").decode("ascii")


def unescape(text: str) -> bytes:
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def read_golden_input(path):
    options, content = {}, bytearray()
    for line in path.read_text("ascii").splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("%"):
            key, value = line[1:].split(None, 1)
            options[key] = int(value)
        else:
            content += unescape(line)
    return bytes(content), options


def render(block, content):
    out = []
    for i in range(len(block)):
        field_start, field_end = block.field_span(i)
        value_start, value_end = block.value_span(i)
        out.append(f'field {i} name "{escape(block.name(i))}" value "{escape(block.value(i))}"')
        out.append(f"  field {field_start}..{field_end} value {value_start}..{value_end}"
                   f' raw "{escape(content[field_start:field_end])}"')
    out.append(f"header_end={block.header_end} body_offset={block.body_offset}"
               f" oversized={block.oversized}")
    out.append(f'body "{escape(content[block.body_offset:])}"')
    return "\n".join(out) + "\n"


GOLDEN_CASES = sorted(GOLDEN_DIR.glob("*.in"))


@pytest.mark.parametrize("path", GOLDEN_CASES, ids=[p.stem for p in GOLDEN_CASES])
def test_golden(path):
    content, options = read_golden_input(path)
    rendered = render(scan_headers(content, **options), content)
    ref = path.with_suffix(".ref")
    if UPDATE_GOLDEN:
        ref.write_text(rendered, "ascii")
    assert rendered == ref.read_text("ascii")


def test_golden_cases_exist():
    assert len(GOLDEN_CASES) >= 8


# ---------------------------------------------------------------- API

def test_lookup_and_counting():
    block = scan_headers(b"Received: a\r\nSubject: s\r\nreceived: b\r\nRECEIVED: c\r\n\r\n")
    assert block.find(b"received") == 0
    assert block.find(b"subject") == 1
    assert block.find(b"SUBJECT") == 1
    assert block.find(b"date") == -1
    assert block.find(b"") == -1
    assert block.count(b"received") == 3
    assert block.count(b"received", b"subject") == 4
    assert block.count() == 0
    assert [block.name_lower(i) for i in range(len(block))] == [b"received", b"subject",
                                                               b"received", b"received"]
    assert block.name(-1) == b"RECEIVED"
    with pytest.raises(IndexError):
        block.name(4)
    with pytest.raises(IndexError):
        block.value(-5)


def test_accepts_buffers_and_keeps_them_alive():
    data = bytearray(b"A: 1\r\n\r\nbody")
    block = scan_headers(memoryview(data))
    del data
    assert block.value(0) == b"1"
    assert scan_headers(b"").body_offset == 0 and len(scan_headers(b"")) == 0


def test_header_block_is_not_built_directly():
    with pytest.raises(TypeError):
        HeaderBlock()


def test_many_fields():
    content = b"".join(b"X-%d: v%d\r\n" % (i, i) for i in range(5000)) + b"\r\n"
    block = scan_headers(content)
    assert len(block) == 5000
    assert block.value(4999) == b"v4999"
    assert block.header_end == len(content) - 2


# ---------------------------------------------------------------- the email package as oracle

name_strategy = st.text(st.sampled_from([chr(c) for c in range(33, 127) if c != 58]),
                        min_size=1, max_size=12)
# Value text: anything but CR, LF (the email package splits lines at a bare CR too).
text_byte = st.sampled_from([bytes([c]) for c in range(256) if c not in (10, 13)])
value_text = st.lists(text_byte, max_size=15).map(b"".join)
wsp = st.sampled_from([b" ", b"\t", b"  ", b" \t"])
line_ending = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def header_fields(draw):
    name = draw(name_strategy).encode()
    first = draw(st.sampled_from([b"", b" ", b"\t", b"  "])) + draw(value_text)
    raw = name + b":" + first + draw(line_ending)
    for _ in range(draw(st.integers(0, 3))):
        raw += draw(wsp) + draw(value_text) + draw(line_ending)
    return raw


# A body line the email package does not take for a header line either. ("name :" is one for
# Postfix and the scanner, RFC 5322's obsolete syntax, but not for the email package.)
non_field_line = st.from_regex(rb"\A[a-z]{1,5} [ -~]{0,10}\Z").filter(
    lambda b: not b.startswith(b"From ") and not re.match(rb"[a-z]+ +:", b))


@st.composite
def messages(draw):
    fields = draw(st.lists(header_fields(), max_size=8))
    ending = draw(st.sampled_from(["empty line", "non-field line", "nothing"]))
    body = draw(st.lists(value_text, max_size=3).map(lambda lines: b"\r\n".join(lines)))
    if ending == "empty line":
        tail = draw(line_ending) + body
    elif ending == "non-field line":
        tail = draw(non_field_line) + draw(line_ending) + body
    else:
        tail = b""
    return b"".join(fields) + tail


def unfold(value: bytes) -> bytes:
    return re.sub(rb"\r?\n(?=[ \t])", b"", value)


@settings(max_examples=400, deadline=None)
@given(content=messages())
def test_fields_agree_with_email_package(content):
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        content, headersonly=True)
    expected = [(name.encode("ascii", "surrogateescape"),
                 unfold(value.encode("ascii", "surrogateescape")))
                for name, value in message.raw_items()]
    block = scan_headers(content)
    assert [(block.name(i), block.value(i)) for i in range(len(block))] == expected
    # With no Content-Transfer-Encoding, decode=True gives the body bytes as received.
    assert content[block.body_offset:] == (message.get_payload(decode=True) or b"")
    # Spans tile the header section.
    position = 0
    for i in range(len(block)):
        start, end = block.field_span(i)
        assert start == position
        position = end
    assert block.header_end == position


def test_oversized_field():
    field = b"X-Big: " + b"x" * 200 + b"\r\n"
    assert not scan_headers(field + b"\r\n", max_header_size=len(field)).oversized
    block = scan_headers(b"A: 1\r\n" + field + b"B: 2\r\n\r\n", max_header_size=len(field) - 1)
    assert block.oversized
    assert len(block) == 3


# ---------------------------------------------------------------- folding

@settings(max_examples=300, deadline=None)
@given(name=name_strategy, value=st.lists(text_byte, max_size=200).map(b"".join),
       width=st.integers(20, 100))
def test_fold_header_unfolds_to_the_original(name, value, width):
    folded = fold_header(name.encode(), value, width)
    assert folded.endswith(b"\r\n")
    assert unfold(folded[:-2]) == name.encode() + b": " + value
    lines = folded[:-2].split(b"\r\n")
    for line in lines[1:]:
        assert line[:1] in (b" ", b"\t")
        assert line.strip(b" \t"), "a folded line must not be whitespace only"
    for line in lines:
        if len(line) > width:
            # Only a single word too long for the width may overflow.
            assert len(re.findall(rb"[^ \t]+", line)) <= 1 or line is lines[0]
    block = scan_headers(folded + b"\r\n")
    assert len(block) == 1 and block.value(0) == value.lstrip(b" \t")


def test_fold_header_examples():
    assert fold_header(b"Subject", b"short") == b"Subject: short\r\n"
    assert fold_header(b"To", b"aaaa bbbb cccc", width=10) == b"To: aaaa\r\n bbbb cccc\r\n"
    assert fold_header(b"To", b"aaaa bbbb ccccc", width=10) == b"To: aaaa\r\n bbbb\r\n ccccc\r\n"
    assert fold_header(b"X", b"a " + b"w" * 30 + b" b", width=10) == (
        b"X: a\r\n " + b"w" * 30 + b"\r\n b\r\n")
    assert fold_header(b"X", b"a   ", width=3) == b"X: a   \r\n"
    assert fold_header(b"X", b"") == b"X: \r\n"
    with pytest.raises(ValueError):
        fold_header(b"Subject", b"evil\r\nBcc: x")
    with pytest.raises(ValueError):
        fold_header(b"Bad Name", b"v")
    with pytest.raises(ValueError):
        fold_header(b"", b"v")


def test_strided_buffers_are_refused():
    with pytest.raises(BufferError):
        scan_headers(memoryview(b"A: 1\r\n\r\n")[::2])
