"""SASL backends against a real Dovecot (Debian's dovecot-core, a private instance running only
its authentication service on a UNIX socket): the Dovecot client runs PLAIN and LOGIN through
Dovecot, many exchanges at once on one connection; the password-file backend reads the same
users file and must agree with Dovecot on every user and password (hashes made by doveadm pw)."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import pytest

from peers.dovecot import DOVECOT, USERS, b64, hashed
from pyfastmta.sasl.dovecot import DovecotAuth
from pyfastmta.sasl.passwords import PasswordFile

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or not os.path.exists(DOVECOT)),
    reason="a private Dovecot runs its services as the package's users, started by root")


_clients = iter(range(1, 10**6))


def conversation(auth):
    # Each exchange from a client address of its own: Dovecot slows down the next attempts from
    # an address that has just failed (its auth penalty), and these tests fail many on purpose.
    n = next(_clients)
    return auth.conversation(client_address=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                             server_address="127.0.0.1", secured=False, client_port=40000,
                             server_port=25)


def test_dovecot_plain_and_login(dovecot, on_loop):
    async def exchanges():
        auth = DovecotAuth(str(dovecot.socket), timeout=10)
        mechanisms = await auth.mechanisms()
        right = await conversation(auth).start("PLAIN", b64("\0alice\0secret"))
        wrong = await conversation(auth).start("PLAIN", b64("\0alice\0guess"))
        login = conversation(auth)
        asks_user = await login.start("LOGIN", None)
        asks_password = await login.step(b64("bob"))
        logged_in = await login.step(b64("b0b-pass"))
        # Empty initial challenge for PLAIN without an initial response, then the response.
        plain = conversation(auth)
        empty = await plain.start("PLAIN", None)
        after = await plain.step(b64("\0carol\0Carol with spaces"))
        auth.close()
        return mechanisms, right, wrong, asks_user, asks_password, logged_in, empty, after

    mechanisms, right, wrong, asks_user, asks_password, logged_in, empty, after = on_loop(exchanges())
    assert sorted(mechanisms) == ["LOGIN", "PLAIN"]
    assert (right.outcome, right.username) == ("ok", "alice")
    assert wrong.outcome == "fail" and not wrong.temporary
    assert base64.b64decode(asks_user.challenge) == b"Username:"
    assert base64.b64decode(asks_password.challenge) == b"Password:"
    assert (logged_in.outcome, logged_in.username) == ("ok", "bob")
    assert (empty.outcome, empty.challenge) == ("continue", "")
    assert (after.outcome, after.username) == ("ok", "carol")


def test_many_exchanges_at_once_on_one_connection(dovecot, on_loop):
    async def together():
        auth = DovecotAuth(str(dovecot.socket), timeout=10)
        tries = [(user, password if n % 2 == 0 else password + "x")
                 for n, (user, (_scheme, password)) in enumerate(list(USERS.items()) * 5)]
        steps = await asyncio.gather(*(conversation(auth).start("PLAIN", b64(f"\0{u}\0{p}"))
                                       for u, p in tries))
        auth.close()
        return [(step.outcome, step.username) for step in steps], tries

    outcomes, tries = on_loop(together())
    assert outcomes == [(("ok", user) if n % 2 == 0 else ("fail", outcome[1]))
                        for n, ((user, _p), outcome) in enumerate(zip(tries, outcomes))]
    assert sum(1 for outcome, _ in outcomes if outcome == "ok") == len(tries) // 2


def test_password_file_agrees_with_dovecot(dovecot, on_loop):
    passwords = PasswordFile(str(dovecot.users))
    candidates = [(user, password) for user, (_scheme, password) in USERS.items()]
    candidates += [(user, password + "!") for user, password in candidates]
    candidates += [("nobody-here", "secret"), ("alice", "SECRET"), ("alice", "")]

    async def dovecot_says():
        auth = DovecotAuth(str(dovecot.socket), timeout=10)
        answers = []
        for user, password in candidates:
            step = await conversation(auth).start("PLAIN", b64(f"\0{user}\0{password}"))
            answers.append(step.outcome == "ok")
        auth.close()
        return answers

    expected = on_loop(dovecot_says())
    assert expected.count(True) == len(USERS)
    assert [passwords.verify(user, password) for user, password in candidates] == expected

    async def through_conversations():
        results = []
        for user, password in candidates[:4]:
            login = passwords.conversation()
            await login.start("LOGIN", b64(user))
            results.append((await login.step(b64(password))).outcome)
        acting_as_other = await passwords.conversation().start("PLAIN", b64("bob\0alice\0secret"))
        garbage = await passwords.conversation().start("PLAIN", "not base64!")
        return results, acting_as_other, garbage

    results, acting_as_other, garbage = on_loop(through_conversations())
    assert results == ["ok"] * 4
    assert acting_as_other.outcome == "fail" and garbage.outcome == "fail"


def test_password_file_reads_changes_and_refuses_unknown_schemes(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:{PLAIN}one\nzed:" + hashed("SHA512-CRYPT", "pw") + "\n")
    warnings: list[str] = []
    passwords = PasswordFile(str(users), warnings.append)
    assert passwords.verify("alice", "one")
    assert not passwords.verify("zed", "pw") and "scheme SHA512-CRYPT" in warnings[0]
    time.sleep(0.01)
    users.write_text("alice:{PLAIN}two\n")
    assert passwords.verify("alice", "two") and not passwords.verify("alice", "one")


def test_unreachable_server_is_a_temporary_failure(tmp_path, on_loop):
    async def ask():
        auth = DovecotAuth(str(tmp_path / "no-socket"), timeout=2)
        return await auth.mechanisms(), await conversation(auth).start("PLAIN", b64("\0a\0b"))

    mechanisms, step = on_loop(ask())
    assert mechanisms == []
    assert step.outcome == "fail" and step.temporary
