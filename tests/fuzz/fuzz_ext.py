"""Atheris fuzz target for the ext/ parsers.

Run for a bounded time: python tests/fuzz/fuzz_ext.py -max_total_time=30
The first input byte picks the parser; each run checks the parser's
invariants, not only that it does not crash.
"""
import sys

import atheris

with atheris.instrument_imports():
    from pyfastmta._ext.headers import fold_header, scan_headers
    from pyfastmta._ext.smtpproto import SmtpServerParser, parse_path_argument

LINE_LIMIT = 32
SIZE_LIMIT = 200


class Recorder:
    def __init__(self, pause_on_noop):
        self.events = []
        self.parser = None
        self.pause_on_noop = pause_on_noop

    def on_command(self, verb, arg):
        self.events.append(("command", verb, arg))
        assert len(self.parser.peek(LINE_LIMIT)) <= LINE_LIMIT  # the improper pipelining quote
        if verb == b"DATA" and not self.parser.in_data:
            self.parser.start_data()
        return self.pause_on_noop and verb == b"NOOP"

    def on_line_too_long(self):
        self.events.append(("line_too_long",))

    def on_data_end(self, content, too_big, bare_newline):
        self.events.append(("data", content, too_big, bare_newline))


def run_parser(chunks, pause_on_noop):
    recorder = Recorder(pause_on_noop)
    parser = SmtpServerParser(recorder, line_length_limit=LINE_LIMIT,
                              message_size_limit=SIZE_LIMIT)
    recorder.parser = parser
    for chunk in chunks:
        parser.feed(chunk)
        while parser.paused:
            parser.resume()
        if not parser.in_data:
            assert parser.buffered <= LINE_LIMIT + 1, parser.buffered
        assert parser.received_size >= 0
    return recorder.events


def check_smtp_parser(provider):
    pause_on_noop = provider.ConsumeBool()
    cuts = [provider.ConsumeIntInRange(0, 16) for _ in range(provider.ConsumeIntInRange(0, 8))]
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    whole = run_parser([stream], pause_on_noop)
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(stream[pos:pos + size])
        pos += size
    chunks.append(stream[pos:])
    assert run_parser(chunks, pause_on_noop) == whole
    for event in whole:
        if event[0] == "data":
            content, too_big = event[1], event[2]
            assert len(content) <= SIZE_LIMIT and (not too_big or content == b"")
            assert content == b"" or content.endswith(b"\r\n")
            # Wire form: appending ".\r\n" must end the message exactly there.
            assert b"\r\n.\r\n" not in b"\r\n" + content
            assert b"\n" not in content.replace(b"\r\n", b"")


def check_path_parser(provider):
    keyword = b"FROM" if provider.ConsumeBool() else b"TO"
    status, address, params = parse_path_argument(provider.ConsumeBytes(200), keyword)
    assert status in (0, 1, 2, 3)
    if status:
        assert address is None and params == {}
        return
    for text in [address, *[v for v in params.values() if v is not None]]:
        assert not any(ch in text for ch in "\r\n\x00"), text
    for key in params:
        assert key and key == key.upper()


def check_header_scanner(provider):
    max_size = provider.ConsumeIntInRange(1, 64)
    content = provider.ConsumeBytes(provider.remaining_bytes())
    block = scan_headers(content, max_size)
    position = 0
    for i in range(len(block)):
        start, end = block.field_span(i)
        value_start, value_end = block.value_span(i)
        assert start == position and start <= value_start <= value_end <= end
        assert block.name(i) == content[start:start + len(block.name(i))]
        assert b"\n" not in block.value(i)
        assert block.find(block.name_lower(i)) <= i
        position = end
    assert block.header_end == position <= block.body_offset <= len(content)
    if len(block):
        name = block.name(0)
        value = block.value(0).replace(b"\r", b"")
        folded = fold_header(name, value, max_size + 10)
        refolded = scan_headers(folded)
        assert len(refolded) == 1 and refolded.value(0) == value.lstrip(b" \t")


CHECKS = [check_smtp_parser, check_path_parser, check_header_scanner]


def test_one_input(data):
    provider = atheris.FuzzedDataProvider(data)
    CHECKS[provider.ConsumeIntInRange(0, len(CHECKS) - 1)](provider)


if __name__ == "__main__":
    # Python-level coverage (the checks and their branches) guides the search;
    # the compiled parsers themselves are not instrumented.
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
