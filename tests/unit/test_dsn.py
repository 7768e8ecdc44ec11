"""Delivery status notices, read back with Python's email package (policy=default) as the oracle."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfastmta.bounce.dsn import (
    RecipientReport,
    build_dsn,
    notice_route,
    undeliverable_to_sender,
    wants_notice,
)

NOW = 1_790_000_000.0
ARRIVAL = NOW - 3600

ORIGINAL = (b"Received: from client.example.org (localhost [127.0.0.1])\r\n"
            b"\tby mx.example.test (pyfastmta) with ESMTP id 0A1B2C3D4E5F600\r\n"
            b"Subject: quarterly report\r\n"
            b"From: Alice <alice@example.org>\r\n"
            b"To: bob@example.net\r\n"
            b"Message-ID: <m1@example.org>\r\n"
            b"\r\n"
            b"Hello Bob,\r\n"
            b"..a line that starts with a dot, stuffed as it came in\r\n"
            b"..\r\n"
            b"the end\r\n")


def unstuff(wire: bytes) -> bytes:
    """What an SMTP receiver makes of the wire form (RFC 5321 4.5.2), written independently."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def failed(address="bob@example.net", **fields) -> RecipientReport:
    values = {"action": "failed", "status": "5.1.1", "remote_mta": "mx.example.net",
              "diagnostic": "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected",
              "last_attempt": NOW - 5}
    values.update(fields)
    return RecipientReport(address=address, **values)


def build(**overrides) -> bytes:
    arguments = {"kind": "failure", "queue_id": "0A1B2C3D4E5F600", "sender": "alice@example.org",
                 "arrival_time": ARRIVAL, "envid": None, "ret": None, "recipients": [failed()],
                 "original": ORIGINAL, "myhostname": "mx.example.test", "mail_name": "pyfastmta",
                 "now": NOW, "message_id_domain": "mx.example.test"}
    arguments.update(overrides)
    return build_dsn(**arguments)


def parse(notice: bytes):
    return email.message_from_bytes(unstuff(notice), policy=email.policy.default)


def returned_part(notice: bytes) -> bytes:
    """The raw content of the third part, cut out of the unstuffed notice by its boundary."""
    text = unstuff(notice)
    boundary = parse(notice).get_boundary().encode()
    parts = text.split(b"\r\n--" + boundary)
    assert len(parts) == 5 and parts[4] == b"--\r\n"
    return parts[3].split(b"\r\n\r\n", 1)[1]


def assert_wire_form(notice: bytes) -> None:
    assert notice.endswith(b"\r\n") and not notice.endswith(b"\r\n.\r\n")
    assert notice.count(b"\r") == notice.count(b"\n") == notice.count(b"\r\n")
    assert b".\r\n" != notice[:3] and b"\r\n.\r\n" not in notice


