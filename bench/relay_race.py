"""Relay throughput of pyfastmta and Postfix, side by side: smtp-source → server → smtp-sink.

Each run starts a fresh smtp-sink on its own loopback address and a fresh server (durable: 250
only once the message is on disk) that relays everything to that sink. smtp-source sends the
load; the run is timed from smtp-source's start until the sink has received the last message,
and then the server's queue must empty. The sink must count exactly the messages sent and the
server's log must show exactly one `status=sent` per recipient, or the benchmark fails.

    python bench/relay_race.py                       # the matrix: sessions × sizes × recipients
    python bench/relay_race.py --headline            # -s 20 -l 2000 -m 20000, one recipient
    python bench/relay_race.py --headline --tables 0,100000 --rounds 2
                                                     # without, then with 100k-entry canonical,
                                                     # virtual alias and transport tables
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

from accept_race import (
    BenchmarkFailure,
    PyfastmtaInstance,
    default_pyfastmta_command,
    describe_machine,
    markdown_table,
    plain_table,
    wait_until_listening,
)
from postfix_instance import PostfixInstance, PostfixInstanceError, process_tree

SENDER = "bench@example.com"
# Not local to either server, so both relay it; smtp-source numbers the recipients of -r N.
RECIPIENT = "rcpt@relay.test"
RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"
# The sink gets an address of its own, apart from the servers' 127.0.0.1.
SINK_HOST = "127.0.0.2"

MATRIX_SESSIONS = (1, 10, 50, 200)
MATRIX_SIZES = (1024, 10240, 102400)
MATRIX_RECIPIENTS = (1, 10)
HEADLINE = {"sessions": 20, "length": 2000, "messages": 20000, "recipients": 1}

# With --tables, the envelope goes through three hash: tables on both servers: canonical_maps
# sends SENDER to CANONICAL_SENDER and each benchmark recipient local@relay.test to
# local@CANONICAL_DOMAIN, virtual_alias_maps sends that to local@SINK_DOMAIN (one address, so the
# sink's count stays one per message), and transport_maps routes SINK_DOMAIN (and the benchmark's
# own domain) to the sink. Every other entry is filler that no message looks up.
CANONICAL_SENDER = "bench@sender.test"
CANONICAL_DOMAIN = "canonical.test"
SINK_DOMAIN = "sink.test"


class SmtpSink:
    """Postfix's smtp-sink on SINK_HOST:PORT, counting the messages it received (one per ".").

    `-c` makes it print `sess=N quit=N mesg=N` after each session, QUIT and end of data; a
    thread reads those counters as they come, so waiting for the last message costs no polling.
    """

    def __init__(self, executable: str, host: str = SINK_HOST):
        self.executable = executable
        self.host = host
        self.port = free_port(host)
        self.messages = 0
        self._changed = threading.Condition()
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        # -m: room for every client session of both servers (Postfix's smtp processes, up to
        # default_process_limit, and pyfastmta's cached connections).
        self._process = subprocess.Popen(
            [self.executable, *user, "-c", "-m", "1000", self.address, "1000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read_counters, daemon=True)
        self._reader.start()
        try:
            wait_until_listening(self.host, self.port, 10.0)
        except TimeoutError:
            self.stop()
            raise

    def wait_for(self, count: int, timeout: float) -> bool:
        """True once at least count messages arrived; False after timeout or if the sink died."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.messages < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._process.poll() is not None:
                    return False
                self._changed.wait(min(remaining, 1.0))
        return True

    def stop(self) -> str:
        """Kill this sink (only its own pid) and return what it wrote on stderr."""
        if self._process is None:
            return ""
        process, self._process = self._process, None
        process.kill()
        process.wait()
        self._reader.join(5)
        errors = process.stderr.read().decode(errors="replace")
        process.stderr.close()
        return errors

    def _read_counters(self) -> None:
        stream = self._process.stdout
        pending = b""
        while chunk := stream.read1(65536):
            pending += chunk
            *complete, pending = pending.split(b"\r")
            counts = [int(match) for line in complete for match in re.findall(rb"mesg=(\d+)", line)]
            if counts:
                with self._changed:
                    self.messages = max(self.messages, *counts)
                    self._changed.notify_all()
        stream.close()


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def source_recipients(count: int) -> list[str]:
    """The recipients `smtp-source -t RECIPIENT -r count` sends: RECIPIENT, then 2RECIPIENT,
    3RECIPIENT ... (the number put before the local part)."""
    return [RECIPIENT] + [f"{number}{RECIPIENT}" for number in range(2, count + 1)]


