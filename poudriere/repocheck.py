"""Verifying a pkg repository as the pkg client does: the signature over each catalogue
(pubkey or fingerprints mode), the bootstrap `Latest/pkg.pkg` signature, and every package's
size and checksum (shared/spec/pkg-repository.md, "How clients verify", error messages).

Pure except the readers: `DirReader` reads a directory; `repofetch.HttpReader` a URL.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jailfarm.errors import FarmError
from jailfarm.poudriere.catalogue import (
    BOOTSTRAP,
    CATALOGUES,
    CMDSIG,
    PUBKEYSIG,
    unpack_catalogue,
)
from jailfarm.poudriere.pkgfile import sum_matches
from jailfarm.poudriere.pkgsign import (
    SigningError,
    fingerprint,
    parse_fingerprint_file,
    parse_signing_command_output,
    verify_rsa,
)

if TYPE_CHECKING:
    from collections.abc import Container, Mapping, Sequence


class RepositoryError(FarmError, ValueError):
    """A repository failed verification; `problems` lists every problem found, the message
    names the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


@dataclass(frozen=True)
class Trust:
    """What a client trusts: a pinned public key (pubkey mode), or fingerprints of trusted
    and revoked keys (fingerprints mode)."""

    pubkey: bytes | None = None
    trusted: frozenset[str] = frozenset()
    revoked: frozenset[str] = frozenset()

    @classmethod
    def from_fingerprints(cls, root: Path) -> Trust:
        """A client's fingerprints directory: `trusted/` and `revoked/` files."""
        return cls(None, _fingerprints(root, "trusted"), _fingerprints(root, "revoked"))

    def problem(
        self, what: str, content: bytes, sig: bytes, pub: bytes | None, *, strip_nul: bool = True
    ) -> str | None:
        """Why `sig` (with the embedded key `pub` in fingerprints mode) does not make `content`
        trusted, in the client's words and order, or None. `strip_nul`: pubkey-mode catalogue
        signatures end in a NUL the client strips; bootstrap signatures do not."""
        if self.pubkey is not None:
            ok = verify_rsa(content, sig, self.pubkey, strip_nul=strip_nul)
            return None if ok else f"{what}: signature verification failure"
        if pub is None:
            return f"{what}: not signed for fingerprints mode"
        if fingerprint(pub) in self.revoked:
            return f"{what}: At least one of the certificates has been revoked"
        if fingerprint(pub) not in self.trusted:
            return f"{what}: No trusted public keys found"
        ok = verify_rsa(content, sig, pub, strip_nul=False)
        return None if ok else f"{what}: signature verification failure"


def _fingerprints(root: Path, kind: str) -> frozenset[str]:
    where = root / kind
    files = sorted(where.iterdir()) if where.is_dir() else []
    return frozenset(
        fp for f in files if f.is_file() and (fp := parse_fingerprint_file(f.read_text()))
    )


class RepoReader(Protocol):
    """Where a repository is read from: `read` gives a file's bytes or None if it is missing;
    `name` says where a file is, for messages; `size` may avoid reading the file."""

    def read(self, rel: str) -> bytes | None: ...

    def size(self, rel: str) -> int | None: ...

    def name(self, rel: str) -> str: ...


