"""Helpers shared by unit and integration tests."""

from __future__ import annotations

from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")


def deferred_test(
    fn: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., defer.Deferred[None]]:
    """Let trial run an `async def` test method (or setUp/tearDown)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(fn(*args, **kwargs))

    return run


def resolve(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine over already-fired Deferreds (fakes answer at once); its result."""
    box: list[Any] = []
    defer.ensureDeferred(coro).addBoth(box.append)
    assert box, "coroutine did not finish synchronously"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    result: T = box[0]
    return result
