"""Tests of pyfastmta._ext.smtpproto: golden sessions, Hypothesis properties, bounds.

Golden files: tests/golden/smtpproto/NAME.in is the byte stream a client
sends, written as text with Python escapes (\\r \\n \\x00 ...; the file's own
newlines are not part of the stream, so write \\r\\n explicitly). Lines
starting with "#" are comments; "%line_length_limit N", "%message_size_limit N"
and "%pause_on VERB" set up the parser. NAME.ref is the list of events. To add
a case, write the .in file, run with PYFASTMTA_UPDATE_GOLDEN=1, and check the
.ref it wrote by hand.
"""
import email.headerregistry
import email.utils
import os
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfastmta._ext.smtpproto import SmtpServerParser, parse_path_argument

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent.parent / "golden" / "smtpproto"
UPDATE_GOLDEN = os.environ.get("PYFASTMTA_UPDATE_GOLDEN") == "1"


def escape(data: bytes) -> str:
    return data.decode("latin-1").encode("unicode_escape").decode("ascii")


def unescape(text: str) -> bytes:
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


class Recorder:
    """Handler that records events; DATA starts data mode as an smtpd would after 354."""

    def __init__(self, pause_on=()):
        self.events = []
        self.parser = None
        self.pause_on = set(pause_on)
        self.command_hook = None  # replaces the default on_command behaviour when set

    def on_command(self, verb, arg):
        if self.command_hook is not None:
            return self.command_hook(verb, arg)
        self.events.append(("command", verb, arg))
        if verb == b"DATA":
            self.parser.start_data()
        return verb in self.pause_on

    def on_line_too_long(self):
        self.events.append(("line_too_long",))
        return "LONG" in self.pause_on

    def on_data_end(self, content, too_big, bare_newline):
        self.events.append(("data", content, too_big, bare_newline))
        return "DATA-END" in self.pause_on

    def on_line(self, line):
        self.events.append(("line", line))


def make_parser(pause_on=(), **limits):
    recorder = Recorder(pause_on)
    parser = SmtpServerParser(recorder, **limits)
    recorder.parser = parser
    return parser, recorder


def feed_chunks(parser, chunks):
    """Feeds chunks, resuming after each feed as an smtpd would once its work is done."""
    for chunk in chunks:
        parser.feed(chunk)
        while parser.paused:
            parser.resume()


def run_events(stream, chunk_sizes=None, pause_on=(), **limits):
    parser, recorder = make_parser(pause_on, **limits)
    if chunk_sizes is None:
        chunks = [stream]
    else:
        chunks, pos = [], 0
        for size in chunk_sizes:
            chunks.append(stream[pos:pos + size])
            pos += size
        chunks.append(stream[pos:])
    feed_chunks(parser, chunks)
    return recorder.events, parser


# ---------------------------------------------------------------- golden files

def read_golden_input(path):
    options, pause_on, stream = {}, [], bytearray()
    for line in path.read_text("ascii").splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("%"):
            key, value = line[1:].split(None, 1)
            if key == "pause_on":
                pause_on.append(value.strip().encode())
            else:
                options[key] = int(value)
        else:
            stream += unescape(line)
    return bytes(stream), options, pause_on


def render(events, parser):
    out = []
    for event in events:
        if event[0] == "command":
            out.append(f'command {escape(event[1])} "{escape(event[2])}"')
        elif event[0] == "line_too_long":
            out.append("line_too_long")
        else:
            _, content, too_big, bare_newline = event
            out.append(f"data size={len(content)} too_big={too_big} bare_newline={bare_newline}")
            *lines, unterminated = content.split(b"\r\n")
            out.extend(f"  |{escape(line)}" for line in lines)
            if unterminated:
                out.append(f"  |{escape(unterminated)} (no line ending)")
    out.append(f"end in_data={parser.in_data} buffered={parser.buffered}")
    return "\n".join(out) + "\n"


GOLDEN_CASES = sorted(GOLDEN_DIR.glob("*.in"))


@pytest.mark.parametrize("path", GOLDEN_CASES, ids=[p.stem for p in GOLDEN_CASES])
def test_golden(path):
    stream, options, pause_on = read_golden_input(path)
    events, parser = run_events(stream, pause_on=pause_on, **options)
    rendered = render(events, parser)
    ref = path.with_suffix(".ref")
    if UPDATE_GOLDEN:
        ref.write_text(rendered, "ascii")
    assert rendered == ref.read_text("ascii")
    # The same stream one byte at a time gives the same events.
    bytewise, parser = run_events(stream, [1] * len(stream), pause_on=pause_on, **options)
    assert render(bytewise, parser) == rendered


