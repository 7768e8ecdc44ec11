"""Accept rate of pyfastmta and Postfix, side by side, both durable.

Each run starts one server in a fresh temporary directory, drives it with Postfix's
smtp-source (same sessions, message size and count for every server) while a probe client
measures end-of-data to 250 latency on its own session, then counts what the queue really
holds and stops the server. Servers alternate for --rounds rounds; the table gives the
median (and best) rate per server and its ratio to Postfix.

    python bench/accept_race.py [-s 20] [-l 2000] [-m 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from postfix_instance import (
    PostfixInstance,
    PostfixInstanceError,
    free_loopback_port,
    log_tail,
    postfix_version,
    wait_until_listening,
)

SENDER = "bench@example.com"
RECIPIENT = "bench@localhost"
RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"
# How long a server may take to answer one command or one administrative request.
REPLY_TIMEOUT = 60.0


class BenchmarkFailure(RuntimeError):
    """A run did not do what the benchmark requires (mail refused, mail missing from a queue)."""


class PyfastmtaInstance:
    """One private pyfastmta started with `pyfastmta -c DIR start` on 127.0.0.1:PORT."""

    name = "pyfastmta"
    host = "127.0.0.1"
    main_cf_extra = ""  # more main.cf lines, for a benchmark that needs them
    mynetworks = "127.0.0.0/8"  # the clients trusted to relay; the benchmark clients by default

    def __init__(self, command: list[str], parent_directory: str | os.PathLike | None = None):
        self.command = command
        self.port = free_loopback_port()
        self.root = Path(tempfile.mkdtemp(prefix="pyfastmta-bench-", dir=parent_directory))
        self.queue_directory = self.root / "spool"
        self.maillog_file = self.root / "maillog"
        self.running = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        # Workers run as mail_owner and must reach the queue under this directory.
        self.root.chmod(0o755)
        (self.root / "main.cf").write_text(
            f"queue_directory = {self.queue_directory}\n"
            f"mynetworks = {self.mynetworks}\n"
            "mydestination = localhost\n"
            f"maillog_file = {self.maillog_file}\n" + self.main_cf_extra
        )
        (self.root / "master.cf").write_text(f"{self.address} inet n - n - - smtpd\n")
        # Set first: a start that fails half-way may have left a master to stop.
        self.running = True
        self._run("start")
        wait_until_listening(self.host, self.port, timeout)

    def stop_and_count_queued(self) -> int:
        """Stop the server and return how many messages `pyfastmta postqueue -j` listed just before."""
        listing = self._run("postqueue", "-j")
        self._stop()
        return sum(1 for line in listing.splitlines() if line.strip())

    def stop(self) -> None:
        """Stop if started; a failure is reported, not raised, so it hides no earlier error."""
        if self.running:
            try:
                self._stop()
            except BenchmarkFailure as failure:
                print(f"warning: {failure}", file=sys.stderr)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop(self) -> None:
        self.running = False
        self._run("stop")

    def _run(self, *arguments: str) -> str:
        invocation = [*self.command, "-c", str(self.root), *arguments]
        # Output goes to files, not pipes: a daemon that keeps its inherited stdout open would
        # otherwise hold the read end open and the start command would seem never to return.
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            try:
                returncode = subprocess.run(invocation, stdin=subprocess.DEVNULL, stdout=stdout,
                                            stderr=stderr, timeout=REPLY_TIMEOUT).returncode
                outcome = f"exited {returncode}"
            except subprocess.TimeoutExpired:
                returncode, outcome = None, f"did not return within {REPLY_TIMEOUT:.0f} s"
            output, errors = (_read_back(stream) for stream in (stdout, stderr))
        if returncode != 0:
            raise BenchmarkFailure(
                f"`{shlex.join(invocation)}` {outcome}:\n{output}{errors}"
                f"\nlast lines of {self.maillog_file}:\n{log_tail(self.maillog_file)}"
            )
        return output


def _read_back(stream) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")


def probe_message(length: int, sender: str, recipient: str) -> bytes:
    """A few headers and a body of about `length` bytes in 80-byte lines, like smtp-source -l."""
    full_lines, remainder = divmod(length, 80)
    body = (b"x" * 78 + b"\r\n") * full_lines
    if remainder:
        body += b"x" * max(remainder - 2, 0) + b"\r\n"
    headers = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: latency probe\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
    ).encode()
    return headers + b"\r\n" + body


PROBE_INTERVAL = 0.01


class LatencyProbe:
    """Sends messages one after another on one SMTP session and times, for each, the interval
    from writing the final ".\\r\\n" to reading the 250 reply."""

    def __init__(self, host: str, port: int, message: bytes, sender: str, recipient: str):
        self.host = host
        self.port = port
        self.message = message
        self.sender = sender
        self.recipient = recipient
        self.latencies: list[float] = []
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            await self._expect(reader, b"220")
            await self._command(reader, writer, b"EHLO probe.localdomain", b"250")
            self.ready.set()
            while not stop.is_set():
                await self._command(reader, writer, f"MAIL FROM:<{self.sender}>".encode(), b"250")
                await self._command(reader, writer, f"RCPT TO:<{self.recipient}>".encode(), b"250")
                await self._command(reader, writer, b"DATA", b"354")
                writer.write(self.message)
                await writer.drain()
                started = time.perf_counter()
                writer.write(b".\r\n")
                await self._expect(reader, b"250")
                self.latencies.append(time.perf_counter() - started)
                # A sample, not a load: paced so that it adds the same small load to both servers.
                await asyncio.sleep(PROBE_INTERVAL)
            await self._command(reader, writer, b"QUIT", b"221")
        finally:
            writer.close()

    async def _command(self, reader, writer, line: bytes, code: bytes) -> None:
        writer.write(line + b"\r\n")
        await self._expect(reader, code)

    @staticmethod
    async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
            except TimeoutError:
                raise BenchmarkFailure(
                    f"probe: no {code.decode()} reply within {REPLY_TIMEOUT:.0f} s"
                ) from None
            if not line:
                raise BenchmarkFailure(f"probe: connection closed while waiting for {code.decode()}")
            if line[3:4] != b"-":
                break
        if not line.startswith(code):
            reply = line.decode(errors="replace").strip()
            raise BenchmarkFailure(f"probe: expected {code.decode()}, got {reply}")


def percentile(samples: list[float], percent: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


@dataclass
class Run:
    server: str
    round: int
    sent_by_smtp_source: int
    sent_by_probe: int
    queued: int
    seconds: float
    messages_per_second: float
    p50_ms: float
    p99_ms: float


@dataclass
class Summary:
    server: str
    messages: int
    seconds: float
    median_messages_per_second: float
    best_messages_per_second: float
    ratio_to_postfix: float | None
    p50_ms: float
    p99_ms: float
    rounds: list[Run] = field(default_factory=list)


async def drive(server, options) -> tuple[int, int, float, list[float]]:
    """smtp-source and the probe against one running server.

    Returns messages accepted by smtp-source, by the probe, smtp-source's wall time and the
    probe's latencies."""
    probe = LatencyProbe(
        server.host, server.port,
        probe_message(options.length, options.sender, options.recipient),
        options.sender, options.recipient,
    )
    stop = asyncio.Event()
    probe_task = asyncio.create_task(probe.run(stop))
    ready = asyncio.create_task(probe.ready.wait())
    await asyncio.wait([probe_task, ready], return_when=asyncio.FIRST_COMPLETED)
    if probe_task.done():
        ready.cancel()
        await _probe_outcome(probe_task)

    command = [
        options.smtp_source, "-c",
        "-s", str(options.sessions), "-l", str(options.length), "-m", str(options.messages),
        "-f", options.sender, "-t", options.recipient, server.address,
    ]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    source_task = asyncio.create_task(process.communicate())
    await asyncio.wait([source_task, probe_task], timeout=options.run_timeout,
                       return_when=asyncio.FIRST_COMPLETED)
    if not source_task.done():
        # The probe failed, or the run overran: either way smtp-source is stopped first.
        process.kill()
        await source_task
        if probe_task.done():
            await _probe_outcome(probe_task)
        raise BenchmarkFailure(
            f"{server.name}: smtp-source did not finish within {options.run_timeout} s"
        )
    stdout, stderr = source_task.result()
    seconds = time.perf_counter() - started
    stop.set()
    await _probe_outcome(probe_task)

    # -c prints a counter, one value per completed DATA, separated by carriage returns.
    counters = re.findall(rb"\d+", stdout)
    accepted = int(counters[-1]) if counters else 0
    if process.returncode != 0 or accepted != options.messages:
        raise BenchmarkFailure(
            f"{server.name}: `{shlex.join(command)}` exited {process.returncode} after {accepted} "
            f"of {options.messages} messages:\n{stderr.decode(errors='replace')}"
        )
    return accepted, len(probe.latencies), seconds, probe.latencies


