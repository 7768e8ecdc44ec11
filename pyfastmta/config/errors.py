"""The one exception configuration problems are reported with."""


class ConfigError(Exception):
    """A configuration file was refused; str() is "path:line: reason" or "path: reason"."""

    def __init__(self, path: str | None, line: int | None, reason: str):
        self.path = path
        self.line = line
        self.reason = reason
        if path is None:
            message = reason
        elif line is None:
            message = f"{path}: {reason}"
        else:
            message = f"{path}:{line}: {reason}"
        super().__init__(message)


class ExpansionError(ValueError):
    """A $name expression could not be expanded; the caller knows which file and line it came from."""
