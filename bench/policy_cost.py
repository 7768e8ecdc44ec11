"""What one policy server round trip per recipient costs Postfix and pyfastmta, in the same run.

Four configurations, alternating round by round, each driven exactly as accept_race.py drives a
server (smtp-source plus a paced latency probe; every acknowledged message must be in the queue):

- postfix, pyfastmta: each server as accept_race.py runs it (client 127.0.0.1 in mynetworks,
  recipient bench@localhost);
- postfix-policy, pyfastmta-policy: the same, with
      smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:PORT,
                                     permit_mynetworks, reject_unauth_destination
  where PORT is bench/policy_server.py (its own process, answering DUNNO), started afresh for
  each run. Each such run must have asked it once per accepted recipient.

The policy server is asked before anything else, so both servers do the same thing for it: one
request and one answer per recipient, on connections they keep open. The table gives each
configuration's median and best rate, and per server the median (and range) of the rounds'
ratios with the policy server to without, and the time the round trip adds to each message of a
run (1/rate with it less 1/rate without, median of the rounds; on N CPUs, N times that in CPU
capacity).

    python bench/policy_cost.py [--rounds 4] [-s 20] [-l 2000] [-m 10000]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accept_race import (
    RECIPIENT,
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
from postfix_instance import PostfixInstance
from restriction_cost import Peers

SERVERS = ("postfix", "pyfastmta")


def recipient_restrictions(policy_service: str) -> str:
    return f"{policy_service}, permit_mynetworks, reject_unauth_destination"


def timed_run(configuration: str, options, round_number: int):
    server_kind, _, policy = configuration.partition("-")
    directory = Path(tempfile.mkdtemp(prefix="policy-cost-", dir=options.workdir))
    try:
        with Peers(directory, negative_ttl=300) as peers:
            restrictions = recipient_restrictions(f"check_policy_service {peers.policy_service}")

            def make_server():
                if server_kind == "postfix":
                    extra = {"smtpd_recipient_restrictions": restrictions} if policy else {}
                    return PostfixInstance(parent_directory=options.workdir, main_cf=extra)
                server = PyfastmtaInstance(shlex.split(options.pyfastmta), options.workdir)
                if policy:
                    server.main_cf_extra = f"smtpd_recipient_restrictions = {restrictions}\n"
                return server

            run = run_once(configuration, make_server, options, round_number)
        requests = peers.policy_counters()["requests"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    recipients = run.sent_by_smtp_source + run.sent_by_probe
    if policy and requests != recipients:
        raise BenchmarkFailure(f"{configuration}, round {round_number}: {recipients} recipients were "
                               f"accepted but the policy server was asked {requests} times")
    if not policy and requests:
        raise BenchmarkFailure(f"{configuration}, round {round_number}: the policy server was asked")
    return run, requests


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--sessions", type=int, default=20, help="parallel smtp-source sessions")
    parser.add_argument("-l", "--length", type=int, default=2000, help="message body bytes")
    parser.add_argument("-m", "--messages", type=int, default=10000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=4, help="runs per configuration, alternating")
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
                        help="directory for policy-<timestamp>.json")
    options = parser.parse_args(argv)
    if min(options.sessions, options.messages, options.rounds) < 1 or options.length < 0:
        parser.error("sessions, messages and rounds must be positive, length not negative")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    machine = describe_machine(options.workdir)
    configurations = [name for server in SERVERS for name in (server, f"{server}-policy")]
    print(f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}; "
          f"queues on {machine['queue_filesystem']} {machine['queue_device']}")
    print(f"smtp-source -s {options.sessions} -l {options.length} -m {options.messages}, "
          f"{options.rounds} round(s) of {', '.join(configurations)}", flush=True)
    runs, requests = [], {}
    try:
        for round_number in range(1, options.rounds + 1):
            # Alternating the order cancels any drift between the configurations.
            ordered = configurations if round_number % 2 else configurations[::-1]
            for configuration in ordered:
                run, asked = timed_run(configuration, options, round_number)
                runs.append(run)
                requests[(configuration, round_number)] = asked
    except (BenchmarkFailure, TimeoutError, OSError) as failure:
        print(f"\nBENCHMARK FAILED: {failure}", file=sys.stderr)
        return 1

    summaries = summarize(runs, configurations, baseline="postfix")
    heading, rows = table_rows(summaries, options.rounds, ratio_heading="ratio to postfix",
                               first_heading="configuration")
    rate = {(run.server, run.round): run.messages_per_second for run in runs}
    heading += ["with the policy server / without, same round (median; range)",
                "time added per message (µs of the run, 1/rate)"]
    findings = {}
    for configuration, row in zip(configurations, rows):
        server = configuration.removesuffix("-policy")
        if configuration == server:
            row += ["", ""]
            continue
        rounds = range(1, options.rounds + 1)
        ratios = [rate[(configuration, r)] / rate[(server, r)] for r in rounds]
        added = [1e6 / rate[(configuration, r)] - 1e6 / rate[(server, r)] for r in rounds]
        findings[server] = {"ratios": [round(x, 3) for x in ratios],
                            "added_us": [round(x, 1) for x in added]}
        row += [f"{statistics.median(ratios):.2f}; {min(ratios):.2f}–{max(ratios):.2f}",
                f"{statistics.median(added):.0f}"]
    print()
    print(plain_table(heading, rows))
    print("\nfor the README:\n")
    print(markdown_table(heading, rows))
    print()
    for server, found in findings.items():
        print(f"{server}: the policy server costs {100 * (1 - statistics.median(found['ratios'])):.0f}% "
              f"of the accept rate; each message takes {statistics.median(found['added_us']):.0f} µs "
              f"more of the run")

    timestamp = time.strftime("%Y%m%dT%H%M%S")
    options.results.mkdir(parents=True, exist_ok=True)
    result_file = options.results / f"policy-{timestamp}.json"
    summary = [asdict(s) for s in summaries]
    result_file.write_text(json.dumps({
        "timestamp": timestamp,
        "parameters": {"sessions": options.sessions, "length": options.length,
                       "messages": options.messages, "rounds": options.rounds,
                       "sender": options.sender, "recipient": options.recipient,
                       "pyfastmta": options.pyfastmta},
        "machine": machine,
        "summary": summary,
        "policy": findings,
        "policy_requests": {f"{c} round {r}": n for (c, r), n in requests.items()},
    }, indent=2) + "\n")
    print(f"\nresults written to {result_file}")
    return 0


if __name__ == "__main__":
    # A terminated benchmark still stops its servers and removes their directories.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
