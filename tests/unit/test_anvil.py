"""The shared client event table (ext/anvil.pyx): counts per (service, client), windows that
restart after the time unit, and one table for every forked process."""

from __future__ import annotations

import os
import time

import pytest

from pyfastmta._ext.anvil import AUTH, MESSAGE, RECIPIENT, TLS_SESSION, ClientEvents


def test_counts_per_client_and_service():
    events = ClientEvents(256, 60)
    assert events.connect("192.0.2.1") == (1, 1)
    assert events.connect("192.0.2.1") == (2, 2)
    assert events.connect("192.0.2.1", 7) == (1, 1)  # another service counts apart
    assert events.connect("2001:db8::1") == (1, 1)
    # An IPv4 client is the same client in its IPv4-mapped IPv6 form.
    assert events.connect("::ffff:192.0.2.1") == (3, 3)
    events.disconnect("192.0.2.1")
    assert [events.event("192.0.2.1", kind) for kind in (MESSAGE, MESSAGE, RECIPIENT, TLS_SESSION, AUTH)] \
        == [1, 2, 1, 1, 1]
    assert events.counts("192.0.2.1") == (2, [3, 2, 1, 1, 1])
    assert events.counts("192.0.2.99") is None
    with pytest.raises(ValueError, match="not an IP address"):
        events.connect("mail.example.com")
    with pytest.raises(ValueError, match="not an event kind"):
        events.event("192.0.2.1", 0)


def test_rates_restart_after_the_time_unit_but_open_connections_stay():
    events = ClientEvents(256, 1)
    events.connect("192.0.2.1")
    events.event("192.0.2.1", MESSAGE)
    time.sleep(2.05)
    assert events.counts("192.0.2.1") == (1, [0, 0, 0, 0, 0])
    assert events.connect("192.0.2.1") == (2, 1)
    events.time_unit = 60
    assert events.time_unit == 60


def test_forked_processes_share_one_table():
    events = ClientEvents(4096, 60)
    children = []
    for worker in range(4):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for _ in range(500):
                    events.connect("198.51.100.7")
                    events.event("198.51.100.7", RECIPIENT)
                for _ in range(200):
                    events.disconnect("198.51.100.7")
                for n in range(300):  # clients of their own, filling other slots
                    events.connect(f"10.{worker}.{n // 256}.{n % 256}")
            except BaseException:
                code = 1
            os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    assert events.counts("198.51.100.7") == (4 * 300, [2000, 0, 2000, 0, 0])
    assert events.counts("10.3.1.43") == (1, [1, 0, 0, 0, 0])


def test_full_table_fails_open():
    # Each client probes at most 64 slots: with 64 slots all held by open connections, one more
    # client is not counted (every answer 0), and the table says how often that happened.
    events = ClientEvents(64, 60)
    for n in range(64):
        assert events.connect(f"10.0.0.{n}") == (1, 1)
    assert events.connect("10.0.1.1") == (0, 0)
    assert events.uncounted == 1
    # A slot frees up once its client has gone and its window has passed.
    fast = ClientEvents(64, 1)
    for n in range(64):
        fast.connect(f"10.0.0.{n}")
    fast.disconnect("10.0.0.5")
    time.sleep(2.05)
    assert fast.connect("10.0.1.1") == (1, 1)
