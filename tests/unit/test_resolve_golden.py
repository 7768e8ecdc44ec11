"""Golden cases for AddressResolver in tests/golden/resolve/: NAME.in holds main.cf-style settings
(lists as Postfix writes them; texthash: paths relative to the golden directory), a line
"recipients:", then one recipient a line ("<>" is the null recipient; "#" starts a comment).
NAME.ref has one line a recipient: `recipient -> class transport:nexthop recipient-as-passed-on`.
To add a case, write the .in file, run with PYFASTMTA_UPDATE_GOLDEN=1, and check the .ref by hand
against trivial-rewrite(8), transport(5) and postconf(5).

Each case is also checked against Postfix itself (test_golden_case_matches_postfix): a private
Postfix instance gets the case's settings, every transport in its master.cf is Postfix's
discard(8) under its own syslog name, and one message to all of the case's recipients goes in through sendmail. discard logs the
nexthop as its status text, so the log shows which transport:nexthop trivial-rewrite chose.
Starting Postfix needs root; outside CI the test is skipped without it.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pyfastmta.config.valuetypes import split_list
from pyfastmta.maps import Maps, open_table
from pyfastmta.resolve import AddressResolver

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "resolve"
CASES = sorted(path.stem for path in GOLDEN.glob("*.in"))
UPDATE_GOLDEN = os.environ.get("PYFASTMTA_UPDATE_GOLDEN") == "1"
# The envelope sender of every case (sender_dependent_relayhost_maps look at it).
SENDER = "sender@example.org"
LIST_SETTINGS = {"mydestination", "relay_domains", "virtual_mailbox_domains", "inet_interfaces_addresses",
                 "parent_domain_matches_subdomains"}


def with_table_paths(value: str) -> str:
    """texthash: tables of a case are named relative to the golden directory."""
    return re.sub(r"(!?texthash:)([^\s,]+)", lambda m: f"{m.group(1)}{GOLDEN / m.group(2)}", value)


def load_case(name: str) -> tuple[AddressResolver, list[str]]:
    settings: dict[str, object] = {"relay_domains": [], "relayhost": "", "transport_maps": []}
    recipients: list[str] = []
    in_recipients = False
    for line in (GOLDEN / f"{name}.in").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if in_recipients:
            recipients.append("" if line == "<>" else line)
        elif line == "recipients:":
            in_recipients = True
        else:
            key, _, value = (part.strip() for part in line.partition("="))
            value = with_table_paths(value)
            if key in ("transport_maps", "relocated_maps", "sender_dependent_relayhost_maps"):
                settings[key] = Maps(key, split_list(value), open_table)
            else:
                settings[key] = split_list(value) if key in LIST_SETTINGS else value
    return AddressResolver(**settings), recipients


@pytest.mark.parametrize("case", CASES)
def test_golden_resolution(case):
    resolver, recipients = load_case(case)
    lines = []
    for recipient in recipients:
        result = resolver.resolve(recipient, SENDER)
        shown = recipient or "<>"
        lines.append(f"{shown} -> {result.address_class} {result.transport}:{result.nexthop} {result.recipient}\n")
    ref = GOLDEN / f"{case}.ref"
    if UPDATE_GOLDEN:
        ref.write_text("".join(lines))
    assert "".join(lines) == ref.read_text()

TRANSPORTS = ("smtp", "relay", "local", "virtual", "lmtp", "slow", "error", "retry", "discard")
SERVICES = (
    "pickup unix n - n 60 1 pickup", "cleanup unix n - n - 0 cleanup", "qmgr unix n - n 300 1 qmgr",
    "rewrite unix - - n - - trivial-rewrite", "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce", "trace unix - - n - 0 bounce", "proxymap unix - - n - - proxymap",
    "showq unix n - n - - showq", "postlog unix-dgram n - n - 1 postlogd",
    *(f"{name} unix - n n - - discard -o syslog_name=resolve-{name}" for name in TRANSPORTS),
)
DELIVERED = re.compile(r"resolve-(\w+)/discard\[\d+\]: \w+: to=<([^>]*)>.*status=sent \((.*)\)$")
DSN = re.compile(r"^\d\.\d{1,3}\.\d{1,3} ")

can_run_postfix = shutil.which("postfix") and os.geteuid() == 0
needs_postfix = pytest.mark.skipif(not can_run_postfix and not os.environ.get("CI"),
                                reason="needs Postfix and root to start a private instance")


def postfix_settings(case: str, config: Path) -> tuple[dict[str, str], list[str]]:
    settings: dict[str, str] = {}
    recipients: list[str] = []
    in_recipients = False
    for line in (GOLDEN / f"{case}.in").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if in_recipients:
            # sendmail takes neither the null recipient nor an address with a space.
            if line != "<>" and " " not in line:
                recipients.append(line)
        elif line == "recipients:":
            in_recipients = True
        else:
            name, _, value = (part.strip() for part in line.partition("="))
            value = with_table_paths(value)
            # The addresses of this host in a golden case are proxy addresses to Postfix.
            settings["proxy_interfaces" if name == "inet_interfaces_addresses" else name] = value
    return settings, recipients


def postfix_resolutions(case: str, root: Path) -> dict[str, str]:
    config, spool, data = root / "etc", root / "spool", root / "data"
    for directory in (config, spool, data):
        directory.mkdir(parents=True)
    root.chmod(0o755)
    owner = pwd.getpwnam("postfix")
    os.chown(data, owner.pw_uid, owner.pw_gid)
    settings, recipients = postfix_settings(case, config)
    main_cf = {"compatibility_level": "3.6", "queue_directory": str(spool), "data_directory": str(data),
               "inet_interfaces": "loopback-only", "local_recipient_maps": "", "alias_maps": "",
               "alias_database": "", "maillog_file": str(root / "maillog"), "maillog_file_prefixes": str(root),
               "relay_domains": "", "virtual_mailbox_domains": "", **settings}
    (config / "main.cf").write_text("".join(f"{name} = {value}\n" for name, value in main_cf.items()))
    (config / "master.cf").write_text("\n".join(SERVICES) + "\n")
    started = subprocess.run(["postfix", "-c", str(config), "start"], capture_output=True, text=True, check=False)
    assert started.returncode == 0, (root / "maillog").read_text() if (root / "maillog").exists() else ""
    try:
        subprocess.run(["sendmail", "-C", str(config), "-f", SENDER, "--", *recipients],
                       input=b"Subject: resolution\n\nbody\n", check=True, capture_output=True)
        # qmgr logs "removed" once every recipient has had its delivery.
        deadline = time.monotonic() + 20
        log = ""
        while ": removed" not in log and time.monotonic() < deadline:
            time.sleep(0.1)
            log = (root / "maillog").read_text() if (root / "maillog").exists() else ""
        found: dict[str, str] = {}
        for line in log.splitlines():
            match = DELIVERED.search(line)
            if match:
                found[match.group(2).lower()] = f"{match.group(1)}:{match.group(3)}"
        return found
    finally:
        subprocess.run(["postfix", "-c", str(config), "stop"], capture_output=True, check=False)


@needs_postfix
@pytest.mark.parametrize("case", CASES)
def test_golden_case_matches_postfix(case):
    resolver, recipients = load_case(case)
    ours = {}
    for recipient in recipients:
        if recipient and " " not in recipient:
            result = resolver.resolve(recipient, SENDER)
            # discard(8) drops the DSN code in front of the text; Postfix keeps the nexthop's case
            # where pyfastmta lowercases a domain.
            ours[result.recipient.lower()] = f"{result.transport}:{DSN.sub('', result.nexthop)}".lower()
    # Postfix's daemons run as mail_owner and must reach the instance's directory, which pytest's
    # tmp_path (under a directory only root may enter) does not allow.
    root = Path(tempfile.mkdtemp(prefix="resolve-postfix-"))
    try:
        theirs = {address: value.lower() for address, value in postfix_resolutions(case, root).items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert theirs == ours
