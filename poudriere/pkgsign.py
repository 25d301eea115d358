"""Repository catalogue signatures: pkg's RSA construction, the `signing_command` protocol and
fingerprint files (shared/spec/pkg-repository.md, "The signature").

Pure except `KeyFileSigner.sign` (reads a key file) and `sign_with_command` (runs a process
through a `Runner`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from jailfarm.cmd import Cmd
from jailfarm.errors import FarmError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from jailfarm.runner import Runner

# A catalogue signature: pubkey mode gives the `signature` member bytes (RSA || NUL);
# fingerprints mode gives (sig, cert) for the `<name>.sig` / `<name>.pub` members.
Signature = bytes | tuple[bytes, bytes]

_FINGERPRINT_LINE = re.compile(r'\s*([a-z_]+)\s*[:=]\s*"([^"]*)"\s*;?\s*')


SIGNING_TIMEOUT = 300  # seconds


class SigningError(FarmError, ValueError):
    """A signer failed, said nothing, or answered outside pkg's signing_command protocol."""


def catalogue_digest(catalogue: bytes) -> str:
    """What pkg signs: the lowercase hex SHA-256 of the uncompressed catalogue file."""
    return hashlib.sha256(catalogue).hexdigest()


def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError("only RSA keys are supported (pkg's ecdsa:/eddsa: types are not)")
    return key


def rsa_signature(catalogue: bytes, private_key_pem: bytes) -> bytes:
    """The pubkey-mode `signature` member: RSA PKCS#1 v1.5 with SHA-256 over the ASCII hex
    digest (`printf %s $hex | openssl dgst -sha256 -sign k.key`), then one NUL byte, which pkg
    appends and the client strips. PKCS#1 v1.5 is deterministic, so the bytes are too."""
    return _sign(_private_key(private_key_pem), catalogue)


def _sign(key: rsa.RSAPrivateKey, catalogue: bytes) -> bytes:
    message = catalogue_digest(catalogue).encode("ascii")
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256()) + b"\0"


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_rsa(
    catalogue: bytes, signature: bytes, public_key_pem: bytes, *, strip_nul: bool = True
) -> bool:
    """The client's modern check (ossl_verify()): one trailing NUL stripped (pubkey mode; a
    fingerprints-mode `.sig` is raw, and may end in a zero byte, so pass strip_nul=False),
    then PKCS#1 v1.5 SHA-256 over the hex digest. The legacy form is not tried. A key that is
    not an RSA public key PEM counts as a failure."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    sig = signature[:-1] if strip_nul and signature.endswith(b"\0") else signature
    message = catalogue_digest(catalogue).encode("ascii")
    try:
        key.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def public_key_pem(private_key_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM for a private key (what `openssl rsa -pubout` writes)."""
    return _public_pem(_private_key(private_key_pem))


def fingerprint(pub: bytes) -> str:
    """A key's fingerprint as the client computes it: SHA-256 hex of the `.pub` bytes exactly
    as the signing command emitted them."""
    return hashlib.sha256(pub).hexdigest()


def fingerprint_file(pub: bytes) -> str:
    """The text of a `trusted/` or `revoked/` file for this key."""
    return f'function: "sha256"\nfingerprint: "{fingerprint(pub)}"\n'


def parse_fingerprint_file(text: str) -> str | None:
    """The sha256 fingerprint a trusted/revoked file names, or None when it names another
    function or none (the client ignores such files)."""
    fields = {m[1]: m[2] for m in map(_FINGERPRINT_LINE.fullmatch, text.splitlines()) if m}
    if fields.get("function") != "sha256" or "fingerprint" not in fields:
        return None
    return fields["fingerprint"].lower()


def parse_signing_command_output(out: bytes) -> tuple[bytes, bytes]:
    """(sig, cert) from a signing command's stdout, framed as pkg-repo(8) gives it:
    `SIGNATURE\\n<sig>\\nCERT\\n<cert>END\\n`. Like pkg_repo_sign() (libpkg), lines are split
    on '\\n' and the newline that ends the signature is not part of it. Stricter than pkg:
    a missing END, a missing or empty signature or an empty cert raise SigningError, so a
    silent or crashed signer never yields an empty signature."""
    target: bytearray | None = None
    sig, cert, seen, ended = bytearray(), bytearray(), set(), False
    for line in out.splitlines(keepends=True):
        if line in (b"SIGNATURE\n", b"CERT\n"):
            target = sig if line == b"SIGNATURE\n" else cert
            seen.add(line)
        elif line == b"END\n":
            ended = True
            break
        elif target is not None:
            target += line
    if not out:
        raise SigningError("signing command wrote nothing")
    if b"SIGNATURE\n" not in seen or b"CERT\n" not in seen:
        raise SigningError("signing command output lacks a SIGNATURE or CERT line")
    if not ended:
        raise SigningError("signing command output ends without an END line")
    if sig.endswith(b"\n"):
        del sig[-1]
    if not sig:
        raise SigningError("signing command returned an empty signature")
    if not cert.strip():
        raise SigningError("signing command returned an empty CERT")
    return bytes(sig), bytes(cert)


async def sign_with_command(
    runner: Runner, argv: Sequence[str], digest: str
) -> tuple[bytes, bytes]:
    """Run a signing command: `digest` plus a newline on stdin, as pkg writes it; a non-zero
    exit raises CommandFailed, bad output SigningError."""
    # A signer that hangs must not hold the repository's lock for ever.
    result = await runner.run(
        Cmd(tuple(argv), stdin=f"{digest}\n".encode("ascii"), timeout=SIGNING_TIMEOUT)
    )
    return parse_signing_command_output(result.check().stdout)


class Signer(Protocol):
    """Signs a catalogue: pubkey-mode `signature` bytes or fingerprints-mode (sig, cert)."""

    async def sign(self, catalogue: bytes) -> Signature: ...


class KeyFileSigner:
    """Pubkey mode with a private RSA key PEM on disk (`pkg repo outdir k.key`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pem: bytes = b""
        self._key: rsa.RSAPrivateKey | None = None

    def key(self) -> rsa.RSAPrivateKey:
        """The parsed key, parsed again only when the file changed (parsing and checking a
        4096-bit key costs ~0.2 s; a publish signs three times)."""
        pem = self.path.read_bytes()
        if self._key is None or pem != self._pem:
            self._key, self._pem = _private_key(pem), pem
        key: rsa.RSAPrivateKey = self._key
        return key

    def public_key(self) -> bytes:
        return _public_pem(self.key())

    async def sign(self, catalogue: bytes) -> Signature:
        return _sign(self.key(), catalogue)


class CommandSigner:
    """Fingerprints mode through pkg's `signing_command:` protocol, run by `runner`."""

    def __init__(self, runner: Runner, argv: Sequence[str]) -> None:
        self.runner, self.argv = runner, tuple(argv)

    async def sign(self, catalogue: bytes) -> Signature:
        return await sign_with_command(self.runner, self.argv, catalogue_digest(catalogue))
