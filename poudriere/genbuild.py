"""Building one repository generation in its temp directory: the content-addressed pool, the
hashed links, the signed catalogues and bootstrap, and the verification with the public side
(the layout is described in `generations`).

Shell: touches files only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import TYPE_CHECKING, Any

from jailfarm.cmd import Cmd
from jailfarm.errors import FarmError
from jailfarm.poudriere.catalogue import CatalogueCache, Record, read_record
from jailfarm.poudriere.pkgrepo import (
    HASH_DIR,
    atomic_write,
    bootstrap_target,
    newest_pkg,
    package_files,
    place_bootstrap,
    render_catalogues,
    sign_catalogues,
    unpack_catalogue,
    write_catalogues,
)
from jailfarm.poudriere.pkgsign import KeyFileSigner, fingerprint
from jailfarm.poudriere.repocheck import DirReader, RepositoryError, Trust, check

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from pathlib import Path

    # Writes and signs the catalogues of the laid-out generation in its directory instead of
    # jailfarm's writer (`pkg repo`, see pkg_repo_cmd); its output is verified all the same.
    Catalogue = Callable[[Path], Awaitable[None]]

    from jailfarm.poudriere.pkgsign import Signature, Signer

# Names inside <root>/<repo>/ (the layout is in `generations`).
CURRENT = "current"
POOL = ".pool"
CACHE = ".catalogue-cache.tsv"
META = ".generation.json"  # in each g<N>/
# Up to this many new pool files get an fsync each; more, one sync(2) (see Builder.sync).
_FSYNC_MAX = 64


class PublishError(FarmError):
    """A publish failed; what was served before is served unchanged."""


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` durable (new names, renames, links)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Builder:
    """Fills one temp generation directory from a packages directory: pool, links, catalogue.
    `written` lists the pool files it created, for removal if the publish fails."""

    def __init__(self, base: Path, tmp: Path) -> None:
        self.tmp, self.pool = tmp, base / POOL
        self.written: list[Path] = []
        self.pooled = set(os.listdir(self.pool))
        self.names: dict[str, str] = {}
        self.pkg_blobs: dict[str, bytes] = {}  # of packages named pkg, for Latest/pkg.pkg
        self.misses = 0  # packages not found in the catalogue cache
        # Directory descriptors: two links per package without resolving paths each time.
        self.fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in (self.pool, tmp / "All")]
        self.fds.append(os.open(HASH_DIR, os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.fds[1]))
        try:
            self.fds.append(os.open(base / CURRENT / "All", os.O_RDONLY | os.O_DIRECTORY))
        except OSError:
            pass  # first publish: nothing to reuse

    def add(self, path: str, cache: Mapping[str, Record]) -> tuple[Record, str]:
        record, blob, cached = read_record(path, cache)
        self.misses += not cached
        if (other := self.names.setdefault(record.pkgname, path)) != path:
            raise PublishError(f"{other} and {path} are both {record.pkgname}; keep one")
        name = record.hashed_name
        if name not in self.pooled:
            atomic_write(self.pool / name, blob, sync=False)  # see sync()
            self.written.append(self.pool / name)
            self.pooled.add(name)
        elif not cached and (self.pool / name).read_bytes() != blob:
            # Names carry only 40 bits of the hash: never let another file stand in.
            raise PublishError(f"{path}: {self.pool / name} has other bytes under this name")
        os.link(name, name, src_dir_fd=self.fds[0], dst_dir_fd=self.fds[2])
        self.symlink(f"{record.pkgname}.pkg", f"{HASH_DIR}/{name}")
        where = f"All/{HASH_DIR}/{name}"
        if record.name == "pkg":
            self.pkg_blobs[where] = blob
        return record, where

    def symlink(self, name: str, target: str) -> None:
        """All/<name> -> target. An unchanged link is a hard link to the previous generation's
        symlink inode: measured on ext4, a new symlink took 6 to 115 us (it allocates an
        inode), a link(2) 5 us, for 35,000 of them per publish."""
        if len(self.fds) == 4:
            with contextlib.suppress(OSError):
                if os.readlink(name, dir_fd=self.fds[3]) == target:
                    # follow_symlinks=False: linkat(2) without AT_SYMLINK_FOLLOW links the
                    # symlink itself, not the package it points at.
                    os.link(
                        name,
                        name,
                        src_dir_fd=self.fds[3],
                        dst_dir_fd=self.fds[1],
                        follow_symlinks=False,
                    )
                    return
        os.symlink(target, name, dir_fd=self.fds[1])

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def sync(self) -> None:
        """Make the new pool files durable before anything refers to them: one fsync each for
        a few (a republish), one sync(2) for many (a first publish: 35,000 fsyncs take
        minutes on a busy disk)."""
        if len(self.written) > _FSYNC_MAX:
            os.sync()
            return
        for path in self.written:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.pool)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for path in self.written:
            path.unlink(missing_ok=True)


def _trust(
    signature: Signature | None, signer: Signer, pubkey: bytes | None, fp: Path | None
) -> Trust:
    if isinstance(signature, tuple):
        # Signing command: its CERT must verify everything; with a fingerprints directory it
        # must also be trusted there, as the clients will check.
        return (
            Trust.from_fingerprints(fp)
            if fp
            else Trust(trusted=frozenset({fingerprint(signature[1])}))
        )
    if pubkey is None and isinstance(signer, KeyFileSigner):
        pubkey = signer.public_key()
    if pubkey is None:
        raise PublishError("cannot verify the signature: give the public key (pubkey=)")
    return Trust(pubkey)


def pkg_repo_cmd(directory: Path, key_file: str | None, command: Sequence[str] = ()) -> Cmd:
    """FreeBSD's own catalogue writer on a laid-out generation (poudriere.md §5.2):
    `pkg repo DIR KEY` or `pkg repo DIR signing_command: CMD...`. The packages are already in
    `All/Hashed/` with `All/` symlinks, so no --hash: pkg records the files where they are."""
    if (key_file is None) == (not command):
        raise ValueError("give exactly one of a key file and a signing command")
    signing = (key_file,) if key_file else ("signing_command:", *command)
    return Cmd(("pkg", "repo", str(directory), *signing), timeout=3600)


def read_signature(directory: Path) -> Signature | None:
    """What signs a written data.pkg: the `signature` member's bytes (pubkey mode) or the
    `data.sig`/`data.pub` pair (signing command), to verify it as clients will."""
    members = unpack_catalogue((directory / "data.pkg").read_bytes())
    if "data.sig" in members and "data.pub" in members:
        return members["data.sig"], members["data.pub"]
    return members.get("signature")


async def build(
    base: Path,
    tmp: Path,
    source: Path,
    signer: Signer,
    meta: dict[str, Any],
    verify: tuple[bytes | None, Path | None],
    catalogue: Catalogue | None = None,
) -> None:
    """Fill `tmp` with the complete, signed and verified generation; on failure remove it and
    the pool files it added."""
    paths = package_files(source)
    if not paths:
        raise PublishError(
            f"no packages under {source}: expected a poudriere packages directory "
            "(packages/<mastername>/.latest, with All/*.pkg) or a directory of .pkg files"
        )
    (tmp / "All" / HASH_DIR).mkdir(parents=True)
    builder = Builder(base, tmp)
    try:
        cache = CatalogueCache.load(base / CACHE)
        placed = [builder.add(path, cache) for path in paths]
        if builder.misses or len(cache) != len(placed):
            CatalogueCache.save(base / CACHE, (r for r, _ in placed))
        if catalogue is None:
            signature = await _sign(tmp, placed, builder.pkg_blobs, signer)
        else:
            await _bootstrap(tmp, placed, builder.pkg_blobs, signer)
            await catalogue(tmp)
            signature = read_signature(tmp)
        meta["packages"] = len(placed)
        if isinstance(signature, tuple):
            meta["signature_type"] = "fingerprints"
            meta["fingerprint"] = fingerprint(signature[1])
        else:
            meta["signature_type"] = "pubkey"
        atomic_write(tmp / META, json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")
        fresh = {f"All/{HASH_DIR}/{p.name}" for p in builder.written}
        problems = check(DirReader(tmp), _trust(signature, signer, *verify), hash_only=fresh)
        if problems:
            raise RepositoryError(problems)
        builder.sync()
        for sub in (f"All/{HASH_DIR}", "All", "Latest", "."):
            if (tmp / sub).is_dir():
                fsync_dir(tmp / sub)
    except BaseException:
        builder.discard()
        raise
    finally:
        builder.close()


async def _sign(
    tmp: Path, placed: list[tuple[Record, str]], blobs: Mapping[str, bytes], signer: Signer
) -> Signature | None:
    """Write the signed catalogues and the signed bootstrap package; the data signature."""
    placed.sort(key=lambda rp: (rp[0].name, rp[1]))
    data, site = render_catalogues([r.line(p) for r, p in placed])
    archives, signature = await sign_catalogues(data, site, signer)
    write_catalogues(tmp, archives)
    await _bootstrap(tmp, placed, blobs, signer)
    return signature


async def _bootstrap(
    tmp: Path, placed: list[tuple[Record, str]], blobs: Mapping[str, bytes], signer: Signer
) -> None:
    """`Latest/pkg.pkg` and its signature, when the packages include pkg (poudriere does this
    itself, not `pkg repo`: §5.1)."""
    if (pkg := newest_pkg(placed)) is not None:
        await place_bootstrap(tmp, bootstrap_target(*pkg), blobs[pkg[1]], signer)