def test_golden_cases_exist():
    assert len(GOLDEN_CASES) >= 8


# ---------------------------------------------------------------- command mode

def test_command_splitting():
    events, _ = run_events(b"ehlo  client.example \t\r\nNoOp\nRSET\r\n\r\n  quit\r\n")
    assert events == [
        ("command", b"EHLO", b"client.example"),
        ("command", b"NOOP", b""),
        ("command", b"RSET", b""),
        ("command", b"", b""),
        ("command", b"QUIT", b""),
    ]


def test_read_line_hands_over_the_next_line_as_it_is():
    # An AUTH exchange: the client's responses are base64, where case matters.
    parser, recorder = make_parser(line_length_limit=20)

    def on_command(verb, arg):
        recorder.events.append(("command", verb, arg))
        if verb == b"AUTH":
            parser.read_line()

    recorder.command_hook = on_command
    feed_chunks(parser, [b"AUTH LOGIN\r\ndXNlcg==  \r\nnoop\r\nAUTH x\r\n" + b"Y" * 30 + b"\r\nquit\r\n"])
    assert recorder.events == [
        ("command", b"AUTH", b"LOGIN"), ("line", b"dXNlcg==  "), ("command", b"NOOP", b""),
        ("command", b"AUTH", b"x"), ("line_too_long",), ("command", b"QUIT", b""),
    ]
    with pytest.raises(TypeError, match="on_line"):
        SmtpServerParser(type("NoLines", (), {"on_command": None, "on_line_too_long": None,
                                              "on_data_end": None})()).read_line()


def test_line_limit_counts_bytes_without_line_ending():
    limit = 10
    events, _ = run_events(b"A" * limit + b"\r\n" + b"B" * limit + b"\n"
                           + b"C" * (limit + 1) + b"\r\n" + b"D" * limit + b"\r\r\n",
                           line_length_limit=limit)
    assert events == [("command", b"A" * limit, b""), ("command", b"B" * limit, b""),
                      ("line_too_long",), ("line_too_long",)]


def test_unterminated_command_buffering_is_bounded():
    limit = 2048
    parser, recorder = make_parser(line_length_limit=limit)
    chunk = b"x" * 65536
    for _ in range(160):  # 10 MB without a line feed
        parser.feed(chunk)
        assert parser.buffered <= limit
    parser.feed(b"\r\nNOOP\r\n")
    assert recorder.events == [("line_too_long",), ("command", b"NOOP", b"")]
    assert parser.buffered == 0


def test_partial_line_of_limit_plus_cr_is_kept():
    parser, recorder = make_parser(line_length_limit=4)
    parser.feed(b"ABCD\r")
    assert parser.buffered == 5
    parser.feed(b"\n")
    assert recorder.events == [("command", b"ABCD", b"")]


