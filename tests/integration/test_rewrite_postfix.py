"""Envelope and header rewriting against Postfix itself: the same main.cf rewriting settings and
tables, the same messages into a private Postfix and into pyfastmta, both relaying to smtp-sinks
that dump what they receive; each message's MAIL FROM and RCPT TO arguments must be the same, and
for the messages that bring their own headers, every header line but Received: must be the same,
byte for byte (what was rewritten, how it was folded, what was dropped or added, what was kept).

A scenario's Postfix runs once per module; pyfastmta runs for each event loop."""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from peers.loopback import free_port, start_smtp_sink, wait_until
from peers.privatepostfix import PostfixInstance

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or not shutil.which("postfix", path="/usr/sbin:/usr/bin")),
    reason="a private Postfix needs root (`postfix start`) and Postfix installed (make sysdeps)")

COMMON = {
    "myhostname": "mx.example.test",
    "mydomain": "example.test",
    "myorigin": "origin.example",
    "mydestination": "localhost, mx.example.test",
    "mynetworks": "127.0.0.0/8",
}

SCENARIOS = {
    "defaults": {
        "settings": {
            "recipient_delimiter": "+",
            "canonical_maps": "texthash:{dir}/canonical",
            "sender_canonical_maps": "texthash:{dir}/sender_canonical",
            "recipient_canonical_maps": "texthash:{dir}/recipient_canonical",
            "virtual_alias_maps": "texthash:{dir}/virtual",
            "masquerade_domains": "masq.example, !keep.masq.example",
            "masquerade_exceptions": "root",
        },
        "tables": {
            "canonical": "a@canon.example alpha@new.example\n"
                         "@domain.example @other.example\n"
                         "chain@canon.example chain2@canon.example\n"
                         "chain2@canon.example chained@new.example\n"
                         "self@canon.example self@canon.example\n"
                         "bare@canon.example justuser\n"
                         "localuser localuser-mapped@new.example\n"
                         "Mixed@Canon.Example mixed-new@new.example\n"
                         '"quoted user"@canon.example "new user"@new.example\n'
                         '"john.doe"@canon.example "needless"@new.example\n'
                         'quotedvalue@canon.example "john.smith"@new.example\n',
            "sender_canonical": "sc@canon.example sc-new@dest.example\n",
            "recipient_canonical": "rc@canon.example rc-new@dest.example\n"
                                   "a@canon.example rc-first@dest.example\n",
            "virtual": "list@virt.example x@dest.example, y@dest.example, list@virt.example\n"
                       "r1@virt.example r2@virt.example\n"
                       "r2@virt.example final@dest.example\n"
                       "dup@virt.example x@dest.example\n"
                       "@catch.example catch@dest.example\n"
                       "ext@virt.example ext-new@dest.example\n",
        },
        "messages": [
            ("sender@remote.example", ["a@canon.example", "a+tag@canon.example", "user@domain.example"]),
            ("user", ["chain@canon.example", "self@canon.example", "bare@canon.example"]),
            ("sc@canon.example", ["rc@canon.example", "Mixed@CANON.example"]),
            ("a@canon.example", ["list@virt.example", "r1@virt.example"]),
            ("u@host.masq.example", ["dup@virt.example", "list@virt.example"]),
            ("root@host.masq.example", ["someone@catch.example", "ext+more@virt.example"]),
            ("u@x.keep.masq.example", ["u@host.masq.example"]),
            ("site!bob", ["carol%remote.example", "remote!dave"]),
            ("", ["eve@remote.example", "localuser@localhost"]),
            ("trailing@remote.example.", ["frank@remote.example."]),
            # quoted local parts: a key in quotes, a needless pair of quotes, a quoted result
            ('"quoted user"@canon.example', ['"quoted user"@canon.example', '"john.doe"@canon.example',
                                             "quotedvalue@canon.example", '"jim.doe"@remote.example']),
        ],
    },
    "switched": {
        "settings": {
            "recipient_delimiter": "-",
            "canonical_maps": "texthash:{dir}/canonical",
            "canonical_classes": "envelope_recipient",
            "propagate_unmatched_extensions": "",
            "append_dot_mydomain": "yes",
            "swap_bangpath": "no",
            "allow_percent_hack": "no",
            "append_at_myorigin": "yes",
            "virtual_alias_maps": "texthash:{dir}/virtual",
            "masquerade_domains": "masq.example",
            "masquerade_classes": "envelope_sender, envelope_recipient",
        },
        "tables": {
            "canonical": "a@canon.example alpha@new.example\nowner-list@canon.example owner@new.example\n",
            "virtual": "v@virt.example w@dest.example\n",
        },
        "messages": [
            ("a@canon.example", ["a@canon.example", "a-tag@canon.example", "owner-list@canon.example"]),
            ("someone@host", ["u@host.masq.example", "v-x@virt.example", "plain@dotless"]),
            ("site!bob", ["carol%remote.example@relay.example"]),
        ],
    },
}


