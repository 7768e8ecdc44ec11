"""RFC 3461 parameters as smtpd receives them; Hypothesis checks the xtext codec and that no
control character ever comes out of a parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfastmta.smtpd.dsnparams import (
    DsnParameterError,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    xtext_decode,
    xtext_encode,
)


@pytest.mark.parametrize("value, expected", [
    ("NEVER", "NEVER"),
    ("never", "NEVER"),
    ("SUCCESS", "SUCCESS"),
    ("delay,failure", "FAILURE,DELAY"),
    ("Failure,Success,DELAY", "SUCCESS,FAILURE,DELAY"),
    ("FAILURE,FAILURE", "FAILURE"),
])
def test_notify_normalized(value, expected):
    assert parse_notify(value) == expected


@pytest.mark.parametrize("value", ["", "NEVER,SUCCESS", "SUCCESS,NEVER", "FAILURE,", "SUCCESS DELAY",
                                   "ALWAYS", "FAILURE,,DELAY"])
def test_notify_refused(value):
    with pytest.raises(DsnParameterError) as caught:
        parse_notify(value)
    assert caught.value.reply == "501 5.5.4 Bad NOTIFY parameter syntax"


def test_ret():
    assert parse_ret("full") == "FULL"
    assert parse_ret("HDRS") == "HDRS"
    for bad in ("", "HEADERS", "FULL,HDRS"):
        with pytest.raises(DsnParameterError) as caught:
            parse_ret(bad)
        assert caught.value.reply == "501 5.5.4 Bad RET parameter syntax"


def test_envid_decoded():
    assert parse_envid("QQ314159+2B1") == "QQ314159+1"
    assert parse_envid("a+20b") == "a b"
    assert parse_envid("x" * 100) == "x" * 100


@pytest.mark.parametrize("value", ["", "x" * 101, "a=b", "a+2", "a+ZZ", "a+0D+0Ab", "a+00", "a+0A",
                                   "a+7F", "+C3+A9", "caf\u00e9"])
def test_envid_refused(value):
    with pytest.raises(DsnParameterError) as caught:
        parse_envid(value)
    assert caught.value.reply == "501 5.5.4 Bad ENVID parameter syntax"


@pytest.mark.parametrize("value, expected", [
    ("rfc822;bob@example.test", "rfc822;bob@example.test"),
    ("RFC822;a+2Bb@example.test", "rfc822;a+b@example.test"),
    ("rfc822;+22odd+20name+22@example.test", 'rfc822;"odd name"@example.test'),
    ("utf-8;j\\x{00F6}rg@example.test", "utf-8;j\u00f6rg@example.test"),
    ("utf-8;j\u00f6rg@example.test", "utf-8;j\u00f6rg@example.test"),
    ("x-local;box+3D1", "x-local;box=1"),
])
def test_orcpt_decoded(value, expected):
    assert parse_orcpt(value) == expected


@pytest.mark.parametrize("value", ["bob@example.test", ";bob@example.test", "rfc822;",
                                   "rfc 822;bob@x", "rfc822;bob+0D+0Ax@x", "rfc822;bob+00@x",
                                   "rfc822;b=b@x", "utf-8;a\\x{0D}b@x", "utf-8;a\\x{D800}@x",
                                   "utf-8;a\\x{110000}@x", "rfc822;+FF@x", "rfc822;" + "a" * 500])
def test_orcpt_refused(value):
    with pytest.raises(DsnParameterError) as caught:
        parse_orcpt(value)
    assert caught.value.reply == "501 5.5.4 Bad ORCPT parameter syntax"


def test_xtext_encode_known():
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("\u00e9") == "+C3+A9"
    assert xtext_decode("+c3+a9") == "\u00e9"  # lower-case hex is read leniently


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_xtext_round_trip(text):
    encoded = xtext_encode(text)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert xtext_decode(encoded) == text


_parsers = st.sampled_from([parse_notify, parse_ret, parse_envid, parse_orcpt])
_pieces = st.sampled_from(list("+=;,\\{}xX0aAdD") + ["\r", "\n", "\x00", "\u00e9"]
                         + [f"+{n:02X}" for n in (0, 10, 13, 9, 127)]
                         + ["rfc822;", "utf-8;", "\\x{0D}", "\\x{0A}", "\\x{00}", "FAILURE", "NEVER",
                            "FULL"])
_raw = st.lists(_pieces, max_size=12).map("".join)


@settings(max_examples=1000, deadline=None)
@given(_parsers, st.one_of(_raw, st.text(max_size=30)))
def test_no_control_character_gets_through(parser, value):
    try:
        result = parser(value)
    except DsnParameterError as error:
        assert error.reply.startswith("501 5.5.4 ")
        return
    assert not any(c in result for c in "\r\n\x00")
    assert all(ord(c) >= 32 and ord(c) != 127 for c in result)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_orcpt_of_any_encoded_address(address):
    value = "rfc822;" + xtext_encode(address)
    try:
        result = parse_orcpt(value)
    except DsnParameterError:
        assert any(ord(c) < 32 or ord(c) == 127 for c in address) or len(value) > 500
        return
    assert result == "rfc822;" + address
