"""User-facing errors: each says what was wrong and what to do.

The CLI prints these without a traceback and exits with a non-zero code; any other
exception is a bug in vitq and keeps its traceback.
"""


class VitqError(Exception):
    """An error caused by the user's input, with a hint on how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ConfigError(VitqError):
    """Bad bit spec, unknown method, conflicting options."""


class DataError(VitqError):
    """Missing, empty or unreadable data (images, folders, CSVs)."""


class ModelError(VitqError):
    """A model that cannot be loaded or that no adapter supports."""


class IntegrityError(VitqError):
    """A saved folder whose files are missing or were edited after saving."""


def install_hint(extra: str, packages: str) -> str:
    """How to add an optional dependency: vitq is installed from a checkout, not from a package index."""
    return f'pip install {packages}, or from the vitq checkout: pip install -e ".[{extra}]"'