async def _probe_outcome(probe_task: asyncio.Task) -> None:
    try:
        await probe_task
    except OSError as error:
        raise BenchmarkFailure(f"probe: {error}") from error


def run_once(label: str, make_server, options, round_number: int) -> Run:
    server = make_server()
    try:
        server.start()
        accepted, probed, seconds, latencies = asyncio.run(drive(server, options))
        queued = server.stop_and_count_queued()
    finally:
        server.stop()
        server.remove()
    if queued < accepted + probed:
        raise BenchmarkFailure(
            f"{label}: {accepted + probed} messages were acknowledged with 250 "
            f"({accepted} by smtp-source, {probed} by the probe) but only {queued} are in the queue"
        )
    run = Run(
        server=label, round=round_number, sent_by_smtp_source=accepted, sent_by_probe=probed,
        queued=queued, seconds=round(seconds, 3), messages_per_second=round(accepted / seconds, 1),
        p50_ms=round(percentile(latencies, 50) * 1000, 2),
        p99_ms=round(percentile(latencies, 99) * 1000, 2),
    )
    print(
        f"round {round_number} {label:<12} {accepted} by smtp-source + {probed} by probe, "
        f"{queued} queued, {run.seconds:.2f} s, {run.messages_per_second:.0f} msg/s, "
        f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms",
        flush=True,
    )
    return run


