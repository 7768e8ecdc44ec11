"""cleanup's queued form, read back with Python's email package as the oracle."""

from __future__ import annotations

import email
import email.policy
import email.utils

import pytest
from hypothesis import given, settings, strategies as st

from pyfastmta.cleanup.message import CleanupSettings, Rejected, clean_message, received_header


class FakeConfig:
    """Only the values cleanup reads; the real table is tested in test_config."""

    values = {
        "myhostname": "mx.example.test",
        "mail_name": "pyfastmta",
        "hopcount_limit": 50,
        "header_size_limit": 102400,
        "always_add_missing_headers": False,
        "undisclosed_recipients_header": "",
        "message_drop_headers": ["bcc", "content-length", "resent-bcc", "return-path"],
        "content_filter": "",
    }

    def get(self, name):
        return self.values[name]


SETTINGS = CleanupSettings(FakeConfig(), None)


def clean(content: bytes, local: bool = True, recipients=("bob@example.test",)):
    return clean_message(
        content, settings=SETTINGS, queue_id="1A2B3C4D5E6F", sender="alice@example.org",
        recipients=list(recipients), helo="client.example.org", client_name="localhost",
        client_addr="127.0.0.1", protocol="ESMTP", local_client=local, now=1_790_000_000.0)


def parse(content: bytes):
    return email.message_from_bytes(content, policy=email.policy.compat32)


def test_received_comes_first_in_postfix_layout():
    result = clean(b"Subject: hi\r\nMessage-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   b"From: a@b\r\n\r\nbody\r\n")
    message = parse(result.content)
    assert list(message.keys())[0] == "Received"
    received = message["Received"]
    assert received.startswith("from client.example.org (localhost [127.0.0.1])\r\n\tby mx.example.test"
                               " (pyfastmta) with ESMTP id 1A2B3C4D5E6F\r\n\tfor <bob@example.test>; ")
    assert email.utils.parsedate_to_datetime(received.rsplit("; ", 1)[1].split(" (")[0]).timestamp() \
        == 1_790_000_000
    assert message.get_payload() == "body\r\n"
    assert result.message_id == "<x@y>"


def test_received_without_for_when_several_recipients():
    text = received_header(helo=None, client_name="unknown", client_addr="::1",
                           myhostname="h", mail_name="pyfastmta", protocol="SMTP", queue_id="AB",
                           recipients=["a@b", "c@d"], now=0)
    assert text.startswith("Received: from unknown (unknown [IPv6:::1])\r\n\tby h (pyfastmta) with SMTP id AB; ")
    assert "for <" not in text


def test_missing_headers_are_added_for_local_clients():
    result = clean(b"Subject: bare\r\n\r\nbody\r\n", local=True)
    message = parse(result.content)
    assert message["From"] == "alice@example.org"
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == 1_790_000_000
    assert message["Message-Id"] == "<20260921141320.1A2B3C4D5E6F@mx.example.test>"
    assert result.message_id == message["Message-Id"]
    assert message["Subject"] == "bare"
    assert message.get_payload() == "body\r\n"


def test_missing_headers_are_not_added_for_remote_clients():
    result = clean(b"Subject: bare\r\n\r\nbody\r\n", local=False)
    message = parse(result.content)
    assert message["From"] is None and message["Date"] is None and message["Message-Id"] is None
    assert result.message_id is None


def test_too_many_hops():
    hops = b"".join(b"Received: from h%d\r\n" % n for n in range(49))
    clean(hops + b"\r\nbody\r\n")
    with pytest.raises(Rejected) as rejected:
        clean(hops + b"Delivered-To: x@y\r\n\r\nbody\r\n")
    assert rejected.value.reply == "554 5.4.6 Too many hops"


def test_oversized_header_is_truncated_and_the_message_kept():
    big = b"X-Big: " + b"a" * 200_000 + b"\r\n"
    result = clean_message(
        b"Subject: s\r\n" + big + b"X-After: yes\r\n\r\nbody\r\n", settings=SETTINGS,
        queue_id="AB", sender="a@b", recipients=["c@d"], helo="h", client_name="unknown",
        client_addr="192.0.2.1", protocol="ESMTP", local_client=False, now=0)
    message = parse(result.content)
    assert message["Subject"] == "s"
    assert message["X-After"] == "yes"
    assert len(message["X-Big"]) < SETTINGS.header_size_limit
    assert message["X-Big"].startswith("aaaa")
    assert message.get_payload() == "body\r\n"


header_names = st.sampled_from(["Subject", "X-Tag", "Comments", "Keywords", "To", "Cc", "Reply-To"])
header_values = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=10),
       st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60), max_size=10),
       st.booleans())
def test_original_headers_and_body_survive(headers, body_lines, local):
    content = b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + b"\r\n" + \
        b"".join(line.encode() + b"\r\n" for line in body_lines)
    message = parse(clean(content, local=local).content)
    kept = [(k, v) for k, v in message.items() if k not in ("Received", "Date", "Message-Id", "From")]
    assert kept == [(n, v) for n, v in headers if n not in ("Date", "Message-Id", "From")]
    assert message.get_payload() == "".join(line + "\r\n" for line in body_lines)
