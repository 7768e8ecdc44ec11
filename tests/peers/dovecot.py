"""A private Dovecot running only its authentication service on a UNIX socket (Debian's
dovecot-core), with a passwd-file of test users whose passwords doveadm hashed: the SASL server
for smtpd's AUTH tests and for the SASL backend tests."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from pathlib import Path

from peers.loopback import wait_until

DOVECOT = shutil.which("dovecot", path="/usr/sbin:/usr/bin") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm", path="/usr/bin:/usr/sbin") or "/usr/bin/doveadm"

# user → (scheme, password); the users file holds each password hashed by doveadm pw.
USERS = {
    "alice": ("PLAIN", "secret"),
    "bob": ("SSHA512", "b0b-pass"),
    "carol": ("SHA512", "Carol with spaces"),
    "dave": ("SSHA256", "dävé-ünicode"),
    "erin": ("SHA256", "erin"),
    "frank": ("SSHA", "frank!"),
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def hashed(scheme: str, password: str) -> str:
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    return subprocess.run([DOVEADM, "pw", "-s", scheme, "-p", password], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()


class DovecotAuthServer:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="pyfastmta-dovecot-auth-"))
        self.dir.chmod(0o755)  # the auth process (user dovecot) reads the users file in here
        self.socket = self.dir / "auth"
        self.users = self.dir / "users"
        self.users.write_text("".join(f"{user}:{hashed(scheme, password)}::::::\n"
                                      for user, (scheme, password) in USERS.items()))
        self.log = self.dir / "dovecot.log"
        (self.dir / "dovecot.conf").write_text(f"""\
protocols = none
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.log}
ssl = no
stats_writer_socket_path =
disable_plaintext_auth = no
auth_mechanisms = plain login
# Answer failures at once: the tests fail many attempts on purpose.
auth_failure_delay = 0
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = {self.users}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service anvil {{
  chroot =
}}
service auth {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
}}
""")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.dir / "stderr", "wb") as stderr:
            self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
                                            stdout=subprocess.DEVNULL, stderr=stderr)
        if not wait_until(lambda: self.socket.exists() or self.process.poll() is not None, 30) \
                or self.process.poll() is not None:
            raise AssertionError(f"dovecot did not start: {(self.dir / 'stderr').read_text()}"
                                 f"{self.log.read_text() if self.log.exists() else ''}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
