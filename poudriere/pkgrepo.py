"""The pkg repository: catalogue entries, `data`/`packagesite.yaml`, the signed catalogue
archives, and writing and verifying a repository directory
(shared/spec/pkg-repository.md, "Repository layout and internal structure").

Pure except `write_repository` and `check_repository`/`verify_repository`, which touch files.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zstandard

from jailfarm.errors import FarmError, UnsafeOperation
from jailfarm.poudriere.pkgfile import (
    BadPackage,
    PackageInfo,
    decompress_frame,
    file_sum,
    sum_matches,
    to_json,
    unpack,
)
from jailfarm.poudriere.pkgsign import (
    fingerprint,
    parse_fingerprint_file,
    verify_rsa,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from jailfarm.poudriere.pkgsign import Signature, Signer

META_CONF = (
    "version = 2;\n"
    'packing_format = "tzst";\n'
    'manifests = "packagesite.yaml";\n'
    'data = "data";\n'
    'filesite = "files";\n'
    'manifests_archive = "packagesite";\n'
    'filesite_archive = "files";\n'
)
# (archive, catalogue member) pairs `pkg repo` writes without -l.
CATALOGUES = (("data.pkg", "data"), ("packagesite.pkg", "packagesite.yaml"))
_HEAD = ("name", "origin", "version", "comment", "maintainer", "www", "abi", "arch", "prefix")
_REPO_KEYS = ("sum", "flatsize", "path", "repopath", "pkgsize")
# Our own outputs in a packages tree; never read them as packages.
_NOT_PACKAGES = {"data", "packagesite", "filesite", "files", "digests", "meta"}


class RepositoryError(FarmError, ValueError):
    """A repository failed verification; `problems` lists every problem found, the message
    names the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


@dataclass(frozen=True)
class RepoInfo:
    """A written repository: its directory, the catalogue paths and the `data` catalogue."""

    outdir: Path
    paths: tuple[str, ...]
    data: bytes


def catalogue_entry(
    manifest: Mapping[str, Any], pkg_path_rel: str, pkg: bytes | PackageInfo
) -> dict[str, Any]:
    """One package's catalogue object: the compact manifest (no `files` and the other
    full-only keys), plus `sum` (the `2$` BLAKE2b form pkg 2.x writes), `path`, `repopath` and
    `pkgsize`. Keys follow pkg_emit_object(): the head fields, sum, flatsize, path, repopath,
    pkgsize, then the rest (desc, deps, ...) in manifest order."""
    if isinstance(pkg, PackageInfo):
        pkg_sum, size = pkg.pkg_sum, pkg.size
    else:
        pkg_sum, size = file_sum(pkg), len(pkg)
    repo = {
        "sum": pkg_sum,
        "flatsize": manifest.get("flatsize", 0),
        "path": pkg_path_rel,
        "repopath": pkg_path_rel,
        "pkgsize": size,
    }
    entry = {k: manifest[k] for k in _HEAD if k in manifest}
    entry.update(repo)
    skip = {*_HEAD, *_REPO_KEYS, "files", "config", "directories", "scripts", "lua_scripts"}
    entry.update((k, v) for k, v in manifest.items() if k not in skip)
    return entry


