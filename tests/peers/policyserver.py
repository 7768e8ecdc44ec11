"""A policy delegation server for tests (Postfix's protocol: name=value lines, an empty line;
the answer `action=...` and an empty line), on its own thread and event loop.

    with PolicyServer(lambda request: "DUNNO") as server:
        ... check_policy_service inet:127.0.0.1:{server.port} ...
        server.requests   every request received, as dicts, in order

decide() may return None: the server then hangs up without answering; or SILENT: it keeps the
connection and never answers that request. With unix_path it listens on that unix-domain socket
instead (check_policy_service unix:PATH).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

SILENT = "\0silent"  # decide()'s answer for a request the server reads and leaves unanswered


class PolicyServer:
    def __init__(self, decide: Callable[[dict[str, str]], str], host: str = "127.0.0.1",
                 unix_path: str | None = None) -> None:
        self.decide = decide
        self.host = host
        self.unix_path = unix_path
        self.port = 0
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> PolicyServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        if self.unix_path is not None:
            self._server = await asyncio.start_unix_server(self._serve, self.unix_path)
            return
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._server.close()
        for task in self._sessions:
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._sessions.add(asyncio.current_task())
        try:
            while True:
                request: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    text = line.decode("utf-8", "replace").rstrip("\r\n")
                    if not text:
                        break
                    name, _, value = text.partition("=")
                    request[name] = value
                self.requests.append(request)
                action = self.decide(request)
                if action is None:  # hang up without an answer
                    return
                if action == SILENT:
                    continue
                writer.write(f"action={action}\n\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._sessions.discard(asyncio.current_task())
            writer.close()
