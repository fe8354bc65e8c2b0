"""Errors the user can fix, printed by the CLI as one line without a traceback (exit code 2).

Broken invariants inside the library stay plain ``AssertionError``/``ValueError`` naming the
values; everything a user can act on (a bad config, a missing file, a missing extra, a model
output that cannot be parsed, a provider error) is a :class:`SublimError` whose message says
what to do.
"""

from __future__ import annotations


class SublimError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(SublimError):
    """Malformed or invalid experiment configuration."""


class MissingFileError(SublimError):
    """An input file or run directory does not exist."""


class DataError(SublimError):
    """Malformed input data (JSONL line, CSV row, ...)."""


class MissingExtraError(SublimError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package; install it with "
            f"`pip install 'sublim[{extra}]'`"
        )


class UnknownNameError(SublimError):
    """An unknown registered name (backend, model, suite, prompt set...)."""

    def __init__(self, kind: str, name: str, choices: list[str] | tuple[str, ...]) -> None:
        super().__init__(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(choices))}")


class EmptyResultError(SublimError):
    """A stage produced nothing to continue with (e.g. a filter that keeps zero rows)."""


class BackendError(SublimError):
    """A model backend or provider failed in a way the user can act on."""
