"""What an internet-facing restriction list costs pyfastmta's accept rate, in the same run.

Two configurations of pyfastmta, both receiving from 127.0.0.1 as a client outside mynetworks
(mynetworks = 127.0.0.254/32) for a local recipient (bench@localhost, mydestination = localhost),
both asking the same loopback DNS server (tests/peers/dnsserver.py) and nothing else:

- none: smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination (the least
  Postfix accepts) and no other restriction list;
- realistic: the same relay restrictions and five more:
      smtpd_helo_restrictions = reject_invalid_helo_hostname
      smtpd_sender_restrictions = reject_non_fqdn_sender
      smtpd_recipient_restrictions = reject_unauth_destination,
          check_client_access hash:DIR/client_access   (--access-entries entries, compiled by
                                                        `pyfastmta postmap`, none for 127.0.0.1)
          reject_rbl_client rbl.bench.test             (127.0.0.1 is not listed: NXDOMAIN with a
                                                        negative TTL of --negative-ttl seconds, so
                                                        the answer is cached)
          check_policy_service inet:127.0.0.1:PORT     (bench/policy_server.py, its own process,
                                                        answering DUNNO)

Each run starts a fresh DNS server, policy server and pyfastmta and drives pyfastmta exactly as
accept_race.py does (smtp-source plus a paced latency probe; every acknowledged message must be in
the queue). Configurations alternate for --rounds rounds; the table gives the median and best
rate of each, the ratio of the medians to "none", the median (and range) of the ratios to
"none" within each round (the figure the conclusion gives: steadier on a shared machine, since
the runs of one round follow each other), and the CPU time per message of pyfastmta's
processes and of the policy server (from /proc; steadier than a rate on a shared machine).
A realistic run fails unless the policy
server was asked once per recipient and the DNS list was queried; the DNS queries per run show
that its answer was cached. Before the timed runs, one untimed realistic instance must reject a
listed client (127.0.0.2, 554), a client in the access table (127.0.0.3), an invalid HELO and a
non-FQDN sender, and accept from 127.0.0.1 after asking the policy server exactly once.

--postgrey adds a configuration "postgrey": the realistic list with postgrey (the Debian package)
as its policy server instead, 127.0.0.1 in its client whitelist, so every request is answered
from the whitelist; one untimed instance must first see it greylist 127.0.0.4 (450).
--without-policy adds "realistic-without-policy": the realistic list less check_policy_service,
which tells the policy server's share of the cost from the other four restrictions'.
--unix-policy adds "realistic-unix": the realistic list with the same policy server listening on
a unix-domain socket (check_policy_service unix:PATH, as policy servers run by Postfix's spawn(8)
are usually reached) instead of TCP on loopback.

pyfastmta only: Postfix takes its name servers from /etc/resolv.conf, so it cannot be pointed at
a loopback DNS list without changing the system's resolver configuration.

    python bench/restriction_cost.py [--rounds 3] [-s 20] [-l 2000] [-m 20000]
                                     [--without-policy] [--unix-policy] [--postgrey]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accept_race import (
    RECIPIENT,
    REPLY_TIMEOUT,
    RESULTS_DIRECTORY,
    SENDER,
    BenchmarkFailure,
    PyfastmtaInstance,
    default_pyfastmta_command,
    describe_machine,
    markdown_table,
    plain_table,
    run_once,
    summarize,
    table_rows,
)
from postfix_instance import free_loopback_port, process_tree, wait_until_listening

BENCH_DIRECTORY = Path(__file__).resolve().parent
DNS_SERVER = BENCH_DIRECTORY.parent / "tests" / "peers" / "dnsserver.py"
POLICY_SERVER = BENCH_DIRECTORY / "policy_server.py"
CONFIGURATIONS = ("none", "realistic")
POSTGREY = "postgrey"  # --postgrey: the realistic list asking postgrey instead
NO_POLICY = "realistic-without-policy"  # --without-policy: the realistic list less its policy server
UNIX_POLICY = "realistic-unix"  # --unix-policy: the policy server on a unix-domain socket
DNS_LIST = "rbl.bench.test"
# No client of the benchmark is in mynetworks: 127.0.0.1 (smtp-source, the probe) and the
# sanity check's 127.0.0.2 and 127.0.0.3 are all outside clients.
MYNETWORKS = "127.0.0.254/32"
LISTED_CLIENT = "127.0.0.2"        # in the DNS list
ACCESS_REJECTED_CLIENT = "127.0.0.3"  # in the access table
ACCESS_REJECT_TEXT = "Listed in the bench access table"
GREYLISTED_CLIENT = "127.0.0.4"    # not in postgrey's client whitelist
# How long a helper process may take to say it is ready, or to answer for its counters.
PEER_TIMEOUT = 15.0


def dns_list_name(address: str) -> str:
    return ".".join(reversed(address.split("."))) + "." + DNS_LIST


class LineReader:
    """A child process's stdout, line by line, with a time limit on each line."""

    def __init__(self, process: subprocess.Popen, name: str):
        self.process = process
        self.name = name
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # end of output

    def next_line(self, timeout: float = PEER_TIMEOUT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchmarkFailure(f"{self.name}: no output within {timeout:.0f} s") from None
        if not line:
            raise BenchmarkFailure(f"{self.name} exited ({self.process.poll()})")
        return line


class Peers:
    """The DNS server and the policy server of one run, each its own process, in `directory`.
    The policy server is bench/policy_server.py, or postgrey when `postgrey` names its program."""

    def __init__(self, directory: Path, negative_ttl: int, postgrey: str | None = None,
                 unix_policy: bool = False):
        self.directory = directory
        self.postgrey = postgrey
        # check_policy_service's target: inet:127.0.0.1:PORT, or unix:PATH with unix_policy
        self.policy_service = ""
        self.unix_policy = unix_policy
        self.postgrey_log = directory / "postgrey.log"
        self.zone_file = directory / "zone.json"
        self.dns_stats_file = directory / "dns-stats.json"
        self.zone_file.write_text(json.dumps({
            "$ttl": 300,
            "$negative_ttl": negative_ttl,
            dns_list_name(LISTED_CLIENT): {"A": ["127.0.0.2"],
                                           "TXT": ["listed for the benchmark's sanity check"]},
        }))
        self.processes: list[subprocess.Popen] = []
        self.policy: LineReader | None = None
        self.policy_final: dict | None = None
        self.dns_port = self.policy_port = 0

    def __enter__(self) -> Self:
        try:
            dns = self._start("dnsserver", [str(DNS_SERVER), "--listen", "127.0.0.1:0",
                                            "--zone", str(self.zone_file),
                                            "--stats", str(self.dns_stats_file)])
            self.dns_port = self._ready_port(dns)
            if self.postgrey:
                self._start_postgrey()
            else:
                if self.unix_policy:
                    # The workers drop privileges: they must reach the socket's directory.
                    self.directory.chmod(0o755)
                    listen = f"unix:{self.directory / 'policy.sock'}"
                else:
                    listen = "127.0.0.1:0"
                self.policy = self._start("policy_server", [str(POLICY_SERVER), "--listen", listen])
                if self.unix_policy:
                    line = self.policy.next_line()
                    if line != f"ready {listen}":
                        raise BenchmarkFailure(f"policy_server: expected 'ready {listen}', got {line!r}")
                    self.policy_service = listen
                else:
                    self.policy_port = self._ready_port(self.policy)
            if not self.policy_service:
                self.policy_service = f"inet:127.0.0.1:{self.policy_port}"
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, name: str, arguments: list[str]) -> LineReader:
        with open(self.directory / f"{name}.stderr", "wb") as stderr:
            process = subprocess.Popen([sys.executable, *arguments], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.processes.append(process)
        return LineReader(process, name)

    def _start_postgrey(self) -> None:
        """postgrey in the foreground, 127.0.0.1 in its client whitelist; it drops to the
        postgrey user, which must reach its database directory. Without syslog it logs each
        decision on stderr, one line per request, which is what counts its requests."""
        self.directory.chmod(0o755)
        database = self.directory / "postgrey-db"
        database.mkdir()
        shutil.chown(database, "postgrey", "postgrey")
        clients = self.directory / "postgrey-whitelist-clients"
        clients.write_text("127.0.0.1\n")
        recipients = self.directory / "postgrey-whitelist-recipients"
        recipients.write_text("")
        self.policy_port = free_loopback_port()
        with open(self.postgrey_log, "wb") as log:
            self.processes.append(subprocess.Popen(
                [self.postgrey, f"--inet=127.0.0.1:{self.policy_port}", f"--dbdir={database}",
                 f"--whitelist-clients={clients}", f"--whitelist-recipients={recipients}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        try:
            wait_until_listening("127.0.0.1", self.policy_port, PEER_TIMEOUT)
        except TimeoutError as error:
            raise BenchmarkFailure(f"postgrey: {error}\n{self.postgrey_log.read_text()}") from None

    def _ready_port(self, reader: LineReader) -> int:
        line = reader.next_line()
        if not line.startswith("ready "):
            raise BenchmarkFailure(f"{reader.name}: expected 'ready HOST:PORT', got {line!r}")
        return int(line.rpartition(":")[2])

    def policy_counters(self) -> dict:
        """{"requests": N, "connections": M, "states": {...}} so far (final once closed);
        postgrey's: {"requests": N, "whitelisted": W} from its log."""
        if self.postgrey:
            decisions = [line for line in self.postgrey_log.read_text(errors="replace").splitlines()
                         if line.startswith("action=")]
            return {"requests": len(decisions),
                    "whitelisted": sum("reason=client whitelist" in line for line in decisions)}
        if self.policy_final is not None:
            return self.policy_final
        self.policy.process.send_signal(signal.SIGUSR1)
        return json.loads(self.policy.next_line())

    def dns_counters(self) -> dict:
        try:
            return json.loads(self.dns_stats_file.read_text())
        except FileNotFoundError:  # not one query yet
            return {"total": 0, "tcp": 0, "queries": {}}

    def close(self) -> None:
        """Stop both servers (the policy server's last counters are kept)."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        if self.policy is not None and self.policy.process in self.processes:
            try:
                self.policy_final = json.loads(self.policy.next_line())
            except (BenchmarkFailure, ValueError) as failure:
                print(f"warning: policy server's last counters: {failure}", file=sys.stderr)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []


def build_access_table(directory: Path, entries: int, pyfastmta: list[str]) -> Path:
    """An access table of `entries` entries that the benchmark's 127.0.0.1 does not match,
    shaped like a site's own block list (addresses, networks by octets, host names and domains),
    plus the sanity check's client, compiled with `pyfastmta postmap`."""
    chooser = random.Random(5)
    lines = [f"{ACCESS_REJECTED_CLIENT} REJECT {ACCESS_REJECT_TEXT}"]
    while len(lines) < entries:
        kind = len(lines) % 4
        if kind == 0:
            key = f"10.{chooser.randrange(256)}.{chooser.randrange(256)}.{chooser.randrange(1, 255)}"
        elif kind == 1:
            key = f"10.{chooser.randrange(256)}.{chooser.randrange(256)}"
        elif kind == 2:
            key = f"host{len(lines)}.dynamic.example.net"
        else:
            key = f"spam{len(lines)}.example"
        action = "OK" if len(lines) % 50 == 0 else "REJECT"
        lines.append(f"{key} {action}")
    source = directory / "client_access"
    source.write_text("\n".join(lines) + "\n")
    invocation = [*pyfastmta, "postmap", f"hash:{source}"]
    completed = subprocess.run(invocation, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=REPLY_TIMEOUT, check=False)
    if completed.returncode != 0:
        raise BenchmarkFailure(f"`{shlex.join(invocation)}` exited {completed.returncode}:\n"
                               f"{completed.stdout}{completed.stderr}")
    return source


def main_cf_lines(configuration: str, peers: Peers, access_table: Path) -> str:
    lines = (
        f"dns_nameservers = 127.0.0.1:{peers.dns_port}\n"
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
    )
    if configuration == "none":
        return lines + "smtpd_recipient_restrictions =\n"
    # realistic, or POSTGREY: the same list, the policy service is whichever Peers started.
    lines += (
        "smtpd_helo_restrictions = reject_invalid_helo_hostname\n"
        "smtpd_sender_restrictions = reject_non_fqdn_sender\n"
        "smtpd_recipient_restrictions = reject_unauth_destination,\n"
        f"    check_client_access hash:{access_table},\n"
        f"    reject_rbl_client {DNS_LIST}"
    )
    if configuration == NO_POLICY:
        return lines + "\n"
    return lines + f",\n    check_policy_service {peers.policy_service}\n"


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the processes, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class MeasuredInstance(PyfastmtaInstance):
    """Also takes the CPU time of its master and workers, once started and once the load has
    ended (before the queue listing), so that the cost of a message can be given in CPU time:
    steadier than a rate on a machine that other work shares."""

    cpu_at_start = cpu_at_end = 0.0

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        self.cpu_at_start = self._cpu()

    def stop_and_count_queued(self) -> int:
        self.cpu_at_end = self._cpu()
        return super().stop_and_count_queued()

    def _cpu(self) -> float:
        master = int((self.queue_directory / "pid" / "master.pid").read_text().split()[0])
        return cpu_seconds(process_tree(master))


def make_instance(configuration: str, options, peers: Peers, access_table: Path) -> MeasuredInstance:
    instance = MeasuredInstance(shlex.split(options.pyfastmta), options.workdir)
    instance.mynetworks = MYNETWORKS
    instance.main_cf_extra = main_cf_lines(configuration, peers, access_table)
    return instance


class Dialogue:
    """A plain SMTP client session from a chosen loopback source address, for the sanity check."""

    def __init__(self, server: PyfastmtaInstance, source: str):
        self.where = f"session from {source}"
        self.socket = socket.create_connection((server.host, server.port), timeout=REPLY_TIMEOUT,
                                               source_address=(source, 0))
        self.replies = self.socket.makefile("rb")
        self.expect(None, "220")

    def expect(self, command: str | None, code: str, containing: str = "") -> str:
        if command is not None:
            self.socket.sendall(command.encode() + b"\r\n")
        lines = []
        while True:
            line = self.replies.readline().decode(errors="replace").rstrip("\r\n")
            if not line:
                raise BenchmarkFailure(f"sanity check, {self.where}: connection closed after "
                                       f"{command or 'connecting'}")
            lines.append(line)
            if line[3:4] != "-":
                break
        reply = "\n".join(lines)
        if not line.startswith(code) or containing not in reply:
            wanted = f"{code} ... {containing}" if containing else code
            raise BenchmarkFailure(f"sanity check, {self.where}: {command or 'connecting'} was "
                                   f"answered {reply!r}, expected {wanted!r}")
        return reply

    def close(self) -> None:
        try:
            self.expect("QUIT", "221")
        finally:
            self.replies.close()
            self.socket.close()


def sanity_session(server, source: str, helo: str, steps: list[tuple[str, str, str]]) -> None:
    dialogue = Dialogue(server, source)
    try:
        dialogue.expect(f"EHLO {helo}", "250")
        for command, code, containing in steps:
            dialogue.expect(command, code, containing)
    finally:
        dialogue.close()


def verify_restrictions(options, access_table: Path, directory: Path) -> dict:
    """One untimed realistic instance: every restriction must do its job, in order."""
    mail = (f"MAIL FROM:<{options.sender}>", "250", "")
    rcpt = f"RCPT TO:<{options.recipient}>"
    with Peers(directory, options.negative_ttl) as peers:
        server = make_instance("realistic", options, peers, access_table)
        try:
            server.start()
            # The DNS list rejects a listed client (before the policy server is asked).
            sanity_session(server, LISTED_CLIENT, "bench.example.com",
                           [mail, (rcpt, "554", DNS_LIST)])
            # The access table rejects the client it names.
            sanity_session(server, ACCESS_REJECTED_CLIENT, "bench.example.com",
                           [mail, (rcpt, "554", ACCESS_REJECT_TEXT)])
            # The HELO and sender restrictions, evaluated at RCPT (smtpd_delay_reject = yes).
            sanity_session(server, "127.0.0.1", "bad..helo.example",
                           [mail, (rcpt, "501", "Helo command rejected")])
            sanity_session(server, "127.0.0.1", "bench.example.com", [
                ("MAIL FROM:<bench>", "250", ""), (rcpt, "504", "Sender address rejected"),
                ("RSET", "250", ""), mail,
                # 127.0.0.1 is outside mynetworks: no relaying for it.
                ("RCPT TO:<bench@elsewhere.test>", "554", "Relay access denied"),
                # Everything passes: the policy server is asked, says DUNNO, the recipient is taken.
                (rcpt, "250", ""),
            ])
            policy = peers.policy_counters()
        finally:
            server.stop()
            server.remove()
        dns = peers.dns_counters()
    if policy["requests"] != 1:
        raise BenchmarkFailure(f"sanity check: the policy server was asked {policy['requests']} "
                               "times; expected once (for the one recipient that passed the rest)")
    for address in (LISTED_CLIENT, "127.0.0.1"):
        if not dns["queries"].get(f"{dns_list_name(address)} A"):
            raise BenchmarkFailure(f"sanity check: {dns_list_name(address)} was never asked; "
                                   f"the DNS server saw {dns['queries']}")
    return {"policy": policy, "dns": dns}


def verify_postgrey(options, access_table: Path, directory: Path) -> dict:
    """One untimed instance asking postgrey: it must greylist a client it does not know and
    let the whitelisted 127.0.0.1 through."""
    mail = (f"MAIL FROM:<{options.sender}>", "250", "")
    rcpt = f"RCPT TO:<{options.recipient}>"
    with Peers(directory, options.negative_ttl, postgrey=options.postgrey) as peers:
        server = make_instance(POSTGREY, options, peers, access_table)
        try:
            server.start()
            sanity_session(server, GREYLISTED_CLIENT, "bench.example.com",
                           [mail, (rcpt, "450", "Greylisted")])
            sanity_session(server, "127.0.0.1", "bench.example.com", [mail, (rcpt, "250", "")])
            policy = peers.policy_counters()
        finally:
            server.stop()
            server.remove()
    if policy != {"requests": 2, "whitelisted": 1}:
        raise BenchmarkFailure(f"sanity check: postgrey decided {policy}; expected two requests, "
                               f"one of them for its whitelisted client (log: {peers.postgrey_log})")
    return {"policy": policy}


@dataclass
class RunCounts:
    configuration: str
    round: int
    recipients: int           # accepted by smtp-source and by the probe, one recipient each
    policy_requests: int
    policy_connections: int | None  # postgrey's are not counted
    dns_queries: int          # every query the DNS server saw (peer name lookups included)
    dns_list_queries: int     # those for 127.0.0.1 in the DNS list
    pyfastmta_cpu_us: float   # CPU time of pyfastmta's processes per accepted message
    policy_cpu_us: float      # and of the policy server


def timed_run(configuration: str, options, access_table: Path, round_number: int):
    directory = Path(tempfile.mkdtemp(prefix="restriction-peers-", dir=options.workdir))
    try:
        postgrey = options.postgrey if configuration == POSTGREY else None
        instances, policy_cpu = [], []

        def make_server() -> MeasuredInstance:
            instances.append(make_instance(configuration, options, peers, access_table))
            policy_cpu.append(cpu_seconds([peers.processes[-1].pid]))
            return instances[-1]

        with Peers(directory, options.negative_ttl, postgrey=postgrey,
                   unix_policy=configuration == UNIX_POLICY) as peers:
            run = run_once(configuration, make_server, options, round_number)
            policy_cpu.append(cpu_seconds([peers.processes[-1].pid]))
        policy, dns = peers.policy_counters(), peers.dns_counters()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    recipients = run.sent_by_smtp_source + run.sent_by_probe
    counts = RunCounts(
        configuration=configuration, round=round_number, recipients=recipients,
        policy_requests=policy["requests"], policy_connections=policy.get("connections"),
        dns_queries=dns["total"],
        dns_list_queries=dns["queries"].get(f"{dns_list_name('127.0.0.1')} A", 0),
        pyfastmta_cpu_us=round(1e6 * (instances[0].cpu_at_end - instances[0].cpu_at_start) / recipients),
        policy_cpu_us=round(1e6 * (policy_cpu[1] - policy_cpu[0]) / recipients),
    )
    connections = "" if counts.policy_connections is None else f" on {counts.policy_connections} connections"
    print(f"         {configuration:<12} policy server: {counts.policy_requests} requests"
          f"{connections}; DNS: {counts.dns_queries} queries, "
          f"{counts.dns_list_queries} for the DNS list; CPU per message: pyfastmta "
          f"{counts.pyfastmta_cpu_us:.0f} µs, policy server {counts.policy_cpu_us:.0f} µs", flush=True)
    if postgrey and policy["whitelisted"] != counts.recipients:
        raise BenchmarkFailure(
            f"postgrey, round {round_number}: {counts.recipients} recipients were accepted but "
            f"postgrey let {policy['whitelisted']} through as whitelisted")
    if configuration == NO_POLICY:
        if counts.policy_requests or counts.dns_list_queries == 0:
            raise BenchmarkFailure(f"{configuration}, round {round_number}: the policy server was "
                                   f"asked or the DNS list was not: {counts}")
    elif configuration != "none":
        if counts.policy_requests != counts.recipients:
            raise BenchmarkFailure(
                f"{configuration}, round {round_number}: {counts.recipients} recipients were accepted "
                f"but the policy server was asked {counts.policy_requests} times")
        if counts.dns_list_queries == 0:
            raise BenchmarkFailure(f"{configuration}, round {round_number}: the DNS list was never asked")
    elif counts.policy_requests or counts.dns_list_queries:
        raise BenchmarkFailure(f"none, round {round_number}: restrictions were checked: {counts}")
    return run, counts


def paired_ratios(runs: list, configurations) -> dict[str, list[float]]:
    """Each configuration's rate over the rate of "none" in the same round. Runs of one round
    follow each other, so a slow spell of a shared machine touches both sides of a ratio; the
    median of these ratios is steadier than the ratio of the medians."""
    none = {run.round: run.messages_per_second for run in runs if run.server == "none"}
    return {configuration: [round(run.messages_per_second / none[run.round], 3)
                            for run in runs if run.server == configuration]
            for configuration in configurations}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--sessions", type=int, default=20, help="parallel smtp-source sessions")
    parser.add_argument("-l", "--length", type=int, default=2000, help="message body bytes")
    parser.add_argument("-m", "--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per configuration, alternating; the table gives median and best")
    parser.add_argument("--access-entries", type=int, default=5000,
                        help="entries in the check_client_access table")
    parser.add_argument("--negative-ttl", type=int, default=300,
                        help="TTL of the DNS list's 'not listed' answer (the SOA minimum)")
    parser.add_argument("--unix-policy", action="store_true",
                        help=f"also run the realistic list with the policy server on a unix-domain "
                             f"socket ({UNIX_POLICY}; check_policy_service unix:PATH)")
    parser.add_argument("--postgrey", nargs="?", const=shutil.which("postgrey") or "/usr/sbin/postgrey",
                        help="also run the realistic list with postgrey (this program, default "
                             "%(const)s) as its policy server, 127.0.0.1 in its client whitelist")
    parser.add_argument("--without-policy", action="store_true",
                        help=f"also run the realistic list without check_policy_service ({NO_POLICY}), "
                             "to tell the policy server's share of the cost from the rest")
    parser.add_argument("--pyfastmta", default=default_pyfastmta_command(),
                        help="command that runs pyfastmta (default: %(default)s)")
    parser.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    parser.add_argument("--run-timeout", type=float, default=1800.0,
                        help="seconds smtp-source may take for one run before the benchmark fails")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the servers' temporary directories (and queues) are made")
    parser.add_argument("--sender", default=SENDER)
    parser.add_argument("--recipient", default=RECIPIENT)
    parser.add_argument("--results", type=Path, default=RESULTS_DIRECTORY,
                        help="directory for restriction-<timestamp>.json")
    options = parser.parse_args(argv)
    if min(options.sessions, options.messages, options.rounds, options.access_entries) < 1 \
            or options.length < 0 or options.negative_ttl < 1:
        parser.error("sessions, messages, rounds, access entries and the negative TTL must be "
                     "positive, length not negative")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    machine = describe_machine(options.workdir)
    configurations = (CONFIGURATIONS + ((NO_POLICY,) if options.without_policy else ())
                      + ((UNIX_POLICY,) if options.unix_policy else ())
                      + ((POSTGREY,) if options.postgrey else ()))
    print(f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}; "
          f"queues on {machine['queue_filesystem']} {machine['queue_device']} "
          f"({machine['queue_parent_directory']})")
    print(f"smtp-source -s {options.sessions} -l {options.length} -m {options.messages} from "
          f"127.0.0.1 (outside mynetworks), {options.rounds} round(s) of "
          f"{', '.join(configurations)}, plus one latency probe session", flush=True)

    tables = Path(tempfile.mkdtemp(prefix="restriction-bench-", dir=options.workdir))
    # The workers run as mail_owner and open the access table under this directory.
    tables.chmod(0o755)
    runs, counts = [], []
    try:
        access_table = build_access_table(tables, options.access_entries,
                                          shlex.split(options.pyfastmta))
        sanity = verify_restrictions(options, access_table, tables)
        print(f"sanity check passed: {DNS_LIST} rejects {LISTED_CLIENT}, the access table "
              f"rejects {ACCESS_REJECTED_CLIENT}, invalid HELO and non-FQDN sender rejected, "
              f"relaying denied to 127.0.0.1, the policy server asked once", flush=True)
        if options.postgrey:
            (tables / POSTGREY).mkdir()
            sanity[POSTGREY] = verify_postgrey(options, access_table, tables / POSTGREY)
            print("sanity check passed: postgrey greylists 127.0.0.4 and lets 127.0.0.1 through",
                  flush=True)
        for round_number in range(1, options.rounds + 1):
            # Alternating the order cancels any drift (page cache, disk, thermal) between them.
            ordered = configurations if round_number % 2 else tuple(reversed(configurations))
            for configuration in ordered:
                run, run_counts = timed_run(configuration, options, access_table, round_number)
                runs.append(run)
                counts.append(run_counts)
    except (BenchmarkFailure, TimeoutError, OSError) as failure:
        print(f"\nBENCHMARK FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tables, ignore_errors=True)

    summaries = summarize(runs, list(configurations), baseline="none")
    heading, rows = table_rows(summaries, options.rounds, ratio_heading="ratio to none",
                               first_heading="configuration")
    paired = paired_ratios(runs, configurations)
    heading += ["ratio to none in the same round (median; range)",
                "CPU per message, pyfastmta / policy server (µs)",
                "policy requests per run (median)", "DNS queries per run (for the DNS list)"]
    for configuration, row in zip(configurations, rows):
        own = [c for c in counts if c.configuration == configuration]
        ratios = paired[configuration]
        row.append(f"{statistics.median(ratios):.2f}; {min(ratios):.2f}–{max(ratios):.2f}")
        row.append(f"{statistics.median(c.pyfastmta_cpu_us for c in own):.0f} / "
                   f"{statistics.median(c.policy_cpu_us for c in own):.0f}")
        row.append(str(round(statistics.median(c.policy_requests for c in own))))
        queries = [f"{c.dns_queries} ({c.dns_list_queries})" for c in own]
        row.append(queries[0] if len(set(queries)) == 1 else ", ".join(queries))
    print()
    print(plain_table(heading, rows))
    print("\nfor the README:\n")
    print(markdown_table(heading, rows))
    print()
    for summary in summaries[1:]:
        ratio = statistics.median(paired[summary.server])
        print(f"{summary.server}: the list costs {100 * (1 - ratio):.0f}% of the accept rate "
              f"(median of the rounds' ratios {ratio:.2f}; ratio of medians "
              f"{summary.ratio_to_postfix:.2f})")

    timestamp = time.strftime("%Y%m%dT%H%M%S")
    options.results.mkdir(parents=True, exist_ok=True)
    result_file = options.results / f"restriction-{timestamp}.json"
    summary = []
    for s in summaries:
        entry = asdict(s)
        entry["ratio_to_none"] = entry.pop("ratio_to_postfix")
        entry["ratios_to_none_by_round"] = paired[s.server]
        summary.append(entry)
    result_file.write_text(json.dumps({
        "timestamp": timestamp,
        "parameters": {
            "sessions": options.sessions, "length": options.length, "messages": options.messages,
            "rounds": options.rounds, "access_entries": options.access_entries,
            "negative_ttl": options.negative_ttl, "postgrey": options.postgrey,
            "without_policy": options.without_policy, "unix_policy": options.unix_policy,
            "sender": options.sender,
            "recipient": options.recipient, "pyfastmta": options.pyfastmta,
        },
        "machine": machine,
        "sanity_check": sanity,
        "summary": summary,
        "counts": [asdict(c) for c in counts],
    }, indent=2) + "\n")
    print(f"\nresults written to {result_file}")
    return 0


if __name__ == "__main__":
    # A terminated benchmark still stops its servers and removes their directories.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
