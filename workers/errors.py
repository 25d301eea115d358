"""Errors of the worker packages, rooted at `jailfarm.errors.FarmError` (pure)."""

from __future__ import annotations

from jailfarm.errors import FarmError


class TemplateError(FarmError):
    """A template operation cannot proceed: nothing built yet, unknown generation, nothing to
    roll back to, pool missing. The message says what to run."""