# Tables for the header scenarios: canonical hits with and without extensions, per-class tables,
# masquerading candidates.
HEADER_TABLES = {
    "canonical": "a@canon.example alpha@new.example\n"
                 '"quoted user"@canon.example "new user"@new.example\n'
                 '"john.doe"@canon.example "needless"@new.example\n'
                 'quotedvalue@canon.example "john.smith"@new.example\n'

                 "@domain.example @other.example\n"
                 "localuser localuser-mapped@new.example\n",
    "sender_canonical": "sc@canon.example sc-new@dest.example\n",
    "recipient_canonical": "rc@canon.example rc-new@dest.example\n",
}
HEADER_SETTINGS = {
    "recipient_delimiter": "+",
    "canonical_maps": "texthash:{dir}/canonical",
    "sender_canonical_maps": "texthash:{dir}/sender_canonical",
    "recipient_canonical_maps": "texthash:{dir}/recipient_canonical",
    "masquerade_domains": "masq.example, !keep.masq.example",
    "masquerade_exceptions": "root",
}
LONG_NAME = "Very Long Display Name " * 12
HEADER_MESSAGES = [
    # obsolete syntax: white space between a header name and its colon
    ("s@remote.example", ["r@dest.example"], "From : a@canon.example\r\nTo\t: rc@canon.example\r\n"),
    ("s@remote.example", ["r@dest.example"], "X-Foo : y\r\nComments\t: c\r\nFrom : x@dest.example\r\n"
     "Content-Type  : text/plain\r\nCc : y@dest.example\r\n"),
    # display names, canonical per class
    ("s@remote.example", ["r@dest.example"],
     'From: "Joe Q. Public" <a@canon.example>\r\nTo: rc@canon.example, Mary <rc@canon.example>\r\n'),
    # bare names get @myorigin; a phrase with a dot is written back Postfix's way
    ("s@remote.example", ["r@dest.example"], "From: Joe Q. Public <user>\r\nTo: localuser, other\r\n"),
    # comments, extensions, quoted local parts (a needlessly quoted one is rewritten too)
    ("s@remote.example", ["r@dest.example"],
     "From: user (The User)\r\nTo: a+tag@canon.example (Tagged)\r\n"
     'Cc: "quoted user"@canon.example, "john.doe"@remote.example\r\n'
     'Reply-To: "john.doe"@canon.example, quotedvalue@canon.example\r\n'),
    # groups
    ("s@remote.example", ["r@dest.example"],
     "To: group: a@canon.example, b@host.masq.example;, other@dest.example\r\n"
     "Cc: undisclosed-recipients:;\r\n"),
    # a long folded list, bare names and masquerade candidates among them
    ("s@remote.example", ["r@dest.example"],
     "To: one@dest.example, two@dest.example,\r\n three, four@host.masq.example,\r\n"
     "\tfive@dest.example, six@dest.example, seven@dest.example, eight@dest.example,\r\n"
     " nine@dest.example, ten@dest.example\r\nFrom: someone@dest.example\r\n"),
    # Resent- headers
    ("s@remote.example", ["r@dest.example"],
     "From: x@dest.example\r\nResent-From: sc@canon.example\r\nResent-Sender: a@canon.example\r\n"
     "Resent-To: rc@canon.example\r\nResent-Cc: x@host.masq.example\r\n"
     "Resent-Reply-To: u@host.masq.example\r\n"
     "Resent-Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nResent-Message-ID: <resent@test.example>\r\n"),
    # every other sender header, exceptions to masquerading, the local context's other forms
    ("s@remote.example", ["r@dest.example"],
     "From: x@dest.example\r\nReply-To: root@host.masq.example, u@x.keep.masq.example\r\n"
     "Errors-To: site!bob\r\nReturn-Receipt-To: carol%remote.example\r\n"
     "Sender: <@route.example:u@dest.example>\r\nDisposition-Notification-To: u@host.masq.example\r\n"
     "Mail-Followup-To: u@host.masq.example\r\nApparently-To: u@host.masq.example\r\n"),
    # nothing to rewrite: kept byte for byte, odd spacing and all
    ("s@remote.example", ["r@dest.example"],
     'From:   "Nice Name"   <someone@dest.example>  \r\nTo: x@dest.example   (a comment)\r\n'
     "Cc: (only a comment)\r\n"),
    # headers Postfix drops
    ("s@remote.example", ["r@dest.example"],
     "From: x@dest.example\r\nBcc: a@canon.example\r\nReturn-Path: <a@canon.example>\r\n"
     "Content-Length: 5\r\nResent-Bcc: x@dest.example\r\nTo: y@dest.example\r\n"
     "Resent-From: z@dest.example\r\nResent-Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
     "Resent-Message-ID: <resent8@test.example>\r\n"),
    # no From: it is added from the rewritten envelope sender
    ("sc@canon.example", ["r@dest.example"], "To: y@dest.example\r\n"),
    # comments around and inside addresses, quoted commas, domain literals, the null address
    ("s@remote.example", ["r@dest.example"],
     "From: (lead) user@domain.example (trail)\r\n"
     'To: <a@canon.example> (c1), "x, y" <b@domain.example>, c@[127.0.0.1], "" <>,\r\n'
     " d(inner)@dest.example\r\n"),
    # more than 250 characters of phrase: reduced to <address>
    ("s@remote.example", ["r@dest.example"],
     f'From: "{LONG_NAME}" <a@canon.example>\r\nTo: {LONG_NAME} <y@dest.example>, b@domain.example\r\n'),
    # percent hack with a domain, quoted local part with a space, case of names and domains
    ("s@remote.example", ["r@dest.example"],
     'FROM: A@Canon.Example\r\nto: user%remote.example@relay.example, "a b"@dest.example, '
     "U@HOST.Masq.Example\r\n"),
    # 8-bit and encoded-word phrases
    ("s@remote.example", ["r@dest.example"],
     "From: =?utf-8?q?J=C3=B6rg?= <a@canon.example>\r\nTo: \"J\xf6rg\" <localuser>\r\n"),
    # angle addresses next to each other, a route inside a list, a trailing dot, bare phrase words
    ("s@remote.example", ["r@dest.example"],
     "From: <a@canon.example> <b@domain.example>\r\n"
     "To: John Smith, <@r1.example,@r2.example:u@dest.example>, t@dest.example.\r\n"),
]

