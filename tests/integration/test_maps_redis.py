"""redis: tables against a real redis-server on loopback (started per module, stopped by pid):
GET and HGET lookups, key_format expansion as Postfix's query templates expand, the domain
filter, several servers, reconnection after a restart, and a server that is down. Lookups run
inside a coroutine on asyncio and on uvloop, as a worker makes them."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from peers.loopback import free_port, wait_listening

from pyfastmta.maps import Maps, TableError, open_table
from pyfastmta.maps.registry import TableOptions
from pyfastmta.maps.table import TableTemporaryError

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
pytestmark = pytest.mark.skipif(not os.path.exists(REDIS_SERVER) and not os.environ.get("CI"),
                                reason="redis-server is not installed")


class RedisServer:
    """A private redis-server: no persistence, its own directory, loopback and a UNIX socket."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.socket = str(directory / "redis.sock")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--unixsocket", self.socket,
             "--unixsocketperm", "700", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL)
        try:
            wait_listening("127.0.0.1", self.port, self.process)
        except AssertionError:
            self.stop()
            raise
        self.client = redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = RedisServer(tmp_path_factory.mktemp("redis"))
    started.client.mset({
        "alice@example.com": "smtp:[relay.example.com]",
        "bob": "local-bob",
        "@example.org": "catch-all",
        "map:alice@example.com": "prefixed",
        "user:alice": "by user",
        "domain:example.com": "by domain",
        "labels:com/example/mail": "three labels",
        "percent%sign": "literal percent",
        "ümlaut@exämple.com": "utf-8 välue",
        "empty": "",
        "bad-utf8": b"\xff\xfe",
    })
    started.client.hset("transport", mapping={"alice@example.com": "from the hash", "bob": "hash bob"})
    started.client.rpush("a-list", "x")
    yield started
    started.stop()


def write_config(path: Path, **settings: str) -> str:
    path.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
    return f"redis:{path}"


def outcome(table, key: str):
    try:
        return table.get(key)
    except TableTemporaryError:
        return "temporary error"
    except TableError:
        return "error"


def lookups(run, spec: str, keys: list[str], smtputf8_enable: bool = True) -> dict[str, object]:
    table = open_table(spec, TableOptions(smtputf8_enable=smtputf8_enable))

    async def look_up_all():
        return {key: outcome(table, key) for key in keys}
    try:
        return run(look_up_all())
    finally:
        table.close()


def test_get_with_folding(run, server, tmp_path):
    spec = write_config(tmp_path / "redis.cf", hosts=f"127.0.0.1:{server.port}")
    assert lookups(run, spec, ["alice@example.com", "ALICE@Example.COM", "bob", "Bob", "@example.org",
                               "ÜMLAUT@EXÄMPLE.COM", "nobody", "empty", "", "bad-utf8"]) == {
        "alice@example.com": "smtp:[relay.example.com]",
        "ALICE@Example.COM": "smtp:[relay.example.com]",
        "bob": "local-bob", "Bob": "local-bob",
        "@example.org": "catch-all",
        "ÜMLAUT@EXÄMPLE.COM": "utf-8 välue",
        "nobody": None,
        "empty": None,       # an empty value is no result, as for Postfix's SQL tables
        "": None,
        "bad-utf8": "error",
    }


def test_key_format_expansion(run, server, tmp_path):
    def spec(key_format: str) -> str:
        return write_config(tmp_path / "redis.cf", hosts=f"127.0.0.1:{server.port}",
                            key_format=key_format)

    keys = ["alice@example.com", "alice", "@example.com", "x@mail.example.com", "x@com", "x@"]
    assert lookups(run, spec("map:%s"), keys)["alice@example.com"] == "prefixed"
    # %u: the local part, or the whole key without "@"; never for "@domain".
    assert lookups(run, spec("user:%u"), keys) == {
        "alice@example.com": "by user", "alice": "by user", "@example.com": None,
        "x@mail.example.com": None, "x@com": None, "x@": None}
    # %d: keys without a domain are not looked up at all.
    assert lookups(run, spec("domain:%D"), keys) == {
        "alice@example.com": "by domain", "alice": None, "@example.com": "by domain",
        "x@mail.example.com": None, "x@com": None, "x@": None}
    assert lookups(run, spec("labels:%1/%2/%3"), keys) == {
        "alice@example.com": None, "alice": None, "@example.com": None,
        "x@mail.example.com": "three labels", "x@com": None, "x@": None}
    assert lookups(run, spec("percent%%sign"), ["anything"]) == {"anything": "literal percent"}


def test_hget_from_one_hash(run, server, tmp_path):
    spec = write_config(tmp_path / "redis.cf", hosts=f"127.0.0.1:{server.port}",
                        query="HGET transport")
    assert lookups(run, spec, ["Alice@Example.com", "bob", "carol"]) == {
        "Alice@Example.com": "from the hash", "bob": "hash bob", "carol": None}


