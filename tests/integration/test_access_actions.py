"""The access(5) actions that change the message: HOLD, PREPEND, REDIRECT, BCC and FILTER (and
main.cf's content_filter), end to end: a client sends over loopback, pyfastmta queues and
delivers to Postfix's smtp-sink, and the tests read the queue, the log and what the sinks got.
The last test sends the same mail through a private Postfix with the same table and compares
where the headers land, who receives the mail and what is logged."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from peers.loopback import free_port, start_smtp_sink, wait_until
from peers.privatepostfix import PostfixInstance
from peers.rawclient import RawClient

SINK_HOST = "127.0.0.1"


class Sink:
    """An smtp-sink that writes each message it receives, with its envelope, to a directory."""

    def __init__(self, directory: Path):
        self.dump = directory
        self.dump.mkdir()
        self.dump.chmod(0o777)  # the sink runs as nobody when the tests run as root
        self.port = free_port(SINK_HOST)
        self.process = start_smtp_sink(SINK_HOST, self.port, "-d", f"{self.dump}/%H%M%S.")

    def messages(self) -> list[str]:
        return [path.read_text(errors="replace") for path in self.dump.rglob("*") if path.is_file()]

    def find(self, tag: str) -> list[str]:
        """The messages whose Subject is tag."""
        return [text for text in self.messages() if f"\nSubject: {tag}\n" in text.replace("\r\n", "\n")]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def sinks():
    """Two sinks for one test: where mail goes normally (the relayhost), and the content
    filter."""
    directory = Path(tempfile.mkdtemp(prefix="pyfastmta-actions-"))
    directory.chmod(0o755)
    made = []
    try:
        made.append(Sink(directory / "relay"))
        made.append(Sink(directory / "filter"))
        yield made
    finally:
        for sink in made:
            sink.stop()
        shutil.rmtree(directory, ignore_errors=True)


def recipients_of(dumped: str) -> list[str]:
    """The RCPT TO addresses smtp-sink wrote at the top of a message."""
    return sorted(re.findall(r"^X-Rcpt-Args: <([^>]*)>", dumped, re.M))


def rcpt_args(dumped: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^X-Rcpt-Args: <([^>]*)>(.*)$", dumped, re.M)}


def header_names(dumped: str) -> list[str]:
    """Header names of the message as delivered, without smtp-sink's own lines above it."""
    text = dumped.replace("\r\n", "\n")
    head = text.split("\n\n", 1)[0].split("\n")
    names = [line.split(":", 1)[0] for line in head if line and not line[0].isspace()]
    names = [name for name in names if not name.startswith("X-Client-") and name not in (
        "X-Helo-Args", "X-Mail-Args", "X-Rcpt-Args")]
    return names[1:]  # the first Received: is the sink's


ACCESS_TABLE = """\
hold@x.test HOLD
holdtext@x.test HOLD held for review
prep@x.test PREPEND X-First: one
prep2@x.test PREPEND X-Second: two
badprep@x.test PREPEND not a header
redir@x.test REDIRECT r1@sink.test
redir2@x.test REDIRECT r2@sink.test
badredir@x.test REDIRECT nowhere
bcc@x.test BCC b1@sink.test
bcc2@x.test BCC b2@sink.test
filter@x.test FILTER smtp:[{host}]:{filter_port}
badfilter@x.test FILTER nocolon
emptyfilter@x.test FILTER
"""


def settings(sinks, table: Path, **extra: str) -> dict[str, str]:
    """Mail for x.test and sink.test goes to the relay sink; the access table is looked at
    before permit_mynetworks."""
    values = {
        "relay_domains": "x.test, sink.test",
        "smtpd_peername_lookup": "no",  # clients are unknown[127.0.0.1], as in the Postfix run
        "default_transport": "smtp",
        "relay_transport": "smtp",
        "relayhost": f"[{SINK_HOST}]:{sinks[0].port}",
        "smtpd_recipient_restrictions": f"check_recipient_access texthash:{table}, permit_mynetworks, "
                                        "reject_unauth_destination",
    }
    values.update(extra)
    return values


