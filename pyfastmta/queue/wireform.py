"""The queue's wire form of a message: CRLF lines, dot-stuffed, without the final ".\r\n"."""


def unstuff(content: bytes) -> bytes:
    """The message itself: one leading "." removed from every line that has one."""
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")


def stuff(content: bytes) -> bytes:
    """CRLF lines to wire form: every line starting with "." gets another."""
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..")
