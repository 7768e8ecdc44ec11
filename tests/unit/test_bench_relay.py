"""The relay race's machinery: smtp-source → private Postfix / pyfastmta → smtp-sink, counted."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SMTP_SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-sink"

# CI runs as root with Postfix installed by `make test`: there these tests must run, never skip.
needs_private_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (
        os.geteuid() != 0
        or shutil.which("postfix", path="/usr/sbin:/usr/bin") is None
        or shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") is None),
    reason="a private Postfix needs root (`postfix start`) and Postfix with smtp-sink (make sysdeps)",
)


def load_bench_program(name):
    """bench/ holds programs, not a package; relay_race imports its neighbours by name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


postfix_instance = load_bench_program("postfix_instance")
accept_race = load_bench_program("accept_race")
relay_race = load_bench_program("relay_race")


@needs_private_postfix
def test_sink_counts_what_smtp_source_sent():
    sink = relay_race.SmtpSink(SMTP_SINK)
    sink.start()
    try:
        sent = subprocess.run([SMTP_SOURCE, "-s", "4", "-m", "37", "-r", "3", sink.address],
                              capture_output=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert sink.wait_for(37, 10)
        assert not sink.wait_for(38, 0.3)
        assert sink.messages == 37
    finally:
        sink.stop()


@needs_private_postfix
def test_tiny_race_delivers_every_message_once_through_both_servers(tmp_path, capsys):
    status = relay_race.main(["-m", "200", "--sessions", "5", "--sizes", "1024",
                              "--recipients", "1,3", "--results", str(tmp_path)])
    output = capsys.readouterr().out
    assert status == 0, output
    [result_file] = tmp_path.glob("relay-*.json")
    result = json.loads(result_file.read_text())
    runs = result["runs"]
    assert [(run["server"], run["recipients"]) for run in runs] == [
        ("postfix", 1), ("pyfastmta", 1), ("postfix", 3), ("pyfastmta", 3)]
    for run in runs:
        assert run["received_by_sink"] == run["messages"] == 200
        assert run["recipients_logged_sent"] == 200 * run["recipients"]
        assert run["messages_per_second"] > 0
    assert [run["peak_rss_mib"] is None for run in runs] == [True, False, True, False]
    assert all(run["peak_rss_mib"] > 10 for run in runs if run["server"] == "pyfastmta")
    assert result["machine"]["nproc"] >= 1
    markdown = next(tmp_path.glob("relay-*.md")).read_text()
    assert "| 5 | 1 KB | 3 | 200 |" in markdown


@needs_private_postfix
def test_race_fails_loudly_when_the_log_misses_a_delivery(tmp_path, capsys, monkeypatch):
    real_count = relay_race.count_delivered
    monkeypatch.setattr(relay_race, "count_delivered", lambda maillog: real_count(maillog) - 1)
    status = relay_race.main(["-m", "20", "--sessions", "2", "--sizes", "1024", "--recipients", "1",
                              "--servers", "postfix", "--results", str(tmp_path)])
    assert status == 1
    error = capsys.readouterr().err
    assert "BENCHMARK FAILED" in error and "19 status=sent" in error
    assert not list(tmp_path.glob("relay-*"))


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        relay_race.parse_arguments(["--servers", "postfix,sendmail"])
    with pytest.raises(SystemExit):
        relay_race.parse_arguments(["--sizes", "1024,0"])
    options = relay_race.parse_arguments(["--headline"])
    assert relay_race.cells(options) == [relay_race.HEADLINE]
    matrix = relay_race.cells(relay_race.parse_arguments(["-m", "50"]))
    assert len(matrix) == 4 * 3 * 2 and {cell["messages"] for cell in matrix} == {50}
