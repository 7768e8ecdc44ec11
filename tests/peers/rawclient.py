"""A plain socket SMTP client for tests."""

from __future__ import annotations

import socket


class RawClient:
    """A plain socket SMTP client: sends exactly the bytes it is given, reads whole replies."""

    def __init__(self, host: str, port: int, source: str | None = None, timeout: float = 15):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and its lines joined by newlines."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed; got so far: {lines!r} {self.buffer!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode()
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), "\n".join(lines)

    def command(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def reply_lines(sock: socket.socket, buffer: bytearray) -> list[str]:
    """The lines of one (possibly multi-line) reply read from sock; bytes past it stay in
    buffer for the next call."""
    lines = [_line(sock, buffer)]
    while len(lines[-1]) > 3 and lines[-1][3] == "-":
        lines.append(_line(sock, buffer))
    return lines


def _line(sock: socket.socket, buffer: bytearray) -> str:
    while b"\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; got so far {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    return line.decode("utf-8", "replace")
