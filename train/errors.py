"""The one error type bcsub raises for bad user input, and the check of a choice among named options."""

from __future__ import annotations

from collections.abc import Sequence


class BcsubError(Exception):
    """A user-facing error: one line naming the problem and the fix."""


def check_choices(given: Sequence[str], allowed: Sequence[str], what: str) -> None:
    """Raise naming the unknown ``what`` (or that none was given) and the allowed ones."""
    unknown = sorted(set(given) - set(allowed))
    if unknown or not given:
        raise BcsubError(f"unknown {what} {unknown or 'none'}; choose from {', '.join(allowed)}")
