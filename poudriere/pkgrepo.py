"""Writing a pkg repository directory: the signed catalogue archives, `pkg repo --hash
--symlink` placement, the signed bootstrap `Latest/pkg.pkg` (shared/spec/pkg-repository.md,
"Repository layout and internal structure"; poudriere.md §5). The catalogue formats are in
`catalogue`, verification in `repocheck`; both are re-exported here.

Pure except `write_repository`, `write_catalogues`, `place_bootstrap`, `find_packages`,
`package_files`, `atomic_write` and `replace_symlink`, which touch files.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jailfarm.errors import UnsafeOperation
from jailfarm.poudriere.catalogue import (
    BOOTSTRAP,
    CATALOGUES,
    CMDSIG,
    META_CONF,
    PUBKEYSIG,
    CatalogueCache,
    Record,
    catalogue_entry,
    pack_catalogue,
    read_record,
    render_catalogues,
    render_data,
    render_packagesite,
    unpack_catalogue,
)
from jailfarm.poudriere.pkgversion import version_key
from jailfarm.poudriere.repocheck import RepositoryError, check_repository, verify_repository

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from jailfarm.poudriere.pkgsign import Signature, Signer

__all__ = [
    "BOOTSTRAP",
    "CATALOGUES",
    "CMDSIG",
    "HASH_DIR",
    "META_CONF",
    "PUBKEYSIG",
    "RepoInfo",
    "RepositoryError",
    "atomic_write",
    "bootstrap_target",
    "catalogue_entry",
    "check_repository",
    "find_packages",
    "newest_pkg",
    "pack_catalogue",
    "package_files",
    "place_bootstrap",
    "render_catalogues",
    "render_data",
    "render_packagesite",
    "replace_symlink",
    "sign_catalogues",
    "unpack_catalogue",
    "verify_repository",
    "write_catalogues",
    "write_repository",
]

HASH_DIR = "Hashed"
# Our own outputs in a packages tree; never read them as packages.
_NOT_PACKAGES = {"data", "packagesite", "filesite", "files", "digests", "meta"}


@dataclass(frozen=True)
class RepoInfo:
    """A written repository: its directory, the catalogue paths and the `data` catalogue."""

    outdir: Path
    paths: tuple[str, ...]
    data: bytes


async def sign_catalogues(
    data: bytes, site: bytes, signer: Signer | None
) -> tuple[dict[str, bytes], Signature | None]:
    """The packed catalogue archives (archive name -> bytes), each signed by `signer` (pkg
    signs every catalogue on its own), and the signature of `data`."""
    archives, first = {}, None
    for (archive, member), content in zip(CATALOGUES, (data, site), strict=True):
        signature = None if signer is None else await signer.sign(content)
        first = signature if first is None else first
        archives[archive] = pack_catalogue(member, content, signature)
    return archives, first


# --- files ---------------------------------------------------------------------------------


def find_packages(root: Path) -> list[Path]:
    """Every `*.pkg` under root, sorted, as `pkg repo` finds them: directories whose name
    starts with '.' or is `Latest` are skipped, so are our own catalogue archives, dead
    symlinks and symlinks to files inside root (`--symlink` links to `Hashed/`)."""
    return [Path(p) for p in package_files(root)]


def package_files(root: Path) -> list[str]:
    """`find_packages` as strings (35,000 Path objects cost a noticeable part of a publish)."""
    found: list[str] = []
    top = os.path.realpath(root) + os.sep

    def walk(where: str) -> None:
        # scandir: file types come with the listing, so 35,000 packages need no stat each.
        with os.scandir(where) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for e in entries:
            if e.is_dir(follow_symlinks=False) or not e.name.endswith(".pkg"):
                continue
            if e.name[:-4] in _NOT_PACKAGES:
                continue
            if e.is_symlink():
                real = os.path.realpath(e.path)
                if real.startswith(top) or not os.path.isfile(real):
                    continue
            elif not e.is_file(follow_symlinks=False):
                continue
            found.append(e.path)
        for e in entries:
            if e.is_dir(follow_symlinks=False) and e.name[0] != "." and e.name != "Latest":
                walk(e.path)

    walk(os.fspath(root))
    return found


def atomic_write(
    path: Path, data: bytes, mtime_ns: int | None = None, *, sync: bool = True
) -> None:
    """Write `path` through a temp file in its directory (fsync unless `sync` is false, then
    rename): readers see the old or the new content, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_symlink(path: Path, target: str) -> None:
    """Point `path` at `target` with one rename, whatever was there before."""
    tmp = path.with_name(f".{path.name}.lnk")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _relative(outdir: Path, pkg: str | Path) -> str:
    # Lexically first (the catalogue names a package where it was found, as pkg does, even a
    # symlink to a file elsewhere); resolved only for paths spelled through another route.
    spelled, top = os.fspath(pkg), os.fspath(outdir).rstrip("/") + "/"
    if spelled.startswith(top) and ".." not in spelled[len(top) :].split("/"):
        return spelled[len(top) :]
    rel = os.path.relpath(spelled, outdir)
    if rel != ".." and not rel.startswith(("../", "/")):
        return rel.replace(os.sep, "/")
    try:
        return Path(pkg).resolve().relative_to(outdir.resolve()).as_posix()
    except ValueError:
        raise UnsafeOperation(f"{pkg} is not inside the repository {outdir}") from None


