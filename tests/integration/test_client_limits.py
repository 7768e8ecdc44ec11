"""smtpd_client_*_limit, counted per machine: two workers share one table, so a client gets the
limit once, not once per worker; clients in smtpd_client_event_limit_exceptions ($mynetworks)
are not counted."""

from __future__ import annotations

import base64
import re

from peers.loopback import wait_until

OUTSIDER = "127.0.0.2"


def worker_pids_that_greeted(mta, client: str) -> set[str]:
    return set(re.findall(rf"smtpd\[(\d+)\]: connect from \S+\[{re.escape(client)}\]", mta.log_text()))


def test_connection_count_is_machine_wide(make_mta, connect):
    mta = make_mta({"mynetworks": "127.0.0.1/32", "smtpd_client_connection_count_limit": "4",
                    "worker_count": "2"})
    held = []
    refused = []
    for _ in range(20):
        client = connect(mta, source=OUTSIDER, greet=False)
        code, text = client.reply()
        (held if code == 220 else refused).append((client, text))
    assert len(held) == 4
    assert refused and all(text == f"421 4.7.0 mx.example.test Error: too many connections from {OUTSIDER}"
                           for _client, text in refused)
    assert all(client.closed_by_server() for client, _text in refused)
    assert mta.logged(f"warning: Connection concurrency limit exceeded: 5 from unknown[{OUTSIDER}] "
                      f"for service {mta.host}:{mta.port}")
    # Twenty connections went to both workers (the kernel spreads them), yet only four were
    # held: both counted in one table. (Workers write the log in batches: wait for both.)
    assert wait_until(lambda: len(worker_pids_that_greeted(mta, OUTSIDER)) == 2, 10)
    # A client that leaves makes room; mynetworks is not counted at all.
    held[0][0].command("QUIT")
    held[0][0].close()
    assert mta.logged(f"disconnect from unknown[{OUTSIDER}]")
    assert connect(mta, source=OUTSIDER, greet=False).reply()[0] == 220
    insiders = [connect(mta, source="127.0.0.1", greet=False) for _ in range(8)]
    assert all(client.reply()[0] == 220 for client in insiders)


def test_connection_message_and_recipient_rates(make_mta, connect):
    mta = make_mta({"mynetworks": "127.0.0.1/32", "smtpd_client_connection_rate_limit": "3",
                    "smtpd_client_message_rate_limit": "2", "smtpd_client_recipient_rate_limit": "3",
                    "worker_count": "2"})
    client = connect(mta, source=OUTSIDER)
    assert client.command("EHLO outside.example")[0] == 250
    assert client.command("MAIL FROM:<a@outside.example>")[0] == 250
    assert [client.command(f"RCPT TO:<user{n}@example.test>")[0] for n in range(4)] == [250, 250, 250, 450]
    assert client.command("RSET")[0] == 250
    assert client.command("MAIL FROM:<a@outside.example>")[0] == 250
    assert client.command("RSET")[0] == 250
    assert client.command("MAIL FROM:<a@outside.example>") == (
        450, f"450 4.7.1 Error: too much mail from {OUTSIDER}")
    assert mta.logged(f"warning: Recipient address rate limit exceeded: 4 from unknown[{OUTSIDER}]")
    assert mta.logged(f"warning: Message delivery request rate limit exceeded: 3 from unknown[{OUTSIDER}]")
    client.command("QUIT")
    # Two more connections make three in this time unit; the fourth is one too many.
    for _ in range(2):
        assert connect(mta, source=OUTSIDER).command("QUIT")[0] == 221
    assert connect(mta, source=OUTSIDER, greet=False).reply() == (
        421, f"421 4.7.0 mx.example.test Error: too many connections from {OUTSIDER}")
    assert mta.logged(f"warning: Connection rate limit exceeded: 4 from unknown[{OUTSIDER}]")
    assert connect(mta, source="127.0.0.1").command("QUIT")[0] == 221


def test_auth_rate_is_machine_wide(make_mta, connect, tmp_path):
    """smtpd_client_auth_rate_limit: AUTH commands are counted in the shared table whichever
    worker takes them, failed and malformed ones too; a client in mynetworks is not counted."""
    users = tmp_path / "users"
    users.write_text("dave:{PLAIN}secret\n")
    mta = make_mta({"mynetworks": "127.0.0.1/32", "smtpd_client_auth_rate_limit": "4",
                    "worker_count": "2", "smtpd_client_port_logging": "yes",
                    "smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "passwd-file",
                    "smtpd_sasl_path": str(users)})
    wrong = "AUTH PLAIN " + base64.b64encode(b"\0dave\0wrong").decode()
    replies, workers = [], set()
    # One AUTH per connection until both workers have taken some (the kernel picks the worker).
    while len(replies) < 6 or len(workers) < 2:
        assert len(replies) < 40, "every connection went to the same worker"
        client = connect(mta, source=OUTSIDER)
        port = client.sock.getsockname()[1]
        client.command("EHLO outside.example")
        replies.append(client.command(wrong if len(replies) % 2 else "AUTH"))
        client.command("QUIT")
        pattern = rf"smtpd\[(\d+)\]: connect from \S+\[{re.escape(OUTSIDER)}\]:{port}\b"
        assert wait_until(lambda: re.search(pattern, mta.log_text()), 10)
        workers.add(re.search(pattern, mta.log_text()).group(1))
    # Counted once per machine: four in all, not four per worker.
    assert [code for code, _text in replies[:4]] == [501, 535, 501, 535]
    assert all(reply == (450, f"450 4.7.1 Error: too many AUTH commands from {OUTSIDER}")
               for reply in replies[4:])
    assert mta.logged(f"warning: AUTH command rate limit exceeded: 5 from unknown[{OUTSIDER}]:")
    insider = connect(mta, source="127.0.0.1")
    insider.command("EHLO inside.example")
    assert all(insider.command("AUTH")[0] == 501 for _ in range(6))
