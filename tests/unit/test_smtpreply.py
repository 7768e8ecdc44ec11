"""Tests of pyfastmta._ext.smtpreply: examples, bounds, and Hypothesis against a Python reference."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfastmta._ext.smtpreply import SmtpReplyParser


class Recorder:
    def __init__(self):
        self.events = []
        self.parser = None
        self.discard_after = None  # discard the rest when a reply with this code arrives
        self.raise_on = None

    def on_reply(self, code, lines):
        self.events.append(("reply", code, lines))
        if code == self.raise_on:
            raise LookupError(code)
        if code == self.discard_after:
            self.parser.discard_buffered()

    def on_bad_reply(self, line):
        self.events.append(("bad", line))


def parse(chunks, max_line=2048, max_lines=1000):
    recorder = Recorder()
    parser = SmtpReplyParser(recorder, max_line=max_line, max_lines=max_lines)
    recorder.parser = parser
    for chunk in chunks:
        parser.feed(chunk)
    return recorder.events, parser


def reference(data: bytes, max_line=2048, max_lines=1000):
    """The same rules written plainly: split at LF, drop one CR before it."""
    events, lines, code = [], [], None
    pieces = data.split(b"\n")
    for piece in pieces[:-1]:
        line = piece[:-1] if piece.endswith(b"\r") else piece
        if len(line) > max_line:
            events.append(("bad", line[:max_line]))
            lines, code = [], None
            continue
        ok = len(line) >= 3 and line[:3].isdigit() and (len(line) == 3 or line[3:4] in (b" ", b"-"))
        if not ok or (code is not None and int(line[:3]) != code) or len(lines) >= max_lines:
            events.append(("bad", line))
            lines, code = [], None
            continue
        lines.append(line[4:])
        if len(line) == 3 or line[3:4] == b" ":
            events.append(("reply", int(line[:3]), lines))
            lines, code = [], None
        else:
            code = int(line[:3])
    tail = pieces[-1]
    # A partial line is reported as soon as it is certainly too long.
    if len(tail) > max_line + 1:
        events.append(("bad", tail[:max_line]))
    return events


def test_single_and_multiline():
    events, _ = parse([b"220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"])
    assert events == [("reply", 220, [b"mx.example ESMTP"]),
                      ("reply", 250, [b"mx.example", b"PIPELINING", b"SIZE 1000"])]


def test_bare_lf_and_code_only_line():
    events, _ = parse([b"250\n354-go\n354 \n"])
    assert events == [("reply", 250, [b""]), ("reply", 354, [b"go", b""])]


def test_partial_reply_waits_for_last_line():
    events, parser = parse([b"250-one\r\n250-tw", b"o\r"])
    assert events == [] and parser.in_reply and parser.buffered == len(b"250-two\r")
    parser.feed(b"\n250 three\r\n")
    assert events == [("reply", 250, [b"one", b"two", b"three"])]


@pytest.mark.parametrize("line", [b"25 short", b"abc text", b"250_x", b"2500"])
def test_malformed_lines(line):
    events, _ = parse([line + b"\r\n250 ok\r\n"])
    assert events == [("bad", line), ("reply", 250, [b"ok"])]


def test_mixed_codes_drop_the_reply():
    events, _ = parse([b"250-a\r\n251 b\r\n220 c\r\n"])
    assert events == [("bad", b"251 b"), ("reply", 220, [b"c"])]


def test_long_line_is_reported_once_and_skipped():
    long = b"250 " + b"x" * 100
    events, parser = parse([long[:50], long[50:], long[50:], b"\r\n250 ok\r\n"], max_line=20)
    assert events == [("bad", long[:20]), ("reply", 250, [b"ok"])]
    assert parser.buffered == 0


def test_line_of_exactly_max_line_is_accepted():
    events, _ = parse([b"250 " + b"y" * 16, b"\r\n"], max_line=20)
    assert events == [("reply", 250, [b"y" * 16])]


def test_too_many_lines():
    events, _ = parse([b"250-a\r\n" * 3 + b"250 end\r\n"], max_lines=3)
    assert events == [("bad", b"250 end")]


def test_discard_from_callback_drops_the_rest():
    recorder = Recorder()
    parser = SmtpReplyParser(recorder)
    recorder.parser = parser
    recorder.discard_after = 220
    parser.feed(b"220 go ahead\r\n250 injected\r\n250-part")
    assert recorder.events == [("reply", 220, [b"go ahead"])]
    assert parser.buffered == 0 and not parser.in_reply
    parser.feed(b"250 after\r\n")
    assert recorder.events[-1] == ("reply", 250, [b"after"])


def test_exception_propagates_and_keeps_the_rest():
    recorder = Recorder()
    parser = SmtpReplyParser(recorder)
    recorder.raise_on = 421
    with pytest.raises(LookupError):
        parser.feed(b"42")
        parser.feed(b"1 bye\r\n250 next\r\n250 pa")
    recorder.raise_on = None
    parser.feed(b"rtial\r\n")
    assert recorder.events == [("reply", 421, [b"bye"]), ("reply", 250, [b"next"]),
                               ("reply", 250, [b"partial"])]


def test_feed_from_callback_is_refused():
    class Reentrant:
        def on_reply(self, code, lines):
            parser.feed(b"250 x\r\n")

        def on_bad_reply(self, line):
            pass

    parser = SmtpReplyParser(Reentrant())
    with pytest.raises(RuntimeError):
        parser.feed(b"250 ok\r\n")


line_st = st.one_of(
    st.builds(lambda code, sep, text: b"%d%s%s" % (code, sep, text),
              st.sampled_from([220, 250, 354, 421, 450, 550]), st.sampled_from([b" ", b"-", b""]),
              st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)
stream_st = st.lists(st.tuples(line_st, st.sampled_from([b"\r\n", b"\n"])), max_size=20).map(
    lambda items: b"".join(line + end for line, end in items))


@settings(max_examples=400)
@given(stream_st, st.data(), st.sampled_from([8, 16, 64]), st.sampled_from([2, 5, 1000]))
def test_random_splits_match_reference(data, draw, max_line, max_lines):
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    events, _ = parse(chunks, max_line=max_line, max_lines=max_lines)
    assert events == reference(data, max_line=max_line, max_lines=max_lines)
