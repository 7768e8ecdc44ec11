"""The policy delegation client against postgrey, a real policy server from Debian: a new
(client, sender, recipient) triplet is greylisted, the same one is let through with a header to
prepend once the delay has passed; a server that cannot be reached gives the default action."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from peers.loopback import free_port, wait_listening
from pyfastmta.smtpd.policy import PolicyClient, parse_policy_service, request_text

POSTGREY = shutil.which("postgrey", path="/usr/sbin:/usr/bin")
DELAY = 2

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (POSTGREY is None or os.geteuid() != 0),
    reason="postgrey (make sysdeps) runs as its own user, started by root")

DEFAULTS = {
    "smtpd_policy_service_timeout": 10.0, "smtpd_policy_service_max_idle": 300.0,
    "smtpd_policy_service_max_ttl": 1000.0, "smtpd_policy_service_try_limit": 2,
    "smtpd_policy_service_retry_delay": 0.2,
    "smtpd_policy_service_default_action": "451 4.3.5 Server configuration problem",
    "smtpd_policy_service_request_limit": 0, "smtpd_policy_service_policy_context": "",
}


@pytest.fixture
def postgrey():
    directory = Path(tempfile.mkdtemp(prefix="pyfastmta-postgrey-"))
    user = pwd.getpwnam("postgrey")
    (directory / "db").mkdir()
    os.chown(directory / "db", user.pw_uid, user.pw_gid)
    directory.chmod(0o755)
    (directory / "whitelist").write_text("")
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        [POSTGREY, f"--inet=127.0.0.1:{port}", f"--dbdir={directory / 'db'}", f"--delay={DELAY}",
         "--auto-whitelist-clients=0", f"--whitelist-clients={directory / 'whitelist'}",
         f"--whitelist-recipients={directory / 'whitelist'}", "--hostname=policy.example.test"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", port, process)
        yield port
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


def request(client: str, sender: str, recipient: str) -> dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
            "client_address": client, "client_name": "unknown", "reverse_client_name": "unknown",
            "helo_name": "client.example", "sender": sender, "recipient": recipient,
            "recipient_count": "0", "queue_id": "", "instance": "1.2.3", "size": "0"}


def test_greylisting_by_postgrey(postgrey, on_loop):
    service = parse_policy_service(f"inet:127.0.0.1:{postgrey}", DEFAULTS.get, "/var/spool")

    async def dialogue():
        client = PolicyClient(service)
        triplet = request("192.0.2.10", "someone@example.com", "user@example.net")
        first = await client.query(triplet)
        again = await client.query(triplet)
        other = await client.query(request("192.0.2.10", "else@example.com", "user@example.net"))
        await asyncio.sleep(DELAY + 1.5)
        later = await client.query(triplet)
        client.close()
        return first, again, other, later

    first, again, other, later = on_loop(dialogue())
    assert first.startswith("DEFER_IF_PERMIT Greylisted")
    assert again.startswith("DEFER_IF_PERMIT Greylisted")
    assert other.startswith("DEFER_IF_PERMIT Greylisted")
    assert later.startswith("PREPEND X-Greylist: delayed ")
    assert "by postgrey-" in later and "at policy.example.test" in later


def test_unreachable_server_gives_the_default_action(on_loop):
    port = free_port("127.0.0.1")  # nothing listens there
    service = parse_policy_service(f"{{ inet:127.0.0.1:{port}, default_action=DUNNO, try_limit=3 }}",
                                   DEFAULTS.get, "/var/spool")
    warnings: list[str] = []

    async def ask():
        client = PolicyClient(service, warnings.append)
        started = time.monotonic()
        action = await client.query(request("192.0.2.1", "a@example.com", "b@example.net"))
        return action, time.monotonic() - started

    action, seconds = on_loop(ask())
    assert action == "DUNNO"
    assert service.try_limit == 3 and seconds >= 2 * 0.2  # two waits between three attempts
    assert len(warnings) == 1 and f"problem talking to server inet:127.0.0.1:{port}" in warnings[0]


def test_service_syntax():
    service = parse_policy_service("unix:private/policy", DEFAULTS.get, "/var/spool/pyfastmta")
    assert (service.transport, service.address, service.timeout) == ("unix", "/var/spool/pyfastmta/private/policy", 10.0)
    braced = parse_policy_service("{ inet:127.0.0.1:9998, timeout=5s, max_idle=1m, policy_context=submission }",
                                  DEFAULTS.get, "/q")
    assert (braced.timeout, braced.max_idle, braced.policy_context) == (5, 60, "submission")
    for bad in ("tcp:127.0.0.1:1", "inet:127.0.0.1", "{ inet:127.0.0.1:1, colour=red }",
                "{ inet:127.0.0.1:1, timeout=soon }", "{ inet:127.0.0.1:1"):
        with pytest.raises(ValueError):
            parse_policy_service(bad, DEFAULTS.get, "/q")
    # A value cannot end the request early.
    assert request_text({"sender": "a\nb@example.com", "x": "y"}) == b"sender=a b@example.com\nx=y\n\n"


def test_greylisting_in_a_session(postgrey, make_mta, connect):
    """check_policy_service in smtpd_recipient_restrictions: postgrey's DEFER_IF_PERMIT turns a
    permitted recipient into 450 until the delay has passed."""
    mta = make_mta({"mynetworks": "127.0.0.1/32",
                    "smtpd_recipient_restrictions": f"check_policy_service inet:127.0.0.1:{postgrey}, "
                                                    "reject_unauth_destination"})

    def attempt() -> tuple[int, str]:
        client = connect(mta, source="127.0.0.2")
        assert client.command("EHLO client.example")[0] == 250
        assert client.command("MAIL FROM:<someone@example.com>")[0] == 250
        reply = client.command("RCPT TO:<user@example.test>")
        client.command("QUIT")
        client.close()
        return reply

    code, text = attempt()
    assert code == 450 and text.startswith("450 4.2.0 <user@example.test>: Recipient address rejected: "
                                           "Greylisted"), text
    assert mta.logged("NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 450 4.2.0 <user@example.test>: "
                      "Recipient address rejected: Greylisted")
    time.sleep(DELAY + 1.5)
    assert attempt()[0] == 250