def write_table(directory: Path, sinks, text: str = ACCESS_TABLE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    table = directory / "access"
    table.write_text(text.format(host=SINK_HOST, filter_port=sinks[1].port))
    table.chmod(0o644)
    return table


def send(port: int, recipients: list[str], tag: str, sender: str = "s@example.org",
         expect: int = 250) -> str:
    """One message from 127.0.0.1; its queue ID (the last word of the final reply)."""
    client = RawClient("127.0.0.1", port)
    try:
        assert client.reply()[0] == 220
        assert client.command("EHLO client.example")[0] == 250
        assert client.command(f"MAIL FROM:<{sender}>")[0] == 250
        for recipient in recipients:
            code, text = client.command(f"RCPT TO:<{recipient}>")
            assert code == 250, text
        assert client.command("DATA")[0] == 354
        client.send(f"Subject: {tag}\r\nX-Orig: yes\r\n\r\nbody\r\n.\r\n".encode())
        code, text = client.reply()
        assert code == expect, text
        client.command("QUIT")
        return text.split()[-1]
    finally:
        client.close()


def logged_match(mta, pattern: str) -> bool:
    """Whether a log line matches pattern soon (each worker writes its own lines in batches)."""
    return wait_until(lambda: re.search(pattern, mta.log_text(), re.M) is not None, timeout=10)


def smtpd_lines(log: str, kinds: tuple[str, ...]) -> list[str]:
    """smtpd's log lines of the given kinds ("hold", "warning" ...), without the program
    prefix, queue IDs and table paths, in order."""
    lines = []
    for line in log.splitlines():
        match = re.search(r"/smtpd\[\d+\]: (.*)$", line)
        if not match:
            continue
        text = match.group(1)
        text = re.sub(r"^[0-9A-Za-z]+: (?=(hold|redirect|bcc|filter|discard): )", "ID: ", text)
        text = re.sub(r"^NOQUEUE: ", "ID: ", text)
        text = re.sub(r"texthash:\S*/access", "TABLE", text)
        text = re.sub(r"texthash:\S*/client", "CLIENT_TABLE", text)
        kind = text.split(": ", 2)[1] if text.startswith("ID: ") else text.split(":", 1)[0]
        if kind in kinds:
            lines.append(text)
    return lines


# -- HOLD ----------------------------------------------------------------------------------------


def test_hold_files_the_message_in_the_hold_queue(make_mta, sinks):
    mta = make_mta(start=False)
    table = write_table(mta.dir / "tables", sinks)
    mta.write_config({**_base(mta), **settings(sinks, table)})
    mta.start()
    queue_id = send(mta.port, ["hold@x.test", "holdtext@x.test", "plain@x.test"], "held")
    assert mta.logged("NOQUEUE: hold: RCPT from unknown[127.0.0.1]: <hold@x.test>: Recipient address "
                      "triggers HOLD action; from=<s@example.org> to=<hold@x.test> proto=ESMTP "
                      "helo=<client.example>")
    # Held once: the second HOLD of the same message is not logged again.
    assert "held for review" not in mta.log_text()
    # On hold as soon as the client heard 250: postqueue marks it with "!".
    listing = mta.cli("postqueue", "-p").stdout
    assert f"{queue_id}!" in listing, listing
    held = [m for m in mta.queue_json() if m["queue_id"] == queue_id]
    assert held and held[0]["queue_name"] == "hold"
    assert sorted(r["address"] for r in held[0]["recipients"]) == ["hold@x.test", "holdtext@x.test",
                                                                    "plain@x.test"]
    # Mail that is not held is delivered meanwhile; the held message never is.
    send(mta.port, ["plain@x.test"], "not-held")
    assert wait_until(lambda: sinks[0].find("not-held"))
    time.sleep(0.5)
    assert sinks[0].find("held") == []
    assert wait_until(lambda: [m["queue_name"] for m in mta.queue_json()] == ["hold"])


def test_hold_in_client_restrictions_waits_for_a_transaction(make_mta, sinks):
    """With smtpd_delay_reject = no the client restrictions run at connect, outside any mail
    transaction: HOLD there is skipped with Postfix's warning. With the default (yes) they run
    at RCPT and hold the message."""
    mta = make_mta(start=False)
    tables = mta.dir / "tables"
    table = write_table(tables, sinks)
    (tables / "client").write_text("127.0.0.1 HOLD client hold\n")
    client_table = f"texthash:{tables}/client"
    mta.write_config({**_base(mta), **settings(sinks, table, smtpd_delay_reject="no",
                                               smtpd_client_restrictions=f"check_client_access {client_table}")})
    mta.start()
    send(mta.port, ["plain@x.test"], "client-no-delay")
    assert wait_until(lambda: sinks[0].find("client-no-delay"))
    assert mta.logged(f"warning: access table {client_table}: with smtpd_delay_reject=no, action HOLD is "
                      "always skipped in Client host or Helo command restrictions")
    mta.stop()
    mta.write_config({**_base(mta), **settings(sinks, table, smtpd_delay_reject="yes",
                                               smtpd_client_restrictions=f"check_client_access {client_table}")})
    mta.start()
    queue_id = send(mta.port, ["a@x.test", "b@x.test"], "client-delayed")
    assert mta.logged("hold: RCPT from unknown[127.0.0.1]: <unknown[127.0.0.1]>: Client host client hold; "
                      "from=<s@example.org> to=<a@x.test> proto=ESMTP helo=<client.example>")
    assert wait_until(lambda: [(m["queue_id"], m["queue_name"]) for m in mta.queue_json()]
                      == [(queue_id, "hold")])


# -- PREPEND -------------------------------------------------------------------------------------


def test_prepend_puts_headers_above_received_in_order(make_mta, sinks):
    mta = make_mta(start=False)
    table = write_table(mta.dir / "tables", sinks)
    mta.write_config({**_base(mta), **settings(sinks, table)})
    mta.start()
    send(mta.port, ["prep@x.test", "prep2@x.test"], "prepended")
    assert wait_until(lambda: sinks[0].find("prepended"))
    [delivered] = sinks[0].find("prepended")
    assert header_names(delivered)[:4] == ["X-First", "X-Second", "Received", "Subject"]
    assert "\nX-First: one\n" in delivered.replace("\r\n", "\n")
    # A value that is not a header is refused with Postfix's warning; the mail goes on without it.
    send(mta.port, ["badprep@x.test"], "bad-prepend")
    assert wait_until(lambda: sinks[0].find("bad-prepend"))
    assert header_names(sinks[0].find("bad-prepend")[0])[:2] == ["Received", "Subject"]
    assert logged_match(mta, r'warning: access table texthash:\S+/access entry "badprep@x.test" requires '
                     r"header: text$")


def test_prepend_at_end_of_data_is_too_late(make_mta, sinks):
    mta = make_mta(start=False)
    table = write_table(mta.dir / "tables", sinks)
    mta.write_config({**_base(mta), **settings(
        sinks, table, smtpd_recipient_restrictions="permit_mynetworks, reject_unauth_destination",
        smtpd_end_of_data_restrictions=f"check_recipient_access texthash:{table}")})
    mta.start()
    queue_id = send(mta.port, ["prep@x.test"], "late-prepend")
    assert wait_until(lambda: sinks[0].find("late-prepend"))
    assert "X-First" not in header_names(sinks[0].find("late-prepend")[0])
    assert mta.logged(f"warning: access table texthash:{table}: action PREPEND must be used before "
                      "smtpd_end_of_data_restrictions")
    # HOLD still works there.
    queue_id = send(mta.port, ["hold@x.test"], "late-hold")
    assert mta.logged(f"{queue_id}: hold: END-OF-MESSAGE from unknown[127.0.0.1]: <hold@x.test>: "
                      "Recipient address triggers HOLD action;")
    assert wait_until(lambda: [m["queue_name"] for m in mta.queue_json()] == ["hold"])


# -- REDIRECT and BCC ----------------------------------------------------------------------------


def test_redirect_replaces_every_recipient_and_the_last_one_wins(make_mta, sinks):
    mta = make_mta(start=False)
    table = write_table(mta.dir / "tables", sinks)
    mta.write_config({**_base(mta), **settings(sinks, table)})
    mta.start()
    queue_id = send(mta.port, ["other@x.test", "redir@x.test", "redir2@x.test"], "redirected")
    assert wait_until(lambda: sinks[0].find("redirected"))
    [delivered] = sinks[0].find("redirected")
    assert recipients_of(delivered) == ["r2@sink.test"]
    assert mta.logged(f"{queue_id}: redirect: RCPT from unknown[127.0.0.1]: <redir@x.test>: Recipient "
                      "address triggers REDIRECT r1@sink.test; from=<s@example.org> to=<redir@x.test>")
    assert mta.logged(f"{queue_id}: redirect: RCPT from unknown[127.0.0.1]: <redir2@x.test>: Recipient "
                      "address triggers REDIRECT r2@sink.test;")
    # The delivery names the first recipient as the original one.
    assert mta.logged(f"{queue_id}: to=<r2@sink.test>, orig_to=<other@x.test>, relay=")
    # Without "@" the target is refused with Postfix's warning and the mail goes where it was sent.
    send(mta.port, ["badredir@x.test"], "bad-redirect")
    assert wait_until(lambda: sinks[0].find("bad-redirect"))
    assert recipients_of(sinks[0].find("bad-redirect")[0]) == ["badredir@x.test"]
    assert logged_match(mta, r'warning: access table texthash:\S+/access entry "badredir@x.test" requires '
                     r"user@domain target$")


def test_bcc_adds_recipients_that_ask_for_no_notification(make_mta, sinks):
    mta = make_mta(start=False)
    table = write_table(mta.dir / "tables", sinks)
    mta.write_config({**_base(mta), **settings(sinks, table)})
    mta.start()
    queue_id = send(mta.port, ["bcc@x.test", "bcc2@x.test"], "bcc")
    assert wait_until(lambda: sinks[0].find("bcc"))
    [delivered] = sinks[0].find("bcc")
    assert recipients_of(delivered) == ["b1@sink.test", "b2@sink.test", "bcc2@x.test", "bcc@x.test"]
    arguments = rcpt_args(delivered)
    assert "NOTIFY=NEVER" in arguments["b1@sink.test"] and "NOTIFY=NEVER" in arguments["b2@sink.test"]
    assert "NOTIFY" not in arguments["bcc@x.test"]
    assert mta.logged("NOQUEUE: bcc: RCPT from unknown[127.0.0.1]: <bcc@x.test>: Recipient address "
                      "triggers BCC b1@sink.test; from=<s@example.org> to=<bcc@x.test> proto=ESMTP")
    assert mta.logged(f"{queue_id}: bcc: RCPT from unknown[127.0.0.1]: <bcc2@x.test>: Recipient address "
                      "triggers BCC b2@sink.test;")
    # A BCC is not an envelope recipient the client named: Received: keeps its "for <...>" out.
    assert "for <" not in delivered.split("\nSubject:", 1)[0].split("by mx.example.test", 1)[1]


# -- FILTER and content_filter -------------------------------------------------------------------


def test_filter_sends_all_recipients_through_the_filter(make_mta, sinks):
    mta = make_mta(start=False)
    table = write_table(mta.dir / "tables", sinks)
    mta.write_config({**_base(mta), **settings(sinks, table)})
    mta.start()
    queue_id = send(mta.port, ["filter@x.test", "other@x.test"], "filtered")
    assert wait_until(lambda: sinks[1].find("filtered"))
    assert recipients_of(sinks[1].find("filtered")[0]) == ["filter@x.test", "other@x.test"]
    assert sinks[0].find("filtered") == []
    assert mta.logged(f"NOQUEUE: filter: RCPT from unknown[127.0.0.1]: <filter@x.test>: Recipient address "
                      f"triggers FILTER smtp:[{SINK_HOST}]:{sinks[1].port}; from=<s@example.org>")
    assert mta.logged(f"{queue_id}: to=<other@x.test>, relay={SINK_HOST}[{SINK_HOST}]:{sinks[1].port},")
    # Malformed FILTER actions are skipped with Postfix's warnings.
    send(mta.port, ["badfilter@x.test", "emptyfilter@x.test"], "bad-filter")
    assert wait_until(lambda: sinks[0].find("bad-filter"))
    assert logged_match(mta, r'entry "badfilter@x.test" requires transport:destination$')
    assert logged_match(mta, r'entry "emptyfilter@x.test" has FILTER entry without value$')
    # REDIRECT overrides FILTER: the redirected mail takes the normal route.
    send(mta.port, ["filter@x.test", "redir@x.test"], "redirect-over-filter")
    assert wait_until(lambda: sinks[0].find("redirect-over-filter"))
    assert recipients_of(sinks[0].find("redirect-over-filter")[0]) == ["r1@sink.test"]
    assert sinks[1].find("redirect-over-filter") == []


def test_content_filter_routes_every_message_and_filter_overrides_it(make_mta, sinks):
    mta = make_mta(start=False)
    table = write_table(mta.dir / "tables", sinks, "filter@x.test FILTER smtp:[{host}]:{filter_port}\n")
    # The content filter here is the relay sink itself, the FILTER action the other sink.
    mta.write_config({**_base(mta), **settings(sinks, table, relayhost="[127.0.0.1]:9",
                                               content_filter=f"smtp:[{SINK_HOST}]:{sinks[0].port}")})
    mta.start()
    send(mta.port, ["one@x.test", "two@sink.test"], "content-filter")
    assert wait_until(lambda: sinks[0].find("content-filter"))
    assert recipients_of(sinks[0].find("content-filter")[0]) == ["one@x.test", "two@sink.test"]
    send(mta.port, ["filter@x.test"], "filter-over-content-filter")
    assert wait_until(lambda: sinks[1].find("filter-over-content-filter"))
    assert mta.cli("postconf", "-d", "content_filter").stdout.strip() == "content_filter ="


# -- the same mail through Postfix ---------------------------------------------------------------

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or not shutil.which("postfix", path="/usr/sbin:/usr/bin")),
    reason="a private Postfix needs root (`postfix start`) and Postfix installed (make sysdeps)")

