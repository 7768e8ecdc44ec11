"""Restriction lists against Postfix itself: the same main.cf settings and texthash access tables
in a private Postfix and in pyfastmta, the same scripted SMTP dialogs from a client outside
mynetworks (127.0.0.2) and one inside (127.0.0.1); every reply line must be the same, except the
greeting and EHLO's keyword list (their codes are compared) and queue IDs.

A scenario's Postfix runs once per module; pyfastmta runs for each event loop."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from peers.dialog import differences, run_dialog
from peers.privatepostfix import PostfixInstance

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or not shutil.which("postfix", path="/usr/sbin:/usr/bin")),
    reason="a private Postfix needs root (`postfix start`) and Postfix installed (make sysdeps)")

OUTSIDE, INSIDE = "127.0.0.2", "127.0.0.1"

COMMON = {
    "myhostname": "mx.example.test",
    "mydomain": "example.test",
    "myorigin": "mx.example.test",
    "mydestination": "localhost, mx.example.test",
    "mynetworks": "127.0.0.1/32",
    "relay_domains": "relay.example",
    "smtpd_peername_lookup": "no",
    # The dialogs are long lists of refusals: no error sleep, no hangup.
    "smtpd_soft_error_limit": "1000",
    "smtpd_hard_error_limit": "1000",
}

# The classic ways to sneak a foreign destination past a relay check.
RELAY_TRICKS = [
    "user%foreign.example@mx.example.test",
    '"user@foreign.example"@mx.example.test',
    '"user%foreign.example"@mx.example.test',
    "@mx.example.test:user@foreign.example",
    "foreign.example!user@mx.example.test",
    "user@foreign.example@mx.example.test",
    "user@[127.0.0.1]",
    "user@[1.2.3.4]",
    "user%foreign.example@[127.0.0.1]",
    "user@foreign.example.",
    "user@mx.example.test.",
    "user",
    "postmaster",
    "user@relay.example",
    "user@sub.relay.example",
    "user%foreign.example@relay.example",
    "user@foreign.example",
]


def envelope(sender: str, recipients: list[str]) -> list[str]:
    return [f"MAIL FROM:<{sender}>", *[f"RCPT TO:<{r}>" for r in recipients], "RSET"]


RELAY_DIALOG = ["EHLO client.example", *envelope("s@client.example", RELAY_TRICKS), "QUIT"]
# From outside, what is accepted is also sent, so the queue shows where it would go.
RELAY_DIALOG_SENT = ["EHLO client.example", "MAIL FROM:<s@client.example>",
                     *[f"RCPT TO:<{r}>" for r in RELAY_TRICKS], "DATA", "MESSAGE", "QUIT"]

ACCESS_TABLE = (
    "ok@mx.example.test OK\n"
    "defer@mx.example.test DEFER\n"
    "defertext@mx.example.test DEFER 4.2.2 mailbox busy\n"
    "reject@mx.example.test REJECT\n"
    "rejecttext@mx.example.test REJECT no thanks\n"
    "code@mx.example.test 550 5.1.1 no such user here\n"
    "code2@mx.example.test 450 come back later\n"
    "sdsn@mx.example.test 553 5.1.7 bad sender dsn\n"
    "dip@mx.example.test DEFER_IF_PERMIT maybe later\n"
    "dir@mx.example.test DEFER_IF_REJECT not now\n"
    "warn@mx.example.test WARN looked at\n"
    "num@mx.example.test 20240101\n"
    "dunno@mx.example.test DUNNO\n"
    "strict@mx.example.test strict\n"
    "lenient@mx.example.test lenient\n"
    "listed@mx.example.test reject_non_fqdn_sender, permit\n"
    "ext@mx.example.test REJECT whole address\n"
    "blocked.example REJECT domain blocked\n"
    "sub.allowed.example OK\n"
    "anyone@ 550 5.7.1 local part anywhere\n"
    "foreign.example OK\n"
)
SENDER_TABLE = (
    "<> 550 5.7.1 no bounces here\n"
    "bad@client.example REJECT bad sender\n"
    "dip@client.example DEFER_IF_PERMIT sender looks odd\n"
    "client.example DUNNO\n"
    "spam.example 554 5.7.1 spam domain\n"
)
HELO_TABLE = "bad.helo.example REJECT go away\nhelo.example OK\n"
CLIENT_TABLE = "127.0.0.2 550 5.7.1 you are not welcome\n"

ACCESS_RECIPIENTS = [
    "ok@mx.example.test", "defer@mx.example.test", "defertext@mx.example.test", "reject@mx.example.test",
    "rejecttext@mx.example.test", "code@mx.example.test", "code2@mx.example.test",
    "sdsn@mx.example.test", "dip@mx.example.test", "dir@mx.example.test", "warn@mx.example.test",
    "num@mx.example.test", "dunno@mx.example.test", "strict@mx.example.test", "lenient@mx.example.test",
    "listed@mx.example.test", "ext+tag@mx.example.test", "x@blocked.example", "x@a.b.blocked.example",
    "x@sub.allowed.example", "anyone@relay.example", "someone@foreign.example",
    "user%foreign.example@mx.example.test", "plain@mx.example.test",
]

SCENARIOS = {
    # Postfix's defaults: smtpd_relay_restrictions alone decides.
    "defaults": {
        "settings": {},
        "dialogs": [(OUTSIDE, RELAY_DIALOG_SENT), (INSIDE, RELAY_DIALOG)],
    },
    # The classic list, with the relay check in smtpd_recipient_restrictions.
    "reject_unauth": {
        "settings": {"smtpd_relay_restrictions": "",
                     "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination"},
        "dialogs": [(OUTSIDE, RELAY_DIALOG_SENT), (INSIDE, RELAY_DIALOG)],
    },
    # HELO checks, evaluated at RCPT (smtpd_delay_reject = yes), HELO required.
    "helo_delayed": {
        "settings": {"smtpd_helo_required": "yes",
                     "smtpd_helo_restrictions": "reject_invalid_helo_hostname, "
                                                "check_helo_access texthash:{dir}/helo, "
                                                "reject_non_fqdn_helo_hostname",
                     "recipient_delimiter": "+"},
        "tables": {"helo": HELO_TABLE},
        "dialogs": [
            (OUTSIDE, ["MAIL FROM:<a@client.example>", "HELO nodots", *envelope("a@client.example", ["u@mx.example.test"]),
                       "HELO bad_name!", *envelope("a@client.example", ["u@mx.example.test"]),
                       "EHLO bad.helo.example", *envelope("a@client.example", ["u@mx.example.test"]),
                       "EHLO x.bad.helo.example", *envelope("a@client.example", ["u@mx.example.test"]),
                       "EHLO [1.2.3.4]", *envelope("a@client.example", ["u@mx.example.test"]),
                       "EHLO [300.1.1.1]", *envelope("a@client.example", ["u@mx.example.test"]),
                       "EHLO 1.2.3.4", *envelope("a@client.example", ["u@mx.example.test"]),
                       "EHLO trailing.dot.example.", *envelope("a@client.example", ["u@mx.example.test"]),
                       "EHLO helo", *envelope("a@client.example", ["postmaster", "u@mx.example.test"]),
                       "QUIT"]),
            (INSIDE, ["HELO localhost", *envelope("a@client.example", ["u@mx.example.test"]), "QUIT"]),
        ],
    },
    # Every check when its command arrives (smtpd_delay_reject = no).
    "immediate": {
        "settings": {"smtpd_delay_reject": "no",
                     "smtpd_client_restrictions": "check_client_access texthash:{dir}/client",
                     "smtpd_helo_restrictions": "reject_non_fqdn_helo_hostname",
                     "smtpd_sender_restrictions": "reject_non_fqdn_sender, check_sender_access texthash:{dir}/sender",
                     "smtpd_recipient_restrictions": "reject_non_fqdn_recipient, permit_mynetworks, "
                                                     "reject_unauth_destination"},
        "tables": {"client": CLIENT_TABLE, "sender": SENDER_TABLE},
        "dialogs": [
            (OUTSIDE, ["EHLO client.example", "MAIL FROM:<a@client.example>", "NOOP", "QUIT"]),
            (INSIDE, ["HELO nodots", "HELO client.example", "MAIL FROM:<a@nodots>", "MAIL FROM:<bad@client.example>",
                      "MAIL FROM:<>", "MAIL FROM:<x@spam.example>", "MAIL FROM:<x@sub.spam.example>",
                      "MAIL FROM:<dip@client.example>", "RCPT TO:<u@mx.example.test>", "RCPT TO:<u@nodots>",
                      "RSET", "MAIL FROM:<a@client.example>", "RCPT TO:<u@nodots>", "RCPT TO:<u@mx.example.test>",
                      "QUIT"]),
        ],
    },
    # Access table actions, classes, warn_if_reject.
    "actions": {
        "settings": {"recipient_delimiter": "+",
                     "smtpd_restriction_classes": "strict, lenient",
                     "strict": "reject_non_fqdn_sender, reject",
                     "lenient": "permit",
                     "smtpd_sender_restrictions": "check_sender_access texthash:{dir}/sender",
                     "smtpd_recipient_restrictions": "reject_non_fqdn_recipient, "
                                                     "check_recipient_access texthash:{dir}/access, "
                                                     "permit_mynetworks, reject_unauth_destination"},
        "tables": {"access": ACCESS_TABLE, "sender": SENDER_TABLE},
        "dialogs": [
            (OUTSIDE, ["EHLO client.example", *envelope("a@client.example", ACCESS_RECIPIENTS),
                       *envelope("", ["u@mx.example.test"]), *envelope("bad@client.example", ["ok@mx.example.test"]),
                       *envelope("dip@client.example", ["ok@mx.example.test", "u@mx.example.test", "x@elsewhere.example"]),
                       *envelope("x@spam.example", ["u@mx.example.test"]),
                       "QUIT"]),
            (INSIDE, ["EHLO client.example", *envelope("a@client.example", ACCESS_RECIPIENTS), "QUIT"]),
        ],
    },
    # warn_if_reject turns what follows into log lines; defer_if_permit / defer_if_reject.
    "warn_and_defer": {
        "settings": {"smtpd_client_restrictions": "warn_if_reject, reject",
                     "smtpd_sender_restrictions": "defer_if_permit",
                     "smtpd_recipient_restrictions": "defer_if_reject, check_recipient_access "
                                                     "texthash:{dir}/access, permit_mynetworks, "
                                                     "reject_unauth_destination"},
        "tables": {"access": ACCESS_TABLE},
        "dialogs": [
            (OUTSIDE, ["EHLO client.example", *envelope("a@client.example", ["u@mx.example.test", "x@elsewhere.example",
                                                                               "reject@mx.example.test", "ok@mx.example.test"]),
                       "QUIT"]),
            (INSIDE, ["EHLO client.example", *envelope("a@client.example", ["u@mx.example.test", "x@elsewhere.example"]),
                      "QUIT"]),
        ],
    },
    # DATA and end-of-data restrictions, and pipelining.
    "data": {
        "settings": {"smtpd_data_restrictions": "reject_unauth_pipelining",
                     "smtpd_end_of_data_restrictions": "check_sender_access texthash:{dir}/sender"},
        "tables": {"sender": SENDER_TABLE},
        "dialogs": [
            # ESMTP pipelining of MAIL, RCPT, DATA is allowed; DATA with content behind it is not.
            (INSIDE, ["EHLO client.example", ["MAIL FROM:<a@client.example>", "RCPT TO:<u@mx.example.test>", "DATA"],
                      "MESSAGE", ["RSET", "MAIL FROM:<a@client.example>", "RCPT TO:<u@mx.example.test>", "DATA", "QUIT"]]),
            # A HELO client may not pipeline at all.
            (INSIDE, [["HELO client.example", "MAIL FROM:<a@client.example>"], "RCPT TO:<u@mx.example.test>",
                      "DATA", "QUIT"]),
            (INSIDE, ["EHLO client.example", "MAIL FROM:<x@spam.example>", "RCPT TO:<u@mx.example.test>",
                      "RCPT TO:<v@mx.example.test>", "DATA", "MESSAGE", "QUIT"]),
        ],
    },
}


def _normal(command: str, lines: list[str]) -> str:
    if command in ("CONNECT", "EHLO") and lines[0].startswith("2"):
        return lines[0][:3]  # greeting text and EHLO keywords are each server's own
    return re.sub(r"queued as \w+", "queued as ID", "\n".join(lines))


def scenario_files(name: str) -> tuple[Path, dict[str, str]]:
    scenario = SCENARIOS[name]
    directory = Path(tempfile.mkdtemp(prefix=f"pyfastmta-restrictions-{name}-"))
    directory.chmod(0o755)
    for table, text in scenario.get("tables", {}).items():
        (directory / table).write_text(text)
        (directory / table).chmod(0o644)
    settings = {**COMMON, **{k: v.format(dir=directory) for k, v in scenario["settings"].items()}}
    return directory, settings


def run_all(port: int, name: str) -> list[list[str]]:
    return [run_dialog(port, source, steps, _normal) for source, steps in SCENARIOS[name]["dialogs"]]


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def postfix_result(request):
    """(scenario name, Postfix's transcripts)."""
    name = request.param
    directory, settings = scenario_files(name)
    postfix = PostfixInstance(main_cf=settings)
    try:
        postfix.start()
        yield name, run_all(postfix.port, name)
    finally:
        postfix.stop()
        postfix.remove()
        shutil.rmtree(directory, ignore_errors=True)


def test_replies_match_postfix(postfix_result, make_mta):
    name, expected = postfix_result
    directory, settings = scenario_files(name)
    try:
        mta = make_mta(settings)
        report = differences(run_all(mta.port, name), expected)
        assert not report, "\n".join(report)
        if name in ("defaults", "reject_unauth"):
            # Whatever was accepted from anyone stays for this host: nothing is queued for a
            # foreign domain.
            for message in mta.queue_json():
                for recipient in message.get("recipients", []):
                    assert "foreign.example" not in recipient["address"].rpartition("@")[2]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
