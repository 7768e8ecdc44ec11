"""Golden cases for AddressResolver in tests/golden/resolve/: NAME.in holds main.cf-style settings
(lists as Postfix writes them; texthash: paths relative to the golden directory), a line
"recipients:", then one recipient a line ("<>" is the null recipient; "#" starts a comment).
NAME.ref has one line a recipient: `recipient -> class transport:nexthop recipient-as-passed-on`.
The expected results were derived from trivial-rewrite(8), transport(5) and postconf(5), not from
this code. To add a case, write the .in file, run with PYFASTMTA_UPDATE_GOLDEN=1, and check the
.ref by hand against those pages.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyfastmta.config.valuetypes import split_list
from pyfastmta.resolve import AddressResolver, TransportTable

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "resolve"
CASES = sorted(path.stem for path in GOLDEN.glob("*.in"))
UPDATE_GOLDEN = os.environ.get("PYFASTMTA_UPDATE_GOLDEN") == "1"
LIST_SETTINGS = {"mydestination", "relay_domains", "virtual_mailbox_domains", "inet_interfaces_addresses",
                 "parent_domain_matches_subdomains"}


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
            if key == "transport_maps":
                settings[key] = [TransportTable.from_file(str(GOLDEN / item.removeprefix("texthash:")))
                                 for item in split_list(value)]
            else:
                settings[key] = split_list(value) if key in LIST_SETTINGS else value
    return AddressResolver(**settings), recipients


@pytest.mark.parametrize("case", CASES)
def test_golden_resolution(case):
    resolver, recipients = load_case(case)
    lines = []
    for recipient in recipients:
        result = resolver.resolve(recipient)
        shown = recipient or "<>"
        lines.append(f"{shown} -> {result.address_class} {result.transport}:{result.nexthop} {result.recipient}\n")
    ref = GOLDEN / f"{case}.ref"
    if UPDATE_GOLDEN:
        ref.write_text("".join(lines))
    assert "".join(lines) == ref.read_text()