def write_tables(directory: Path, entries: int, recipients: int, relay_to: str) -> dict[str, Path]:
    """The sources of the three tables, `entries` lines each, in directory; returns the
    main.cf parameter each one is for. The same generator serves both servers, so their tables
    are identical."""
    if entries < recipients + 2:
        raise ValueError(f"--tables {entries}: too few entries for {recipients} recipients")
    host, _, port = relay_to.rpartition(":")
    sink = f"smtp:[{host}]:{port}"
    locals_ = [address.rpartition("@")[0] for address in source_recipients(recipients)]
    canonical = [f"{SENDER} {CANONICAL_SENDER}"]
    canonical += [f"{local}@{RECIPIENT.partition('@')[2]} {local}@{CANONICAL_DOMAIN}" for local in locals_]
    virtual = [f"{local}@{CANONICAL_DOMAIN} {local}@{SINK_DOMAIN}" for local in locals_]
    transport = [f"{SINK_DOMAIN} {sink}", f"{RECIPIENT.partition('@')[2]} {sink}"]
    tables = {
        # Fillers look like real entries: addresses of other domains, rewritten or routed
        # somewhere no benchmark message goes.
        "canonical_maps": (canonical, lambda i: f"user{i}@canon.example user{i}@relay.test"),
        "virtual_alias_maps": (virtual, lambda i: f"alias{i}@valias.example user{i}@relay.test"),
        "transport_maps": (transport, lambda i: f"domain{i}.example smtp:[mx{i}.domain{i}.example]:25"),
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for parameter, (real, filler) in tables.items():
        lines = [filler(i) for i in range(entries - len(real))]
        # The entries that matter go in the middle of the file, not first or last.
        middle = len(lines) // 2
        lines[middle:middle] = real
        path = directory / parameter.removesuffix("_maps")
        path.write_text("\n".join(lines) + "\n")
        paths[parameter] = path
    return paths


def compile_tables(command: list[str], paths: dict[str, Path]) -> float:
    """Run a postmap command (pyfastmta's or Postfix's) on each table; the seconds it took."""
    started = time.perf_counter()
    for path in paths.values():
        result = subprocess.run([*command, f"hash:{path}"], check=False, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise BenchmarkFailure(f"`{shlex.join([*command, f'hash:{path}'])}` exited "
                                   f"{result.returncode}:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - started


class RelayingPyfastmta(PyfastmtaInstance):
    """pyfastmta relaying the benchmark's domain to the sink through a texthash transport map,
    or, given tables, through the hash: tables of write_tables."""

    def __init__(self, command: list[str], relay_to: str, parent_directory=None,
                 tables: int = 0, recipients: int = 1):
        super().__init__(command, parent_directory)
        self.relay_to = relay_to
        self.tables = tables
        self.recipients = recipients
        self.compile_seconds: float | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.root.chmod(0o755)
        domain = RECIPIENT.partition("@")[2]
        host, _, port = self.relay_to.rpartition(":")
        if self.tables:
            paths = write_tables(self.root / "tables", self.tables, self.recipients, self.relay_to)
            maps = "".join(f"{parameter} = hash:{path}\n" for parameter, path in paths.items())
        else:
            transport = self.root / "transport"
            transport.write_text(f"{domain} smtp:[{host}]:{port}\n")
            maps = f"transport_maps = texthash:{transport}\n"
        (self.root / "main.cf").write_text(
            f"queue_directory = {self.queue_directory}\n"
            "mynetworks = 127.0.0.0/8\n"
            "mydestination = localhost\n"
            f"maillog_file = {self.maillog_file}\n"
            f"{maps}"
            # Nothing is looked up for [host]:port; were it, no query would leave the machine.
            "dns_nameservers = 127.0.0.1:9\n"
        )
        (self.root / "master.cf").write_text(f"{self.address} inet n - n - - smtpd\n")
        if self.tables:
            self.compile_seconds = compile_tables([*self.command, "-c", str(self.root), "postmap"], paths)
        self.running = True
        self._run("start")
        wait_until_listening(self.host, self.port, timeout)

    def queue_is_empty(self) -> bool:
        return not self._run("postqueue", "-j").strip()

    def peak_rss_kib(self) -> int:
        """Sum of VmHWM (peak resident set) over the master and its workers."""
        master = int((self.queue_directory / "pid" / "master.pid").read_text().split()[0])
        return sum(vm_hwm_kib(pid) for pid in process_tree(master))


class RelayingPostfix(PostfixInstance):
    """Postfix relaying everything to the sink (relayhost); given tables, the hash: tables of
    write_tables too, compiled by Postfix's postmap into its .db files."""

    def __init__(self, relay_to: str, parent_directory=None, tables: int = 0, recipients: int = 1):
        host, _, port = relay_to.rpartition(":")
        super().__init__(parent_directory=parent_directory, relayhost=f"[{host}]:{port}")
        self.compile_seconds: float | None = None
        self.table_paths: dict[str, Path] = {}
        if tables:
            try:
                self.table_paths = write_tables(self.root / "tables", tables, recipients, relay_to)
            except BaseException:
                self.remove()
                raise
            self.extra_main_cf.update(
                {parameter: f"hash:{path}" for parameter, path in self.table_paths.items()})

    def _write_configuration(self) -> None:
        super()._write_configuration()
        if self.table_paths:
            self.compile_seconds = compile_tables(
                ["postmap", "-c", str(self.config_directory)], self.table_paths)


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def count_delivered(maillog: Path, domain: str | None = None) -> int:
    """`status=sent` lines in a Postfix-format log: one per recipient delivered; given a domain,
    only those whose recipient (to=<...>) is at that domain."""
    try:
        text = maillog.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    if domain is None:
        return text.count(" status=sent ")
    return len(re.findall(rf" to=<[^>]*@{re.escape(domain)}>,.* status=sent ", text))


def count_sender(maillog: Path, sender: str) -> int:
    """Queue manager lines (`from=<...>, size=`) with this envelope sender: one per message."""
    try:
        text = maillog.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return text.count(f" from=<{sender}>, size=")


@dataclass
class Run:
    server: str
    sessions: int
    length: int
    recipients: int
    messages: int
    received_by_sink: int
    recipients_logged_sent: int
    seconds: float
    messages_per_second: float
    peak_rss_mib: float | None
    # Entries in each of the three tables (0: none), and the seconds their postmap took.
    tables: int = 0
    compile_seconds: float | None = None
    round: int = 1
    # Wall-clock start, to match a slow run with whatever else the machine was doing then.
    started_at: str = ""


def run_once(kind: str, cell: dict, options, tables: int = 0, round_number: int = 1) -> Run:
    sessions, length, recipients, messages = (
        cell["sessions"], cell["length"], cell["recipients"], cell["messages"])
    sink = SmtpSink(options.smtp_sink)
    sink.start()
    try:
        if kind == "postfix":
            server = RelayingPostfix(sink.address, options.workdir, tables, recipients)
        else:
            server = RelayingPyfastmta(shlex.split(options.pyfastmta), sink.address,
                                       options.workdir, tables, recipients)
    except BaseException:
        sink.stop()
        raise
    label = f"{kind} -s {sessions} -l {length} -r {recipients} -m {messages}"
    if tables:
        label += f" tables {tables}"
    try:
        server.start()
        command = [options.smtp_source, "-c", "-s", str(sessions), "-l", str(length),
                   "-m", str(messages), "-r", str(recipients), "-f", SENDER, "-t", RECIPIENT,
                   server.address]
        started_at = time.strftime("%H:%M:%S")
        started = time.perf_counter()
        source = subprocess.run(command, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=options.run_timeout)
        counters = re.findall(rb"\d+", source.stdout)
        accepted = int(counters[-1]) if counters else 0
        if source.returncode != 0 or accepted != messages:
            raise BenchmarkFailure(
                f"{label}: `{shlex.join(command)}` exited {source.returncode} after {accepted} "
                f"of {messages} messages:\n{source.stderr.decode(errors='replace')}")
        remaining = options.run_timeout - (time.perf_counter() - started)
        if not sink.wait_for(messages, remaining):
            raise BenchmarkFailure(
                f"{label}: {messages} messages accepted, but the sink received only "
                f"{sink.messages} within {options.run_timeout:.0f} s")
        # The time is taken when the last message reached the sink, as the issue asks; the
        # emptying of the queue that follows is checked, untimed, so a slow listing command
        # costs no server its score.
        seconds = time.perf_counter() - started
        # A message leaves the queue just after the sink's 250; two empty readings in a row,
        # because a queue listing taken while a file moves between queues could miss it.
        while not (server.queue_is_empty() and server.queue_is_empty()):
            if time.perf_counter() - started > options.run_timeout:
                raise BenchmarkFailure(f"{label}: the sink has every message, but the server's "
                                       f"queue is still not empty after {options.run_timeout:.0f} s")
            time.sleep(0.02)
        rss = server.peak_rss_kib() if kind == "pyfastmta" else None
        # Time for a duplicate delivery, were there one, to reach the sink and the log.
        time.sleep(options.settle)
        received = sink.messages
        server.stop()
        logged = count_delivered(server.maillog_file)
        # With tables, every delivery must have gone through canonical_maps and
        # virtual_alias_maps: recipients at SINK_DOMAIN, the sender rewritten.
        rewritten = count_delivered(server.maillog_file, SINK_DOMAIN) if tables else logged
        senders = count_sender(server.maillog_file, CANONICAL_SENDER) if tables else messages
    finally:
        # Each step runs even if the one before it raised, so no sink or directory is left.
        try:
            server.stop()
        finally:
            try:
                sink_errors = sink.stop()
            finally:
                server.remove()
    if received != messages:
        raise BenchmarkFailure(f"{label}: {messages} messages sent, the sink received {received} "
                               f"({'duplicates' if received > messages else 'loss'})"
                               f"\n{sink_errors}")
    if logged != messages * recipients:
        raise BenchmarkFailure(f"{label}: {messages * recipients} recipients sent, the log shows "
                               f"{logged} status=sent lines")
    if rewritten != messages * recipients or senders != messages:
        raise BenchmarkFailure(f"{label}: of {messages * recipients} recipients, {rewritten} were "
                               f"delivered at {SINK_DOMAIN} and {senders} of {messages} messages "
                               f"left as {CANONICAL_SENDER}: the tables were not applied")
    run = Run(server=kind, sessions=sessions, length=length, recipients=recipients,
              messages=messages, received_by_sink=received, recipients_logged_sent=logged,
              seconds=round(seconds, 3), messages_per_second=round(messages / seconds, 1),
              peak_rss_mib=None if rss is None else round(rss / 1024, 1), tables=tables,
              compile_seconds=(None if server.compile_seconds is None
                               else round(server.compile_seconds, 2)),
              round=round_number, started_at=started_at)
    rss_text = "" if rss is None else f", peak RSS {run.peak_rss_mib:.0f} MiB"
    compile_text = "" if run.compile_seconds is None else f", postmap {run.compile_seconds:.1f} s"
    print(f"{label:<44} {received} at the sink, {logged} status=sent, {run.seconds:7.2f} s, "
          f"{run.messages_per_second:7.0f} msg/s{rss_text}{compile_text}, started {started_at}",
          flush=True)
    return run


def run_order(options, round_number: int) -> list[tuple[int, str]]:
    """(tables, server) pairs of one round of one cell; every other round runs them backwards,
    so a machine that drifts during a round favours no setting."""
    order = [(tables, kind) for tables in options.tables for kind in options.server_list]
    return order if round_number % 2 else order[::-1]


def cells(options) -> list[dict]:
    if options.headline:
        return [dict(HEADLINE)]
    return [{"sessions": s, "length": length, "recipients": r, "messages": options.messages}
            for s in options.sessions for length in options.sizes for r in options.recipients]


def median_runs(runs: list[Run]) -> dict[tuple, Run]:
    """One Run per (server, tables, cell): the median rate and peak RSS over its rounds."""
    grouped: dict[tuple, list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.server, run.tables, run.sessions, run.length, run.recipients),
                           []).append(run)
    medians = {}
    for key, group in grouped.items():
        rss = [run.peak_rss_mib for run in group if run.peak_rss_mib is not None]
        medians[key] = Run(**{**asdict(group[0]),
                              "messages_per_second": statistics.median(
                                  run.messages_per_second for run in group),
                              "peak_rss_mib": statistics.median(rss) if rss else None})
    return medians


def table_rows(runs: list[Run], servers: list[str],
               with_tables: bool = False) -> tuple[list[str], list[list[str]]]:
    """Server against server, per cell (and table size, if with_tables): medians over rounds."""
    heading = ["sessions", "size", "rcpt/msg", "messages", "Postfix msg/s", "pyfastmta msg/s",
               "ratio to Postfix", "pyfastmta peak RSS (MiB)"]
    if with_tables:
        heading.insert(0, "table entries")
    rows = []
    keyed = median_runs(runs)
    for key, run in keyed.items():
        if run.server != servers[0]:
            continue
        postfix, pyfastmta = keyed.get(("postfix", *key[1:])), keyed.get(("pyfastmta", *key[1:]))
        ratio = (f"{pyfastmta.messages_per_second / postfix.messages_per_second:.2f}"
                 if postfix and pyfastmta else "-")
        rows.append([
            *([str(run.tables)] if with_tables else []),
            str(run.sessions), size_text(run.length), str(run.recipients), str(run.messages),
            f"{postfix.messages_per_second:.0f}" if postfix else "-",
            f"{pyfastmta.messages_per_second:.0f}" if pyfastmta else "-",
            ratio,
            f"{pyfastmta.peak_rss_mib:.0f}" if pyfastmta else "-",
        ])
    return heading, rows


def tables_rows(runs: list[Run], servers: list[str]) -> tuple[list[str], list[list[str]]]:
    """Each server with tables against itself without (the runs with 0 entries): every round's
    rate, the medians and their ratio."""
    heading = ["server", "sessions", "size", "rcpt/msg", "table entries", "msg/s without (runs)",
               "msg/s with (runs)", "median without", "median with", "with / without"]
    grouped: dict[tuple, list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.server, run.tables, run.sessions, run.length, run.recipients),
                           []).append(run)
    rows = []
    for (kind, tables, *cell), with_runs in grouped.items():
        without_runs = grouped.get((kind, 0, *cell))
        if not tables or not without_runs:
            continue
        without = statistics.median(run.messages_per_second for run in without_runs)
        with_ = statistics.median(run.messages_per_second for run in with_runs)
        rows.append([
            kind, str(cell[0]), size_text(cell[1]), str(cell[2]), str(tables),
            " ".join(f"{run.messages_per_second:.0f}" for run in without_runs),
            " ".join(f"{run.messages_per_second:.0f}" for run in with_runs),
            f"{without:.0f}", f"{with_:.0f}", f"{with_ / without:.3f}",
        ])
    rows.sort(key=lambda row: servers.index(row[0]))
    return heading, rows


def size_text(length: int) -> str:
    return f"{length // 1024} KB" if length % 1024 == 0 else f"{length} B"


def int_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return values


def table_sizes(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers") from None
    if any(value < 0 for value in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: table sizes must be distinct and not negative")
    return values


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--headline", action="store_true",
                        help="one run per server with -s 20 -l 2000 -m 20000, instead of the matrix")
    parser.add_argument("-m", "--messages", type=int, default=1000,
                        help="messages per matrix cell (default: %(default)s)")
    parser.add_argument("--sessions", type=int_list, default=list(MATRIX_SESSIONS),
                        help="smtp-source sessions of the matrix, comma-separated (default: 1,10,50,200)")
    parser.add_argument("--sizes", type=int_list, default=list(MATRIX_SIZES),
                        help="message body bytes of the matrix (default: 1024,10240,102400)")
    parser.add_argument("--recipients", type=int_list, default=list(MATRIX_RECIPIENTS),
                        help="recipients per message of the matrix (default: 1,10)")
    parser.add_argument("--tables", type=table_sizes, default=[0],
                        help="entries in each of three hash: tables (canonical_maps, "
                             "virtual_alias_maps, transport_maps) given to both servers; "
                             "comma-separated to compare, 0 for none, e.g. 0,100000 "
                             "(default: 0)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each server and table size per cell, every other round in "
                             "reverse order; the tables show medians (default: %(default)s)")
    parser.add_argument("--servers", default="postfix,pyfastmta",
                        help="comma-separated servers, from postfix and pyfastmta, in running order")
    parser.add_argument("--pyfastmta", default=default_pyfastmta_command(),
                        help="command that runs pyfastmta (default: %(default)s)")
    parser.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    parser.add_argument("--smtp-sink", default=shutil.which("smtp-sink") or "/usr/sbin/smtp-sink")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds to wait after the queue is empty before counting again, so "
                             "a duplicate delivery would be seen")
    parser.add_argument("--run-timeout", type=float, default=600.0,
                        help="seconds one run may take before the benchmark fails")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the servers' temporary directories (and queues) are made")
    parser.add_argument("--results", type=Path, default=RESULTS_DIRECTORY,
                        help="directory for relay-<timestamp>.json and .md")
    options = parser.parse_args(argv)
    options.server_list = options.servers.split(",")
    if (not options.server_list or len(set(options.server_list)) != len(options.server_list)
            or any(kind not in ("postfix", "pyfastmta") for kind in options.server_list)):
        parser.error("--servers takes postfix and/or pyfastmta, comma-separated, each once")
    if options.messages < 1:
        parser.error("--messages must be at least 1")
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    most_recipients = HEADLINE["recipients"] if options.headline else max(options.recipients)
    if any(0 < tables < most_recipients + 2 for tables in options.tables):
        parser.error(f"--tables: a table needs at least {most_recipients + 2} entries here")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if os.geteuid() != 0:
        print("relay_race: a private Postfix can only be started as root", file=sys.stderr)
        return 2
    machine = describe_machine(options.workdir)
    print(f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}; "
          f"queues on {machine['queue_filesystem']} {machine['queue_device']} "
          f"({machine['queue_parent_directory']}); Postfix {machine['postfix_version']}")
    print("smtp-source → server → smtp-sink, each run timed until the sink has every message "
          "(the queue must then empty)", flush=True)

    runs = []
    try:
        for cell in cells(options):
            for round_number in range(1, options.rounds + 1):
                for tables, kind in run_order(options, round_number):
                    runs.append(run_once(kind, cell, options, tables, round_number))
    except (BenchmarkFailure, PostfixInstanceError, TimeoutError, subprocess.TimeoutExpired) as failure:
        print(f"\nBENCHMARK FAILED: {failure}", file=sys.stderr)
        return 1

    with_tables = options.tables != [0]
    heading, rows = table_rows(runs, options.server_list, with_tables)
    print()
    print(plain_table(heading, rows))
    markdown = markdown_table(heading, rows)
    if with_tables and 0 in options.tables:
        heading, rows = tables_rows(runs, options.server_list)
        print()
        print(plain_table(heading, rows))
        markdown += "\n\n" + markdown_table(heading, rows)
    print("\nfor the README:\n")
    print(markdown)

    timestamp = time.strftime("%Y%m%dT%H%M%S")
    options.results.mkdir(parents=True, exist_ok=True)
    name = (f"relay-{'headline-' if options.headline else ''}"
            f"{'tables-' if with_tables else ''}{timestamp}")
    (options.results / f"{name}.json").write_text(json.dumps({
        "timestamp": timestamp,
        "parameters": {"headline": options.headline, "servers": options.servers,
                       "sender": SENDER, "recipient": RECIPIENT, "pyfastmta": options.pyfastmta,
                       "tables": options.tables, "rounds": options.rounds},
        "machine": machine,
        "runs": [asdict(run) for run in runs],
    }, indent=2) + "\n")
    (options.results / f"{name}.md").write_text(
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), queues on "
        f"{machine['queue_filesystem']}, Postfix {machine['postfix_version']}\n\n{markdown}\n")
    print(f"\nresults written to {options.results / name}.json and .md")
    return 0


if __name__ == "__main__":
    # A terminated benchmark still stops its servers and sinks and removes their directories.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
