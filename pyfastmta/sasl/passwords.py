"""smtpd_sasl_type = passwd-file: users and passwords in a file of Dovecot's passwd-file format
(`user:{SCHEME}password`, further fields ignored), so that the same file can serve Dovecot too.
The file (smtpd_sasl_path) is read again when it changes. Mechanisms PLAIN and LOGIN.

Password schemes, as Dovecot writes them (doveadm pw): PLAIN, CLEAR, CLEARTEXT; SHA, SHA256,
SHA512 (base64 digests); SSHA, SSHA256, SSHA512 (base64 of digest and salt). A password in
another scheme never matches, with a warning naming the user and the scheme.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

from pyfastmta.maps.table import FileSignature
from pyfastmta.sasl.conversation import SaslStep, continue_with, failed, succeeded

MECHANISMS = ["PLAIN", "LOGIN"]
_DIGESTS = {"SHA": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_SALTED = {"SSHA": "sha1", "SSHA256": "sha256", "SSHA512": "sha512"}
# What LOGIN asks, base64 of "Username:" and "Password:".
_USERNAME = base64.b64encode(b"Username:").decode()
_PASSWORD = base64.b64encode(b"Password:").decode()


def password_matches(stored: str, password: str, warn: Callable[[str], None] | None = None,
                     user: str = "") -> bool:
    scheme = "PLAIN"
    if stored.startswith("{") and "}" in stored:
        scheme, _, stored = stored[1:].partition("}")
        scheme = scheme.upper()
    given = password.encode("utf-8", "surrogateescape")
    if scheme in ("PLAIN", "CLEAR", "CLEARTEXT"):
        return hmac.compare_digest(stored.encode("utf-8", "surrogateescape"), given)
    try:
        raw = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if scheme in _DIGESTS and raw is not None:
        return hmac.compare_digest(hashlib.new(_DIGESTS[scheme], given).digest(), raw)
    if scheme in _SALTED and raw is not None:
        size = hashlib.new(_SALTED[scheme]).digest_size
        digest, salt = raw[:size], raw[size:]
        return hmac.compare_digest(hashlib.new(_SALTED[scheme], given + salt).digest(), digest)
    if warn is not None:
        warn(f"SASL: password of {user or 'a user'} is in scheme {scheme}, which pyfastmta "
             "cannot check (use SSHA512, SHA512 or PLAIN)")
    return False


class PasswordFile:
    def __init__(self, path: str, warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.warn = warn  # where warnings go (the worker's maillog)
        self._users: dict[str, str] = {}
        self._signature: FileSignature | None = None
        self._load()

    def _load(self) -> None:
        signature = FileSignature(self.path)  # before reading: an edit during the read shows
        users: dict[str, str] = {}
        with open(self.path, encoding="utf-8", errors="surrogateescape") as source:
            for line in source:
                line = line.rstrip("\r\n")
                if not line or line.startswith("#"):
                    continue
                user, colon, rest = line.partition(":")
                if colon and user:
                    users.setdefault(user, rest.split(":", 1)[0])
        self._users = users
        self._signature = signature

    def password(self, user: str) -> str | None:
        if self._signature is not None and self._signature.changed():
            try:
                self._load()
            except OSError as error:
                if self.warn is not None:
                    self.warn(f"SASL: cannot read {self.path} again: {error}; the users read "
                               "before stay")
        return self._users.get(user)

    def verify(self, user: str, password: str) -> bool:
        stored = self.password(user)
        return stored is not None and password_matches(stored, password, self.warn, user)

    async def mechanisms(self) -> list[str]:
        return list(MECHANISMS)

    def conversation(self, **_connection) -> PasswordConversation:
        return PasswordConversation(self)


def _decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class PasswordConversation:
    def __init__(self, passwords: PasswordFile) -> None:
        self._passwords = passwords
        self._mechanism = ""
        self._username: str | None = None

    async def start(self, mechanism: str, initial: str | None) -> SaslStep:
        self._mechanism = mechanism.upper()
        if self._mechanism not in MECHANISMS:
            return failed(f"mechanism {mechanism} is not available")
        if initial is None:
            return continue_with("" if self._mechanism == "PLAIN" else _USERNAME)
        return await self.step(initial)

    async def step(self, response: str) -> SaslStep:
        data = _decode(response)
        if data is None:
            return failed("invalid base64 data in response")
        text = data.decode("utf-8", "surrogateescape")
        if self._mechanism == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3 or not parts[1]:
                return failed("malformed PLAIN response")
            authorize, user, password = parts
            if authorize and authorize != user:
                return failed(f"{user} may not act as {authorize}", username=user)
            return self._check(user, password)
        if self._username is None:
            self._username = text
            return continue_with(_PASSWORD)
        return self._check(self._username, text)

    def _check(self, user: str, password: str) -> SaslStep:
        if self._passwords.verify(user, password):
            return succeeded(user)
        return failed("", username=user)
