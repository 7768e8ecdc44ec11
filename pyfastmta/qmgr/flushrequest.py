"""Flush requests from the command line to every worker: `postqueue -f` and `postqueue -s SITE`.

The command writes one small file under $queue_directory/flush/ (its name orders requests in
time, its content is the site, or nothing for all deferred mail) and signals the master, which
passes SIGUSR1 on to its workers; each worker acts on the requests newer than the last it saw.
Requests older than a minute are removed by the next command.
"""

from __future__ import annotations

import os
import time

KEEP_SECONDS = 60.0


def directory_of(queue_directory: str) -> str:
    return os.path.join(queue_directory, "flush")


def write_request(queue_directory: str, site: str | None) -> None:
    directory = directory_of(queue_directory)
    os.makedirs(directory, exist_ok=True)
    now_ns = time.time_ns()
    for name in os.listdir(directory):
        if name.isdigit() and now_ns - int(name) > KEEP_SECONDS * 1e9:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    temporary = os.path.join(directory, f".{now_ns}.{os.getpid()}")
    with open(temporary, "w") as file:
        file.write(site or "")
    os.rename(temporary, os.path.join(directory, str(now_ns)))


class FlushRequests:
    """A worker's reader: the requests that arrived since it last looked."""

    def __init__(self, queue_directory: str):
        self.directory = directory_of(queue_directory)
        self.seen = time.time_ns()  # requests from before this worker started were for others

    def new_sites(self) -> list[str | None]:
        """The sites asked for since the last call; None stands for all deferred mail."""
        try:
            names = sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())
        except FileNotFoundError:
            return []
        sites = []
        for stamp in names:
            if stamp <= self.seen:
                continue
            try:
                with open(os.path.join(self.directory, str(stamp))) as file:
                    sites.append(file.read().strip() or None)
            except FileNotFoundError:
                continue
            self.seen = stamp
        return sites
