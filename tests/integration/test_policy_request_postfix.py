"""The policy delegation requests that pyfastmta sends, against the ones Postfix itself sends:
the same dialog through a private Postfix and through pyfastmta, from a client outside
mynetworks, each MTA asking its own policy server at RCPT, DATA and END-OF-MESSAGE. Request by
request, the attribute names must be the same, and so must every value that is not each
server's own (ports, queue IDs, instance strings, the version)."""

from __future__ import annotations

import os
import shutil

import pytest

import pyfastmta
from peers.dialog import run_dialog
from peers.policyserver import PolicyServer
from peers.privatepostfix import PostfixInstance

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or not shutil.which("postfix", path="/usr/sbin:/usr/bin")),
    reason="a private Postfix needs root (`postfix start`) and Postfix installed (make sysdeps)")

OUTSIDE = "127.0.0.2"

COMMON = {
    "myhostname": "mx.example.test",
    "mydomain": "example.test",
    "myorigin": "mx.example.test",
    "mydestination": "localhost, mx.example.test",
    "mynetworks": "127.0.0.1/32",
    "smtpd_peername_lookup": "no",
}

DIALOG = [
    "EHLO client.example",
    "MAIL FROM:<s@client.example> SIZE=1234",
    "RCPT TO:<one@mx.example.test>",
    "RCPT TO:<two@mx.example.test>",
    "DATA",
    "MESSAGE",
    "MAIL FROM:<t@client.example>",
    "RCPT TO:<three@mx.example.test>",
    "RSET",
    "QUIT",
]

# Values that must be the same in both requests, whatever the server.
SAME_VALUES = [
    "request", "protocol_state", "protocol_name", "helo_name", "sender", "recipient",
    "recipient_count", "client_address", "client_name", "reverse_client_name", "size",
    "sasl_method", "sasl_username", "sasl_sender", "ccert_subject", "ccert_issuer",
    "ccert_fingerprint", "ccert_pubkey_fingerprint", "encryption_protocol", "encryption_cipher",
    "encryption_keysize", "etrn_domain", "stress", "policy_context", "server_address",
]
# Sent by Postfix 3.8 and later, as pyfastmta sends them; Debian's Postfix 3.7 does not.
NEWER_POSTFIX = {"compatibility_level", "mail_version"}


def settings(policy_port: int) -> dict[str, str]:
    policy = f"check_policy_service inet:127.0.0.1:{policy_port}"
    return {**COMMON,
            "smtpd_recipient_restrictions": f"{policy}, permit_mynetworks, reject_unauth_destination",
            "smtpd_data_restrictions": policy,
            "smtpd_end_of_data_restrictions": policy}


def transcript(port: int) -> list[str]:
    return run_dialog(port, OUTSIDE, DIALOG, lambda verb, lines: lines[0][:3])


@pytest.fixture(scope="module")
def postfix_requests():
    with PolicyServer(lambda request: "DUNNO") as policy:
        postfix = PostfixInstance(main_cf=settings(policy.port))
        try:
            postfix.start()
            replies = transcript(postfix.port)
            port = postfix.port
        finally:
            postfix.stop()
            postfix.remove()
        return replies, port, list(policy.requests)


def instance_groups(requests: list[dict[str, str]]) -> list[int]:
    """Which requests share an instance: the number of the first request with the same one."""
    first: dict[str, int] = {}
    return [first.setdefault(request["instance"], number) for number, request in enumerate(requests)]


def test_policy_requests_match_postfix(postfix_requests, make_mta):
    postfix_replies, postfix_port, theirs = postfix_requests
    with PolicyServer(lambda request: "DUNNO") as policy:
        mta = make_mta(settings(policy.port))
        assert transcript(mta.port) == postfix_replies
        ours = list(policy.requests)
    # Two recipients at RCPT, DATA, END-OF-MESSAGE; one recipient in the second transaction.
    assert [r["protocol_state"] for r in theirs] == ["RCPT", "RCPT", "DATA", "END-OF-MESSAGE", "RCPT"]
    assert [r["protocol_state"] for r in ours] == [r["protocol_state"] for r in theirs]
    for number, (mine, postfix) in enumerate(zip(ours, theirs)):
        where = f"request {number} ({postfix['protocol_state']})"
        assert sorted(set(mine) - NEWER_POSTFIX) == sorted(postfix), where
        assert (mine["compatibility_level"], mine["mail_version"]) == ("3.6", pyfastmta.__version__), where
        for name in SAME_VALUES:
            assert mine[name] == postfix[name], f"{where}: {name}={mine[name]!r}, Postfix {postfix[name]!r}"
        assert bool(mine["queue_id"]) == bool(postfix["queue_id"]), where
        assert mine["server_port"] == str(mta.port) and postfix["server_port"] == str(postfix_port), where
        assert mine["client_port"].isdigit() and postfix["client_port"].isdigit(), where
        assert set(postfix) - set(SAME_VALUES) == {"queue_id", "server_port", "client_port", "instance"}, where
    assert instance_groups(ours) == instance_groups(theirs) == [0, 0, 0, 0, 4]
