"""TLS for the SMTP server: the SSLContext made from the smtpd_tls_* parameters, Postfix's
protocol and cipher syntax, and what a finished handshake tells the log and Received:.

Contexts are kept in a process-wide cache keyed by everything they are built from (the
certificate files' identity and modification time included). The master builds the settings of
every service before it forks the workers, so each worker inherits the very same context, with
the same session ticket key: a client that resumes its session on another worker is resumed.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import warnings

from pyfastmta.config import ConfigError

# Postfix's protocol names, oldest first, and OpenSSL's versions for them.
_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_VERSIONS = {
    "SSLv3": ssl.TLSVersion.SSLv3,
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_NO_OPTIONS = {
    "TLSv1": "OP_NO_TLSv1",
    "TLSv1.1": "OP_NO_TLSv1_1",
    "TLSv1.2": "OP_NO_TLSv1_2",
    "TLSv1.3": "OP_NO_TLSv1_3",
}
_LIST_SEPARATORS = re.compile(r"[\s,:]+")


class TlsParameterError(ValueError):
    pass


def protocol_range(text: str, name: str = "smtpd_tls_protocols") -> list[str]:
    """The protocols a Postfix protocol list allows, oldest first.

    The list holds names to include ("TLSv1.2 TLSv1.3"), names to exclude ("!SSLv2, !SSLv3")
    and bounds (">=TLSv1.2", "<=TLSv1.2"); separators are commas, colons and white space. With
    no name to include, every protocol not excluded and within the bounds is allowed."""
    included: set[str] = set()
    excluded: set[str] = set()
    lowest, highest = 0, len(_PROTOCOLS) - 1
    for token in _LIST_SEPARATORS.split(text.strip()):
        if not token:
            continue
        for prefix in (">=", "<=", "!", ""):
            if token.startswith(prefix):
                word = token[len(prefix):]
                break
        matches = [p for p in _PROTOCOLS if p.lower() == word.lower()]
        if not matches:
            raise TlsParameterError(f'{name}: unknown TLS protocol "{word}" '
                                    f"(use {', '.join(_PROTOCOLS)})")
        index = _PROTOCOLS.index(matches[0])
        if prefix == ">=":
            lowest = max(lowest, index)
        elif prefix == "<=":
            highest = min(highest, index)
        elif prefix == "!":
            excluded.add(matches[0])
        else:
            included.add(matches[0])
    allowed = [p for i, p in enumerate(_PROTOCOLS)
               if lowest <= i <= highest and p not in excluded and (not included or p in included)]
    # SSLv2 and SSLv3 are gone from OpenSSL: they are never offered, whatever the list says.
    allowed = [p for p in allowed if p not in ("SSLv2", "SSLv3")]
    if not allowed:
        raise TlsParameterError(f'{name}: "{text.strip()}" leaves no TLS protocol enabled')
    return allowed


def _apply_protocols(context: ssl.SSLContext, allowed: list[str]) -> None:
    context.minimum_version = _VERSIONS[allowed[0]]
    context.maximum_version = _VERSIONS[allowed[-1]]
    # A hole in the middle ("!TLSv1.1" with TLSv1 allowed) needs OpenSSL's per-version switch.
    first, last = _PROTOCOLS.index(allowed[0]), _PROTOCOLS.index(allowed[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for protocol in _PROTOCOLS[first:last + 1]:
            if protocol not in allowed:
                context.options |= getattr(ssl, _NO_OPTIONS[protocol])


def cipher_list(grade: str, grades: dict[str, str], excluded: list[str]) -> str:
    """The OpenSSL cipher string for a Postfix cipher grade less the excluded ciphers."""
    text = grades[grade]
    for item in excluded:
        text += f":!{item}"
    return text


class TlsSettings:
    """What smtpd needs of the TLS configuration of one service."""

    __slots__ = (
        "ask_ccert",
        "auth_only",
        "context",
        "digest",
        "handshake_timeout",
        "level",
        "loglevel",
        "received_header",
        "wrappermode",
    )

    def __init__(self, config):
        get = config.get
        level = get("smtpd_tls_security_level")
        if not level:
            level = "encrypt" if get("smtpd_enforce_tls") else "may" if get("smtpd_use_tls") else "none"
        self.wrappermode: bool = get("smtpd_tls_wrappermode")
        if self.wrappermode and level == "none":
            level = "may"  # implicit TLS needs a context whatever the STARTTLS level says
        self.level: str = level
        self.received_header: bool = get("smtpd_tls_received_header")
        self.loglevel: int = get("smtpd_tls_loglevel")
        self.auth_only: bool = get("smtpd_tls_auth_only")
        self.ask_ccert: bool = get("smtpd_tls_ask_ccert")
        self.digest: str = get("smtpd_tls_fingerprint_digest")
        self.handshake_timeout: float = get("smtpd_starttls_timeout")
        self.context: ssl.SSLContext | None = None
        if level != "none":
            self.context = server_context(config, level)

    @property
    def offered(self) -> bool:
        """STARTTLS is in the EHLO reply (before TLS, on a plain service)."""
        return self.context is not None and not self.wrappermode

    @property
    def required(self) -> bool:
        return self.level == "encrypt" and not self.wrappermode


_contexts: dict[tuple, ssl.SSLContext] = {}


def _file_identity(path: str) -> tuple:
    try:
        info = os.stat(path)
    except OSError:
        return (path, None)
    return (path, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def server_context(config, level: str) -> ssl.SSLContext:
    """The SSLContext for a service: from the cache when nothing it depends on changed."""
    get = config.get
    mandatory = level == "encrypt"
    files = [get("smtpd_tls_cert_file"), get("smtpd_tls_key_file"), *get("smtpd_tls_chain_files"),
             get("smtpd_tls_CAfile")]
    grade = get("smtpd_tls_mandatory_ciphers" if mandatory else "smtpd_tls_ciphers")
    grades = {g: get(f"tls_{g}_cipherlist") for g in ("high", "medium", "low", "export", "null")}
    excluded = list(get("smtpd_tls_exclude_ciphers"))
    if mandatory:
        excluded += get("smtpd_tls_mandatory_exclude_ciphers")
    protocols = get("smtpd_tls_mandatory_protocols" if mandatory else "smtpd_tls_protocols")
    key = (mandatory, tuple(_file_identity(f) for f in files if f), tuple(files), grade,
           tuple(sorted(grades.items())), tuple(excluded), protocols, get("smtpd_tls_ask_ccert"))
    context = _contexts.get(key)
    if context is None:
        context = _build_context(config, mandatory, protocols, cipher_list(grade, grades, excluded))
        if len(_contexts) > 64:
            _contexts.clear()
        _contexts[key] = context
    return context


def _config_error(config, reason: str) -> ConfigError:
    return ConfigError(config.main_cf_path, None, reason)


def _build_context(config, mandatory: bool, protocols: str, ciphers: str) -> ssl.SSLContext:
    get = config.get
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    name = "smtpd_tls_mandatory_protocols" if mandatory else "smtpd_tls_protocols"
    try:
        _apply_protocols(context, protocol_range(protocols, name))
    except TlsParameterError as error:
        raise _config_error(config, str(error)) from None
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError:
        raise _config_error(config, f"no usable cipher in the list \"{ciphers}\" "
                                    "(smtpd_tls_*ciphers, tls_*_cipherlist)") from None
    chain_files = get("smtpd_tls_chain_files")
    cert_file = get("smtpd_tls_cert_file")
    if chain_files:
        for path in chain_files:
            _load(config, context, "smtpd_tls_chain_files", path, None)
    elif cert_file:
        _load(config, context, "smtpd_tls_cert_file", cert_file, get("smtpd_tls_key_file") or cert_file)
    else:
        raise _config_error(config, "TLS is enabled (smtpd_tls_security_level or "
                                    "smtpd_tls_wrappermode) but neither smtpd_tls_cert_file nor "
                                    "smtpd_tls_chain_files is set")
    ca_file = get("smtpd_tls_CAfile")
    if ca_file:
        _readable(config, "smtpd_tls_CAfile", ca_file)
        try:
            context.load_verify_locations(cafile=ca_file)
        except ssl.SSLError as error:
            raise _config_error(config, f"smtpd_tls_CAfile: cannot load {ca_file}: "
                                        f"{error.reason or error}") from None
    # Without a request the client sends no certificate; with one, a certificate that does not
    # verify against smtpd_tls_CAfile ends the handshake (Python has no verify callback).
    context.verify_mode = ssl.CERT_OPTIONAL if get("smtpd_tls_ask_ccert") else ssl.CERT_NONE
    return context


def _readable(config, parameter: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise _config_error(config, f"{parameter}: cannot read {path}: {error.strerror}") from None


def _load(config, context: ssl.SSLContext, parameter: str, cert_file: str, key_file: str | None) -> None:
    _readable(config, parameter, cert_file)
    if key_file is not None and key_file != cert_file:
        _readable(config, "smtpd_tls_key_file", key_file)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        files = cert_file if key_file in (None, cert_file) else f"{cert_file} and {key_file}"
        raise _config_error(config, f"{parameter}: cannot load the certificate and key from "
                                    f"{files}: {error.reason or error}") from None


class TlsInfo:
    """What an established TLS session tells: for the log, Received: and client certificates."""

    __slots__ = (
        "bits",
        "cipher",
        "peer_certificate",
        "peer_fingerprint",
        "peer_issuer_cn",
        "peer_subject_cn",
        "protocol",
        "session_reused",
    )

    def __init__(self, ssl_object, digest: str):
        cipher = ssl_object.cipher() or ("unknown", "", 0)
        self.protocol: str = ssl_object.version() or "unknown"
        self.cipher: str = cipher[0]
        self.bits: int = cipher[2] or 0
        self.session_reused: bool = bool(ssl_object.session_reused)
        der = ssl_object.getpeercert(binary_form=True)
        self.peer_certificate: bytes | None = der
        self.peer_fingerprint: str | None = None
        self.peer_subject_cn = self.peer_issuer_cn = None
        if der:
            self.peer_fingerprint = fingerprint(der, digest)
            decoded = ssl_object.getpeercert() or {}
            self.peer_subject_cn = _common_name(decoded.get("subject", ()))
            self.peer_issuer_cn = _common_name(decoded.get("issuer", ()))

    @property
    def cipher_text(self) -> str:
        return f"{self.protocol} with cipher {self.cipher} ({self.bits}/{self.bits} bits)"

    def log_line(self, client_label: str) -> str:
        trust = "Trusted" if self.peer_certificate else "Anonymous"
        return f"{trust} TLS connection established from {client_label}: {self.cipher_text}"

    def received_clause(self, ask_ccert: bool) -> str:
        """Postfix's lines between "Received: from ..." and "by ...", each ending in CRLF."""
        if not ask_ccert:
            certificate = "(No client certificate requested)"
        elif not self.peer_certificate:
            certificate = "(Client did not present a certificate)"
        else:
            certificate = (f'(Client CN "{self.peer_subject_cn or ""}", Issuer '
                           f'"{self.peer_issuer_cn or ""}" (verified OK))')
        return f"\t(using {self.cipher_text})\r\n\t{certificate}\r\n"


def fingerprint(der: bytes, digest: str) -> str:
    """A certificate fingerprint as Postfix prints it: upper-case hex pairs joined by colons."""
    value = hashlib.new(digest, der).hexdigest().upper()
    return ":".join(value[i:i + 2] for i in range(0, len(value), 2))


def _common_name(name) -> str | None:
    for rdn in name:
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
