"""One exception type for every error a user can cause: a one-line message and a hint."""

from __future__ import annotations


class EptctlError(Exception):
    """A user-facing error. The CLI prints ``message`` and ``hint`` on stderr and exits with code 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(EptctlError):
    """A configuration value is invalid; the message names the option."""


class TrainingInterrupted(EptctlError):
    """Raised after a clean checkpoint when a run was asked to stop; ``--resume`` continues it."""