SCENARIOS.update({
    # A client that local_header_rewrite_clients names (127.0.0.1, permit_inet_interfaces).
    "headers_local": {"settings": HEADER_SETTINGS, "tables": HEADER_TABLES, "messages": HEADER_MESSAGES},
    # A client it does not name (mynetworks without 127.0.0.1, relay_domains lets the mail in):
    # remote_header_rewrite_domain is empty, so no header is touched and none is added.
    "headers_remote": {
        "settings": {**HEADER_SETTINGS, "mynetworks": "127.0.0.2/32",
                     "local_header_rewrite_clients": "permit_mynetworks", "relay_domains": "dest.example"},
        "tables": HEADER_TABLES,
        "messages": HEADER_MESSAGES,
    },
    # The same client with remote_header_rewrite_domain set: the "remote" context.
    "headers_remote_domain": {
        "settings": {**HEADER_SETTINGS, "mynetworks": "127.0.0.2/32",
                     "local_header_rewrite_clients": "permit_mynetworks", "relay_domains": "dest.example",
                     "remote_header_rewrite_domain": "rw.example"},
        "tables": HEADER_TABLES,
        "messages": HEADER_MESSAGES,
    },
})


def read_dumps(directory: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """X-Case → (MAIL FROM arguments, sorted RCPT TO arguments, header fields) of every dumped
    message; the header fields as received (folding kept, line ends as LF), without Received: and
    the sink's own X- lines."""
    found: dict[str, tuple[str, list[str], list[str]]] = {}
    sink_lines = ("x-client-addr:", "x-client-proto:", "x-helo-args:", "x-mail-args:", "x-rcpt-args:")
    for path in sorted(directory.iterdir()):
        mail, rcpts, case, fields = "", [], None, []
        text = path.read_bytes().decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        for line in text.split("\n"):
            if not line:
                break
            if line.startswith("X-Mail-Args: "):
                mail = line[len("X-Mail-Args: "):]
            elif line.startswith("X-Rcpt-Args: "):
                rcpts.append(line[len("X-Rcpt-Args: "):])
            elif line.startswith("X-Case: "):
                case = line[len("X-Case: "):]
            if line[0] in " \t" and fields:
                fields[-1] += "\n" + line
            else:
                fields.append(line)
        fields = [f for f in fields if not f.lower().startswith(("received:", *sink_lines))]
        if case is not None:
            previous = found.get(case, (mail, [], fields))
            found[case] = (mail, sorted(previous[1] + rcpts), fields)
    return found


class Sink:
    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="pyfastmta-rewrite-sink-"))
        self.directory.chmod(0o755)
        self.dump = self.directory / "dump"
        self.dump.mkdir()
        self.dump.chmod(0o777)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.process = start_smtp_sink(self.host, self.port, "-d", f"{self.dump}/%M.")

    def stop(self):
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def message_text(number: int, message) -> bytes:
    """The message of a case: its own header lines when it brings them (with Date and Message-ID,
    so that nothing else gets added), else a bare one."""
    if len(message) < 3:
        return f"X-Case: {number}\r\nSubject: case {number}\r\n\r\nbody\r\n".encode()
    return (f"X-Case: {number}\r\n{message[2]}Subject: case {number}\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <case{number}@test.example>\r\n"
            f"\r\nbody\r\n").encode("utf-8")


