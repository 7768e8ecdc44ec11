"""Scripted SMTP dialogues run against two servers (pyfastmta and a private Postfix), and the
report of where their replies differ."""

from __future__ import annotations

import socket
from collections.abc import Callable

from peers.rawclient import reply_lines

# A step that sends a short message and its final dot instead of a command.
MESSAGE = "MESSAGE"


def run_dialog(port: int, source: str, steps, normal: Callable[[str, list[str]], str]) -> list[str]:
    """Each step: a command, a list of commands sent in one write, or MESSAGE. Returns
    "command -> reply" for every reply, each reply put through normal(verb, lines) so that
    what is each server's own (greeting text, queue IDs) compares equal."""
    transcript = []
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        buffer = bytearray()
        transcript.append(f"CONNECT -> {normal('CONNECT', reply_lines(sock, buffer))}")
        for step in steps:
            commands = step if isinstance(step, list) else [step]
            payload = "".join("Subject: test\r\n\r\nbody\r\n.\r\n" if c == MESSAGE else c + "\r\n"
                              for c in commands)
            sock.sendall(payload.encode())
            for command in commands:
                lines = reply_lines(sock, buffer)
                transcript.append(f"{command} -> {normal(command.split(' ')[0], lines)}")
                if lines[0].startswith("221"):
                    return transcript
    return transcript


def differences(ours: list[list[str]], theirs: list[list[str]]) -> list[str]:
    """Every step where pyfastmta's transcript (ours) differs from Postfix's (theirs)."""
    report = []
    for number, (mine, postfix) in enumerate(zip(ours, theirs)):
        for position in range(max(len(mine), len(postfix))):
            a = mine[position] if position < len(mine) else None
            b = postfix[position] if position < len(postfix) else None
            if a != b:
                report.append(f"dialog {number} step {position}:\n  postfix   {b}\n  pyfastmta {a}")
    return report
