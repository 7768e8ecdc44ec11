"""Microbenchmark: what header address rewriting adds to cleanup, per message.

Run: .venv/bin/pytest -p no:cacheprovider --benchmark-enable bench/test_header_rewrite.py
A typical submission (From with a display name, To and Cc lists, ten other headers, a 2 KB
body) goes through clean_message for a local client: without header rewriting, with the local
context only (nothing changes, the usual case), with canonical tables (inline:, three keys) and
masquerading where one address changes, and for a remote client (no rewriting context).
"""
import pytest

from pyfastmta.cleanup.message import CleanupSettings, clean_message
from pyfastmta.cleanup.rewrite import envelope_rewriter, header_rewriter
from pyfastmta.config.configuration import load_config

MESSAGE = (b"From: \"Alice Example\" <alice@example.org>\r\n"
           b"To: bob@example.net, \"Carol C.\" <carol@example.net>\r\n"
           b"Cc: dave@host.masq.example (Dave)\r\n"
           + b"".join(b"X-Header-%d: some value %d\r\n" % (n, n) for n in range(8))
           + b"Subject: benchmark\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <bench@example.org>\r\n\r\n" + b"x" * 2000 + b"\r\n")

SETTINGS = {
    "none": None,
    "local context": {},
    "canonical + masquerade": {
        "canonical_maps": "inline:{ {a@canon.example=b@new.example}, {c@x.example=d@y.example} }",
        "sender_canonical_maps": "inline:{ {s@canon.example=t@new.example} }",
        "masquerade_domains": "masq.example",
    },
}


def _settings(tmp_path, name):
    extra = SETTINGS[name]
    (tmp_path / "master.cf").write_text("")
    (tmp_path / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in (extra or {}).items()))
    config = load_config(str(tmp_path))
    if extra is None:
        return CleanupSettings(config, None)
    envelope = envelope_rewriter(config, is_local=lambda domain: domain == "localhost")
    return CleanupSettings(config, header_rewriter(config, envelope))


def _clean(settings, local_client):
    return clean_message(MESSAGE, settings=settings, queue_id="1A2B3C4D5E", sender="alice@example.org",
                         recipients=["bob@example.net"], helo="client.example", client_name="localhost",
                         client_addr="127.0.0.1", protocol="ESMTP", local_client=local_client,
                         now=1_700_000_000.0)


@pytest.mark.parametrize("name", SETTINGS)
def test_clean_message_local_client(benchmark, tmp_path, name):
    settings = _settings(tmp_path, name)
    benchmark.group = "clean_message, local client"
    result = benchmark(_clean, settings, True)
    assert result.content.count(b"\r\nCc: ") == 1


def test_clean_message_remote_client(benchmark, tmp_path):
    settings = _settings(tmp_path, "canonical + masquerade")
    benchmark.group = "clean_message, remote client"
    benchmark(_clean, settings, False)
