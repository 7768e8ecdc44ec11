"""Microbenchmarks: each compiled ext/ parser against a plain-Python version of it.

Run: .venv/bin/pytest bench/test_micro_ext.py --benchmark-enable
The plain versions here are straightforward Python with the same behaviour,
kept as the baseline the compiled code has to beat.
"""
import pytest

from pyfastmta._ext.headers import scan_headers
from pyfastmta._ext.smtpproto import SmtpServerParser, parse_path_argument

READ_SIZE = 65536


class PlainSmtpServerParser:
    """Command lines and the DATA stream, in Python (no pausing)."""

    def __init__(self, handler, line_length_limit=2048, message_size_limit=10240000):
        self.handler = handler
        self.line_length_limit = line_length_limit
        self.message_size_limit = message_size_limit
        self.pending = b""
        self.in_data = False
        self.skipping = False
        self.content = []
        self.size = 0
        self.too_big = False
        self.bare_newline = False
        self.prev_crlf = True

    def start_data(self):
        self.in_data = True
        self.content, self.size, self.too_big, self.bare_newline = [], 0, False, False

    def feed(self, data):
        data = self.pending + data
        pos = 0
        while True:
            lf = data.find(b"\n", pos)
            if lf < 0:
                break
            line = data[pos:lf]
            pos = lf + 1
            crlf = line.endswith(b"\r")
            if crlf:
                line = line[:-1]
            if self.in_data:
                self.data_line(line, crlf)
            elif self.skipping or len(line) > self.line_length_limit:
                self.skipping = False
                self.handler.on_line_too_long()
            else:
                self.prev_crlf = crlf
                verb, _, arg = line.strip(b" \t").partition(b" ")
                self.handler.on_command(verb.upper(), arg.strip(b" \t"))
        self.pending = data[pos:]
        if not self.in_data and len(self.pending) > self.line_length_limit + 1:
            self.pending, self.skipping = b"", True

    def data_line(self, line, crlf):
        if line == b"." and crlf and self.prev_crlf:
            self.in_data = False
            self.prev_crlf = True
            content = b"" if self.too_big else b"".join(self.content)
            self.handler.on_data_end(content, self.too_big, self.bare_newline)
            return
        self.prev_crlf = crlf
        if not crlf:
            self.bare_newline = True
        if line.startswith(b"."):
            line = line[1:]
        if line.startswith(b"."):
            line = b"." + line
        self.size += len(line) + 2
        if self.size > self.message_size_limit:
            self.too_big, self.content = True, []
        elif not self.too_big:
            self.content.append(line + b"\r\n")


def plain_parse_path_argument(arg, keyword):
    """MAIL/RCPT argument parsing for well-formed input, in Python."""
    head, _, rest = arg.partition(b":")
    if head.upper() != keyword:
        return 1, None, {}
    rest = rest.lstrip(b" ")
    if rest.startswith(b"<"):
        end = rest.find(b">")
        if end < 0:
            return 2, None, {}
        path, params_text = rest[1:end], rest[end + 1:]
    else:
        path, _, params_text = rest.partition(b" ")
    if path.startswith(b"@"):
        path = path.partition(b":")[2]
    params = {}
    for token in params_text.split():
        key, equals, value = token.partition(b"=")
        if not key or not key.replace(b"-", b"").isalnum():
            return 3, None, {}
        params[key.decode().upper()] = value.decode("utf-8", "surrogateescape") if equals else None
    return 0, path.decode("utf-8", "surrogateescape"), params


def plain_scan_headers(buf):
    """[(name, value_start, value_end)] and body offset, in Python."""
    fields, pos = [], 0
    while pos < len(buf):
        lf = buf.find(b"\n", pos)
        next_line = len(buf) if lf < 0 else lf + 1
        line = buf[pos:next_line].rstrip(b"\r\n")
        if not line and lf >= 0:
            return fields, next_line
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return fields, pos
            fields[-1][2] = pos + len(line)
        else:
            name, colon, _ = line.partition(b":")
            if not colon or not name or any(c < 33 or c > 126 for c in name):
                return fields, pos
            fields.append([name, pos + len(name) + 1, pos + len(line)])
        pos = next_line
    return fields, len(buf)


class Counter:
    def __init__(self):
        self.parser = None
        self.commands = self.messages = 0

    def on_command(self, verb, arg):
        self.commands += 1
        if verb == b"DATA":
            self.parser.start_data()

    def on_line_too_long(self):
        pass

    def on_data_end(self, content, too_big, bare_newline):
        self.messages += 1


def session_stream(messages=20, body_lines=2000):
    body = b"".join(b"Line %05d of the message body, long enough to be typical.\r\n" % i
                    for i in range(body_lines))
    one = (b"MAIL FROM:<sender@example.com> SIZE=%d\r\nRCPT TO:<a@example.net>\r\n"
           b"RCPT TO:<b@example.net>\r\nDATA\r\nSubject: bench\r\n\r\n" % len(body)
           + body + b".\r\n")
    stream = b"EHLO client.example\r\n" + one * messages + b"QUIT\r\n"
    return [stream[i:i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]


def run_session(parser_class, chunks):
    counter = Counter()
    parser = parser_class(counter)
    counter.parser = parser
    for chunk in chunks:
        parser.feed(chunk)
    return counter.messages


PARSERS = {"ext": SmtpServerParser, "plain": PlainSmtpServerParser}
PATH_PARSERS = {"ext": parse_path_argument, "plain": plain_parse_path_argument}
HEADER_SCANNERS = {"ext": scan_headers, "plain": plain_scan_headers}


@pytest.mark.parametrize("implementation", PARSERS)
def test_session_stream(benchmark, implementation):
    chunks = session_stream()
    benchmark.group = "smtp session (20 messages x 120 KB)"
    assert benchmark(run_session, PARSERS[implementation], chunks) == 20


@pytest.mark.parametrize("implementation", PARSERS)
def test_pipelined_commands(benchmark, implementation):
    stream = (b"RSET\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nNOOP\r\n") * 2000
    benchmark.group = "8000 pipelined commands"
    benchmark(run_session, PARSERS[implementation], [stream])


@pytest.mark.parametrize("implementation", PATH_PARSERS)
def test_path_argument(benchmark, implementation):
    parse = PATH_PARSERS[implementation]
    arg = b"FROM:<someone.long@mail.example.com> SIZE=123456 BODY=8BITMIME"
    benchmark.group = "MAIL FROM argument"
    assert benchmark(parse, arg, b"FROM")[1] == "someone.long@mail.example.com"


@pytest.mark.parametrize("implementation", HEADER_SCANNERS)
def test_header_scan(benchmark, implementation):
    header = b"".join(b"Received: from host%d.example.com by relay.example.net;\r\n"
                      b"\tMon, 1 Jan 2024 00:00:%02d +0000\r\n" % (i, i) for i in range(20))
    content = header + b"Subject: bench\r\nFrom: a@example.com\r\n\r\n" + b"body\r\n" * 1000
    benchmark.group = "header block of 22 fields"
    benchmark(HEADER_SCANNERS[implementation], content)