def summarize(runs: list[Run], labels: list[str], baseline: str = "postfix") -> list[Summary]:
    """Median and best per label; each ratio is to the first label starting with `baseline`
    (kept in ratio_to_postfix, whatever the baseline)."""
    summaries = []
    for label in labels:
        own = [run for run in runs if run.server == label]
        rates = [run.messages_per_second for run in own]
        summaries.append(Summary(
            server=label,
            messages=own[0].sent_by_smtp_source,
            seconds=round(statistics.median(run.seconds for run in own), 3),
            median_messages_per_second=round(statistics.median(rates), 1),
            best_messages_per_second=max(rates),
            ratio_to_postfix=None,
            p50_ms=round(statistics.median(run.p50_ms for run in own), 2),
            p99_ms=round(statistics.median(run.p99_ms for run in own), 2),
            rounds=own,
        ))
    reference = next(s for s in summaries if s.server.startswith(baseline))
    for summary in summaries:
        summary.ratio_to_postfix = round(
            summary.median_messages_per_second / reference.median_messages_per_second, 2
        )
    return summaries


def table_rows(summaries: list[Summary], rounds: int, ratio_heading: str = "ratio to Postfix",
               first_heading: str = "server") -> tuple[list[str], list[list[str]]]:
    rate_heading = "msg/s" if rounds == 1 else f"msg/s median (best of {rounds})"
    heading = [first_heading, "messages", "seconds", rate_heading, ratio_heading,
               "p50 / p99 end-of-data→250 (ms)"]
    rows = []
    for s in summaries:
        rate = f"{s.median_messages_per_second:.0f}"
        if rounds > 1:
            rate += f" ({s.best_messages_per_second:.0f})"
        rows.append([s.server, str(s.messages), f"{s.seconds:.2f}", rate,
                     f"{s.ratio_to_postfix:.2f}", f"{s.p50_ms:.2f} / {s.p99_ms:.2f}"])
    return heading, rows


def plain_table(heading: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(heading, *rows)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(line, widths))
             for line in (heading, *rows)]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(heading: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(heading) + " |", "|" + "|".join(" --- " for _ in heading) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def filesystem_of(path: Path) -> tuple[str, str]:
    """Type and device of the filesystem holding path, from /proc/self/mountinfo."""
    device = os.stat(path).st_dev
    wanted = f"{os.major(device)}:{os.minor(device)}"
    resolved = str(path.resolve())
    best = ("unknown", "unknown", "")
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            mount_fields, _, filesystem_fields = line.partition(" - ")
            numbers, mount_point = mount_fields.split()[2], mount_fields.split()[4]
            inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
            if numbers == wanted and inside and len(mount_point) >= len(best[2]):
                fstype, source = filesystem_fields.split()[:2]
                best = (fstype, source, mount_point)
    return best[0], best[1]


def describe_machine(work_directory: Path) -> dict:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    fstype, device = filesystem_of(work_directory)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "queue_filesystem": fstype,
        "queue_device": device,
        "queue_parent_directory": str(work_directory),
        "postfix_version": postfix_version(),
        "python": platform.python_version(),
    }


