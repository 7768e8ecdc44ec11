"""The access table actions that change the message (HOLD, PREPEND, REDIRECT, BCC, FILTER):
how a value is parsed, what a check keeps for the message, what cleanup makes of it, and how the
queue manager holds and routes the message. The end-to-end behaviour, compared with Postfix, is
in tests/integration/test_access_actions.py."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import msgspec
import pytest

from pyfastmta.cleanup import actions
from pyfastmta.cleanup.message import clean_message
from pyfastmta.config import load_config
from pyfastmta.qmgr import DeliveryOutcome, Scheduler
from pyfastmta.qmgr.scheduler import filter_route
from pyfastmta.queue.envelope import Envelope, Recipient, decode_envelope
from pyfastmta.queue.index import HOLD
from pyfastmta.queue.partition import Partition
from pyfastmta.queue.record import Transition
from pyfastmta.smtpd import access
from pyfastmta.smtpd.restrictions import CheckState, Request
from pyfastmta.smtpd.settings import SmtpdSettings

BASE = {
    "myhostname": "mx.example.test",
    "mydomain": "example.test",
    "myorigin": "example.test",
    "mydestination": "localhost, mx.example.test",
    "mynetworks": "127.0.0.1/32",
    "relay_domains": "x.test",
    "queue_directory": "spool",
}

TABLE = """\
hold@x.test HOLD
hold2@x.test HOLD second reason
prep@x.test PREPEND X-First: one
prep2@x.test PREPEND X-Second: two
badprep@x.test PREPEND no header here
redir@x.test REDIRECT r1@example.org
redir2@x.test REDIRECT r2@example.org
bcc@x.test BCC b1@example.org
bcc2@x.test BCC b2@example.org
filter@x.test FILTER smtp:[127.0.0.1]:10025
filter2@x.test FILTER lmtp:unix:/run/filter
discard@x.test DISCARD
"""


def smtpd_settings(tmp_path, **settings) -> SmtpdSettings:
    (tmp_path / "access").write_text(TABLE)
    values = {**BASE, "smtpd_recipient_restrictions": f"check_recipient_access texthash:{tmp_path}/access, "
                                                      "permit_mynetworks, reject_unauth_destination",
              **settings}
    (tmp_path / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    (tmp_path / "master.cf").write_text("127.0.0.1:2525 inet n - n - - smtpd\n")
    return SmtpdSettings(load_config(str(tmp_path)))


def request(**facts) -> Request:
    values = dict(client_name="unknown", client_addr="127.0.0.2", in_mynetworks=False,
                  helo="client.example", sender="s@client.example")
    values.update(facts)
    return Request(**values)


def rcpt(checks, state, recipient):
    return checks.evaluate(checks.check_rcpt, request(recipient=recipient), state)


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, kind, text", [
    ("HOLD", "hold", ""),
    ("hold why not", "hold", "why not"),
    ("PREPEND X-Tag: a b", "prepend", "X-Tag: a b"),
    ("REDIRECT\tuser@example.org", "redirect", "user@example.org"),
    ("BCC copy@example.org", "bcc", "copy@example.org"),
    ("FILTER smtp:[127.0.0.1]:10025", "filter", "smtp:[127.0.0.1]:10025"),
    ("HANGUP", "unsupported", "HANGUP"),
])
def test_parse_action(value, kind, text):
    action = access.parse_action(value, reject_code=554, defer_code=450, split_list=str.split)
    assert (action.kind, action.text) == (kind, text)


@pytest.mark.parametrize("text, valid", [
    ("X-Tag: value", True), ("X-Tag:", True), ("X-Tag : value", True), ("X-Tag\t: value", True),
    ("X Tag: value", False), (": value", False), (" X-Tag: value", False), ("X-Tag", False),
    ("", False), ("X-Täg: value", False), ("X-\x01: value", False), ("X-Tag value: x", False),
])
def test_is_header(text, valid):
    assert access.is_header(text) is valid


# -- what a check keeps ---------------------------------------------------------------------------


def test_actions_are_kept_for_the_message_and_logged_as_postfix_does(tmp_path):
    checks = smtpd_settings(tmp_path).restrictions
    state = CheckState()
    verdicts = [rcpt(checks, state, r) for r in ("hold@x.test", "hold2@x.test", "prep@x.test", "prep2@x.test",
                                                 "redir@x.test", "redir2@x.test", "bcc@x.test", "bcc2@x.test",
                                                 "filter@x.test", "filter2@x.test")]
    # Each action lets the recipient through (DUNNO: the list goes on to permit_mynetworks...
    # which an outsider does not pass, then the relay check, which x.test passes).
    assert all(v.reply is None for v in verdicts)
    events = [event for v in verdicts for event in v.events]
    assert events == [
        ("hold", "<hold@x.test>: Recipient address triggers HOLD action"),
        # A message is held once: the second HOLD is not logged.
        ("redirect", "<redir@x.test>: Recipient address triggers REDIRECT r1@example.org"),
        ("redirect", "<redir2@x.test>: Recipient address triggers REDIRECT r2@example.org"),
        ("bcc", "<bcc@x.test>: Recipient address triggers BCC b1@example.org"),
        ("bcc", "<bcc2@x.test>: Recipient address triggers BCC b2@example.org"),
        ("filter", "<filter@x.test>: Recipient address triggers FILTER smtp:[127.0.0.1]:10025"),
        ("filter", "<filter2@x.test>: Recipient address triggers FILTER lmtp:unix:/run/filter"),
    ]
    assert state.hold is True
    assert state.prepend == ["X-First: one", "X-Second: two"]
    assert state.redirect == "r2@example.org"  # the last one wins
    assert state.bcc == ["b1@example.org", "b2@example.org"]  # every one counts
    assert state.filter == "lmtp:unix:/run/filter"
    state.reset_transaction()
    assert (state.hold, state.prepend, state.redirect, state.bcc, state.filter) == (False, [], None, [], None)


def test_malformed_actions_are_skipped_with_a_warning(tmp_path):
    (tmp_path / "bad").write_text("a@x.test REDIRECT nowhere\nb@x.test BCC nowhere\nc@x.test FILTER smtp\n"
                                  "d@x.test FILTER\ne@x.test PREPEND no header here\n")
    table = f"texthash:{tmp_path}/bad"
    checks = smtpd_settings(tmp_path, smtpd_recipient_restrictions=f"check_recipient_access {table}, "
                                                                    "reject_unauth_destination").restrictions
    state = CheckState()
    warnings = []
    for recipient in ("a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"):
        verdict = rcpt(checks, state, recipient)
        assert verdict.reply is None
        warnings += [text for what, text in verdict.events if what == "warning"]
    assert warnings == [
        f'access table {table} entry "a@x.test" requires user@domain target',
        f'access table {table} entry "b@x.test" requires user@domain target',
        f'access table {table} entry "c@x.test" requires transport:destination',
        f'access table {table} entry "d@x.test" has FILTER entry without value',
        f'access table {table} entry "e@x.test" requires header: text',
    ]
    assert (state.redirect, state.bcc, state.filter, state.prepend) == (None, [], None, [])


def test_client_actions_without_delay_reject_are_skipped(tmp_path):
    (tmp_path / "client").write_text("127.0.0.2 HOLD\n")
    table = f"texthash:{tmp_path}/client"
    checks = smtpd_settings(tmp_path, smtpd_delay_reject="no",
                            smtpd_client_restrictions=f"check_client_access {table}").restrictions
    state = CheckState()
    # At connect there is no MAIL FROM yet.
    verdict = checks.evaluate(checks.check_client, request(sender=None), state)
    assert verdict.reply is None and verdict.events == [
        ("warning", (f"access table {table}: with smtpd_delay_reject=no, action HOLD is always skipped in "
                     "Client host or Helo command restrictions"))]
    assert state.hold is False
    # With smtpd_delay_reject = yes the client list runs at RCPT, inside the transaction.
    checks = smtpd_settings(tmp_path, smtpd_client_restrictions=f"check_client_access {table}").restrictions
    verdict = rcpt(checks, state, "u@x.test")
    assert ("hold", "<unknown[127.0.0.2]>: Client host triggers HOLD action") in verdict.events
    assert state.hold is True


def test_client_prepend_with_delay_reject_counts_once_per_recipient(tmp_path):
    """The client list runs again at each RCPT, and each run prepends again (Postfix 3.7 adds
    the header once per recipient too); a HOLD is logged once."""
    (tmp_path / "client").write_text("127.0.0.2 PREPEND X-Client: seen\n")
    checks = smtpd_settings(tmp_path, smtpd_client_restrictions=f"check_client_access texthash:{tmp_path}/client"
                            ).restrictions
    state = CheckState()
    for recipient in ("a@x.test", "b@x.test", "hold@x.test", "hold2@x.test"):
        rcpt(checks, state, recipient)
    assert state.prepend == ["X-Client: seen"] * 4
    assert state.hold is True


def test_prepend_at_end_of_data_comes_too_late(tmp_path):
    table = f"texthash:{tmp_path}/access"
    checks = smtpd_settings(tmp_path, smtpd_end_of_data_restrictions=f"check_recipient_access {table}").restrictions
    state = CheckState()
    state.end_of_data = True
    verdict = checks.evaluate(checks.check_end_of_data, request(recipient="prep@x.test"), state)
    assert verdict.events == [("warning", (f"access table {table}: action PREPEND must be used before "
                                           "smtpd_end_of_data_restrictions"))]
    assert state.prepend == []
    verdict = checks.evaluate(checks.check_end_of_data, request(recipient="hold@x.test"), state)
    assert state.hold is True


# -- cleanup --------------------------------------------------------------------------------------


def test_prepended_headers_go_above_received(tmp_path):
    settings = smtpd_settings(tmp_path)
    message = clean_message(b"Subject: hi\r\nTo: someone\r\n\r\nbody\r\n", settings=settings.cleanup,
                            queue_id="Q1", sender="s@example.org", recipients=["u@x.test"], helo="client.example",
                            client_name="unknown", client_addr="127.0.0.2", protocol="ESMTP",
                            local_client=False, now=0.0, prepend=["X-First: one", "X-Second: two"])
    lines = message.content.decode().split("\r\n")
    assert lines[:3] == ["X-First: one", "X-Second: two", "Received: from client.example (unknown [127.0.0.2])"]
    assert lines[5:7] == ["Subject: hi", "To: someone"]
    assert message.content.endswith(b"\r\n\r\nbody\r\n")


def test_bcc_and_redirect_recipients(tmp_path):
    rewriter = smtpd_settings(tmp_path).rewriter
    given = [Recipient("a@x.test", orcpt="rfc822;a@x.test", notify="SUCCESS"), Recipient("b@x.test")]
    with_bcc = actions.with_bcc(given, ["copy@example.org", "copy@example.org", "local"], rewriter)
    assert [(r.address, r.notify, r.original) for r in with_bcc] == [
        ("a@x.test", "SUCCESS", None), ("b@x.test", None, None),
        ("copy@example.org", "NEVER", None), ("local@example.test", "NEVER", "local")]
    # REDIRECT leaves one recipient with the first one's DSN parameters, named as the original.
    [only] = actions.redirected(with_bcc, "target@example.org", rewriter)
    assert (only.address, only.orcpt, only.notify, only.original) == (
        "target@example.org", "rfc822;a@x.test", "SUCCESS", "a@x.test")
    assert actions.message_filter("smtp:[127.0.0.1]:1", "smtp:[127.0.0.1]:2", None) == "smtp:[127.0.0.1]:1"
    assert actions.message_filter(None, "smtp:[127.0.0.1]:2", None) == "smtp:[127.0.0.1]:2"
    assert actions.message_filter(None, "", None) is None
    assert actions.message_filter("smtp:[127.0.0.1]:1", "smtp:[127.0.0.1]:2", "r@example.org") is None


def test_envelopes_written_before_these_fields_still_load():
    class OldEnvelope(msgspec.Struct, array_like=True):
        queue_id: str
        sender: str
        recipients: list[Recipient]
        arrival_time: float
        client_name: str = ""
        client_addr: str = ""
        client_port: int = 0
        helo_name: str = ""
        protocol: str = "ESMTP"
        size: int = 0
        body_type: str | None = None
        smtputf8: bool = False
        envid: str | None = None
        ret: str | None = None
        extra: dict[str, str] = {}

    old = msgspec.msgpack.encode(OldEnvelope("Q1", "s@example.org", [Recipient("u@x.test")], 1.0))
    envelope = decode_envelope(old)
    assert (envelope.content_filter, envelope.hold) == (None, False)


# -- the queue manager ----------------------------------------------------------------------------


class Agent:
    def __init__(self):
        self.requests = []

    async def deliver(self, request):
        self.requests.append(request)
        return [DeliveryOutcome(i, "sent", "2.0.0", "250 2.0.0 Ok", f"{request.nexthop}:25")
                for i in request.recipients]


def resolve(address, sender=""):
    return SimpleNamespace(transport="smtp", nexthop=address.rpartition("@")[2])


async def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_filter_route():
    assert filter_route("smtp:[127.0.0.1]:10025", "u@x.test", resolve, "") == ("smtp", "[127.0.0.1]:10025")
    assert filter_route("lmtp:unix:/run/f", "u@x.test", resolve, "") == ("lmtp", "unix:/run/f")
    # Without a nexthop: the recipient's domain.
    assert filter_route("smtp:", "u@x.test", resolve, "") == ("smtp", "x.test")
    assert filter_route("smtp", "u@y.test", resolve, "") == ("smtp", "y.test")


def test_queue_manager_holds_and_filters(run, tmp_path):
    async def main():
        partition = Partition(str(tmp_path), 0)
        partition.recover()
        smtp, lmtp = Agent(), Agent()
        lines = []

        async def no_bounce(entry, outcomes):
            raise AssertionError("nothing bounces here")

        scheduler = Scheduler(partition, resolve=resolve, agents={"smtp": smtp, "lmtp": lmtp},
                              log=lambda program, text: lines.append(text), on_bounce=no_bounce)
        task = asyncio.get_running_loop().create_task(scheduler.run())

        async def queue(recipients, **fields):
            envelope = Envelope(partition.new_queue_id(), "s@example.org", [Recipient(r) for r in recipients],
                                time.time(), **fields)
            await partition.enqueue(envelope, b"Subject: x\r\n\r\nbody\r\n")
            scheduler.wake()
            return envelope.queue_id

        # HOLD: the queue manager files it on hold instead of delivering it.
        held = await queue(["u@a.test"], hold=True)
        await until(lambda: partition.entries[held].queue_name == HOLD)
        # FILTER: every recipient through the filter's transport and nexthop.
        filtered = await queue(["u@a.test", "v@b.test"], content_filter="lmtp:unix:/run/filter")
        await until(lambda: filtered not in partition.entries)
        assert [(r.transport, r.nexthop, r.recipients) for r in lmtp.requests] == [("lmtp", "unix:/run/filter", [0, 1])]
        assert smtp.requests == []
        assert partition.entries[held].queue_name == HOLD
        # Released, a held message is delivered like any other (never held again).
        await partition.set_state(held, Transition.RELEASE)
        scheduler.flush()
        await until(lambda: held not in partition.entries)
        assert [(r.queue_id, r.nexthop) for r in smtp.requests] == [(held, "a.test")]
        await scheduler.stop()
        await task
        await partition.close()

    run(main())
