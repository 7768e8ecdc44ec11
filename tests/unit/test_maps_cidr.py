"""cidr: tables against Postfix's own postmap.

tests/golden/maps/features.cidr uses every part of the syntax and errors.cidr holds rules Postfix
skips; both are opened by pyfastmta and by `postmap -q - cidr:file` from Postfix (private
configuration directory), and thousands of keys — the edges of every network in the table, the
same addresses spelled in other ways (exploded, upper case, IPv4-mapped, bracketed, leading
zeros), Hypothesis addresses and garbage — must get the same answer from both, key for key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastmta._ext.cidr import OP_ENDIF, OP_IF, OP_MATCH, CidrMatcher

from pyfastmta.maps.cidr import parse_pattern
from pyfastmta.maps.registry import TableOptions, open_table
from pyfastmta.maps.table import Maps, TableError

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "maps"
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"

# Postfix is a test dependency (make test installs it); only a developer machine without it
# may skip, never CI.
pytestmark = pytest.mark.skipif(not os.path.exists(POSTMAP) and not os.environ.get("CI"),
                                reason="Postfix's postmap is not installed")


@pytest.fixture(scope="module")
def postfix_config(tmp_path_factory):
    """A private configuration directory, so postmap never reads /etc/postfix."""
    path = tmp_path_factory.mktemp("postfix")
    (path / "main.cf").write_text("compatibility_level = 3.6\nsmtputf8_enable = yes\n")
    return str(path)


def postfix_answers(config: str, spec: str, keys: list[str]) -> tuple[dict[str, str], str]:
    data = "".join(key + "\n" for key in keys).encode()
    result = subprocess.run([POSTMAP, "-c", config, "-q", "-", spec], check=False, input=data,
                            capture_output=True, timeout=60)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode in (0, 1), f"postmap failed: {stderr}"
    answers = {}
    for line in result.stdout.decode().split("\n"):
        if line:
            key, _, value = line.partition("\t")
            answers[key] = value
    return answers, stderr


def assert_same_answers(config: str, spec: str, keys: list[str]) -> int:
    keys = list(dict.fromkeys(keys))
    expected, _ = postfix_answers(config, spec, keys)
    table = open_table(spec)
    mismatches = [(key, expected.get(key), table.get(key)) for key in keys
                  if table.get(key) != expected.get(key)]
    assert not mismatches, f"{len(mismatches)} keys differ (key, postfix, ours): {mismatches[:20]}"
    return sum(1 for key in keys if key in expected)


# --------------------------------------------------------------------------- keys

def table_networks(path: Path) -> list[ipaddress._BaseNetwork]:
    """The networks a table names (good rules only), to aim keys at their edges."""
    networks = []
    for line in path.read_text().splitlines():
        words = line.replace("if", " ", 1).replace("!", " ").replace("[", "").replace("]", "").split()
        if not words:
            continue
        try:
            networks.append(ipaddress.ip_network(words[0]))
        except ValueError:
            continue
    return networks


def spellings(address: ipaddress._BaseAddress) -> list[str]:
    """One address written the ways a client or a table might write it."""
    text = str(address)
    forms = [text, text.upper(), f"[{text}]", text + " ", f"{text}/32"]
    if address.version == 4:
        forms += [f"::ffff:{text}", f"::{text}", ".".join(f"0{part}" for part in text.split(".")),
                  f"64:ff9b::{text}"]
    else:
        forms += [address.exploded, address.exploded.upper(), address.compressed.replace("::", ":0::", 1)]
        if address.ipv4_mapped:
            forms.append(f"::ffff:{address.ipv4_mapped}")
    return forms


def edge_keys(networks) -> list[str]:
    keys = []
    for network in networks:
        limit = 2 ** network.max_prefixlen - 1
        for value in (int(network.network_address), int(network.broadcast_address)):
            for delta in (-1, 0, 1):
                if 0 <= value + delta <= limit:
                    keys += spellings(ipaddress.ip_address(value + delta) if network.version == 4
                                      else ipaddress.IPv6Address(value + delta))
    return keys


GARBAGE = ["", " ", "localhost", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4/24", "::ffff:1.2.3",
           "fe80::1%eth0", "2001:db8::1::2", "2001:db8:::1", ":::", "::", "0.0.0.0", "x.y.z.w",
           "١.٢.٣.٤", "1.2.3.4\u00a0", "0x7f.0.0.1", "127.1", "2001:DB8::1", "2001:db8::g"]

ipv4_in_tables = st.sampled_from(table_networks(GOLDEN / "features.cidr")).flatmap(
    lambda network: st.integers(int(network.network_address), int(network.broadcast_address))
    .map(lambda value: network.network_address.__class__(value)))
any_address = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6), ipv4_in_tables,
                        st.ip_addresses(network="100.64.0.0/10"),
                        st.ip_addresses(network="2001:db9::/32"),
                        st.ip_addresses(network="::ffff:0:0/96"))
address_keys = st.builds(lambda address, form: spellings(address)[form % len(spellings(address))],
                         any_address, st.integers(0, 20))


# --------------------------------------------------------------------------- tests

def test_features_match_postfix(postfix_config):
    path = GOLDEN / "features.cidr"
    keys = edge_keys(table_networks(path)) + GARBAGE
    found = assert_same_answers(postfix_config, f"cidr:{path}", keys)
    assert found > 100


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(address_keys, min_size=50, max_size=300))
def test_generated_addresses_match_postfix(postfix_config, keys):
    assert_same_answers(postfix_config, f"cidr:{GOLDEN / 'features.cidr'}", keys)


def test_errors_match_postfix(postfix_config):
    path = GOLDEN / "errors.cidr"
    _, stderr = postfix_answers(postfix_config, f"cidr:{path}", ["x"])
    theirs = sorted(re.findall(r"cidr map .*?, line (\d+): (.*)", stderr))
    table = open_table(f"cidr:{path}")
    ours = []
    for warning in table.warnings:
        line, _, text = warning[len(str(path)) + 1:].partition(": ")
        ours.append((line, text))
    numbered = sorted(item for item in ours if not item[1].startswith("logical line"))
    assert theirs and numbered == theirs
    assert any(text.startswith("logical line must not start with whitespace") for _, text in ours)
    assert "logical line must not start with whitespace" in stderr
    keys = edge_keys(table_networks(path)) + ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.8.1.1",
                                              "0.0.0.0", "1.2.3.4", "10.0.0.3"]
    assert assert_same_answers(postfix_config, f"cidr:{path}", keys) >= 3


EDGE_TABLES = [
    "cidr:{ {0.0.0.0/0 all v4}, {::/0 all v6} }",
    "cidr:{ {!0.0.0.0/0 never}, {::/128 unspecified}, {::ffff:0.0.0.0/96 mapped} }",
    "cidr:{ {255.255.255.255/32 top}, {ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128 top6}, {128.0.0.0/1 upper}, {8000::/1 upper6} }",
    "cidr:{ {if !10.0.0.0/8}, {0.0.0.0/0 not ten}, {endif}, {10.0.0.0/31 low pair}, {::/0 v6} }",
    "cidr:{ {0.0.0.0/256 wrapped to zero}, {::/264 wrapped to eight} }",
]
EDGE_KEYS = ["0.0.0.0", "255.255.255.255", "127.255.255.255", "128.0.0.0", "10.0.0.0", "10.0.0.1",
             "10.0.0.2", "9.255.255.255", "::", "::1", "::ffff:0.0.0.0", "::ffff:10.0.0.1",
             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
             "8000::", "ff00::1", "0:0:0:0:0:0:0:0", "[::1]", "1.2.3.4"]


@pytest.mark.parametrize("spec", EDGE_TABLES)
def test_edge_prefixes_match_postfix(postfix_config, spec):
    assert_same_answers(postfix_config, spec, EDGE_KEYS)


def test_non_utf8_result_is_a_lookup_error(postfix_config, tmp_path):
    source = tmp_path / "bad.cidr"
    source.write_bytes(b"1.2.3.4 caf\xe9\n")
    result = subprocess.run([POSTMAP, "-c", postfix_config, "-q", "1.2.3.4", f"cidr:{source}"], check=False,
                            capture_output=True, text=True)
    # Postfix's lookup fails (postmap: "fatal: ... query error"), it does not answer.
    assert result.stdout == "" and "non-UTF-8 value" in result.stderr and "query error" in result.stderr
    with pytest.raises(TableError, match="non-UTF-8 value"):
        open_table(f"cidr:{source}").get("1.2.3.4")
    assert open_table(f"cidr:{source}", TableOptions(smtputf8_enable=False)).get("1.2.3.4") == "caf\udce9"


def test_pattern_parsing():
    assert parse_pattern("[10.0.0.0]/8") == (4, bytes([10, 0, 0, 0]), 8)
    assert parse_pattern("2001:db8::/32")[::2] == (6, 32)
    assert parse_pattern("1.2.3.4") == (4, bytes([1, 2, 3, 4]), 32)


def test_matcher_directly():
    """The compiled matcher on its own: an if-block skipped as a whole, families kept apart."""
    rules = [
        (OP_IF, True, 4, bytes([10, 0, 0, 0]), 8, 2, -1),
        (OP_MATCH, True, 4, bytes([10, 1, 0, 0]), 16, -1, 0),
        (OP_ENDIF, True, 0, b"", 0, -1, -1),
        (OP_MATCH, False, 6, bytes(16), 0, -1, 1),  # "!::/0" never matches IPv6
        (OP_MATCH, True, 4, bytes(4), 0, -1, 2),
    ]
    matcher = CidrMatcher(rules)
    assert len(matcher) == 5
    assert matcher.find("10.1.2.3") == 0
    assert matcher.find("10.2.0.0") == 2
    assert matcher.find("11.0.0.0") == 2
    assert matcher.find("::1") == -1
    assert matcher.find("not an address") == -1
    assert matcher.find("1.2.3.4\u00e9") == -1
    with pytest.raises(ValueError):
        CidrMatcher([(OP_MATCH, True, 4, bytes(4), 33, -1, 0)])


def test_changed_file_is_picked_up(tmp_path):
    source = tmp_path / "t.cidr"
    source.write_text("10.0.0.0/8 one\n")
    maps = Maps("mynetworks", [f"cidr:{source}"], open_table)
    assert maps.get("10.9.9.9") == "one"
    source.write_text("10.0.0.0/8 two, longer\n")
    assert maps.tables[0].changed()
    maps._next_check = 0  # skip the once-a-second wait
    assert maps.get("10.9.9.9") == "two, longer"
    assert maps.tables[0].pattern and not maps.tables[0].fold
