"""Free space in the queue file system, checked at MAIL FROM as Postfix's smtpd checks it
(smtpd_check_queue): the command is refused with 452 4.3.1 when the free space is no more than
queue_minfree, or no more than 1.5 times message_size_limit, so that a message accepted at MAIL
can still be written when its data arrives. The SIZE parameter plays no part, as in Postfix.

The free space is read with statvfs(2) at every MAIL: it costs about 1.5 µs, less than keeping a
cached value honest, and it answers at once when space is freed.

When space runs out anyway (many sessions at once, or something else filling the disk between
MAIL and the end of the data), the queue's write fails and the client hears 451 4.3.0 instead of
250 (session.py, _queue_failed): nothing is acknowledged that was not written.
"""

from __future__ import annotations

import os

# Postfix's smtpd_space_multf: message_size_limit times this must be free.
SPACE_FACTOR = 1.5
REPLY = "452 4.3.1 Insufficient system storage"


class QueueSpace:
    def __init__(self, queue_minfree: int, message_size_limit: int) -> None:
        self.minfree = queue_minfree
        self.message_size_limit = message_size_limit
        self._settings_checked = False

    def free_blocks(self, path: str) -> tuple[int, int]:
        """(block size, blocks available to unprivileged users) of the file system holding path."""
        found = os.statvfs(path)
        return found.f_frsize, found.f_bavail

    def refusal(self, session) -> str | None:
        """The reply to MAIL FROM when the queue has too little room (the reject and the warning
        logged as Postfix logs them), or None."""
        log = session.server.log
        if not self._settings_checked:
            self._settings_checked = True
            self._check_settings(log)
        try:
            block_size, blocks_free = self.free_blocks(session.server.partition.directory)
        except OSError as error:
            log("smtpd", f"warning: statvfs {session.server.partition.directory}: {error.strerror}")
            return None
        block_size = block_size or 1
        # Compared in whole blocks, rounded as Postfix rounds them.
        if (self.minfree // block_size >= blocks_free
                or self.message_size_limit // block_size >= blocks_free / SPACE_FACTOR):
            log("smtpd", _reject_line(session))
            log("smtpd", f"warning: not enough free space in mail queue: "
                         f"{blocks_free * block_size} bytes < {SPACE_FACTOR:g}*message size limit")
            session.sasl_sender = None  # the refused MAIL's AUTH= goes with it
            return REPLY
        return None

    def _check_settings(self, log) -> None:
        """Postfix's advice when queue_minfree is set below what MAIL FROM requires anyway."""
        if self.minfree and self.message_size_limit and self.minfree / SPACE_FACTOR < self.message_size_limit:
            log("smtpd", f"warning: queue_minfree({self.minfree}) should be at least "
                         f"{SPACE_FACTOR:g}*message_size_limit({self.message_size_limit})")


def _reject_line(session) -> str:
    """Postfix's reject line for a refusal at MAIL: the sender is not known yet, so no from=."""
    parts = [f"{session.queue_id or 'NOQUEUE'}: reject: MAIL from {session.client_label}: {REPLY};",
             f" proto={'ESMTP' if session.esmtp else 'SMTP'}"]
    if session.helo_name:
        parts.append(f" helo=<{session.helo_name}>")
    if session.sasl_method is not None:
        parts.append(f" sasl_method={session.sasl_method}")
    if session.sasl_username is not None:
        parts.append(f" sasl_username={session.sasl_username}")
    if session.sasl_sender:
        parts.append(f" sasl_sender={session.sasl_sender}")
    return "".join(parts)
