"""Helpers shared by unit and integration tests."""

from __future__ import annotations

from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer
from twisted.python.failure import Failure

from jailfarm.poudriere.pkgfile import PackageMeta

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


# The minimal package of shared/spec/pkg-repository.md ("A minimal +MANIFEST").
HELLO = PackageMeta(
    name="hello",
    origin="misc/hello",
    version="1.0",
    comment="Tiny test package",
    desc="A tiny package used to test repository tooling.",
    maintainer="test@example.org",
    www="https://example.org/hello",
    abi="FreeBSD:14:amd64",
)


def rsa_key_pem(bits: int = 2048) -> bytes:
    """A new RSA private key, PEM (PKCS#1, as `openssl genrsa` writes it); 2048 bits keep the
    tests fast."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