def _sorted(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(entries, key=lambda e: (str(e.get("name")), str(e.get("path"))))


def render_data(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """The `data` catalogue: one line of compact JSON, packages sorted by name then path."""
    body = {"groups": [], "expired_packages": [], "packages": _sorted(entries)}
    return to_json(body) + b"\n"


def render_packagesite(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """The deprecated `packagesite.yaml`: one compact JSON object per line, same order."""
    return b"".join(to_json(e) + b"\n" for e in _sorted(entries))


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.size = 0o644, 0, len(data)
    info.uid = info.gid = 0
    info.uname, info.gname = "root", "wheel"
    return info, io.BytesIO(data)


def pack_catalogue(name: str, content: bytes, signature: Signature | None = None) -> bytes:
    """A catalogue archive (pure, deterministic): ustar in one zstd frame without content
    checksum, members 0644 root/wheel mtime 0. Pubkey mode (`signature` bytes, NUL included):
    `signature` then `name`; fingerprints mode ((sig, cert)): `name.sig`, `name.pub`, `name`;
    unsigned: only `name`."""
    members: list[tuple[str, bytes]] = []
    if isinstance(signature, bytes):
        members.append(("signature", signature))
    elif signature is not None:
        sig, cert = signature
        members += [(f"{name}.sig", sig), (f"{name}.pub", cert)]
    members.append((name, content))
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            tar.addfile(*_member(member, data))
    cctx = zstandard.ZstdCompressor(level=19, write_checksum=False, write_content_size=True)
    return cctx.compress(buf.getvalue())


def unpack_catalogue(blob: bytes) -> dict[str, bytes]:
    """Member name -> bytes of a catalogue archive (pure); ValueError for a corrupt or
    truncated archive."""
    raw = decompress_frame(blob)  # BadPackage is a ValueError
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for info in tar:
                handle = tar.extractfile(info) if info.isfile() else None
                out[info.name] = handle.read() if handle else b""
    except tarfile.TarError as e:
        raise ValueError(f"corrupt tar data: {e}") from None
    return out


# --- files ---------------------------------------------------------------------------------


def find_packages(root: Path) -> list[Path]:
    """Every `*.pkg` under root, sorted, skipping directories whose name starts with '.' or is
    `Latest` (pkg repo's fts walk) and our own catalogue archives."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "Latest")
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.endswith(".pkg") and path.stem not in _NOT_PACKAGES and path.is_file():
                found.append(path)
    return found


def _atomic_write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _relative(outdir: Path, pkg: Path) -> str:
    try:
        return pkg.resolve().relative_to(outdir.resolve()).as_posix()
    except ValueError:
        raise UnsafeOperation(f"{pkg} is not inside the repository {outdir}") from None


async def write_repository(
    outdir: Path, packages: Path | Sequence[Path] | None = None, signer: Signer | None = None
) -> RepoInfo:
    """Build the repository catalogues for packages under `outdir` (all of them by default,
    as `pkg repo outdir` does; or a directory below it; or an explicit list of .pkg paths
    inside it). Every package is read and verified first (BadPackage names a broken one).
    Writes meta.conf, meta, data.pkg and packagesite.pkg, each atomically; the archives get
    meta.conf's mtime, as pkg does. Same packages and key give the same bytes."""
    outdir = Path(outdir)
    if packages is None or isinstance(packages, Path):
        paths = find_packages(Path(packages or outdir))
    else:
        paths = list(packages)
    entries = []
    for path in paths:
        blob = path.read_bytes()
        try:
            full, _ = unpack(blob)
        except BadPackage as e:
            raise BadPackage(f"{path}: {e}") from None
        entries.append(catalogue_entry(full, _relative(outdir, path), blob))
    data, site = render_data(entries), render_packagesite(entries)
    archives = {}
    for (archive, member), content in zip(CATALOGUES, (data, site), strict=True):
        archives[archive] = pack_catalogue(
            member, content, None if signer is None else await signer.sign(content)
        )
    _atomic_write(outdir / "meta.conf", META_CONF.encode())
    _atomic_write(outdir / "meta", META_CONF.encode())
    stamp = (outdir / "meta.conf").stat().st_mtime_ns
    for archive, blob in archives.items():
        _atomic_write(outdir / archive, blob, stamp)
    return RepoInfo(outdir, tuple(e["path"] for e in _sorted(entries)), data)


def _trusted(fingerprints_dir: Path, kind: str) -> set[str]:
    where = fingerprints_dir / kind
    files = sorted(where.iterdir()) if where.is_dir() else []
    return {fp for f in files if f.is_file() and (fp := parse_fingerprint_file(f.read_text()))}


def _signature_problem(
    archive: str,
    members: Mapping[str, bytes],
    member: str,
    pubkey: bytes | None,
    fp_dir: Path | None,
) -> str | None:
    content = members[member]
    if fp_dir is None:
        sig = members.get("signature")
        if sig is None:
            return f"{archive}: not signed (no signature member)"
        ok = pubkey is not None and verify_rsa(content, sig, pubkey)
        return None if ok else f"{archive}: signature verification failure"
    sig, pub = members.get(f"{member}.sig"), members.get(f"{member}.pub")
    if sig is None or pub is None:
        return f"{archive}: not signed (no {member}.sig/{member}.pub members)"
    # The client's order: revoked, then trusted, then the signature itself.
    if fingerprint(pub) in _trusted(fp_dir, "revoked"):
        return f"{archive}: At least one of the certificates has been revoked"
    if fingerprint(pub) not in _trusted(fp_dir, "trusted"):
        return f"{archive}: No trusted public keys found"
    return (
        None
        if verify_rsa(content, sig, pub, strip_nul=False)
        else f"{archive}: signature verification failure"
    )


def _package_problems(root: Path, entries: Sequence[Mapping[str, Any]]) -> list[str]:
    problems = []
    for entry in entries:
        rel = str(entry.get("repopath") or entry.get("path"))
        path = root / rel
        if rel.startswith("/") or ".." in rel.split("/"):
            problems.append(f"{rel}: path outside the repository")
        elif not path.is_file():
            problems.append(f"{rel}: missing")
        elif (size := path.stat().st_size) != entry.get("pkgsize"):
            problems.append(f"{rel}: size {size} != {entry.get('pkgsize')} in the catalogue")
        elif not sum_matches(str(entry.get("sum")), path.read_bytes()):
            problems.append(f"{rel}: checksum mismatch")
    return problems


def check_repository(
    root: Path, pubkey_pem: bytes | None = None, fingerprints_dir: Path | None = None
) -> list[str]:
    """Every problem the pkg client would reject, in its order: each catalogue archive's
    signature (pubkey mode with `pubkey_pem`, or fingerprints mode with a directory holding
    trusted/ and revoked/), then every package in `data` against its size and sum. A bad
    data.pkg stops the check: its package list is not trusted. Empty list: all good."""
    if (pubkey_pem is None) == (fingerprints_dir is None):
        raise ValueError("give exactly one of pubkey_pem and fingerprints_dir")
    problems: list[str] = []
    entries: list[Mapping[str, Any]] = []
    for archive, member in CATALOGUES:
        path = Path(root, archive)
        if not path.is_file():
            problems.append(f"{archive}: missing")
            continue
        try:
            members = unpack_catalogue(path.read_bytes())
            if member not in members:
                raise ValueError(f"no {member} member")
            bad = _signature_problem(archive, members, member, pubkey_pem, fingerprints_dir)
            if member == "data" and not bad:
                entries = json.loads(members[member])["packages"]
        except (ValueError, KeyError, TypeError) as e:
            bad = f"{archive}: unreadable catalogue: {e}"
        if bad:
            problems.append(bad)
            if member == "data":
                return problems
    return problems + _package_problems(Path(root), entries)


def verify_repository(
    root: Path, pubkey_pem: bytes | None = None, fingerprints_dir: Path | None = None
) -> None:
    """`check_repository`, raising RepositoryError (message: the first problem) if any."""
    problems = check_repository(root, pubkey_pem, fingerprints_dir)
    if problems:
        raise RepositoryError(problems)
