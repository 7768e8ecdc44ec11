"""A real pyfastmta, started as a user starts it, on a free loopback port, per test.

The `mta` fixture runs every test twice: workers on uvloop and on asyncio's own loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peers.dovecot import DovecotAuthServer
from peers.loopback import free_port, run_on_loop
from peers.rawclient import RawClient

# The installed console script, as a user runs it (never the source tree's package).
PYFASTMTA = [os.path.join(os.path.dirname(sys.executable), "pyfastmta")]


DNS_SERVER = Path(__file__).resolve().parent.parent / "peers" / "dnsserver.py"


@pytest.fixture(scope="session")
def quiet_dns(tmp_path_factory):
    """A DNS server on loopback that knows no names: every lookup an MTA makes without a test's
    own server (client names above all) ends at once with NXDOMAIN, and none leaves the host."""
    zone = tmp_path_factory.mktemp("quiet-dns") / "zone.json"
    zone.write_text("{}")
    server = subprocess.Popen([sys.executable, str(DNS_SERVER), "--listen", "127.0.0.1:0",
                               "--zone", str(zone)], stdout=subprocess.PIPE, text=True)
    try:
        yield f"127.0.0.1:{server.stdout.readline().split()[1].rpartition(':')[2]}"
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


class Mta:
    def __init__(self, directory: Path, event_loop: str, main_cf: dict[str, str], host: str,
                 nameservers: str):
        self.dir = directory
        self.host = host
        self.port = free_port(host)
        self.event_loop = event_loop
        self.maillog = directory / "maillog"
        self.spool = directory / "spool"
        settings = {
            "queue_directory": str(self.spool),
            "maillog_file": str(self.maillog),
            "mydestination": "localhost, example.test",
            "mynetworks": "127.0.0.0/8",
            "myhostname": "mx.example.test",
            "worker_count": "2",
            # Mail leaves only in the delivery tests, which bring their own DNS server and sinks:
            # everything else stays deferred, and no query reaches the host's name servers.
            "default_transport": "retry:no delivery in this test",
            "relay_transport": "retry:no delivery in this test",
            "dns_nameservers": nameservers,
        }
        settings.update(main_cf)
        self.write_config(settings)

    def write_config(self, settings: dict[str, str], master_line: str | None = None) -> None:
        (self.dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        line = master_line or f"{self.host}:{self.port} inet n - n - - smtpd"
        (self.dir / "master.cf").write_text(line + "\n")

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, PYFASTMTA_EVENT_LOOP=self.event_loop)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(PYFASTMTA + ["-c", str(self.dir), *args], capture_output=True,
                                text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"pyfastmta {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}\n{self.log_text()}")
        return result

    def start(self) -> None:
        self.cli("start")

    def stop(self) -> None:
        """Stops the master this fixture started, by its pid if the CLI cannot (say, a test left
        a broken main.cf behind)."""
        pid = self.master_pid()
        if pid is None:
            return
        if self.cli("stop", check=False).returncode == 0:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while self.master_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def master_pid(self) -> int | None:
        path = self.spool / "pid" / "master.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def worker_pids(self) -> list[int]:
        pid = self.master_pid()
        if pid is None:
            return []
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children]

    def kill_all(self) -> None:
        """SIGKILL the master and every worker: a crash, not a stop."""
        master = self.master_pid()
        workers = self.worker_pids()
        for pid in [master, *workers]:
            if pid:
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        for pid in [master, *workers]:
            while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                status = Path(f"/proc/{pid}/stat")
                try:
                    if status.read_text().split()[2] == "Z":
                        break
                except OSError:
                    break
                time.sleep(0.01)

    def queue_json(self) -> list[dict]:
        import json

        output = self.cli("postqueue", "-j").stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def logged(self, text: str, timeout: float = 10) -> bool:
        """Whether `text` appears in the maillog within `timeout` (workers write it in batches)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture(params=["uvloop", "asyncio"])
def event_loop_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def dovecot():
    """A private Dovecot authentication server (tests/peers/dovecot.py) for a module's tests."""
    server = DovecotAuthServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture
def on_loop(event_loop_name):
    """Runs a coroutine to its end on a new loop of this test's kind (uvloop, then asyncio)."""
    return lambda coroutine: run_on_loop(event_loop_name, coroutine)


@pytest.fixture
def make_mta(tmp_path, event_loop_name, quiet_dns):
    started: list[Mta] = []

    def make(main_cf: dict[str, str] | None = None, start: bool = True, host: str = "127.0.0.1") -> Mta:
        directory = tmp_path / f"mta{len(started)}"
        directory.mkdir()
        mta = Mta(directory, event_loop_name, main_cf or {}, host=host, nameservers=quiet_dns)
        started.append(mta)
        if start:
            mta.start()
        return mta

    yield make
    for mta in started:
        mta.stop()


@pytest.fixture
def mta(make_mta) -> Mta:
    return make_mta()


@pytest.fixture
def connect():
    clients: list[RawClient] = []

    def open_client(mta: Mta, source: str | None = None, greet: bool = True) -> RawClient:
        client = RawClient(mta.host, mta.port, source=source)
        clients.append(client)
        if greet:
            code, text = client.reply()
            assert code == 220, text
        return client

    yield open_client
    for client in clients:
        client.close()
