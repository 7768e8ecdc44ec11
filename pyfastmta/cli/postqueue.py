"""`postqueue -p` and `postqueue -j`: list the queue as Postfix's postqueue does (mailq is -p)."""

from __future__ import annotations

import sys

from pyfastmta.queue.listing import scan_queue
from pyfastmta.queue.mailq import format_json_lines, format_mailq

USAGE = "postqueue: fatal: usage: postqueue -j | postqueue -p"


def run(argv: list[str], queue_directory: str) -> int:
    """argv: the arguments after the command name. Returns the exit status."""
    if len(argv) != 1 or argv[0] not in ("-p", "-j"):
        print(USAGE, file=sys.stderr)
        return 1
    try:
        messages = scan_queue(queue_directory)
    except OSError as error:
        print(f"postqueue: fatal: cannot read the queue in {queue_directory}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    output = format_mailq(messages) if argv[0] == "-p" else format_json_lines(messages)
    sys.stdout.write(output)
    sys.stdout.flush()
    return 0