# (recipients, tag): one message each; every action, the malformed ones included.
COMPARED = [
    (["prep@x.test", "prep2@x.test"], "cmp-prepend"),
    (["badprep@x.test"], "cmp-bad-prepend"),
    (["hold@x.test", "holdtext@x.test"], "cmp-hold"),
    (["other@x.test", "redir@x.test", "redir2@x.test"], "cmp-redirect"),
    (["bcc@x.test", "bcc2@x.test"], "cmp-bcc"),
    (["filter@x.test", "other@x.test"], "cmp-filter"),
    (["badredir@x.test", "badfilter@x.test", "emptyfilter@x.test"], "cmp-bad"),
    (["filter@x.test", "redir@x.test", "bcc@x.test"], "cmp-redirect-filter-bcc"),
]
LOGGED = ("hold", "redirect", "bcc", "filter", "warning")


def observe(port: int, sinks, log, queue) -> dict:
    """Sends COMPARED and returns where each message went, its recipients and header order,
    what stays queued (the held message), and smtpd's log lines about the actions."""
    for recipients, tag in COMPARED:
        send(port, recipients, tag)
    seen = {}
    for recipients, tag in COMPARED:
        if tag == "cmp-hold":
            continue
        assert wait_until(lambda tag=tag: sinks[0].find(tag) or sinks[1].find(tag)), tag
    time.sleep(0.5)
    for _recipients, tag in COMPARED:
        where = [(n, text) for n, sink in enumerate(sinks) for text in sink.find(tag)]
        seen[tag] = [(n, recipients_of(text), header_names(text)) for n, text in where]
    assert wait_until(lambda: len(queue()) == 1)
    seen["queue"] = [(m["queue_name"], sorted(r["address"] for r in m["recipients"])) for m in queue()]
    # Sorted: each worker writes its own lines, so their order in the file is not the order of
    # events; the filter's port is each run's own.
    seen["log"] = sorted(line.replace(f":{sinks[1].port};", ":FILTER_PORT;")
                         for line in smtpd_lines(log(), LOGGED))
    return seen