def test_pause_keeps_rest_and_resume_processes_it():
    parser, recorder = make_parser(pause_on=[b"MAIL"])
    data = bytearray(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nNO")
    parser.feed(data)
    data[:] = b"\xff" * len(data)  # the caller reuses its buffer
    assert parser.paused
    assert recorder.events == [("command", b"MAIL", b"FROM:<a@b>")]
    assert parser.buffered == len(b"RCPT TO:<c@d>\r\nNO")
    parser.feed(b"OP\r\n")  # only buffered while paused
    assert len(recorder.events) == 1
    parser.resume()
    assert not parser.paused
    assert recorder.events[1:] == [("command", b"RCPT", b"TO:<c@d>"), ("command", b"NOOP", b"")]
    assert parser.buffered == 0


def test_pause_after_data_end_keeps_following_commands():
    parser, recorder = make_parser(pause_on=["DATA-END"])
    parser.feed(b"DATA\r\nhello\r\n.\r\nQUIT\r\n")
    assert parser.paused and not parser.in_data
    assert recorder.events[-1] == ("data", b"hello\r\n", False, False)
    parser.resume()
    assert recorder.events[-1] == ("command", b"QUIT", b"")


def test_start_data_after_pause():
    """An smtpd may pause on DATA, check the session, then start data mode."""
    parser, recorder = make_parser()
    recorder.command_hook = lambda verb, arg: recorder.events.append((verb, arg)) or True
    parser.feed(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert parser.paused
    parser.start_data()
    parser.resume()  # pauses again at QUIT
    assert recorder.events == [(b"DATA", b""),
                               ("data", b"Subject: x\r\n\r\nbody\r\n", False, False),
                               (b"QUIT", b"")]


def test_start_data_outside_a_callback_takes_held_bytes_as_content():
    parser, recorder = make_parser()
    recorder.command_hook = lambda verb, arg: recorder.events.append((verb, arg))
    parser.feed(b"DATA\r\nx\r\n.\r\nQU")
    assert recorder.events == [(b"DATA", b""), (b"X", b""), (b".", b"")]
    recorder.events.clear()
    parser.feed(b"IT\r\n")
    assert recorder.events == [(b"QUIT", b"")]
    parser.feed(b"DATA\r\nline\r\n.\r\nQU")
    recorder.events.clear()
    # Not a supported order of calls for an smtpd, but still well defined:
    # the held partial line becomes message content.
    parser.start_data()
    parser.feed(b"IT\r\n.\r\nNOOP\r\n")
    assert recorder.events == [("data", b"QUIT\r\n", False, False), (b"NOOP", b"")]


def test_paused_buffer_is_bounded():
    parser, _ = make_parser(pause_on=[b"NOOP"], line_length_limit=100, message_size_limit=1000)
    parser.feed(b"NOOP\r\n")
    for _ in range(50):
        parser.feed(b"y" * 100)
    assert parser.buffered == 100 + 2 + 1000
    assert parser.overflowed


def test_discard_buffered_from_callback_drops_the_rest():
    parser, recorder = make_parser()

    def on_command(verb, arg):
        recorder.events.append((verb, arg))
        if verb == b"STARTTLS":
            parser.discard_buffered()

    recorder.command_hook = on_command
    parser.feed(b"STARTTLS\r\nMAIL FROM:<injected@example>\r\nRC")
    assert recorder.events == [(b"STARTTLS", b"")]
    assert parser.buffered == 0
    parser.feed(b"EHLO again\r\n")
    assert recorder.events[-1] == (b"EHLO", b"again")


def test_discard_buffered_while_paused():
    parser, recorder = make_parser(pause_on=[b"STARTTLS"])
    parser.feed(b"STARTTLS\r\nMAIL FROM:<injected@example>\r\n")
    assert parser.paused and parser.buffered > 0
    parser.discard_buffered()
    parser.resume()
    assert parser.buffered == 0
    assert recorder.events == [("command", b"STARTTLS", b"")]


def test_handler_exception_propagates_and_leaves_rest_buffered():
    parser, recorder = make_parser()

    def on_command(verb, arg):
        if verb == b"BOOM":
            raise ValueError("handler failed")
        recorder.events.append((verb, arg))

    recorder.command_hook = on_command
    with pytest.raises(ValueError):
        parser.feed(b"NOOP\r\nBOOM\r\nQUIT\r\n")
    assert parser.paused
    assert parser.buffered == len(b"QUIT\r\n")
    parser.resume()
    assert recorder.events == [(b"NOOP", b""), (b"QUIT", b"")]


def test_handler_exception_in_joined_line_does_not_duplicate_bytes():
    parser, recorder = make_parser()
    calls = []

    def on_command(verb, arg):
        calls.append(verb)
        if verb == b"BOOM":
            raise ValueError("handler failed")

    recorder.command_hook = on_command
    parser.feed(b"BO")
    with pytest.raises(ValueError):
        parser.feed(b"OM\r\nNOOP\r\n")
    assert parser.buffered == len(b"NOOP\r\n")
    parser.resume()
    assert calls == [b"BOOM", b"NOOP"]


def test_reentrant_feed_is_refused():
    parser, recorder = make_parser()
    recorder.command_hook = lambda verb, arg: parser.feed(b"NOOP\r\n")
    with pytest.raises(RuntimeError):
        parser.feed(b"HELO x\r\n")


def test_limits_are_settable():
    parser, recorder = make_parser()
    parser.message_size_limit = 5
    parser.line_length_limit = 8
    assert (parser.message_size_limit, parser.line_length_limit) == (5, 8)
    feed_chunks(parser, [b"123456789\r\nDATA\r\n123456\r\n.\r\n"])
    assert recorder.events == [("line_too_long",), ("command", b"DATA", b""),
                               ("data", b"", True, False)]
    with pytest.raises(ValueError):
        parser.line_length_limit = 0


def test_zero_message_size_limit_means_unlimited():
    events, _ = run_events(b"DATA\r\n" + b"x" * 5000 + b"\r\n.\r\n", message_size_limit=0)
    assert events[-1] == ("data", b"x" * 5000 + b"\r\n", False, False)


def test_message_at_exactly_the_size_limit_is_kept():
    events, _ = run_events(b"DATA\r\n12345678\r\n.\r\nDATA\r\n123456789\r\n.\r\n",
                           message_size_limit=10)
    assert events[1] == ("data", b"12345678\r\n", False, False)
    assert events[3] == ("data", b"", True, False)


def test_large_message_in_small_chunks():
    body = b"".join(b"line %d with some text to make it longer\r\n" % i for i in range(50000))
    stream = b"DATA\r\n" + body + b".\r\nQUIT\r\n"
    parser, recorder = make_parser()
    feed_chunks(parser, [stream[i:i + 1400] for i in range(0, len(stream), 1400)])
    assert recorder.events[1] == ("data", body, False, False)
    assert recorder.events[2] == ("command", b"QUIT", b"")


# ---------------------------------------------------------------- Hypothesis

STREAM_PIECES = [b"DATA\r\n", b"DATA\n", b"NOOP\r\n", b"MAIL FROM:<a@b>\r\n", b"\r\n", b"\n",
                 b"\r", b".", b"..", b"\x00", b" ", b"x", b"Subject: y", b".\r\n",
                 b"\r\n.\r\n", b"y" * 40]
stream_strategy = st.lists(
    st.one_of(st.sampled_from(STREAM_PIECES), st.binary(max_size=8)), max_size=60
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=stream_strategy, cuts=st.lists(st.integers(0, 30), max_size=40),
       pause_on=st.sets(st.sampled_from([b"NOOP", b"DATA", "DATA-END", "LONG"])))
def test_any_split_gives_the_same_events(stream, cuts, pause_on):
    limits = {"line_length_limit": 24, "message_size_limit": 60}
    whole, whole_parser = run_events(stream, pause_on=pause_on, **limits)
    split, split_parser = run_events(stream, cuts, pause_on=pause_on, **limits)
    assert split == whole
    assert split_parser.buffered == whole_parser.buffered
    assert split_parser.in_data == whole_parser.in_data


def dot_stuffed(lines):
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


message_line = st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from(
    [b"", b".", b"..", b".x", b"\r", b"a\rb", b"\x00.", b" ."])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(message_line, max_size=30), cuts=st.lists(st.integers(1, 25), max_size=30))
def test_dot_stuffed_message_round_trips(lines, cuts):
    wire = dot_stuffed(lines)
    events, parser = run_events(b"DATA\r\n" + wire + b".\r\nQUIT\r\n", cuts)
    assert events == [("command", b"DATA", b""), ("data", wire, False, False),
                      ("command", b"QUIT", b"")]
    assert not parser.in_data and parser.buffered == 0


def reference_data_scan(stream):
    """Obvious model of data mode: (content, bare_newline, consumed) or None if no end."""
    end = (b"\r\n" + stream).find(b"\r\n.\r\n")
    if end < 0:
        return None
    consumed = end + 3
    lines = stream[:end].split(b"\n")[:-1]  # the lines before the "." line, each ending in LF
    content, bare = [], False
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            bare = True
        if line.startswith(b"."):
            line = line[1:]
        if line.startswith(b"."):
            line = b"." + line
        content.append(line + b"\r\n")
    return b"".join(content), bare, consumed


smuggling_alphabet = st.lists(st.sampled_from([b"\r", b"\n", b".", b"\x00", b"a", b"\r\n",
                                               b"\n.\r\n", b"\r\n.", b".\r\n"]),
                              max_size=40).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(stream=smuggling_alphabet | st.binary(max_size=60), cuts=st.lists(st.integers(1, 9)))
def test_end_of_data_only_at_crlf_dot_crlf(stream, cuts):
    parser, recorder = make_parser()
    parser.feed(b"DATA\r\n")
    recorder.events.clear()
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(stream[pos:pos + size])
        pos += size
    chunks.append(stream[pos:])
    feed_chunks(parser, chunks)
    expected = reference_data_scan(stream)
    if expected is None:
        assert parser.in_data
        assert not [e for e in recorder.events if e[0] == "data"]
        return
    content, bare, consumed = expected
    assert recorder.events[0] == ("data", content, False, bare)
    assert b"\r\n.\r\n" not in b"\r\n" + content
    # What follows the end of data is parsed as commands.
    rest, _ = run_events(stream[consumed:])
    assert recorder.events[1:] == rest


def reference_received_size(stream):
    """Postfix's count of a message cut short: its whole lines, without the stuffing dot, each
    line ending counted as two bytes."""
    size = 0
    for line in stream.split(b"\n")[:-1]:
        if line.endswith(b"\r"):
            line = line[:-1]
        size += len(line[1:] if line.startswith(b".") else line) + 2
    return size


@settings(max_examples=500, deadline=None)
@given(stream=smuggling_alphabet | st.binary(max_size=60), cuts=st.lists(st.integers(1, 9)))
def test_received_size_counts_as_postfix(stream, cuts):
    expected = reference_data_scan(stream)
    if expected is not None:
        stream = stream[:expected[2] - 1]  # the end of data, less its last byte
    parser, recorder = make_parser()
    feed_chunks(parser, [b"DATA\r\n"] + [stream[sum(cuts[:i]):sum(cuts[:i + 1])]
                                          for i in range(len(cuts))] + [stream[sum(cuts):]])
    assert parser.in_data
    assert parser.received_size == reference_received_size(stream)


def test_received_size_of_a_message_too_big_is_what_was_stored():
    parser, recorder = make_parser(message_size_limit=10)
    parser.feed(b"DATA\r\n" + b"x" * 30 + b"\r\nyy")
    assert parser.received_size == 34
    parser.feed(b"\r\n.\r\n")
    assert not parser.in_data and parser.received_size == 0


command_line = st.sampled_from([b"NOOP\r\n", b"RSET\n", b"MAIL FROM:<a@b>\r\n", b"X\r\n", b"\r\n"])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(command_line, min_size=1, max_size=12), cuts=st.lists(st.integers(1, 12)),
       pause_on=st.sets(st.sampled_from([b"NOOP", b"RSET"])), limit=st.integers(1, 40))