def default_pyfastmta_command() -> str:
    installed = Path(sys.executable).with_name("pyfastmta")
    if installed.exists():
        return str(installed)
    return shlex.join([sys.executable, "-m", "pyfastmta"])


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--sessions", type=int, default=20, help="parallel smtp-source sessions")
    parser.add_argument("-l", "--length", type=int, default=2000, help="message body bytes")
    parser.add_argument("-m", "--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per server, alternating servers; the table gives median and best")
    parser.add_argument("--servers", default="postfix,pyfastmta",
                        help="comma-separated servers to race, each 'postfix' or 'pyfastmta' "
                             "(postfix,postfix races two Postfix instances)")
    parser.add_argument("--pyfastmta", default=default_pyfastmta_command(),
                        help="command that runs pyfastmta (default: %(default)s)")
    parser.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    parser.add_argument("--postfix-hold-queue", action="store_true",
                        help="Postfix files each message in its hold queue at once instead of "
                             "deferring it through defer_transports, so no queue manager work "
                             "competes with smtpd")
    parser.add_argument("--run-timeout", type=float, default=1800.0,
                        help="seconds smtp-source may take for one run before the benchmark fails")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the servers' temporary directories (and queues) are made")
    parser.add_argument("--sender", default=SENDER)
    parser.add_argument("--recipient", default=RECIPIENT)
    parser.add_argument("--results", type=Path, default=RESULTS_DIRECTORY,
                        help="directory for accept-<timestamp>.json")
    options = parser.parse_args(argv)
    kinds = options.servers.split(",")
    if any(kind not in ("postfix", "pyfastmta") for kind in kinds) or "postfix" not in kinds:
        parser.error("--servers takes postfix and pyfastmta, comma-separated, with at least one postfix")
    if min(options.sessions, options.messages, options.rounds) < 1 or options.length < 0:
        parser.error("sessions, messages and rounds must be positive, length not negative")
    return options


def server_factories(options) -> list[tuple[str, object]]:
    """(label, function making a fresh server) for each server raced; repeated kinds get #2, #3 …"""
    factories, seen = [], {}
    pyfastmta_command = shlex.split(options.pyfastmta)
    for kind in options.servers.split(","):
        seen[kind] = seen.get(kind, 0) + 1
        label = kind if seen[kind] == 1 else f"{kind}#{seen[kind]}"
        if kind == "postfix":
            factories.append((label, lambda: PostfixInstance(parent_directory=options.workdir,
                                                          hold_queue=options.postfix_hold_queue)))
        else:
            factories.append((label, lambda: PyfastmtaInstance(pyfastmta_command, options.workdir)))
    return factories


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if os.geteuid() != 0:
        print("accept_race: a private Postfix can only be started as root", file=sys.stderr)
        return 2
    machine = describe_machine(options.workdir)
    print(f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}; "
          f"queues on {machine['queue_filesystem']} {machine['queue_device']} "
          f"({machine['queue_parent_directory']}); Postfix {machine['postfix_version']}")
    hold = "its hold queue" if options.postfix_hold_queue else "defer_transports"
    print(f"smtp-source -s {options.sessions} -l {options.length} -m {options.messages}, "
          f"{options.rounds} round(s), plus one latency probe session; Postfix holds mail with {hold}",
          flush=True)

    factories = server_factories(options)
    runs = []
    try:
        for round_number in range(1, options.rounds + 1):
            # Alternating the order cancels any drift (page cache, disk, thermal) between servers.
            ordered = factories if round_number % 2 else list(reversed(factories))
            for label, make_server in ordered:
                runs.append(run_once(label, make_server, options, round_number))
    except (BenchmarkFailure, PostfixInstanceError, TimeoutError) as failure:
        print(f"\nBENCHMARK FAILED: {failure}", file=sys.stderr)
        return 1

    summaries = summarize(runs, [label for label, _ in factories])
    heading, rows = table_rows(summaries, options.rounds)
    print()
    print(plain_table(heading, rows))
    print("\nfor the README:\n")
    print(markdown_table(heading, rows))

    timestamp = time.strftime("%Y%m%dT%H%M%S")
    options.results.mkdir(parents=True, exist_ok=True)
    result_file = options.results / f"accept-{timestamp}.json"
    result_file.write_text(json.dumps({
        "timestamp": timestamp,
        "parameters": {
            "sessions": options.sessions, "length": options.length, "messages": options.messages,
            "rounds": options.rounds, "servers": options.servers, "sender": options.sender,
            "recipient": options.recipient, "pyfastmta": options.pyfastmta,
            "postfix_holds_mail_with": "hold queue" if options.postfix_hold_queue else "defer_transports",
        },
        "machine": machine,
        "summary": [asdict(summary) for summary in summaries],
    }, indent=2) + "\n")
    print(f"\nresults written to {result_file}")
    return 0


if __name__ == "__main__":
    # A terminated benchmark still stops its servers and removes their directories.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