def send_all(host: str, port: int, messages) -> None:
    for number, message in enumerate(messages):
        sender, recipients = message[0], message[1]
        with smplib_client(host, port) as client:
            client.ehlo("client.example")
            code, text = client.mail(sender) if sender else client.docmd("MAIL FROM:<>")
            assert code == 250, (sender, text)
            for recipient in recipients:
                code, text = client.rcpt(recipient)
                assert code == 250, (recipient, text)
            code, text = client.data(message_text(number, message))
            assert code == 250, text


def smplib_client(host: str, port: int) -> smtplib.SMTP:
    return smtplib.SMTP(host, port, timeout=30)


def scenario_files(name: str) -> tuple[Path, dict[str, str]]:
    scenario = SCENARIOS[name]
    directory = Path(tempfile.mkdtemp(prefix=f"pyfastmta-rewrite-{name}-"))
    directory.chmod(0o755)
    for table, text in scenario["tables"].items():
        (directory / table).write_text(text)
        (directory / table).chmod(0o644)
    settings = {**COMMON, **{k: v.format(dir=directory) for k, v in scenario["settings"].items()}}
    return directory, settings


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def postfix_result(request):
    """(scenario name, what Postfix's sink received per case)."""
    name = request.param
    directory, settings = scenario_files(name)
    sink = Sink()
    postfix = PostfixInstance(relayhost=f"[{sink.host}]:{sink.port}",
                              main_cf={**settings, "smtpd_peername_lookup": "no"})
    messages = SCENARIOS[name]["messages"]
    try:
        postfix.start()
        send_all(postfix.host, postfix.port, messages)
        assert wait_until(lambda: len(read_dumps(sink.dump)) >= len(messages), 30), postfix.maillog_file.read_text()
        yield name, read_dumps(sink.dump)
    finally:
        postfix.stop()
        postfix.remove()
        sink.stop()
        shutil.rmtree(directory, ignore_errors=True)


def compared(messages, dumps) -> dict[str, tuple]:
    """What is compared per case: the envelope, and the header fields when the case brought its
    own headers (the others get a Date: and a Message-Id: of their own)."""
    return {case: (mail, rcpts, fields if len(messages[int(case)]) > 2 else None)
            for case, (mail, rcpts, fields) in dumps.items()}


def test_envelopes_and_headers_match_postfix(postfix_result, make_mta):
    name, dumps = postfix_result
    messages = SCENARIOS[name]["messages"]
    expected = compared(messages, dumps)
    directory, settings = scenario_files(name)
    sink = Sink()
    try:
        mta = make_mta({**settings, "relayhost": f"[{sink.host}]:{sink.port}",
                        "default_transport": "smtp", "relay_transport": "relay"})
        send_all(mta.host, mta.port, messages)
        assert wait_until(lambda: len(read_dumps(sink.dump)) >= len(messages), 30), mta.log_text()[-3000:]
        got = compared(messages, read_dumps(sink.dump))
        mismatches = {case: {"postfix": expected.get(case), "pyfastmta": got.get(case),
                             "sent": messages[int(case)]}
                      for case in sorted(set(expected) | set(got), key=int)
                      if expected.get(case) != got.get(case)}
        report = "".join(f"\ncase {case}, sent {m['sent']!r}:\n  postfix   {m['postfix']!r}"
                         f"\n  pyfastmta {m['pyfastmta']!r}" for case, m in mismatches.items())
        assert not mismatches, report
    finally:
        sink.stop()
        shutil.rmtree(directory, ignore_errors=True)
