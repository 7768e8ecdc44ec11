"""`pyfastmta postcat [-ebh] -q queue_id`: show a queued message, as Postfix's postcat does.

Sections are framed like Postfix's (`*** ENVELOPE RECORDS queue/ID ***` ...); the content is shown
as the message itself, without the transparency dots of its stored wire form.
"""

from __future__ import annotations

import getopt
import sys
import time

from pyfastmta.queue.listing import read_message
from pyfastmta.queue.wireform import unstuff

USAGE = "usage: pyfastmta postcat [-ebh] -q queue_id"


def run(argv: list[str], queue_directory: str) -> int:
    try:
        options, rest = getopt.getopt(argv, "ebhq:")
    except getopt.GetoptError as error:
        print(f"postcat: {error}\n{USAGE}", file=sys.stderr)
        return 1
    flags = {name for name, _ in options}
    queue_ids = [value for name, value in options if name == "-q"] + rest
    if not queue_ids:
        print(USAGE, file=sys.stderr)
        return 1
    sections = flags & {"-e", "-b", "-h"} or {"-e", "-b", "-h"}
    status = 0
    out = sys.stdout.buffer
    for queue_id in queue_ids:
        found = read_message(queue_directory, queue_id)
        if found is None:
            print(f"postcat: fatal: open queue file {queue_id}: No such file or directory", file=sys.stderr)
            status = 1
            continue
        queue_name, envelope, content = found
        where = f"{queue_name}/{queue_id}"
        text = unstuff(content).replace(b"\r\n", b"\n")
        head, separator, body = text.partition(b"\n\n")
        if "-e" in sections:
            lines = [f"*** ENVELOPE RECORDS {where} ***",
                     f"message_size: {envelope.size:>16} {len(envelope.recipients):>15}",
                     f"message_arrival_time: {time.ctime(envelope.arrival_time)}",
                     f"sender: {envelope.sender}"]
            if envelope.envid is not None:
                lines.append(f"dsn_envid: {envelope.envid}")
            if envelope.ret is not None:
                lines.append(f"dsn_ret: {envelope.ret}")
            for recipient in envelope.recipients:
                if recipient.orcpt is not None:
                    lines.append(f"dsn_orig_rcpt: {recipient.orcpt}")
                if recipient.notify is not None:
                    lines.append(f"dsn_notify: {recipient.notify}")
                lines.append(f"recipient: {recipient.address}")
            out.write(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
        if "-h" in sections:
            out.write(f"*** MESSAGE CONTENTS {where} ***\n".encode())
            out.write(head + b"\n")
        if "-b" in sections:
            if "-h" not in sections:
                out.write(f"*** MESSAGE CONTENTS {where} ***\n".encode())
            if separator:
                out.write(b"\n" + body)
        out.write(f"*** MESSAGE FILE END {where} ***\n".encode())
    return status
