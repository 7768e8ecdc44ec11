"""A private Postfix instance on loopback, for the side-by-side benchmark and its test.

The instance lives in one temporary directory (configuration, queue, data, log), listens only
on 127.0.0.1:PORT and keeps Postfix's stock durability (every queue file is fsync'ed before the
250 reply). By default it holds all mail, with defer_transports or in its hold queue, so what
smtpd accepted stays countable in the queue; given a relayhost it delivers everything there
instead. The system Postfix and /etc/postfix/main.cf are never touched. Starting and stopping
need root, as `postfix start` does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "postfix"
POSTQUEUE = "postqueue"

# Every delivery transport defined below: whatever domain a test recipient has, its mail is
# deferred instead of delivered.
DEFERRED_TRANSPORTS = ("local", "virtual", "smtp", "relay", "lmtp")

# Queues in which a message that smtpd acknowledged can be; maildrop is only for local
# submissions (postdrop) and corrupt only for damaged files.
MESSAGE_QUEUES = ("incoming", "active", "deferred", "hold")

# The daemons a stock Postfix needs to accept, queue and defer mail, with chroot off.
# service, type, private, unpriv, chroot, wakeup, maxproc, command
_SERVICES = (
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("local", "unix", "-", "n", "n", "-", "-", "local"),
    ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
    ("lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
)


class PostfixInstanceError(RuntimeError):
    """A Postfix command failed; the message carries its output and the instance's log."""


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(host: str, port: int, timeout: float) -> None:
    """Return once a TCP connection to host:port succeeds; raise TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts connections on {host}:{port} after {timeout}s")
            time.sleep(0.05)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def postfix_version() -> str:
    return subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
    ).stdout.strip()


class PostfixInstance:
    """One private Postfix: `start()`, send mail to `host:port`, `stop()`, `remove()`.

    As a context manager it starts on entry and stops and removes its directory on exit.
    """

    name = "postfix"
    host = "127.0.0.1"

    def __init__(self, port: int | None = None, parent_directory: str | os.PathLike | None = None,
                 hold_queue: bool = False, relayhost: str | None = None,
                 main_cf: dict[str, str] | None = None):
        """hold_queue: smtpd marks every message HOLD, so cleanup files it in the hold queue and the
        queue manager never sees it (without it, defer_transports defers each message).
        relayhost: deliver every message there (e.g. "[127.0.0.2]:2525") instead of holding it.
        main_cf: more main.cf settings (say, smtpd's TLS ones), written after and over the
        instance's own."""
        if hold_queue and relayhost:
            raise ValueError("a Postfix instance either holds its mail or relays it, not both")
        self.port = port or free_loopback_port()
        self.hold_queue = hold_queue
        self.relayhost = relayhost
        self.extra_main_cf = dict(main_cf or {})
        self.root = Path(tempfile.mkdtemp(prefix="postfix-bench-", dir=parent_directory))
        self.config_directory = self.root / "etc"
        self.queue_directory = self.root / "spool"
        self.data_directory = self.root / "data"
        self.maillog_file = self.root / "maillog"
        self.master_pid: int | None = None

    def __enter__(self) -> PostfixInstance:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            self.remove()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start the master and wait until smtpd's port accepts."""
        self._write_configuration()
        self._postfix("start")
        self.master_pid = int((self.queue_directory / "pid" / "master.pid").read_text().split()[0])
        wait_until_listening(self.host, self.port, timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop this instance's master and its children; only the pid this master wrote is killed."""
        if self.master_pid is None:
            return
        pid, self.master_pid = self.master_pid, None
        try:
            self._postfix("stop")
        finally:
            deadline = time.monotonic() + timeout
            while _process_exists(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def queued_message_count(self) -> int:
        """Messages in the queue, counted as files; exact once the instance is stopped, because a
        running qmgr renames files from one queue directory to the next."""
        return sum(
            len(files)
            for queue in MESSAGE_QUEUES
            for _, _, files in os.walk(self.queue_directory / queue)
        )

    def queue_is_empty(self) -> bool:
        """No message file in any queue, read while the instance runs. A file that qmgr renames
        from incoming to active is seen in one of them, because they are walked in that order;
        callers that need certainty ask twice."""
        return self.queued_message_count() == 0

    def stop_and_count_queued(self) -> int:
        """Stop, then count: a stopped qmgr moves no file while the queue is counted."""
        self.stop()
        return self.queued_message_count()

    def postqueue_json(self) -> list[str]:
        """`postqueue -j` output, one JSON object per queued message; needs the instance running."""
        listing = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_directory), "-j"],
            capture_output=True, text=True, check=True,
        )
        return listing.stdout.splitlines()

    def _write_configuration(self) -> None:
        for directory in (self.config_directory, self.queue_directory, self.data_directory):
            directory.mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as mail_owner and must reach the queue and data directories.
        self.root.chmod(0o755)
        mail_owner = pwd.getpwnam("postfix")
        os.chown(self.data_directory, mail_owner.pw_uid, mail_owner.pw_gid)

        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.data_directory),
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": "postfix-bench.localdomain",
            "mydestination": "localhost",
            "mynetworks": "127.0.0.0/8",
            # The benchmark's recipients are not system users; accepting any local part keeps
            # the envelope the same for every server under test.
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.maillog_file),
            "maillog_file_prefixes": str(self.root),
        }
        if self.relayhost:
            main_cf["relayhost"] = self.relayhost
        else:
            main_cf["defer_transports"] = ", ".join(DEFERRED_TRANSPORTS)
        if self.hold_queue:
            main_cf["smtpd_recipient_restrictions"] = (
                "check_recipient_access static:HOLD, permit_mynetworks, reject_unauth_destination"
            )
        main_cf.update(self.extra_main_cf)
        (self.config_directory / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in main_cf.items())
        )
        smtpd = (f"{self.address}", "inet", "n", "-", "n", "-", "-", "smtpd")
        (self.config_directory / "master.cf").write_text(
            "".join(" ".join(fields) + "\n" for fields in (smtpd, *_SERVICES))
        )

    def _postfix(self, command: str) -> None:
        result = subprocess.run(
            [POSTFIX, "-c", str(self.config_directory), command],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise PostfixInstanceError(
                f"`postfix -c {self.config_directory} {command}` exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n"
                f"last lines of {self.maillog_file}:\n{log_tail(self.maillog_file)}"
            )


def process_tree(root_pid: int) -> list[int]:
    """root_pid and all its living descendants, from the parent pids in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    if not _process_exists(root_pid):
        return []
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