@dataclass(frozen=True)
class DirReader:
    """A repository in a local directory; symlinks are followed, as a web server does."""

    root: Path

    def read(self, rel: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, rel), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def size(self, rel: str) -> int | None:
        try:
            st = os.stat(os.path.join(self.root, rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def name(self, rel: str) -> str:
        return rel


def _catalogue_problem(
    reader: RepoReader, trust: Trust, archive: str, member: str
) -> tuple[str | None, list[Any]]:
    blob = reader.read(archive)
    if blob is None:
        return f"{reader.name(archive)}: missing", []
    try:
        members = unpack_catalogue(blob)
        if member not in members:
            raise ValueError(f"no {member} member")
        content = members[member]
        sig: bytes | None
        pub: bytes | None
        if trust.pubkey is not None:
            sig, pub, wanted = members.get("signature"), b"", "signature member"
        else:
            sig, pub = members.get(f"{member}.sig"), members.get(f"{member}.pub")
            wanted = f"{member}.sig/{member}.pub members"
        if sig is None or pub is None:
            return f"{reader.name(archive)}: not signed (no {wanted})", []
        bad = trust.problem(reader.name(archive), content, sig, pub)
        return bad, [] if bad or member != "data" else list(json.loads(content)["packages"])
    except (ValueError, KeyError, TypeError) as e:
        return f"{reader.name(archive)}: unreadable catalogue: {e}", []


def _bootstrap_problem(reader: RepoReader, trust: Trust) -> str | None:
    blob = reader.read(BOOTSTRAP)
    if blob is None:
        return None  # only repositories that hold pkg have one
    sigfile = PUBKEYSIG if trust.pubkey is not None else CMDSIG
    raw = reader.read(sigfile)
    if raw is None:
        return f"{reader.name(BOOTSTRAP)}: not signed (no {sigfile.rsplit('/', 1)[1]})"
    if trust.pubkey is not None:
        return trust.problem(reader.name(BOOTSTRAP), blob, raw, None, strip_nul=False)
    try:
        sig, cert = parse_signing_command_output(raw)
    except SigningError as e:
        return f"{reader.name(CMDSIG)}: {e}"
    return trust.problem(reader.name(BOOTSTRAP), blob, sig, cert, strip_nul=False)


def _package_problem(
    reader: RepoReader, entry: Mapping[str, Any], hash_only: Container[str] | None
) -> str | None:
    rel = str(entry.get("repopath") or entry.get("path"))
    if rel.startswith("/") or ".." in rel.split("/"):
        return f"{rel}: path outside the repository"
    expected, blob = entry.get("pkgsize"), None
    size: int | None
    if hash_only is None or rel in hash_only:
        blob = reader.read(rel)
        size = None if blob is None else len(blob)
    else:
        size = reader.size(rel)
    if size is None:
        return f"{reader.name(rel)}: missing"
    if size != expected:
        return f"{reader.name(rel)}: size {size} != {expected} in the catalogue"
    if blob is not None and not sum_matches(str(entry.get("sum")), blob):
        return f"{reader.name(rel)}: checksum mismatch"
    return None


def check(
    reader: RepoReader, trust: Trust, *, hash_only: Container[str] | None = None
) -> list[str]:
    """Every problem the pkg client would reject, in its order: meta.conf present, each
    catalogue archive's signature, the bootstrap `Latest/pkg.pkg` signature if there is one,
    then every package in `data` against its size and sum (only the sizes of those not in
    `hash_only`, when given). A bad data.pkg stops the check: its package list is not
    trusted. Empty list: all good."""
    return _check(reader, trust, hash_only)[0]


def verify(reader: RepoReader, trust: Trust) -> int:
    """`check`, raising RepositoryError (message: the first problem) if anything is wrong;
    else the number of packages verified."""
    problems, count = _check(reader, trust, None)
    if problems:
        raise RepositoryError(problems)
    return count


def _check(
    reader: RepoReader, trust: Trust, hash_only: Container[str] | None
) -> tuple[list[str], int]:
    problems: list[str] = []
    if reader.read("meta.conf") is None:
        problems.append(f"{reader.name('meta.conf')}: missing")
    entries: list[Any] = []
    for archive, member in CATALOGUES:
        bad, found = _catalogue_problem(reader, trust, archive, member)
        entries = found or entries
        if bad:
            problems.append(bad)
            if member == "data":
                return problems, 0
    if bad := _bootstrap_problem(reader, trust):
        problems.append(bad)
    for entry in entries:
        if bad := _package_problem(reader, entry, hash_only):
            problems.append(bad)
    return problems, len(entries)


def check_repository(
    root: Path, pubkey_pem: bytes | None = None, fingerprints_dir: Path | None = None
) -> list[str]:
    """`check` on a local directory, in pubkey mode with `pubkey_pem` or in fingerprints mode
    with a directory holding trusted/ and revoked/ (exactly one of them)."""
    return check(DirReader(Path(root)), _trust(pubkey_pem, fingerprints_dir))


def _trust(pubkey_pem: bytes | None, fingerprints_dir: Path | None) -> Trust:
    if (pubkey_pem is None) == (fingerprints_dir is None):
        raise ValueError("give exactly one of pubkey_pem and fingerprints_dir")
    return (
        Trust(pubkey_pem)
        if pubkey_pem is not None
        else Trust.from_fingerprints(Path(fingerprints_dir or "."))
    )


def verify_repository(
    root: Path, pubkey_pem: bytes | None = None, fingerprints_dir: Path | None = None
) -> None:
    """`check_repository`, raising RepositoryError (message: the first problem) if any."""
    problems = check_repository(root, pubkey_pem, fingerprints_dir)
    if problems:
        raise RepositoryError(problems)
