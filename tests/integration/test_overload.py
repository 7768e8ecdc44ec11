"""An overloaded worker: past 80% of the sessions its open-file limit allows, new sessions run
with Postfix's stress values (smtpd_hard_error_limit = ${stress?{1}:{20}} ...); at the limit a
new client hears 421 and the connection is closed cleanly, and the sessions already open go on."""

from __future__ import annotations

import os
import subprocess
import sys

from peers.loopback import wait_until

# 176 descriptors, 128 kept spare: 48 sessions, stress from the 39th on.
OPEN_FILES = 176
SESSIONS = 48
STRESS_FROM = SESSIONS * 4 // 5


def test_stress_then_421_at_the_session_limit(make_mta, connect):
    mta = make_mta({"worker_count": "1"}, start=False)
    pyfastmta = os.path.join(os.path.dirname(sys.executable), "pyfastmta")  # the installed script
    subprocess.run(["prlimit", f"--nofile={OPEN_FILES}:{OPEN_FILES}", pyfastmta, "-c", str(mta.dir), "start"],
                   env=mta.env, check=True, capture_output=True, timeout=60)
    calm = [connect(mta) for _ in range(STRESS_FROM)]
    # A session that starts under stress ends at its first error (hard error limit 1).
    stressed = connect(mta)
    assert stressed.command("XYZZY") == (500, "500 5.5.2 Error: command not recognized")
    assert stressed.reply() == (421, "421 4.7.0 mx.example.test Error: too many errors")
    # A calm session keeps the normal limit of 20.
    assert calm[0].command("XYZZY")[0] == 500
    assert calm[0].command("NOOP")[0] == 250
    assert mta.logged(f'warning: service "127.0.0.1:{mta.port}": {STRESS_FROM} sessions of at most '
                      f"{SESSIONS} in this worker: new sessions run with stress=yes")
    more = [connect(mta) for _ in range(SESSIONS - STRESS_FROM)]
    refused = connect(mta, greet=False)
    assert refused.reply() == (421, "421 4.3.2 mx.example.test All server ports are busy")
    assert refused.closed_by_server()
    assert mta.logged(f"warning: too many sessions ({SESSIONS}); refusing the connection from [127.0.0.1]")
    # The sessions already open still work, and room comes back when one ends.
    assert more[-1].command("EHLO client.example")[0] == 250
    more[-1].command("QUIT")
    more[-1].close()
    assert wait_until(lambda: _greeted(connect, mta), 10)


def _greeted(connect, mta) -> bool:
    client = connect(mta, greet=False)
    return client.reply()[0] == 220