def test_failure_notice_structure():
    notice = build(envid="envelope-17")
    assert_wire_form(notice)
    message = parse(notice)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert message["To"].addresses[0].addr_spec == "alice@example.org"
    assert message["Auto-Submitted"] == "auto-replied"
    assert "failed" in message["Subject"].lower()
    assert message["Date"].datetime.timestamp() == NOW
    assert message["Message-Id"].endswith("@mx.example.test>")
    text, status, original = message.get_payload()
    assert [part.get_content_type() for part in (text, status, original)] == \
        ["text/plain", "message/delivery-status", "message/rfc822"]
    human = text.get_content()
    assert "<bob@example.net>" in human and "550 5.1.1" in human and "mx.example.net" in human

    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["X-Pyfastmta-Queue-ID"] == "0A1B2C3D4E5F600"
    assert per_message["Original-Envelope-Id"] == "envelope-17"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL
    assert per_recipient["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.example.net"
    assert per_recipient["Diagnostic-Code"] == \
        "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected"
    assert "Original-Recipient" not in per_recipient and "Will-Retry-Until" not in per_recipient

    # The whole original, byte for byte as the sender wrote it (dot-stuffing undone).
    assert returned_part(notice) == unstuff(ORIGINAL)
    inner = original.get_payload()[0]
    assert inner["Subject"] == "quarterly report"
    assert inner.get_content() == \
        "Hello Bob,\r\n.a line that starts with a dot, stuffed as it came in\r\n.\r\nthe end\r\n"


def test_dot_lines_are_stuffed_again():
    notice = build()
    assert b"\r\n..a line that starts with a dot" in notice
    assert b"\r\n..\r\n" in notice


def test_ret_hdrs_returns_the_header_block():
    notice = build(ret="HDRS")
    original = parse(notice).get_payload()[2]
    assert original.get_content_type() == "text/rfc822-headers"
    header_block = ORIGINAL.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert returned_part(notice) == header_block
    assert b"Hello Bob" not in notice


def test_ret_full_and_size_limit():
    assert parse(build(ret="FULL")).get_payload()[2].get_content_type() == "message/rfc822"
    large = ORIGINAL + b"x" * 100 + b"\r\n"
    over = parse(build(original=large, bounce_size_limit=len(ORIGINAL)))
    assert over.get_payload()[2].get_content_type() == "text/rfc822-headers"
    unlimited = parse(build(original=large, bounce_size_limit=0))
    assert unlimited.get_payload()[2].get_content_type() == "message/rfc822"


def test_delay_notice():
    report = RecipientReport(address="bob@example.net", action="delayed", status="4.4.1",
                             diagnostic="connect to mx.example.net[192.0.2.1]:25: Connection refused",
                             last_attempt=NOW - 60, will_retry_until=ARRIVAL + 5 * 86400)
    notice = build(kind="delay", ret="FULL", recipients=[report])
    message = parse(notice)
    assert "delayed" in message["Subject"].lower()
    text, status, original = message.get_payload()
    assert original.get_content_type() == "text/rfc822-headers"
    fields = status.get_payload()[1]
    assert fields["Action"] == "delayed" and fields["Status"] == "4.4.1"
    assert email.utils.parsedate_to_datetime(fields["Will-Retry-Until"]).timestamp() == \
        ARRIVAL + 5 * 86400
    assert fields["Diagnostic-Code"].startswith("X-Pyfastmta; connect to mx.example.net")
    assert "Remote-MTA" not in fields
    assert "Connection refused" in text.get_content()


def test_success_notice_with_orcpt():
    reports = [RecipientReport(address="bob@example.net", orcpt="rfc822;Bob.Smith@example.org",
                               action="delivered", status="2.0.0", remote_mta="mx.example.net",
                               diagnostic="smtp; 250 2.0.0 Ok: queued as 123"),
               RecipientReport(address="carol@example.net", action="relayed", status="2.0.0")]
    message = parse(build(kind="success", recipients=reports))
    assert "delivered" in message["Subject"].lower()
    blocks = message.get_payload()[1].get_payload()
    assert len(blocks) == 3
    assert blocks[1]["Original-Recipient"] == "rfc822;Bob.Smith@example.org"
    assert blocks[1]["Action"] == "delivered"
    assert blocks[2]["Final-Recipient"] == "rfc822; carol@example.net"
    assert blocks[2]["Action"] == "relayed"
    assert message.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert "Bob.Smith@example.org" in message.get_payload()[0].get_content()


def test_eight_bit_original_is_returned_intact():
    original = (b"Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\nd\xc3\xa9j\xc3\xa0 vu \xff\xfe\r\n")
    notice = build(original=original)
    assert_wire_form(notice)
    message = parse(notice)
    part = message.get_payload()[2]
    assert part.get_content_type() == "message/rfc822"
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert returned_part(notice) == original


def test_utf8_header_original_is_message_global():
    original = "Subject: caf\u00e9\r\nFrom: j\u00f6rg@example.org\r\n\r\nbody\r\n".encode()
    notice = build(original=original)
    assert parse(notice).get_payload()[2].get_content_type() == "message/global"
    assert returned_part(notice) == original
    headers = build(original=original, ret="HDRS")
    assert parse(headers).get_payload()[2].get_content_type() == "message/global-headers"


def test_utf8_recipient_uses_global_delivery_status():
    address = "j\u00f6rg@b\u00fccher.example"
    notice = build(sender="\u00e5sa@example.org",
                   recipients=[failed(address, orcpt="utf-8;" + address)])
    assert_wire_form(notice)
    # RFC 6532 headers are UTF-8: read them as text, which email's bytes parser does not.
    message = email.message_from_string(unstuff(notice).decode(), policy=email.policy.default)
    assert message.get_param("report-type") == "global-delivery-status"
    assert message["To"].addresses[0].addr_spec == "\u00e5sa@example.org"
    _text, status, _ = message.get_payload()
    assert status.get_content_type() == "message/global-delivery-status"
    assert parse(notice).get_payload()[0].get_content_charset() == "utf-8"
    assert f"<{address}>: not delivered" in parse(notice).get_payload()[0].get_content()
    # email does not split message/global-delivery-status into blocks: do it from the raw part.
    raw = unstuff(notice).split(b"Content-Type: message/global-delivery-status\r\n")[1]
    raw = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n--")[0]
    blocks = [email.message_from_bytes(block, policy=email.policy.default)
              for block in raw.split(b"\r\n\r\n")]
    assert blocks[0]["X-Pyfastmta-Sender"] == "utf-8; \u00e5sa@example.org"
    assert blocks[1]["Final-Recipient"] == f"utf-8; {address}"
    assert blocks[1]["Original-Recipient"] == f"utf-8;{address}"


def test_long_diagnostic_is_folded_and_unfolds_to_the_same_text():
    reply = "smtp; 550-5.7.1 " + " ".join(f"word{n}" for n in range(80))
    notice = build(recipients=[failed(diagnostic=reply), failed("carol@example.net")])
    assert max(len(line) for line in notice.split(b"\r\n")) <= 80
    blocks = parse(notice).get_payload()[1].get_payload()
    assert blocks[1]["Diagnostic-Code"] == reply
    assert blocks[2]["Final-Recipient"] == "rfc822; carol@example.net"


def test_control_characters_in_a_reply_never_break_a_line():
    reply = "smtp; 550 first line\r\n550 second\x00line\n.\r\nRCPT TO:<evil>"
    notice = build(recipients=[failed(diagnostic=reply)])
    assert_wire_form(notice)
    fields = parse(notice).get_payload()[1].get_payload()[1]
    assert "\n" not in fields["Diagnostic-Code"] and "second line" in fields["Diagnostic-Code"]


def test_bare_line_ends_in_the_original_become_crlf():
    notice = build(original=b"Subject: x\n\nline one\rline two\n.\n")
    assert_wire_form(notice)
    assert returned_part(notice) == b"Subject: x\r\n\r\nline one\r\nline two\r\n\r\n"


def test_boundary_does_not_occur_in_the_original():
    first = parse(build()).get_boundary()
    original = ORIGINAL + b"--" + first.encode() + b"--\r\n"
    message = parse(build(original=original))
    assert message.get_boundary() != first
    assert len(message.get_payload()) == 3


def test_null_sender_notice_goes_to_postmaster():
    message = parse(build(sender="", postmaster="postmaster@example.test"))
    assert message["To"].addresses[0].addr_spec == "postmaster@example.test"
    assert "null sender" in message.get_payload()[0].get_content()
    assert "X-Pyfastmta-Sender" not in message.get_payload()[1].get_payload()[0]


def test_notice_routes():
    route = notice_route("alice@example.org", "failure", myorigin="mx.example.test")
    assert (route.recipient, route.sender, route.double_bounce) == ("alice@example.org", "", False)
    double = notice_route("", "failure", myorigin="mx.example.test")
    assert (double.recipient, double.sender, double.double_bounce) == \
        ("postmaster@mx.example.test", "double-bounce@mx.example.test", True)
    assert notice_route("", "failure", myorigin="m.test",
                        bounce_2_notice_recipient="ops@example.org").recipient == "ops@example.org"
    assert notice_route("", "delay", myorigin="mx.example.test") is None
    assert notice_route("", "success", myorigin="mx.example.test") is None
    assert notice_route("Double-Bounce@MX.example.test", "failure", myorigin="mx.example.test") is None
    assert notice_route("double-bounce@elsewhere.test", "failure",
                        myorigin="mx.example.test").recipient == "double-bounce@elsewhere.test"
    with pytest.raises(ValueError):
        notice_route("a@b", "warning", myorigin="m.test")


def test_undeliverable_to_sender():
    assert undeliverable_to_sender("")
    assert undeliverable_to_sender("double-bounce")
    assert undeliverable_to_sender("double-bounce@mx.example.test", myorigin="mx.example.test")
    assert not undeliverable_to_sender("double-bounce@other.test", myorigin="mx.example.test")
    assert not undeliverable_to_sender("alice@example.org")


@pytest.mark.parametrize("notify, failure, delay, success", [
    (None, True, True, False),
    ("NEVER", False, False, False),
    ("SUCCESS", False, False, True),
    ("FAILURE,DELAY", True, True, False),
    ("SUCCESS,FAILURE", True, False, True),
])
def test_wants_notice(notify, failure, delay, success):
    assert [wants_notice(notify, kind) for kind in ("failure", "delay", "success")] == \
        [failure, delay, success]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="notice kind"):
        build(kind="bounce")
    with pytest.raises(ValueError, match="at least one recipient"):
        build(recipients=[])
    with pytest.raises(ValueError, match="action"):
        build(recipients=[failed(action="lost")])


