"""Envelope rewriting against Postfix itself: the same main.cf rewriting settings and tables,
the same messages into a private Postfix and into pyfastmta, both relaying to smtp-sinks that
dump what they receive; each message's MAIL FROM and RCPT TO arguments must be the same.

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
                         "Mixed@Canon.Example mixed-new@new.example\n",
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


def read_dumps(directory: Path) -> dict[str, tuple[str, list[str]]]:
    """X-Case → (MAIL FROM arguments, sorted RCPT TO arguments) of every dumped message."""
    found: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(directory.iterdir()):
        mail, rcpts, case = "", [], None
        for line in path.read_text(errors="replace").splitlines():
            if not line:
                break
            if line.startswith("X-Mail-Args: "):
                mail = line[len("X-Mail-Args: "):]
            elif line.startswith("X-Rcpt-Args: "):
                rcpts.append(line[len("X-Rcpt-Args: "):])
            elif line.startswith("X-Case: "):
                case = line[len("X-Case: "):]
        if case is not None:
            previous = found.get(case, (mail, []))
            found[case] = (mail, sorted(previous[1] + rcpts))
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


def send_all(host: str, port: int, messages) -> None:
    for number, (sender, recipients) in enumerate(messages):
        with smplib_client(host, port) as client:
            client.ehlo("client.example")
            code, text = client.mail(sender) if sender else client.docmd("MAIL FROM:<>")
            assert code == 250, (sender, text)
            for recipient in recipients:
                code, text = client.rcpt(recipient)
                assert code == 250, (recipient, text)
            code, text = client.data(f"X-Case: {number}\r\nSubject: case {number}\r\n\r\nbody\r\n")
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


def test_envelopes_match_postfix(postfix_result, make_mta):
    name, expected = postfix_result
    directory, settings = scenario_files(name)
    sink = Sink()
    try:
        mta = make_mta({**settings, "relayhost": f"[{sink.host}]:{sink.port}",
                        "default_transport": "smtp", "relay_transport": "relay"})
        messages = SCENARIOS[name]["messages"]
        send_all(mta.host, mta.port, messages)
        assert wait_until(lambda: len(read_dumps(sink.dump)) >= len(messages), 30), mta.log_text()[-3000:]
        got = read_dumps(sink.dump)
        mismatches = {case: {"postfix": expected.get(case), "pyfastmta": got.get(case),
                             "sent": messages[int(case)]}
                      for case in sorted(set(expected) | set(got), key=int)
                      if expected.get(case) != got.get(case)}
        report = "".join(f"\ncase {case}, sent {m['sent']}:\n  postfix   {m['postfix']}\n  pyfastmta {m['pyfastmta']}"
                         for case, m in mismatches.items())
        assert not mismatches, report
    finally:
        sink.stop()
        shutil.rmtree(directory, ignore_errors=True)