def write_catalogues(outdir: Path, archives: Mapping[str, bytes]) -> None:
    """meta.conf, meta and the archives, each atomically; the archives get meta.conf's mtime,
    as pkg does."""
    atomic_write(outdir / "meta.conf", META_CONF.encode())
    atomic_write(outdir / "meta", META_CONF.encode())
    stamp = (outdir / "meta.conf").stat().st_mtime_ns
    for archive, blob in archives.items():
        atomic_write(outdir / archive, blob, stamp)


async def place_bootstrap(outdir: Path, target: str, blob: bytes, signer: Signer | None) -> None:
    """`Latest/pkg.pkg` -> `../<target>` (the newest `pkg` package, `blob` its bytes) and its
    signature as poudriere writes it: key file -> `.pubkeysig` (the RSA signature without the
    NUL pkg appends in catalogues), signing command -> `.sig` (SIGNATURE/CERT/END). A stale
    signature of the other kind is removed."""
    latest = outdir / "Latest"
    latest.mkdir(exist_ok=True)
    replace_symlink(outdir / BOOTSTRAP, f"../{target}")
    signature = None if signer is None else await signer.sign(blob)
    keep = None
    if isinstance(signature, bytes):
        keep = PUBKEYSIG
        atomic_write(outdir / keep, signature.removesuffix(b"\0"))
    elif signature is not None:
        keep, (sig, cert) = CMDSIG, signature
        atomic_write(outdir / keep, b"SIGNATURE\n" + sig + b"\nCERT\n" + cert + b"END\n")
    for name in (PUBKEYSIG, CMDSIG):
        if name != keep:
            (outdir / name).unlink(missing_ok=True)


def newest_pkg(records: Iterable[tuple[Record, str]]) -> tuple[Record, str] | None:
    """The (record, path) of the newest package named `pkg`, by pkg's version order."""
    found = [(r, p) for r, p in records if r.name == "pkg"]
    return max(found, key=lambda rp: version_key(rp[0].version)) if found else None


def bootstrap_target(record: Record, hashed_path: str) -> str:
    """Where `Latest/pkg.pkg` points in a `--hash --symlink` repository: the `<name>-<version>.pkg`
    symlink next to `Hashed/`, as the ports framework links it."""
    return (
        f"{hashed_path.rsplit('/', 2)[0]}/{record.pkgname}.pkg"
        if "/" in hashed_path
        else (f"{record.pkgname}.pkg")
    )


def _hash_in_place(outdir: Path, found: str | Path, record: Record, symlink: bool) -> Path:
    # pkg repo --hash: move to <dir>/Hashed/<name>-<version>~<sum>.pkg, optionally leaving
    # <dir>/<name>-<version>.pkg -> Hashed/... (hash_file(), libpkg/pkg_repo_create.c).
    path = Path(found)
    base = path.parent.parent if path.parent.name == HASH_DIR else path.parent
    dest = base / HASH_DIR / record.hashed_name
    _relative(outdir, path)
    dest.parent.mkdir(exist_ok=True)
    if path != dest:
        os.rename(path, dest)
    if symlink:
        replace_symlink(base / f"{record.pkgname}.pkg", f"{HASH_DIR}/{record.hashed_name}")
    return dest


async def write_repository(
    outdir: Path,
    packages: Path | Sequence[Path] | None = None,
    signer: Signer | None = None,
    *,
    hashed: bool = False,
    symlink: bool = False,
    cache: Path | None = None,
) -> RepoInfo:
    """Build the repository catalogues for packages under `outdir` (all of them by default,
    as `pkg repo outdir` does; or a directory below it; or an explicit list of .pkg paths
    inside it). Every package is read and verified first (BadPackage names a broken one),
    except those whose bytes match an entry of the `cache` file, which are reused (and the
    cache rewritten). `hashed`/`symlink` are `pkg repo --hash --symlink`. Writes meta.conf,
    meta, data.pkg and packagesite.pkg, each atomically, and the signed `Latest/pkg.pkg` when
    a package named pkg is present. Same packages and key give the same bytes."""
    outdir = Path(outdir)
    paths: Sequence[str | Path]
    if packages is None or isinstance(packages, Path):
        paths = package_files(Path(packages or outdir))
    else:
        paths = list(packages)
    known = CatalogueCache.load(cache) if cache else CatalogueCache()
    placed: list[tuple[Record, str]] = []
    for path in paths:
        record = read_record(path, known)[0]
        dest: str | Path = _hash_in_place(outdir, path, record, symlink) if hashed else path
        placed.append((record, _relative(outdir, dest)))
    placed.sort(key=lambda rp: (rp[0].name, rp[1]))
    data, site = render_catalogues([r.line(p) for r, p in placed])
    archives, _ = await sign_catalogues(data, site, signer)
    write_catalogues(outdir, archives)
    if (pkg := newest_pkg(placed)) is not None:
        record, where = pkg
        target = bootstrap_target(record, where) if hashed and symlink else where
        await place_bootstrap(outdir, target, (outdir / where).read_bytes(), signer)
    if cache:
        CatalogueCache.save(cache, (r for r, _ in placed))
    return RepoInfo(outdir, tuple(p for _, p in placed), data)