_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_body = st.lists(_line, max_size=12)
_header = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}: [ -~]{0,30}", fullmatch=True)
_words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


def _stuffed(lines):
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.lists(_header, max_size=5), body=_body,
       kind=st.sampled_from(["failure", "delay", "success"]),
       ret=st.sampled_from([None, "FULL", "HDRS"]), diagnostic=_words, address=_words,
       remote=st.one_of(st.none(), _words),
       envid=st.one_of(st.none(), st.from_regex(r"[!-~]{1,20}", fullmatch=True)))
def test_any_notice_is_clean_wire_form(headers, body, kind, ret, diagnostic, address, remote, envid):
    source = [h.encode() for h in headers] + [b""] + body
    original = _stuffed(source)
    report = RecipientReport(address=address or "x@y", action="failed", status="5.0.0",
                             diagnostic=diagnostic or None, remote_mta=remote,
                             will_retry_until=NOW + 10)
    notice = build(kind=kind, ret=ret, original=original, recipients=[report], envid=envid)
    assert_wire_form(notice)
    assert all(line != b"." for line in notice.split(b"\r\n"))
    assert all(len(line) <= 998 for line in notice.split(b"\r\n"))
    message = parse(notice)
    assert message.get_content_type() == "multipart/report"
    assert len(message.get_payload()) == 3
    wanted = unstuff(original) if kind == "failure" and ret != "HDRS" else \
        b"".join(line + b"\r\n" for line in source[:len(headers)])
    assert returned_part(notice) == wanted


@pytest.mark.parametrize("line", [b".", b"..", b"...", b". x"])
def test_original_line_of_dots(line):
    original = b"Subject: dots\r\n\r\n" + b"." + line + b"\r\n"
    notice = build(original=original)
    assert_wire_form(notice)
    assert returned_part(notice) == b"Subject: dots\r\n\r\n" + line + b"\r\n"
    assert re.search(rb"\r\n\." + re.escape(line) + rb"\r\n", notice)
