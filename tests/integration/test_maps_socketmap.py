"""socketmap: tables against a socketmap server on loopback, with Postfix's own socketmap client
(`postmap -q KEY socketmap:...`) as the oracle: what it gets from the same server, ours gets too,
for found and missing keys, server failures, size limits, UTF-8, closed connections and a
server that never answers. Lookups run inside a coroutine on asyncio and on uvloop, as a worker
makes them (synchronously, from its event loop)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from peers.socketmapserver import SocketmapServer

from pyfastmta.maps import TableError, open_table
from pyfastmta.maps.registry import TableOptions
from pyfastmta.maps.socketmap import open_socketmap
from pyfastmta.maps.table import TableTemporaryError

POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
needs_postmap = pytest.mark.skipif(
    not os.path.exists(POSTMAP) and not os.environ.get("CI"), reason="Postfix's postmap is not installed")

# The reply size limit is on the payload: "OK " and a value of 99,997 bytes is the longest reply.
LONGEST = "v" * 99997
TABLE = {
    "Found": "OK value",
    "found": "OK lower-case key, another value",
    "spaces": "OK  two leading spaces kept",
    "empty": "OK ",
    "bare-ok": "OK",                       # no space, so no value: Postfix finds nothing
    "missing-explicit": "NOTFOUND ",
    "temp": "TEMP database busy",
    "timeout": "TIMEOUT backend slow",
    "perm": "PERM no such thing",
    "other": "MAYBE later",
    "long": "OK " + LONGEST,
    "too-long": "OK " + LONGEST + "v",
    "ÄÖ@exämple.com": "OK Ümlaut välue",
    "with space": "OK spaced key",
    "bad-utf8": "OK \udcff\udcfe",          # bytes 0xff 0xfe on the wire
}
KEYS = [*TABLE, "FOUND", "absent", "äö@exämple.com"]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("postfix")
    (directory / "main.cf").write_text("compatibility_level = 3.6\nsmtputf8_enable = yes\n")
    old = time.time() - 10  # postmap waits for a freshly written main.cf to settle
    os.utime(directory / "main.cf", (old, old))
    return directory


def postfix_outcomes(config: Path, spec: str, keys: list[str]) -> dict[str, tuple[str, str | None]]:
    """Postfix's client on each key, all at once (it pauses a second before a fatal exit):
    ("found", value), ("notfound", None), or ("temporary" | "permanent", None)."""
    processes = {key: subprocess.Popen([POSTMAP, "-c", str(config), "-q", key, spec],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for key in keys}
    outcomes = {}
    for key, process in processes.items():
        out, err = process.communicate(timeout=60)
        stderr = err.decode("utf-8", "replace")
        if process.returncode == 0:
            outcomes[key] = ("found", out.decode("utf-8", "surrogateescape").removesuffix("\n"))
        elif "fatal" not in stderr:
            outcomes[key] = ("notfound", None)
        elif "permanent error" in stderr or "non-UTF-8 value" in stderr:
            outcomes[key] = ("permanent", None)
        else:
            outcomes[key] = ("temporary", None)
    return outcomes


def our_outcome(table, key: str) -> tuple[str, str | None]:
    try:
        value = table.get(key)
    except TableTemporaryError:
        return ("temporary", None)
    except TableError:
        return ("permanent", None)
    return ("notfound", None) if value is None else ("found", value)


def lookups(run, table, keys: list[str]) -> dict[str, tuple[str, str | None]]:
    async def look_up_all():
        return {key: our_outcome(table, key) for key in keys}
    return run(look_up_all())


@needs_postmap
@pytest.mark.parametrize("transport", ["inet", "unix"])
def test_same_answers_as_postfix_client(run, config, tmp_path, transport):
    unix_path = str(tmp_path / "socketmap.sock") if transport == "unix" else None
    with SocketmapServer({"m": TABLE}, unix_path=unix_path) as server:
        expected = postfix_outcomes(config, server.spec("m"), KEYS)
        # The oracle's own view, so that a broken server cannot make both sides agree on nothing.
        assert expected["Found"] == ("found", "value")
        assert expected["long"] == ("found", LONGEST)
        assert expected["bare-ok"] == ("notfound", None)
        assert expected["temp"] == expected["too-long"] == ("temporary", None)
        assert expected["perm"] == ("permanent", None)
        table = open_table(server.spec("m"), TableOptions())
        try:
            assert lookups(run, table, KEYS) == expected
            # Keys go to the server exactly as given: no folding, by Postfix's client nor ours.
            assert ("m", "FOUND") in server.requests and ("m", "ÄÖ@exämple.com") in server.requests
        finally:
            table.close()


@needs_postmap
def test_unknown_map_name_is_a_permanent_error(run, config):
    with SocketmapServer({"m": TABLE}) as server:
        assert postfix_outcomes(config, server.spec("other"), ["Found"]) == {"Found": ("permanent", None)}
        table = open_table(server.spec("other"), TableOptions())
        assert lookups(run, table, ["Found"]) == {"Found": ("permanent", None)}
        table.close()


@needs_postmap
def test_one_connection_for_many_lookups(run, config):
    keys = [f"key{number}" for number in range(200)]
    with SocketmapServer({"m": {key: f"OK {key.upper()}" for key in keys}}) as server:
        result = subprocess.run([POSTMAP, "-c", str(config), "-q", "-", server.spec("m")],
                                input="".join(f"{key}\n" for key in keys), capture_output=True,
                                text=True, check=False, timeout=60)
        assert result.stdout == "".join(f"{key}\t{key.upper()}\n" for key in keys)
        assert server.connections == 1
        table = open_table(server.spec("m"), TableOptions())
        assert lookups(run, table, keys) == {key: ("found", key.upper()) for key in keys}
        assert server.connections == 2
        # A second table on the same server shares the connection, whatever map it names.
        other = open_table(server.spec("m2"), TableOptions())
        assert lookups(run, other, ["x"]) == {"x": ("permanent", None)}
        assert server.connections == 2
        other.close()
        table.close()


@needs_postmap
def test_server_closing_between_queries(run, config):
    keys = ["a", "b", "c", "d"]
    with SocketmapServer({"m": {"a": "OK 1", "c": "OK 3"}}, mode="close") as server:
        result = subprocess.run([POSTMAP, "-c", str(config), "-q", "-", server.spec("m")],
                                input="".join(f"{key}\n" for key in keys), capture_output=True,
                                text=True, check=False, timeout=60)
        assert result.stdout == "a\t1\nc\t3\n"
        table = open_table(server.spec("m"), TableOptions())
        outcomes = lookups(run, table, keys)
        table.close()
    assert outcomes == {"a": ("found", "1"), "b": ("notfound", None), "c": ("found", "3"),
                        "d": ("notfound", None)}


@needs_postmap
def test_failures_inside_composites(run, config):
    """A failing part fails a unionmap even after another part found something; a pipeline
    that ends before the failing part does not fail."""
    with SocketmapServer({"m": TABLE}) as server:
        specs = {
            "union-temp": f"unionmap:{{inline:{{temp=1}}, {server.spec('m')}}}",
            "union-perm": f"unionmap:{{{server.spec('m')}, inline:{{perm=1}}}}",
            "pipe-temp": f"pipemap:{{inline:{{temp=TEMP,found=timeout}}, {server.spec('m')}}}",
            "pipe-short": f"pipemap:{{inline:{{other=x}}, {server.spec('m')}}}",
            "pipe-found": f"pipemap:{{inline:{{x=Found}}, {server.spec('m')}}}",
        }
        keys = {"union-temp": "temp", "union-perm": "perm", "pipe-temp": "found",
                "pipe-short": "temp", "pipe-found": "x"}
        # Postfix pauses a second before each fatal exit: ask it about every composite at once.
        with ThreadPoolExecutor(len(specs)) as pool:
            answers = dict(zip(specs, pool.map(
                lambda name: postfix_outcomes(config, specs[name], [keys[name]]), specs)))
        for name, spec in specs.items():
            expected = answers[name]
            table = open_table(spec, TableOptions())
            try:
                assert lookups(run, table, [keys[name]]) == expected, name
            finally:
                table.close()
            assert expected[keys[name]][0] == {
                "union-temp": "temporary", "union-perm": "permanent", "pipe-temp": "temporary",
                "pipe-short": "notfound", "pipe-found": "found"}[name]


def test_server_restart_and_outage(run, tmp_path):
    path = str(tmp_path / "restart.sock")
    server = SocketmapServer({"m": {"k": "OK before"}}, unix_path=path)
    table = open_table(f"socketmap:unix:{path}:m", TableOptions())
    try:
        assert lookups(run, table, ["k"]) == {"k": ("found", "before")}
        server.stop()
        # Nobody listens: a temporary error, never "not found".
        assert lookups(run, table, ["k"]) == {"k": ("temporary", None)}
        server = SocketmapServer({"m": {"k": "OK after"}}, unix_path=path)
        assert lookups(run, table, ["k"]) == {"k": ("found", "after")}
    finally:
        table.close()
        server.stop()


def test_silent_server_fails_in_bounded_time(run):
    with SocketmapServer({"m": {"k": "OK never sent"}}, mode="silent") as server:
        table = open_socketmap(f"{server.endpoint}:m", TableOptions(), timeout=0.5)
        started = time.monotonic()
        assert lookups(run, table, ["k"]) == {"k": ("temporary", None)}
        elapsed = time.monotonic() - started
        table.close()
    assert 0.4 < elapsed < 3, elapsed


def test_idle_connection_is_replaced(run):
    with SocketmapServer({"m": {"k": "OK v"}}) as server:
        table = open_socketmap(f"{server.endpoint}:m", TableOptions(), max_idle=0.2)
        assert lookups(run, table, ["k", "k"]) == {"k": ("found", "v")}
        assert server.connections == 1
        time.sleep(0.3)
        assert lookups(run, table, ["k"]) == {"k": ("found", "v")}
        assert server.connections == 2
        table.close()


@needs_postmap
@pytest.mark.parametrize("smtputf8_enable", [True, False])
def test_union_with_fixed_first_table_folds_what_the_server_sees(run, tmp_path, smtputf8_enable):
    """With smtputf8_enable, a unionmap whose first table is fixed folds the query before any
    part sees it, so the server gets the folded key; without it, the key as given."""
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(
        f"compatibility_level = 3.6\nsmtputf8_enable = {'yes' if smtputf8_enable else 'no'}\n")
    old = time.time() - 10
    os.utime(directory / "main.cf", (old, old))
    table_data = {"Mixed@Example.COM": "OK as given", "mixed@example.com": "OK folded"}
    with SocketmapServer({"m": table_data}) as server:
        spec = f"unionmap:{{inline:{{other=1}}, {server.spec('m')}}}"
        expected = postfix_outcomes(directory, spec, ["Mixed@Example.COM"])
        seen_by_postfix = list(server.requests)
        server.requests.clear()
        table = open_table(spec, TableOptions(smtputf8_enable=smtputf8_enable))
        assert lookups(run, table, ["Mixed@Example.COM"]) == expected
        assert server.requests == seen_by_postfix
        table.close()
    assert expected["Mixed@Example.COM"] == ("found", "folded" if smtputf8_enable else "as given")


def test_bad_names(run):
    async def open_bad(name):
        open_table(f"socketmap:{name}", TableOptions())

    for name in ("inet:127.0.0.1:25", "tcp:127.0.0.1:25:m", "inet:127.0.0.1:m", "nocolon",
                 "inet:[::1:25:m"):
        with pytest.raises(TableError, match="socketmap:"):
            run(open_bad(name))
