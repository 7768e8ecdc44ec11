"""Loading main.cf and master.cf: typed values, services, overrides, warnings, errors."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pyfastmta.cli import postconf
from pyfastmta.config import PARAMETERS, ConfigError, load_config
from pyfastmta.config.interfaces import ipv6_supported

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


def write_config(directory: Path, main_cf: str, master_cf: str = "") -> str:
    (directory / "main.cf").write_text(main_cf)
    (directory / "master.cf").write_text(master_cf)
    return str(directory)


def run_postconf(argv: list[str], directory: str | None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = postconf.run(argv, directory)
    return status, out.getvalue(), err.getvalue()


def test_embedded_default_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.config_dir is None
    assert config.get("mydestination") == ["localhost"]
    assert config.get("mynetworks") == ["127.0.0.0/8"]
    assert config.get("inet_interfaces") == ["loopback-only"]
    assert config.get("queue_directory") == str(tmp_path / "var" / "spool")
    assert config.raw("queue_directory") == "./var/spool"
    assert config.raw("myorigin") is None
    assert config.get("myorigin") == config.get("myhostname")
    assert config.get("smtpd_banner") == f"{config.get('myhostname')} ESMTP pyfastmta"
    [service] = config.smtpd_services()
    assert (service.name, service.type, service.command, service.listen) == (
        "127.0.0.1:2525", "inet", "smtpd", [("127.0.0.1", 2525)])
    assert config.for_service(service) is config
    assert config.warnings == []
    with pytest.raises(KeyError):
        config.get("no_such_parameter")


def test_defaults_follow_the_table():
    config = load_config(None)
    assert config.get("smtpd_timeout") == 300.0
    assert config.get("worker_count") == (os.cpu_count() or 1)
    assert config.get("queue_commit_delay") == 0.0
    assert config.get("queue_commit_batch") == 256
    assert config.get("queue_segment_size") == 67108864
    assert config.get("worker_stop_timeout") == 60.0
    assert config.get("smtpd_forbid_bare_newline") == "normalize"
    assert config.get("mail_name") == config.get("syslog_name") == "pyfastmta"
    assert config.get("relay_domains") == []
    assert all(parameter.help for parameter in PARAMETERS.values())


def test_typed_values(tmp_path):
    config = load_config(write_config(tmp_path, (
        "smtpd_timeout = 5m\nmax_idle = 90\nsmtpd_error_sleep_time = 2h\nworker_stop_timeout = 1w\n"
        "queue_commit_delay = 5ms\nmessage_size_limit = 0\nsmtpd_peername_lookup = NO\n"
        "smtputf8_enable = Yes\nmydestination = a.example, b.example  c.example,d.example\n"
        "smtpd_forbid_bare_newline = yes\nmynetworks_style = subnet\ninet_protocols = ipv4, ipv6\n"
        "hopcount_limit = 7\n")))
    assert config.get("smtpd_timeout") == 300.0
    assert config.get("max_idle") == 90.0
    assert config.get("smtpd_error_sleep_time") == 7200.0
    assert config.get("worker_stop_timeout") == 604800.0
    assert config.get("queue_commit_delay") == pytest.approx(0.005)
    assert config.get("message_size_limit") == 0
    assert config.get("smtpd_peername_lookup") is False
    assert config.get("smtputf8_enable") is True
    assert config.get("mydestination") == ["a.example", "b.example", "c.example", "d.example"]
    assert config.get("smtpd_forbid_bare_newline") == "normalize"
    assert config.get("inet_protocols") == ["ipv4", "ipv6"]
    assert config.get("hopcount_limit") == 7


@pytest.mark.parametrize("line, reason", [
    ("worker_count = 0", "value of worker_count is too small: 0 (the least allowed is 1)"),
    ("message_size_limit = 10M", 'bad numerical value for message_size_limit: "10M"'),
    ("max_idle = 1.5s", 'bad time value for max_idle: "1.5s"'),
    ("mynetworks_style = everything", 'bad value for mynetworks_style: "everything" (use one of: class, host, subnet)'),
    ("inet_protocols = ipv5", 'bad value for inet_protocols: "ipv5"'),
    ("always_add_missing_headers = 1", 'bad boolean value for always_add_missing_headers: "1" (use yes or no)'),
    ("bad-name = 1", 'bad parameter name "bad-name"'),
    ("= 1", 'missing parameter name before "="'),
    ("smtpd_banner = ${mail_name", "cannot expand smtpd_banner: missing"),
])
def test_bad_values_name_the_file_and_line(tmp_path, line, reason):
    write_config(tmp_path, f"# first\n\nmyhostname = mx.example.com\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value).startswith(f"{tmp_path}/main.cf:4: {reason}")
    assert (caught.value.path, caught.value.line) == (f"{tmp_path}/main.cf", 4)


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="main.cf: file not found"):
        load_config(str(tmp_path))
    (tmp_path / "main.cf").write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}/master.cf: file not found"


def test_relative_queue_directory_is_resolved_at_load(tmp_path, monkeypatch):
    directory = write_config(tmp_path, "queue_directory = spool/q\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(directory).get("queue_directory") == str(tmp_path / "spool" / "q")
    assert load_config(directory).expanded("queue_directory") == "spool/q"


MASTER_CF = """\
# service type private unpriv chroot wakeup maxproc command
smtp      inet  n       -       n       -       -       smtpd
submission inet n       -       n       -       20      smtpd
  -o syslog_name=pyfastmta/submission
  -o { smtpd_banner = $myhostname submission ready }
  -o myhostname=submit.example.com
