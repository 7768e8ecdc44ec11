"""Restriction lists: compile-time errors, evaluation semantics, access table key orders and
action parsing (the replies themselves are compared with Postfix in
tests/integration/test_restrictions_postfix.py)."""

from __future__ import annotations

import pytest

from pyfastmta.config import ConfigError, load_config
from pyfastmta.dns import Negative
from pyfastmta.smtpd import access
from pyfastmta.smtpd.lookups import A, Answers
from pyfastmta.smtpd.restrictions import CheckState, Request
from pyfastmta.smtpd.settings import SmtpdSettings

BASE = {
    "myhostname": "mx.example.test",
    "mydomain": "example.test",
    "mydestination": "localhost, mx.example.test",
    "mynetworks": "127.0.0.1/32",
    "relay_domains": "relay.example",
    "queue_directory": "spool",
}


def restrictions(tmp_path, **settings):
    values = {**BASE, **settings}
    (tmp_path / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    (tmp_path / "master.cf").write_text("127.0.0.1:2525 inet n - n - - smtpd\n")
    return SmtpdSettings(load_config(str(tmp_path))).restrictions


def outsider(**facts) -> Request:
    return Request(client_name="unknown", client_addr="127.0.0.2", in_mynetworks=False,
                   helo="client.example", sender="s@client.example", **facts)


@pytest.mark.parametrize("settings, message", [
    ({"smtpd_recipient_restrictions": "permit_everything"}, 'unknown restriction "permit_everything"'),
    ({"smtpd_client_restrictions": "check_client_access"}, "must be followed by a table"),
    ({"smtpd_client_restrictions": "check_client_access nosuchtype:/x"}, "unsupported dictionary type"),
    ({"smtpd_data_restrictions": "texthash:/nonexistent"}, "needs check_client_access"),
    ({"smtpd_relay_restrictions": "permit_mynetworks", "smtpd_recipient_restrictions": ""},
     "specify at least one working instance of"),
    ({"smtpd_restriction_classes": "missing"}, 'restriction class "missing" has no definition'),
])
def test_configuration_mistakes_name_the_parameter(tmp_path, settings, message):
    with pytest.raises(ConfigError) as raised:
        restrictions(tmp_path, **settings)
    assert message in str(raised.value)
    assert "main.cf" in str(raised.value)


def test_default_relay_restrictions_defer_foreign_and_routed_recipients(tmp_path):
    checks = restrictions(tmp_path)
    for recipient in ["u@foreign.example", "u%foreign.example@mx.example.test",
                      '"u@foreign.example"@mx.example.test', "foreign.example!u@mx.example.test",
                      "@mx.example.test:u@foreign.example", "u@[1.2.3.4]"]:
        verdict = checks.evaluate(checks.check_rcpt, outsider(recipient=recipient), CheckState())
        assert verdict.reply is not None and verdict.reply.startswith("454 4.7.1 <"), recipient
        assert verdict.reply.endswith(">: Relay access denied")
    for recipient in ["u@mx.example.test", "u@relay.example", "u@sub.relay.example", "postmaster", "u"]:
        assert checks.evaluate(checks.check_rcpt, outsider(recipient=recipient), CheckState()).reply is None, recipient
    inside = Request(client_name="unknown", client_addr="127.0.0.1", in_mynetworks=True,
                     sender="", recipient="u@foreign.example")
    assert checks.evaluate(checks.check_rcpt, inside, CheckState()).reply is None


def test_warn_if_reject_logs_instead_of_refusing(tmp_path):
    checks = restrictions(tmp_path, smtpd_client_restrictions="warn_if_reject, reject, reject")
    verdict = checks.evaluate(checks.check_rcpt, outsider(recipient="u@mx.example.test"), CheckState())
    # Only the restriction right after warn_if_reject is softened.
    assert verdict.reply == "554 5.7.1 <unknown[127.0.0.2]>: Client host rejected: Access denied"
    assert [what for what, _ in verdict.events] == ["reject_warning", "reject"]


def test_defer_if_permit_defers_what_would_pass_and_not_what_is_refused(tmp_path):
    checks = restrictions(tmp_path, smtpd_sender_restrictions="defer_if_permit")
    state = CheckState()
    ok = checks.evaluate(checks.check_rcpt, outsider(recipient="u@mx.example.test"), state)
    assert ok.reply == "450 4.7.0 <s@client.example>: Sender address rejected: defer_if_permit requested"
    refused = checks.evaluate(checks.check_rcpt, outsider(recipient="u@foreign.example"), state)
    assert refused.reply == "454 4.7.1 <u@foreign.example>: Relay access denied"


def test_defer_if_reject_turns_a_later_reject_into_a_deferral(tmp_path):
    checks = restrictions(tmp_path, smtpd_recipient_restrictions="defer_if_reject, reject")
    verdict = checks.evaluate(checks.check_rcpt, outsider(recipient="u@mx.example.test"), CheckState())
    assert verdict.reply == ("450 4.7.0 <u@mx.example.test>: Recipient address rejected: "
                             "defer_if_reject requested")


def test_delay_reject_no_checks_each_stage_alone(tmp_path):
    checks = restrictions(tmp_path, smtpd_delay_reject="no", smtpd_client_restrictions="reject")
    verdict = checks.evaluate(checks.check_client, outsider(), CheckState())
    assert verdict.reply == "554 5.7.1 <unknown[127.0.0.2]>: Client host rejected: Access denied"
    # At RCPT the client list is not run again.
    assert checks.evaluate(checks.check_rcpt, outsider(recipient="u@mx.example.test"), CheckState()).reply is None


def test_classes_and_table_results_that_are_restriction_lists(tmp_path):
    (tmp_path / "access").write_text("a@mx.example.test strict\nb@mx.example.test reject_non_fqdn_sender\n"
                                     "c@mx.example.test check_client_access texthash:/x\n")
    checks = restrictions(tmp_path, smtpd_restriction_classes="strict", strict="reject_non_fqdn_sender, reject",
                          smtpd_recipient_restrictions=f"check_recipient_access texthash:{tmp_path}/access")
    verdict = checks.evaluate(checks.check_rcpt, outsider(recipient="a@mx.example.test"), CheckState())
    assert verdict.reply == "554 5.7.1 <a@mx.example.test>: Recipient address rejected: Access denied"
    request = outsider(recipient="b@mx.example.test")
    request.sender = "s@nodots"
    assert checks.evaluate(checks.check_rcpt, request, CheckState()).reply == (
        "504 5.5.2 <s@nodots>: Sender address rejected: need fully-qualified address")
    # A table inside a table's result is a configuration error: 451, and a warning.
    verdict = checks.evaluate(checks.check_rcpt, outsider(recipient="c@mx.example.test"), CheckState())
    assert verdict.reply == "451 4.3.5 Server configuration error"
    assert verdict.events[0][0] == "warning"


class NothingCached:
    """A DNS cache that holds nothing: every DNS question goes back to the caller."""

    def cached_records(self, name, rdtype):
        return None


def test_a_check_resumes_where_it_stopped_for_answers(tmp_path):
    """A check that waits for the DNS and then a policy server (inside a restriction class)
    goes on from the restriction that asked: nothing before it runs again, so the table's
    actions and log lines are taken once."""
    (tmp_path / "access").write_text("u@relay.example PREPEND X-First: one\n"
                                     "127.0.0.2 WARN looked at\n")
    policy = "inet:127.0.0.1:9"
    checks = restrictions(
        tmp_path, smtpd_restriction_classes="ask_policy", ask_policy=f"check_policy_service {policy}",
        smtpd_recipient_restrictions=f"check_client_access texthash:{tmp_path}/access, "
                                     f"check_recipient_access texthash:{tmp_path}/access, "
                                     "reject_rbl_client rbl.example, ask_policy, "
                                     "permit_mynetworks, reject_unauth_destination")
    table = checks.tables[f"texthash:{tmp_path}/access"]
    searches = []
    search = table.search
    table.search = lambda keys: searches.append(keys[0]) or search(keys)
    sent = []
    request = outsider(recipient="u@relay.example", answers=Answers(NothingCached()),
                       policy_request=lambda *facts: sent.append(facts) or b"request=smtpd_access_policy\n\n")
    state = CheckState()

    first = checks.evaluate(checks.check_rcpt, request, state)
    assert first.pending == [("dns", "2.0.0.127.rbl.example", A)]
    assert state.prepend == ["X-First: one"] and len(searches) == 3
    request.answers.known[first.pending[0]] = Negative(nxdomain=True)

    second = checks.evaluate(checks.check_rcpt, request, state)
    assert [question[:2] for question in second.pending] == [("policy", policy)]
    assert len(searches) == 3 and len(sent) == 1
    request.answers.known[second.pending[0]] = "PREPEND X-Second: two"

    done = checks.evaluate(checks.check_rcpt, request, state)
    assert done.pending is None and done.reply is None
    assert state.prepend == ["X-First: one", "X-Second: two"]
    assert done.events == [("warn", "looked at")]
    assert len(searches) == 3 and len(sent) == 1 and request.walk is None


@pytest.mark.parametrize("helo, reply", [
    ("nodots", "504 5.5.2 <nodots>: Helo command rejected: need fully-qualified hostname"),
    ("bad_name!", "501 5.5.2 <bad_name!>: Helo command rejected: Invalid name"),
    ("[300.1.1.1]", "501 5.5.2 <[300.1.1.1]>: Helo command rejected: invalid ip address"),
    ("host.example.", None),
    ("[1.2.3.4]", None),
])
def test_helo_hostname_checks(tmp_path, helo, reply):
    checks = restrictions(tmp_path, smtpd_helo_restrictions="reject_invalid_helo_hostname, "
                                                            "reject_non_fqdn_helo_hostname")
    request = outsider(recipient="u@mx.example.test")
    request.helo = helo
    assert checks.evaluate(checks.check_rcpt, request, CheckState()).reply == reply


def test_client_key_order():
    assert access.domain_keys("a.b.example.com", True) == ["a.b.example.com", "b.example.com", "example.com", "com"]
    assert access.domain_keys("a.b.example", False) == ["a.b.example", ".b.example", ".example"]
    assert access.domain_keys("1.2.3.4", True) == ["1.2.3.4"]
    assert access.network_keys("192.0.2.10") == ["192.0.2.10", "192.0.2", "192.0", "192"]
    assert access.network_keys("2001:db8::1") == ["2001:db8::1", "2001:db8:", "2001:db8", "2001"]


def test_address_key_order():
    assert access.address_keys("user+ext@a.example.com", "+", True) == [
        "user+ext@a.example.com", "user@a.example.com", "a.example.com", "example.com", "com",
        "user+ext@", "user@"]
    assert access.address_keys("user@a.example", "", False) == ["user@a.example", "a.example", ".example", "user@"]


def test_action_parsing_and_enhanced_status_codes():
    def parse(value):
        return access.parse_action(value, reject_code=554, defer_code=450, split_list=str.split)
    assert parse("OK").kind == parse("relay").kind == parse("20240101").kind == "ok"
    reject = parse("REJECT 5.7.2 go away")
    assert (reject.code, reject.dsn, reject.text) == (554, "5.7.2", "go away")
    assert (parse("REJECT").dsn, parse("REJECT").text) == ("5.7.1", "Access denied")
    code = parse("450 come back")
    assert (code.kind, code.code, code.dsn, code.text) == ("reject", 450, "4.7.1", "come back")
    assert parse("450").kind == "ok"  # all digits: a time stamp, meaning OK
    assert parse("reject_unauth_destination, permit").words == ["reject_unauth_destination,", "permit"]
    assert access.dsn_fix("5.1.1", access.SENDER) == "4.1.7"
    assert access.dsn_fix("5.1.7", access.RECIPIENT) == "4.1.3"
    assert access.dsn_fix("5.1.1", access.CLIENT) == "4.0.0"
    assert access.dsn_fix("5.7.1", access.SENDER) == "5.7.1"
    assert access.dsn_split("4.7.1", " 4.2.2 busy") == ("4.2.2", "busy")
    assert access.dsn_split("4.7.1", "4.2 busy") == ("4.7.1", "4.2 busy")
