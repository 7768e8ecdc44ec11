"""A small socketmap server (Sendmail's netstring protocol) for tests, over TCP or a UNIX socket.

The server answers from `tables`: {map name: {key: reply}} where a reply is the whole reply text
("OK value", "TEMP busy", "PERM no such map" ...); a key that is not there gets "NOTFOUND ". Keys
match exactly (case-sensitive), so a test sees what the client really sent. `requests` records
every (map name, key) received, `connections` counts accepted connections.

mode "normal" keeps each connection for many queries; "close" closes the connection after each
reply (a server that restarts between queries); "silent" reads queries and never answers.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Self


def read_netstring(conn: socket.socket, buffer: bytearray) -> bytes | None:
    """One netstring's payload from conn (buffer carries bytes between calls); None at EOF."""
    while b":" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    length_text, _, _ = bytes(buffer).partition(b":")
    length = int(length_text)
    start = len(length_text) + 1
    while len(buffer) < start + length + 1:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    payload = bytes(buffer[start:start + length])
    if buffer[start + length:start + length + 1] != b",":
        raise ValueError(f"netstring without its comma: {bytes(buffer)!r}")
    del buffer[:start + length + 1]
    return payload


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class SocketmapServer:
    def __init__(self, tables: dict[str, dict[str, str]], *, host: str = "127.0.0.1",
                 unix_path: str | None = None, mode: str = "normal") -> None:
        self.tables = tables
        self.mode = mode
        self.requests: list[tuple[str, str]] = []
        self.connections = 0
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False
        if unix_path is not None:
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(unix_path)
            self.endpoint = f"unix:{unix_path}"
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, 0))
            self.port = self._listener.getsockname()[1]
            self.endpoint = f"inet:{host}:{self.port}"
        self.unix_path = unix_path
        self._listener.listen(50)
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def spec(self, map_name: str) -> str:
        return f"socketmap:{self.endpoint}:{map_name}"

    def answer(self, request: bytes) -> bytes:
        name, _, key = request.decode("utf-8", "surrogateescape").partition(" ")
        with self._lock:
            self.requests.append((name, key))
        table = self.tables.get(name)
        if table is None:
            return f"PERM no map named {name}".encode()
        return table.get(key, "NOTFOUND ").encode("utf-8", "surrogateescape")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                self.connections += 1
                self._clients.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = bytearray()
        try:
            while True:
                request = read_netstring(conn, buffer)
                if request is None:
                    return
                reply = self.answer(request)
                if self.mode == "silent":
                    continue
                conn.sendall(netstring(reply))
                if self.mode == "close":
                    return
        except OSError:
            return
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            clients = list(self._clients)
        # shutdown() wakes a blocked accept(); close() alone does not on Linux.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)
        if self.unix_path is not None and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
