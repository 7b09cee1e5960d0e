"""Domain errors and the exit codes the CLI maps them to.

Domain code raises these (never prints or exits); `engram_cli.cli.app` turns them into a
one-line message plus hint on stderr and the documented exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_VERIFY = 4
EXIT_DEVICE = 5
EXIT_INTERRUPTED = 130


class EngramError(Exception):
    """Base class: a failure with a one-line message, an optional hint and an exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(EngramError):
    """Options that do not fit together (exit 2)."""

    exit_code = EXIT_USAGE


class BadInputError(EngramError):
    """Missing, corrupt or unsupported input, or a layout mismatch (exit 3)."""

    exit_code = EXIT_BAD_INPUT


class LayoutMismatchError(BadInputError):
    """A layout disagrees with a config or a checkpoint (exit 3)."""


class VerificationError(EngramError):
    """Written or existing data failed a check (exit 4)."""

    exit_code = EXIT_VERIFY


class DeviceUnavailableError(EngramError):
    """A requested device or backend is not available (exit 5)."""

    exit_code = EXIT_DEVICE
