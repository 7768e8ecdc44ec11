"""The side-by-side benchmark's machinery, run against real private Postfix instances."""

import importlib.util
import json
import os
import shutil
import smtplib
import socket
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

# CI runs as root with Postfix installed by `make test`: there these tests must run, never skip.
needs_private_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (
        os.geteuid() != 0
        or shutil.which("postfix", path="/usr/sbin:/usr/bin") is None
        or shutil.which("smtp-source", path="/usr/sbin:/usr/bin") is None),
    reason="a private Postfix needs root (`postfix start`) and Postfix with smtp-source (make sysdeps)",
)


def load_bench_program(name):
    """bench/ holds programs, not a package; accept_race imports postfix_instance by name."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


postfix_instance = load_bench_program("postfix_instance")
accept_race = load_bench_program("accept_race")


def listening_addresses(port):
    """Local addresses of IPv4 and IPv6 sockets in LISTEN state on port, read from the kernel."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as sockets:
            for line in list(sockets)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if int(hex_port, 16) == port and state == "0A":
                    found.append(address)
    return found


def queue_listing(instance):
    return [json.loads(line) for line in instance.postqueue_json()]


@needs_private_postfix
def test_private_postfix_accepts_one_message_on_loopback_and_stops():
    with postfix_instance.PostfixInstance() as instance:
        master_pid = instance.master_pid
        assert os.path.exists(f"/proc/{master_pid}")
        assert instance.config_directory.is_relative_to(instance.root)
        # 127.0.0.1 in the kernel's little-endian hex, and nothing else on that port.
        assert listening_addresses(instance.port) == ["0100007F"]

        with smtplib.SMTP(instance.host, instance.port) as client:
            refused = client.sendmail("bench@example.com", ["bench@localhost"],
                                      b"Subject: bench\r\n\r\none message\r\n")
        assert refused == {}

        # Postfix's own listing: the message is held, deferred by defer_transports, not delivered.
        deadline = time.monotonic() + 20
        while (listing := queue_listing(instance))[0]["queue_name"] != "deferred":
            assert time.monotonic() < deadline, listing
            time.sleep(0.1)
        [message] = listing
        assert message["sender"] == "bench@example.com"
        assert message["recipients"][0]["address"] == "bench@localhost"
        assert message["recipients"][0]["delay_reason"] == "deferred transport"

        instance.stop()
        assert not os.path.exists(f"/proc/{master_pid}") or \
            open(f"/proc/{master_pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((instance.host, instance.port), timeout=2).close()
        assert instance.queued_message_count() == 1
    assert not instance.root.exists()


@needs_private_postfix
def test_hold_queue_variant_files_mail_in_the_hold_queue():
    with postfix_instance.PostfixInstance(hold_queue=True) as instance:
        with smtplib.SMTP(instance.host, instance.port) as client:
            client.sendmail("bench@example.com", ["bench@localhost"], b"Subject: held\r\n\r\nheld\r\n")
        [message] = queue_listing(instance)
        assert message["queue_name"] == "hold"
        assert instance.stop_and_count_queued() == 1


@needs_private_postfix
def test_race_of_two_postfix_instances_writes_results(tmp_path, capsys):
    status = accept_race.main(["--servers", "postfix,postfix", "-s", "4", "-l", "500", "-m", "150",
                               "--results", str(tmp_path)])
    output = capsys.readouterr().out
    assert status == 0, output
    [result_file] = tmp_path.glob("accept-*.json")
    result = json.loads(result_file.read_text())
    assert [summary["server"] for summary in result["summary"]] == ["postfix", "postfix#2"]
    for summary in result["summary"]:
        [run] = summary["rounds"]
        assert run["sent_by_smtp_source"] == 150
        assert run["sent_by_probe"] >= 1
        assert run["queued"] == run["sent_by_smtp_source"] + run["sent_by_probe"]
        assert 0 < run["p50_ms"] <= run["p99_ms"]
    assert result["summary"][0]["ratio_to_postfix"] == 1.0
    assert result["machine"]["nproc"] >= 1
    assert "| postfix#2 | 150 |" in output


@needs_private_postfix
def test_race_fails_loudly_when_a_queued_message_is_lost(tmp_path, capsys, monkeypatch):
    def stop_then_lose_one_message(server):
        server.stop()
        lost = next(path for path in server.queue_directory.rglob("*")
                    if path.is_file() and path.parent.name != "pid"
                    and path.relative_to(server.queue_directory).parts[0]
                    in postfix_instance.MESSAGE_QUEUES)
        lost.unlink()
        return server.queued_message_count()

    monkeypatch.setattr(postfix_instance.PostfixInstance, "stop_and_count_queued",
                        stop_then_lose_one_message)
    status = accept_race.main(["--servers", "postfix", "-s", "2", "-m", "20",
                               "--results", str(tmp_path)])
    assert status == 1
    error = capsys.readouterr().err
    assert "BENCHMARK FAILED" in error and "are in the queue" in error
    assert not list(tmp_path.glob("accept-*.json"))


def test_probe_message_body_has_the_requested_size_in_crlf_lines():
    for length in (0, 1, 79, 2000, 2001):
        message = accept_race.probe_message(length, "a@example.com", "b@localhost")
        _, _, body = message.partition(b"\r\n\r\n")
        assert abs(len(body) - length) <= 1
        assert body == b"" or body.endswith(b"\r\n")
        assert all(len(line) <= 78 for line in body.split(b"\r\n"))


def test_percentile_is_nearest_rank():
    samples = [float(value) for value in range(1, 101)]
    assert accept_race.percentile(samples, 50) == 50.0
    assert accept_race.percentile(samples, 99) == 99.0
    assert accept_race.percentile([3.0], 99) == 3.0