def test_peek_sees_what_was_sent_after_the_command(lines, cuts, pause_on, limit):
    """From a command's callback, peek gives the bytes after that command line that have been
    received so far, however the input was split and paused."""
    stream = b"".join(lines)
    ends = [sum(len(line) for line in lines[:i + 1]) for i in range(len(lines))]
    parser, recorder = make_parser(pause_on)
    received = 0
    seen = []

    def hook(verb, arg):
        end = ends[len(seen)]
        seen.append((parser.peek(limit), stream[end:received][:limit]))
        return verb in pause_on

    recorder.command_hook = hook
    position = 0
    for size in cuts + [len(stream)]:
        chunk = stream[position:position + size]
        position += len(chunk)
        received = position
        parser.feed(chunk)
        while parser.paused:
            parser.resume()
    assert len(seen) == len(lines)
    for peeked, expected in seen:
        assert peeked == expected
    assert parser.peek(limit) == b""


def test_data_after_bare_lf_data_command_needs_a_real_crlf():
    events, parser = run_events(b"DATA\n.\r\nMAIL FROM:<x@y>\r\n")
    assert parser.in_data and events == [("command", b"DATA", b"")]


# ---------------------------------------------------------------- paths

@pytest.mark.parametrize("arg, keyword, expected", [
    (b"FROM:<a@example.com>", b"FROM", (0, "a@example.com", {})),
    (b"from:<a@example.com>", b"FROM", (0, "a@example.com", {})),
    (b"FROM: <a@example.com>", b"FROM", (0, "a@example.com", {})),
    (b"FROM:<>", b"FROM", (0, "", {})),
    (b"FROM:<> SIZE=100 BODY=8BITMIME", b"FROM", (0, "", {"SIZE": "100", "BODY": "8BITMIME"})),
    (b"TO:<@a.example,@b.example:u@c.example>", b"TO", (0, "u@c.example", {})),
    (b'TO:<"a b>c"@d>', b"TO", (0, '"a b>c"@d', {})),
    (b'TO:<"a\\"b"@d>', b"TO", (0, '"a\\"b"@d', {})),
    (b"FROM:user@example.com", b"FROM", (0, "user@example.com", {})),
    (b"FROM:user@example.com SIZE=5", b"FROM", (0, "user@example.com", {"SIZE": "5"})),
    (b"TO:<u@d> notify=SUCCESS,FAILURE orcpt=rfc822;u+40x@d smtputf8", b"TO",
     (0, "u@d", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;u+40x@d", "SMTPUTF8": None})),
    (b"FROM:<\xc3\xa9@example.com>", b"FROM", (0, "\xe9@example.com", {})),
    (b"FROM:<\xff@example.com>", b"FROM", (0, "\udcff@example.com", {})),
    (b"FROM:<a@b>  ", b"FROM", (0, "a@b", {})),
    # command syntax
    (b"", b"FROM", (1, None, {})),
    (b"FROM", b"FROM", (1, None, {})),
    (b"FROM:", b"FROM", (1, None, {})),
    (b"FROM:   ", b"FROM", (1, None, {})),
    (b"FROM <a@b>", b"FROM", (1, None, {})),
    (b"FROM :<a@b>", b"FROM", (1, None, {})),
    (b"TO:<a@b>", b"FROM", (1, None, {})),
    # address syntax
    (b"FROM:<a@b", b"FROM", (2, None, {})),
    (b"FROM:<a@b>x", b"FROM", (2, None, {})),
    (b'FROM:<"a@b>', b"FROM", (2, None, {})),
    (b"FROM:<a\r@b>", b"FROM", (2, None, {})),
    (b"FROM:<a\n@b>", b"FROM", (2, None, {})),
    (b"FROM:<a\x00@b>", b"FROM", (2, None, {})),
    (b'FROM:<"a\x00"@b>', b"FROM", (2, None, {})),
    (b"FROM:<a b@c>", b"FROM", (2, None, {})),
    (b"FROM:<<a@b>>", b"FROM", (2, None, {})),
    (b"FROM:a b@c", b"FROM", (2, None, {})),
    (b'FROM:"a b"@c', b"FROM", (2, None, {})),
    (b"FROM:a@b>", b"FROM", (2, None, {})),
    (b"FROM:a\x00@b", b"FROM", (2, None, {})),
    (b"TO:<@a:>", b"TO", (2, None, {})),
    (b"TO:<@:u@c>", b"TO", (2, None, {})),
    (b"TO:<@a,b:u@c>", b"TO", (2, None, {})),
    (b"TO:<@a>", b"TO", (2, None, {})),
    # parameter syntax
    (b"FROM:<a@b> =x", b"FROM", (3, None, {})),
    (b"FROM:<a@b> SI_ZE=1", b"FROM", (3, None, {})),
    (b"FROM:<a@b> ENVID=a\x00b", b"FROM", (3, None, {})),
    (b"FROM:<a@b> ENVID=a\rb", b"FROM", (3, None, {})),
    (b"FROM:<a@b> ENVID=a\nb", b"FROM", (3, None, {})),
    (b"FROM:<a@b> ENVID=a\tb", b"FROM", (3, None, {})),
    (b"FROM:<a@b> AUTH=\x7f", b"FROM", (3, None, {})),
])
def test_parse_path_argument(arg, keyword, expected):
    assert parse_path_argument(arg, keyword) == expected


def test_parse_path_argument_accepts_buffers():
    assert parse_path_argument(memoryview(b"TO:<a@b>"), bytearray(b"to")) == (0, "a@b", {})


atext = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCZ0123456789!#$%&'*+-/=?^_`{|}~"))
dot_atom = st.lists(st.text(atext, min_size=1, max_size=8), min_size=1, max_size=3).map(".".join)
quoted_local = st.text(st.sampled_from(list('ab .,@<>:;()[]"\\')), min_size=1, max_size=10).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
label = st.text(st.sampled_from(list("abcdefghijklmnopqrstuvwxyz0123456789")), min_size=1,
                max_size=10)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None)
@given(local=dot_atom | quoted_local, domain=domain,
       params=st.dictionaries(st.sampled_from(["SIZE", "BODY", "ENVID", "RET", "X-Y"]),
                              st.none() | st.text(atext, min_size=1, max_size=8), max_size=3))
def test_paths_agree_with_email_package(local, domain, params):
    address = f"{local}@{domain}"
    param_text = "".join(f" {k}" if v is None else f" {k}={v}" for k, v in params.items())
    status, parsed, parsed_params = parse_path_argument(
        f"FROM:<{address}>{param_text}".encode(), b"FROM")
    assert status == 0
    assert parsed == email.utils.parseaddr(f"<{address}>")[1]
    parsed_address = email.headerregistry.Address(addr_spec=parsed)
    assert parsed_address.domain == domain
    assert parsed_params == params


@settings(max_examples=200, deadline=None)
@given(local=dot_atom, domain=domain)
def test_bare_paths_agree_with_email_package(local, domain):
    address = f"{local}@{domain}"
    status, parsed, _ = parse_path_argument(f"TO:{address}".encode(), b"TO")
    assert status == 0
    assert parsed == email.headerregistry.Address(addr_spec=address).addr_spec