def test_wrong_type_is_an_error_not_a_miss(run, server, tmp_path):
    spec = write_config(tmp_path / "redis.cf", hosts=f"127.0.0.1:{server.port}")
    assert lookups(run, spec, ["a-list"]) == {"a-list": "error"}


def test_domain_filter(run, server, tmp_path):
    spec = write_config(tmp_path / "redis.cf", hosts=f"127.0.0.1:{server.port}",
                        domain="Example.com, inline:{exämple.com=yes}", key_format="%s")
    assert lookups(run, spec, ["alice@example.com", "ümlaut@exämple.com", "bob", "@example.org",
                               "@example.com"]) == {
        "alice@example.com": "smtp:[relay.example.com]", "ümlaut@exämple.com": "utf-8 välue",
        "bob": None, "@example.org": None, "@example.com": None}


def test_url_unix_socket_and_several_hosts(run, server, tmp_path):
    nobody = free_port()  # nothing listens there: the next server answers
    for settings in ({"url": f"redis://127.0.0.1:{server.port}/0"},
                     {"url": f"unix://{server.socket}?db=0"},
                     {"hosts": f"unix:{server.socket}"},
                     {"hosts": f"127.0.0.1:{nobody}, inet:127.0.0.1:{server.port}"},
                     {"hosts": f"[127.0.0.1]:{nobody} unix:{server.socket}", "timeout": "2"}):
        spec = write_config(tmp_path / "redis.cf", **settings)
        assert lookups(run, spec, ["bob"]) == {"bob": "local-bob"}, settings


def test_database_number_and_password(run, server, tmp_path):
    server.client.execute_command("ACL", "SETUSER", "postfix", "on", ">s3cret", "~*", "+@all")
    other_db = redis.Redis(host="127.0.0.1", port=server.port, db=3)
    other_db.set("bob", "in db 3")
    base = {"hosts": f"127.0.0.1:{server.port}", "db": "3"}
    spec = write_config(tmp_path / "redis.cf", **base, username="postfix", password="s3cret")
    assert lookups(run, spec, ["bob"]) == {"bob": "in db 3"}
    spec = write_config(tmp_path / "redis.cf", **base, username="postfix", password="wrong")
    assert lookups(run, spec, ["bob"]) == {"bob": "temporary error"}
    other_db.close()


def test_server_down_then_restarted(run, tmp_path):
    own = RedisServer(tmp_path)
    try:
        own.client.set("k", "v1")
        table = open_table(write_config(tmp_path / "redis.cf", hosts=f"127.0.0.1:{own.port}",
                                        timeout="2"), TableOptions())

        async def look_up():
            return outcome(table, "k")
        assert run(look_up()) == "v1"
        own.stop()
        started = time.monotonic()
        assert run(look_up()) == "temporary error"
        assert time.monotonic() - started < 5
        own = RedisServer(tmp_path, port=own.port)
        own.client.set("k", "v2")
        # The kept connection is dead; the table connects again by itself.
        assert run(look_up()) == "v2"
        table.close()
    finally:
        own.stop()


def test_edited_config_is_picked_up(run, server, tmp_path):
    path = tmp_path / "redis.cf"
    spec = write_config(path, hosts=f"127.0.0.1:{server.port}")
    maps = Maps("transport_maps", [spec], lambda s: open_table(s, TableOptions()))

    async def look_up():
        return maps.get("alice@example.com")
    assert run(look_up()) == "smtp:[relay.example.com]"
    write_config(path, hosts=f"127.0.0.1:{server.port}", key_format="map:%s", timeout="5")
    deadline = time.monotonic() + 5
    while run(look_up()) != "prefixed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run(look_up()) == "prefixed"
    maps.close()


@pytest.mark.parametrize("text, message", [
    ("hosts 127.0.0.1\n", "redis.cf:1: expected"),
    ("# comment\nhost = 127.0.0.1\n", 'redis.cf:2: unknown parameter "host"'),
    ("key_format = %x\n", "invalid key_format"),
    ("key_format = trailing%\n", "invalid key_format"),
    ("query = SET x\n", "query must be"),
    ("query = HGET\n", "query must be"),
    ("timeout = soon\n", "timeout"),
    ("db = one\n", "db must be"),
    ("url = redis://127.0.0.1\nhosts = 127.0.0.1\n", "not both"),
    ("hosts = 127.0.0.1:port\n", "bad port"),
])
def test_bad_config_files(run, tmp_path, text, message):
    path = tmp_path / "redis.cf"
    path.write_text(text)

    async def open_it():
        open_table(f"redis:{path}", TableOptions())
    with pytest.raises(TableError, match=message):
        run(open_it())


def test_missing_config_file(run, tmp_path):
    async def open_it():
        open_table(f"redis:{tmp_path}/absent.cf", TableOptions())
    with pytest.raises(TableError, match="absent.cf: file not found"):
        run(open_it())
