"""Restrictions that ask the DNS (block and allow lists, reject_unknown_*, the _mx_/_ns_/_a_
access checks) and policy servers, against a real DNS server and real policy servers on
loopback. Replies and log lines are in Postfix's words (smtpd_check.c's texts)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peers.loopback import free_port, wait_until
from peers.policyserver import SILENT, PolicyServer

DNS_SERVER = Path(__file__).resolve().parent.parent / "peers" / "dnsserver.py"

ZONE = {
    "$negative_ttl": 300,
    # block list: 127.0.0.2 listed with a reason, 127.0.0.3 listed with a code the filter
    # =127.0.0.2 leaves out, 127.0.0.4's entry cannot be looked up
    "2.0.0.127.rbl.test": {"A": ["127.0.0.2"], "TXT": ["\"listed for testing\""]},
    "3.0.0.127.rbl.test": {"A": ["127.0.0.10"]},
    "4.0.0.127.rbl.test": "SERVFAIL",
    # allow list: 127.0.0.2 is on it too
    "2.0.0.127.wl.test": {"A": ["127.0.0.5"]},
    # right-hand-side list
    "spammer.test.rhsbl.test": {"A": ["127.0.0.2"]},
    # domains for reject_unknown_*_domain
    "good.test": {"MX": ["10 mx.good.test."]},
    "mx.good.test": {"A": ["127.0.0.1"]},
    "aonly.test": {"A": ["127.0.0.1"]},
    "nullmx.test": {"MX": ["0 ."]},
    "broken.test": "SERVFAIL",
    "helo.good.test": {"A": ["127.0.0.1"]},
    # mail exchangers and name servers for the access checks
    "mxchecked.test": {"MX": ["10 mx.badhost.test."]},
    "mx.badhost.test": {"A": ["127.0.0.66"]},
    "noMX.test": {"A": ["127.0.0.67"]},
    "nschecked.test": {"NS": ["ns1.badns.test."]},
    "sub.nschecked.test": {"A": ["127.0.0.1"]},
    "ns1.badns.test": {"A": ["127.0.0.68"]},
}

RECIPIENT_RESTRICTIONS = "smtpd_recipient_restrictions"


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lists-dns")
    zone = directory / "zone.json"
    zone.write_text(json.dumps(ZONE))
    stats = directory / "stats.json"
    server = subprocess.Popen([sys.executable, str(DNS_SERVER), "--listen", "127.0.0.1:0",
                               "--zone", str(zone), "--stats", str(stats)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1].rpartition(":")[2])
        yield f"127.0.0.1:{port}", stats
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def queries(stats: Path, name: str) -> int:
    if not stats.exists():
        return 0
    return json.loads(stats.read_text())["queries"].get(name, 0)


@pytest.fixture
def lists_mta(make_mta, dns):
    def make(settings: dict[str, str]):
        return make_mta({"dns_nameservers": dns[0], "mynetworks": "127.0.0.1/32", **settings})
    return make


def transaction(client, sender: str, recipient: str = "user@example.test") -> tuple[tuple, tuple]:
    assert client.command("EHLO client.example")[0] == 250
    return client.command(f"MAIL FROM:<{sender}>"), client.command(f"RCPT TO:<{recipient}>")


def test_block_list_refuses_a_listed_client_with_its_reason(lists_mta, connect, dns):
    mta = lists_mta({RECIPIENT_RESTRICTIONS: "reject_rbl_client rbl.test, reject_unauth_destination"})
    mail, rcpt = transaction(connect(mta, source="127.0.0.2"), "a@example.com")
    assert mail[0] == 250
    assert rcpt == (554, "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using "
                         "rbl.test; listed for testing")
    assert mta.logged("NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 554 5.7.1 Service unavailable; "
                      "Client host [127.0.0.2] blocked using rbl.test; listed for testing; "
                      "from=<a@example.com> to=<user@example.test> proto=ESMTP helo=<client.example>")
    # A client that is not listed (NXDOMAIN) gets through.
    assert transaction(connect(mta, source="127.0.0.9"), "a@example.com")[1][0] == 250


def test_reply_filter_and_lookup_failure(lists_mta, connect):
    mta = lists_mta({RECIPIENT_RESTRICTIONS: "reject_rbl_client rbl.test=127.0.0.2, "
                                             "reject_rbl_client rbl.test=127.0.0.[5..20], reject_unauth_destination"})
    # 127.0.0.3 is listed as 127.0.0.10: the second filter matches it, the first does not.
    rcpt = transaction(connect(mta, source="127.0.0.3"), "a@example.com")[1]
    assert rcpt == (554, "554 5.7.1 Service unavailable; Client host [127.0.0.3] blocked using rbl.test")
    # A list that cannot be asked gives the client the benefit of the doubt, with a warning.
    assert transaction(connect(mta, source="127.0.0.4"), "a@example.com")[1][0] == 250
    assert mta.logged("warning: 4.0.0.127.rbl.test: RBL lookup error:")


def test_answers_are_cached_per_worker(lists_mta, connect, dns):
    mta = lists_mta({RECIPIENT_RESTRICTIONS: "reject_rbl_client rbl.test, reject_unauth_destination",
                     "worker_count": "1"})
    before = queries(dns[1], "9.0.0.127.rbl.test A")
    for _ in range(5):
        client = connect(mta, source="127.0.0.9")
        assert transaction(client, "a@example.com")[1][0] == 250
        assert client.command("RCPT TO:<other@example.test>")[0] == 250
        client.close()
    # NXDOMAIN with a 300 s negative TTL: asked once for ten recipients in five sessions.
    assert queries(dns[1], "9.0.0.127.rbl.test A") - before == 1


def test_reply_templates(lists_mta, connect, tmp_path):
    replies = tmp_path / "rbl_replies"
    replies.write_text("rbl.test 550 5.7.1 $client_address is on $rbl_domain (${rbl_reason?$rbl_reason})\n")
    mta = lists_mta({RECIPIENT_RESTRICTIONS: "reject_rbl_client rbl.test, reject_unauth_destination",
                     "rbl_reply_maps": f"texthash:{replies}"})
    rcpt = transaction(connect(mta, source="127.0.0.2"), "a@example.com")[1]
    assert rcpt == (550, "550 5.7.1 127.0.0.2 is on rbl.test (listed for testing)")


def test_allow_list_comes_first_but_never_opens_the_relay(lists_mta, connect):
    mta = lists_mta({RECIPIENT_RESTRICTIONS: "permit_dnswl_client wl.test, reject_rbl_client rbl.test, "
                                             "reject_unauth_destination"})
    client = connect(mta, source="127.0.0.2")
    assert transaction(client, "a@example.com")[1][0] == 250
    # smtpd_relay_restrictions (defer_unauth_destination by default) come first.
    assert client.command("RCPT TO:<someone@elsewhere.example>") == (
        454, "454 4.7.1 <someone@elsewhere.example>: Relay access denied")


def test_right_hand_side_list_of_the_sender(lists_mta, connect):
    mta = lists_mta({"smtpd_sender_restrictions": "reject_rhsbl_sender rhsbl.test"})
    client = connect(mta, source="127.0.0.9")
    mail, rcpt = transaction(client, "x@spammer.test")
    assert mail[0] == 250  # smtpd_delay_reject: refused at RCPT
    assert rcpt == (554, "554 5.7.1 Service unavailable; Sender address [x@spammer.test] blocked "
                         "using rhsbl.test")
    client.command("RSET")
    assert transaction(client, "x@good.test")[1][0] == 250


@pytest.mark.parametrize("sender, reply", [
    ("a@good.test", None),
    ("a@aonly.test", None),
    ("a@missing.test", "450 4.1.8 <a@missing.test>: Sender address rejected: Domain not found"),
    ("a@nullmx.test", "550 5.7.27 <a@nullmx.test>: Sender address rejected: Domain nullmx.test "
                      "does not accept mail (nullMX)"),
    ("a@broken.test", "450 4.1.8 <a@broken.test>: Sender address rejected: Domain not found"),
    ("a@[127.0.0.1]", None),
    ("a@example.test", None),  # a local domain is never looked up
])
def test_unknown_sender_domain(lists_mta, connect, sender, reply):
    mta = lists_mta({"smtpd_sender_restrictions": "reject_unknown_sender_domain"})
    rcpt = transaction(connect(mta, source="127.0.0.9"), sender)[1]
    if reply is None:
        assert rcpt[0] == 250, rcpt
    else:
        assert rcpt == (int(reply[:3]), reply)


def test_temporary_failure_only_defers_what_would_be_permitted(lists_mta, connect):
    """defer_if_permit: a later reject wins over the deferral; with reject_tempfail_action =
    defer the answer is 450 at once."""
    mta = lists_mta({"smtpd_sender_restrictions": "reject_unknown_sender_domain",
                     RECIPIENT_RESTRICTIONS: "reject_unauth_destination"})
    client = connect(mta, source="127.0.0.9")
    transaction(client, "a@broken.test")
    assert client.command("RCPT TO:<x@elsewhere.example>") == (
        454, "454 4.7.1 <x@elsewhere.example>: Relay access denied")
    deferring = lists_mta({"smtpd_sender_restrictions": "reject_unknown_sender_domain, permit",
                           "unknown_address_tempfail_action": "defer"})
    rcpt = transaction(connect(deferring, source="127.0.0.9"), "a@broken.test")[1]
    assert rcpt == (450, "450 4.1.8 <a@broken.test>: Sender address rejected: Domain not found")


def test_unknown_recipient_domain_and_helo_hostname(lists_mta, connect):
    # relay_domains: the recipients pass the relay restrictions; a relay domain is looked up.
    mta = lists_mta({RECIPIENT_RESTRICTIONS: "reject_unknown_recipient_domain, permit",
                     "relay_domains": "missing.test, nullmx.test, good.test",
                     "smtpd_helo_restrictions": "reject_unknown_helo_hostname"})
    client = connect(mta, source="127.0.0.9")
    assert client.command("HELO helo.good.test")[0] == 250
    assert client.command("MAIL FROM:<a@good.test>")[0] == 250
    assert client.command("RCPT TO:<b@missing.test>") == (
        450, "450 4.1.2 <b@missing.test>: Recipient address rejected: Domain not found")
    assert client.command("RCPT TO:<b@nullmx.test>") == (
        556, "556 5.1.10 <b@nullmx.test>: Recipient address rejected: Domain nullmx.test does not "
             "accept mail (nullMX)")
    assert client.command("RCPT TO:<b@good.test>")[0] == 250
    other = connect(mta, source="127.0.0.9")
    assert other.command("HELO nowhere.test")[0] == 250
    assert other.command("MAIL FROM:<a@good.test>")[0] == 250
    assert other.command("RCPT TO:<b@good.test>") == (
        450, "450 4.7.1 <nowhere.test>: Helo command rejected: Host not found")


def test_unknown_client_hostname(lists_mta, connect):
    mta = lists_mta({"smtpd_client_restrictions": "reject_unknown_client_hostname"})
    rcpt = transaction(connect(mta, source="127.0.0.9"), "a@good.test")[1]
    assert rcpt == (450, "450 4.7.25 Client host rejected: cannot find your hostname, [127.0.0.9]")


@pytest.mark.parametrize("restriction, sender, refused", [
    ("check_sender_mx_access", "a@mxchecked.test", True),    # the MX host's domain is listed
    ("check_sender_mx_access", "a@noMX.test", True),         # its own MX: its address is listed
    ("check_sender_mx_access", "a@good.test", False),
    ("check_sender_ns_access", "a@sub.nschecked.test", True),  # the parent's name servers
    ("check_sender_a_access", "a@noMX.test", True),
    ("check_sender_a_access", "a@mxchecked.test", False),
    ("check_sender_mx_access", "a@[127.0.0.66]", True),      # an address literal is its own MX
])
def test_server_access_checks(lists_mta, connect, tmp_path, restriction, sender, refused):
    table = tmp_path / "servers"
    table.write_text("badhost.test REJECT bad mail exchanger\n127.0.0.67 REJECT bad address\n"
                     "127.0.0.66 REJECT bad mail exchanger address\nbadns.test REJECT bad name server\n")
    mta = lists_mta({"smtpd_sender_restrictions": f"{restriction} texthash:{table}"})
    rcpt = transaction(connect(mta, source="127.0.0.9"), sender)[1]
    if refused:
        assert rcpt[0] == 554 and rcpt[1].startswith(f"554 5.7.1 <{sender}>: Sender address rejected: bad"), rcpt
    else:
        assert rcpt[0] == 250, rcpt


def test_policy_service_is_asked_per_recipient(lists_mta, connect):
    def decide(request: dict[str, str]) -> str:
        local = request["recipient"].partition("@")[0]
        return {"refuse": "REJECT not for you", "later": "DEFER_IF_PERMIT come back later",
                "warn": "WARN looked odd"}.get(local, "DUNNO")

    with PolicyServer(decide) as policy:
        mta = lists_mta({RECIPIENT_RESTRICTIONS: f"check_policy_service inet:127.0.0.1:{policy.port}, "
                                                 "reject_unauth_destination"})
        client = connect(mta, source="127.0.0.9")
        transaction(client, "a@good.test", "fine@example.test")
        assert client.command("RCPT TO:<refuse@example.test>") == (
            554, "554 5.7.1 <refuse@example.test>: Recipient address rejected: not for you")
        assert client.command("RCPT TO:<later@example.test>") == (
            450, "450 4.7.1 <later@example.test>: Recipient address rejected: come back later")
        assert client.command("RCPT TO:<warn@example.test>")[0] == 250
        # The transaction has its queue id since its first recipient.
        assert mta.logged(": warn: RCPT from unknown[127.0.0.9]: looked odd; from=<a@good.test> "
                          "to=<warn@example.test>")
        asked = policy.requests
        assert [request["recipient"] for request in asked] == [
            "fine@example.test", "refuse@example.test", "later@example.test", "warn@example.test"]
        first = asked[0]
        assert first["request"] == "smtpd_access_policy" and first["protocol_state"] == "RCPT"
        assert first["protocol_name"] == "ESMTP" and first["helo_name"] == "client.example"
        assert first["client_address"] == "127.0.0.9" and first["sender"] == "a@good.test"
        assert first["client_name"] == "unknown" and first["server_port"] == str(mta.port)
        # One transaction, one instance; the connection to the server is kept.
        assert len({request["instance"] for request in asked}) == 1
        assert policy.connections <= 2  # one per worker at most


def test_policy_server_that_hangs_up_is_asked_again(lists_mta, connect):
    """A kept connection that the server closes instead of answering: the request goes again
    over a new connection, as smtpd_policy_service_try_limit allows."""
    answers = iter(["DUNNO", None, "REJECT asked twice"])
    with PolicyServer(lambda request: next(answers)) as policy:
        mta = lists_mta({RECIPIENT_RESTRICTIONS: f"check_policy_service inet:127.0.0.1:{policy.port}, "
                                                 "reject_unauth_destination", "worker_count": "1"})
        client = connect(mta, source="127.0.0.9")
        assert transaction(client, "a@good.test", "one@example.test")[1][0] == 250
        assert client.command("RCPT TO:<two@example.test>") == (
            554, "554 5.7.1 <two@example.test>: Recipient address rejected: asked twice")
        assert [request["recipient"] for request in policy.requests] == [
            "one@example.test", "two@example.test", "two@example.test"]
        assert policy.connections == 2


def test_policy_server_that_stays_silent_times_out(lists_mta, connect):
    """A request left unanswered past smtpd_policy_service_timeout is asked again, over a new
    connection; when every try times out, the default action stands in for the answer."""
    answers = iter([SILENT, "REJECT answered the second time", SILENT, SILENT])
    with PolicyServer(lambda request: next(answers)) as policy:
        mta = lists_mta({RECIPIENT_RESTRICTIONS: f"check_policy_service inet:127.0.0.1:{policy.port}, "
                                                 "reject_unauth_destination", "worker_count": "1",
                         "smtpd_policy_service_timeout": "1s", "smtpd_policy_service_try_limit": "2",
                         "smtpd_policy_service_retry_delay": "1s"})
        client = connect(mta, source="127.0.0.9")
        started = time.monotonic()
        assert transaction(client, "a@good.test", "one@example.test")[1] == (
            554, "554 5.7.1 <one@example.test>: Recipient address rejected: answered the second time")
        assert time.monotonic() - started >= 1.0
        assert "problem talking to server" not in mta.log_text()
        assert client.command("RCPT TO:<two@example.test>") == (
            451, "451 4.3.5 <two@example.test>: Recipient address rejected: Server configuration problem")
        assert mta.logged(f"warning: problem talking to server inet:127.0.0.1:{policy.port}: "
                          "timeout after 1s")
        assert [request["recipient"] for request in policy.requests] == [
            "one@example.test", "one@example.test", "two@example.test", "two@example.test"]
        assert policy.connections == 3  # a connection that timed out is not used again


def test_policy_service_on_a_unix_socket_under_the_queue_directory(lists_mta, connect):
    """unix:private/NAME is relative to the queue directory, as Postfix reads it."""
    mta = lists_mta({RECIPIENT_RESTRICTIONS: "check_policy_service unix:private/policy, "
                                             "reject_unauth_destination"})
    (mta.spool / "private").mkdir(exist_ok=True)
    path = mta.spool / "private" / "policy"
    with PolicyServer(lambda request: "REJECT asked over a unix socket", unix_path=str(path)) as policy:
        rcpt = transaction(connect(mta, source="127.0.0.9"), "a@good.test")[1]
        assert rcpt == (554, "554 5.7.1 <user@example.test>: Recipient address rejected: "
                             "asked over a unix socket")
        assert [request["recipient"] for request in policy.requests] == ["user@example.test"]


def test_policy_service_that_cannot_be_reached(lists_mta, connect):
    port = free_port()
    mta = lists_mta({RECIPIENT_RESTRICTIONS: f"check_policy_service inet:127.0.0.1:{port}, "
                                             "reject_unauth_destination",
                     "smtpd_policy_service_try_limit": "1"})
    rcpt = transaction(connect(mta, source="127.0.0.9"), "a@good.test")[1]
    assert rcpt == (451, "451 4.3.5 <user@example.test>: Recipient address rejected: "
                         "Server configuration problem")
    assert mta.logged(f"warning: problem talking to server inet:127.0.0.1:{port}")


def test_pipelined_commands_wait_for_the_answers(lists_mta, connect):
    """Commands pipelined behind one that waits for the DNS keep their order and get every reply."""
    with PolicyServer(lambda request: "DUNNO") as policy:
        mta = lists_mta({RECIPIENT_RESTRICTIONS: "reject_rbl_client rbl.test, "
                                                 f"check_policy_service inet:127.0.0.1:{policy.port}, "
                                                 "reject_unauth_destination"})
        client = connect(mta, source="127.0.0.2")
        assert client.command("EHLO client.example")[0] == 250
        client.send(b"MAIL FROM:<a@good.test>\r\nRCPT TO:<one@example.test>\r\n"
                    b"RCPT TO:<two@example.test>\r\nRSET\r\nMAIL FROM:<b@good.test>\r\nQUIT\r\n")
        codes = [client.reply()[0] for _ in range(6)]
        assert codes == [250, 554, 554, 250, 250, 221]
        # Listed: the list refused before the policy server was asked.
        assert policy.requests == []


def test_client_restrictions_at_connect_wait_for_the_dns(lists_mta, connect):
    mta = lists_mta({"smtpd_delay_reject": "no",
                     "smtpd_client_restrictions": "reject_rbl_client rbl.test"})
    client = connect(mta, source="127.0.0.2", greet=False)
    started = time.monotonic()
    assert client.reply() == (554, "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked "
                                   "using rbl.test; listed for testing")
    assert client.command("EHLO client.example") == (
        503, "503 5.7.0 Error: access denied for unknown[127.0.0.2]")
    assert time.monotonic() - started < 10
    good = connect(mta, source="127.0.0.9")
    assert good.command("EHLO client.example")[0] == 250


def test_configuration_errors_name_the_parameter(make_mta, dns):
    for value, problem in [("reject_rbl_client", "must be followed by a DNS list domain"),
                           ("reject_rbl_client rbl.test=127.0.0.[2..300]", 'bad octet "[2..300]"'),
                           ("check_policy_service tcp:127.0.0.1:1", "a policy service is inet:host:port"),
                           ("check_sender_mx_access notatable", "must be followed by a table")]:
        mta = make_mta({"dns_nameservers": dns[0], RECIPIENT_RESTRICTIONS: f"reject_unauth_destination, {value}"},
                       start=False)
        result = mta.cli("start", check=False)
        assert result.returncode != 0
        assert "main.cf" in result.stderr and problem in result.stderr, result.stderr
        assert not wait_until(lambda: mta.master_pid() is not None, 0.5)
