"""Helpers shared by unit and integration tests."""

from __future__ import annotations

from functools import wraps
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


def deferred_test(
    fn: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., defer.Deferred[None]]:
    """Let trial run an `async def` test method (or setUp/tearDown)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(fn(*args, **kwargs))

    return run