@needs_postfix
def test_actions_match_postfix(make_mta):
    """Postfix 3.7 and pyfastmta with the same table: each message reaches the same sink with
    the same recipients and header order, and smtpd logs the same lines."""
    directory = Path(tempfile.mkdtemp(prefix="pyfastmta-actions-postfix-"))
    directory.chmod(0o755)
    made: list[Sink] = []
    try:
        for name in ("relay", "filter", "relay2", "filter2"):
            made.append(Sink(directory / name))
        postfix_sinks, ours_sinks = made[:2], made[2:]
        table = write_table(directory / "postfix", postfix_sinks)
        postfix = PostfixInstance(relayhost=f"[{SINK_HOST}]:{postfix_sinks[0].port}", main_cf={
            "myhostname": "mx.example.test", "mydestination": "", "relay_domains": "x.test, sink.test",
            "smtpd_peername_lookup": "no",
            "smtpd_recipient_restrictions": f"check_recipient_access texthash:{table}, "
                                            "permit_mynetworks, reject_unauth_destination"})
        try:
            postfix.start()
            theirs = observe(postfix.port, postfix_sinks, lambda: postfix.maillog_file.read_text(),
                             lambda: [json.loads(line) for line in postfix.postqueue_json()])
        finally:
            postfix.stop()
            postfix.remove()
        mta = make_mta(start=False)
        table = write_table(mta.dir / "tables", ours_sinks)
        mta.write_config({**_base(mta), **settings(ours_sinks, table)})
        mta.start()
        ours = observe(mta.port, ours_sinks, mta.log_text, mta.queue_json)
    finally:
        for sink in made:
            sink.stop()
        shutil.rmtree(directory, ignore_errors=True)
    for key in theirs:
        assert ours[key] == theirs[key], key


def _base(mta) -> dict[str, str]:
    """The fixture's own settings (spool, log, DNS on loopback), to write a main.cf anew."""
    settings = {}
    for line in (mta.dir / "main.cf").read_text().splitlines():
        name, _, value = line.partition(" = ")
        settings[name] = value
    return settings
