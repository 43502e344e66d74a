"""The error every option check raises: one line for the CLI to print."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad option value, config file or combination; reported as one line by the CLI."""