[::1]:2526 inet n       -       n       -       -       smtpd -v { an argument }
127.0.0.1:2527 inet n   -       n       -       -       smtpd
pickup    unix  n       -       y       60?     1       pickup
qmgr      unix  n       -       n       300     1       qmgr
"""


def test_master_cf_services(tmp_path):
    config = load_config(write_config(
        tmp_path, "myhostname = mx.example.com\ninet_interfaces = all\ninet_protocols = all\n", MASTER_CF))
    wildcards = [("0.0.0.0", 25), ("::", 25)] if ipv6_supported() else [("0.0.0.0", 25)]
    by_name = {service.name: service for service in config.services}
    assert list(by_name) == ["smtp", "submission", "[::1]:2526", "127.0.0.1:2527", "pickup", "qmgr"]
    assert [service.name for service in config.smtpd_services()] == ["smtp", "submission", "[::1]:2526",
                                                                      "127.0.0.1:2527"]
    smtp = by_name["smtp"]
    assert (smtp.private, smtp.unpriv, smtp.chroot, smtp.wakeup, smtp.maxproc) == (False, True, False, 0, 100)
    assert smtp.listen == wildcards
    assert (smtp.file, smtp.line) == (f"{tmp_path}/master.cf", 2)
    submission = by_name["submission"]
    assert submission.listen == [(host, 587) for host, _ in wildcards]
    assert submission.maxproc == 20
    assert submission.overrides == {"syslog_name": "pyfastmta/submission",
                                    "smtpd_banner": "$myhostname submission ready",
                                    "myhostname": "submit.example.com"}
    assert by_name["127.0.0.1:2527"].listen == [("127.0.0.1", 2527)]
    assert by_name["pickup"].wakeup == 60 and by_name["pickup"].chroot is True
    assert by_name["[::1]:2526"].args == ["-v", "an argument"]
    assert by_name["qmgr"].listen == []


def test_ipv6_literal_needs_ipv6_in_inet_protocols(tmp_path):
    write_config(tmp_path, "inet_protocols = ipv4\n", "[::1]:2526 inet n - n - - smtpd\n")
    with pytest.raises(ConfigError, match=r"master.cf:1: address ::1 is of an IP version"):
        load_config(str(tmp_path))


def test_listen_addresses_from_inet_interfaces(tmp_path):
    for interfaces, protocols, expected in [
        ("loopback-only", "ipv4", [("127.0.0.1", 2525)]),
        ("all", "ipv4", [("0.0.0.0", 2525)]),
        ("127.0.0.1, 127.0.0.2", "ipv4", [("127.0.0.1", 2525), ("127.0.0.2", 2525)]),
        ("[::1]", "ipv6", [("::1", 2525)]),
    ]:
        write_config(tmp_path, f"inet_interfaces = {interfaces}\ninet_protocols = {protocols}\n",
                     "2525 inet n - n - - smtpd\n")
        assert load_config(str(tmp_path)).services[0].listen == expected


def test_for_service_applies_overrides_to_dependent_values(tmp_path):
    config = load_config(write_config(tmp_path, "myhostname = mx.example.com\n", MASTER_CF))
    submission = config.services[1]
    service_config = config.for_service(submission)
    assert service_config.get("myhostname") == "submit.example.com"
    assert service_config.get("smtpd_banner") == "submit.example.com submission ready"
    assert service_config.get("syslog_name") == "pyfastmta/submission"
    assert service_config.get("myorigin") == "submit.example.com"
    assert config.get("smtpd_banner") == "mx.example.com ESMTP pyfastmta"
    assert config.for_service(config.services[0]) is config


@pytest.mark.parametrize("master_cf, line, reason", [
    ("smtp inet n - n - - smtpd -o smtpd_timeout=soon\n", 1, 'bad time value for smtpd_timeout: "soon"'),
    ("smtp inet n - n - - smtpd\n  -o\n", 2, '"-o" at the end of the line'),
    ("smtp inet n - n - - smtpd\n  -o novalue\n", 2, 'bad "-o novalue": use -o name=value'),
    ("smtp tcp n - n - - smtpd\n", 1, 'bad service type "tcp"'),
    ("smtp inet x - n - - smtpd\n", 1, 'bad private field "x": use y, n or -'),
    ("smtp inet n - n - many smtpd\n", 1, 'bad maxproc field "many"'),
    ("smtp inet n - n - - smtpd\nsmtp inet n - n - - smtpd\n", 2, "duplicate service smtp/inet"),
    ("nosuchservice inet n - n - - smtpd\n", 1, 'unknown port or service name "nosuchservice"'),
    ("99999 inet n - n - - smtpd\n", 1, "port 99999 is out of range"),
    ("  smtp inet n - n - - smtpd\n", 1, "a first line must not start with whitespace"),
])
def test_master_cf_errors_name_the_line(tmp_path, master_cf, line, reason):
    write_config(tmp_path, "", master_cf)
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value).startswith(f"{tmp_path}/master.cf:{line}: {reason}")


def test_warnings_for_unused_and_undefined_names(tmp_path):
    config = load_config(write_config(tmp_path, (
        "site = example.com\nmyhostname = mx.$site\nleftover = 1\nsmtpd_banner = $nosuch ready\n"),
        "smtp inet n - n - - smtpd -o stray=1\n"))
    assert config.warnings == [
        f"{tmp_path}/main.cf:4: smtpd_banner refers to $nosuch, which is not defined; it expands to nothing",
        f"{tmp_path}/main.cf:3: leftover is not a pyfastmta parameter and no parameter refers to it; it is ignored",
        f"{tmp_path}/master.cf:1: stray is not a pyfastmta parameter and no parameter refers to it; it is ignored",
    ]
    assert config.get("site") == "example.com"
    assert config.get("smtpd_banner") == "ready"


def test_restriction_classes_are_used_names(tmp_path):
    # A class and what its value refers to are in use; an unlisted name still gets its warning.
    config = load_config(write_config(tmp_path, (
        "smtpd_restriction_classes = strict, $other_class\nother_class = relaxed\n"
        "strict = reject_unauth_destination, $extra\nextra = permit\nrelaxed = permit\n"
        "unlisted = reject\n"), "smtp inet n - n - - smtpd\n"))
    assert config.warnings == [
        f"{tmp_path}/main.cf:6: unlisted is not a pyfastmta parameter and no parameter refers to it; "
        "it is ignored"]


def _postfix_mynetworks(directory: Path, style: str) -> list[str]:
    (directory / "main.cf").write_text(f"mynetworks_style = {style}\n")
    (directory / "master.cf").write_text("")
    for name in ("main.cf", "master.cf"):
        # Postfix waits for a file modified less than a second ago to settle.
        os.utime(directory / name, (time.time() - 10, time.time() - 10))
    result = subprocess.run([POSTCONF, "-c", str(directory), "-x", "-h", "mynetworks"],
                            capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.mark.skipif(not os.environ.get("CI") and not Path(POSTCONF).exists(), reason="Postfix's postconf is not installed")
@pytest.mark.parametrize("style", ["host", "subnet", "class"])
def test_mynetworks_default_matches_postfix(tmp_path, style):
    expected = _postfix_mynetworks(tmp_path, style)
    assert load_config(str(tmp_path)).get("mynetworks") == expected


@pytest.mark.skipif(not os.environ.get("CI") and not Path(POSTCONF).exists(), reason="Postfix's postconf is not installed")
def test_master_cf_listing_matches_postfix(tmp_path):
    # Postfix prints a braced argument that follows the command or an option without its braces,
    # which changes its meaning; pyfastmta keeps them, so that case is left out here.
    master_cf = MASTER_CF.replace("{ an argument }", "an_argument") + "relay unix - - n - - smtp -o { smtp_helo_name = relay host } " + " ".join(
        f"argument{number}" for number in range(12)) + "\n"
    write_config(tmp_path, "", master_cf)
    for name in ("main.cf", "master.cf"):
        os.utime(tmp_path / name, (time.time() - 10, time.time() - 10))
    for flags in (["-M"], ["-M", "-f"], ["-P"], ["-M", "submission/inet"]):
        expected = subprocess.run([POSTCONF, "-c", str(tmp_path), *flags],
                                  capture_output=True, text=True, check=True).stdout
        status, out, _ = run_postconf(flags, str(tmp_path))
        assert (status, out) == (0, expected)


def test_postconf_defaults_list_every_parameter():
    status, out, err = run_postconf(["-d"], None)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert [line.split(" =")[0] for line in lines] == sorted(PARAMETERS)
    assert "myorigin = $myhostname" in lines
    assert "smtpd_banner = $myhostname ESMTP $mail_name" in lines
    assert "maillog_file =" in lines
    assert "smtpd_timeout = ${stress?{10}:{300}}s" in lines


def test_postconf_names_values_and_unknown_names(tmp_path):
    directory = write_config(tmp_path, "myhostname = mx.example.com\nmail_name = Relay\n")
    status, out, err = run_postconf(["myorigin", "mail_name", "no_such_name"], directory)
    assert status == 0
    assert out == "myorigin = $myhostname\nmail_name = Relay\n"
    assert err == "pyfastmta postconf: warning: no_such_name: not a known parameter\n"
    assert run_postconf(["-x", "-h", "myorigin", "smtpd_banner"], directory)[1] == (
        "mx.example.com\nmx.example.com ESMTP Relay\n")
    assert run_postconf(["-d", "-h", "mail_name"], directory)[1] == "pyfastmta\n"
    assert run_postconf(["-c", directory, "-h", "mail_name"], None)[1] == "Relay\n"
    everything = run_postconf([], directory)[1].splitlines()
    assert [line.split(" =")[0] for line in everything] == sorted(PARAMETERS)


def test_postconf_reports_a_bad_main_cf(tmp_path):
    directory = write_config(tmp_path, "\n\nmax_use = lots\n")
    assert run_postconf(["-n"], directory) == (
        1, "", f'{tmp_path}/main.cf:3: bad numerical value for max_use: "lots"\n')


def test_postconf_usage_error():
    status, out, err = run_postconf(["-Z"], None)
    assert status == 2 and out == "" and "usage:" in err


# Defaults that differ from Postfix's on purpose: where pyfastmta's layout or engine differ.
OWN_DEFAULTS = {"queue_directory", "config_directory", "data_directory", "mail_version", "mail_name",
                "smtpd_banner", "inet_interfaces", "default_process_limit", "process_id",
                "mail_owner", "maillog_file", "command_directory", "daemon_directory", "meta_directory",
                "shlib_directory", "sample_directory", "readme_directory", "html_directory",
                "manpage_directory", "sendmail_path", "newaliases_path", "mailq_path",
                "setgid_group", "syslog_name", "import_environment", "smtpd_forbid_bare_newline"}


@pytest.mark.skipif(not os.environ.get("CI") and not Path(POSTCONF).exists(), reason="Postfix's postconf is not installed")
def test_defaults_match_postfix(tmp_path):
    """Every parameter Postfix also has defaults to what Postfix 3.7 gives it at compatibility
    level 3.6, expanded (postconf -x), apart from the few listed in OWN_DEFAULTS."""
    write_config(tmp_path, "compatibility_level = 3.6\n")
    names = [name for name in PARAMETERS if name not in OWN_DEFAULTS]
    result = subprocess.run([POSTCONF, "-c", str(tmp_path), "-x", *names],
                            capture_output=True, text=True, check=False)
    postfix = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        postfix[name.strip()] = value.strip()
    config = load_config(str(tmp_path))
    ours = {name: config.expanded(name) for name in postfix}
    differ = {name: (ours[name], postfix[name]) for name in postfix
              if " ".join(ours[name].replace(",", " ").split()) != " ".join(postfix[name].replace(",", " ").split())}
    assert differ == {}
    assert len(postfix) > 50
