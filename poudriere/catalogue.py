"""The repository catalogue: one package's entry in `data` and `packagesite.yaml`, built from
its .pkg file; the two catalogues and their signed archives (shared/spec/pkg-repository.md,
"Archive format", "Catalogue contents"); and the cache that lets a republish reuse the
entries of unchanged packages.

A `Record` is an entry rendered once to compact JSON and split around its location (`path`,
`repopath`), so the same package can be placed anywhere without parsing or re-serialising
it. The cache maps a package's content hash to its Record: identical bytes are never unpacked
twice, and a package whose bytes changed, whatever its size or mtime, gets a fresh entry.
Pure except `CatalogueCache.load`/`save` and `read_record`, which touch files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zstandard

from jailfarm.errors import InvalidName
from jailfarm.poudriere.pkgfile import (
    PKGNAME,
    VERSION,
    BadPackage,
    PackageInfo,
    decompress_frame,
    file_sum,
    pkg_base32,
    to_json,
    unpack,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from jailfarm.poudriere.pkgsign import Signature

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
# The bootstrap package and its signatures (poudriere.md §5.1): `.pubkeysig` is the raw RSA
# signature over the hex SHA-256 of the file (key file); `.sig` the signing command's
# SIGNATURE/CERT/END output.
BOOTSTRAP = "Latest/pkg.pkg"
PUBKEYSIG, CMDSIG = f"{BOOTSTRAP}.pubkeysig", f"{BOOTSTRAP}.sig"
# zstd's default level: at 19 (what old pkg used) a 35,000-package catalogue took seconds to
# pack for a ~3 % smaller archive; clients never see the level.
_LEVEL = 3

_HEAD = ("name", "origin", "version", "comment", "maintainer", "www", "abi", "arch", "prefix")
_REPO_KEYS = ("sum", "flatsize", "path", "repopath", "pkgsize")
_FULL_ONLY = ("files", "config", "directories", "scripts", "lua_scripts")
# Bump when the Record layout or the entry rendering changes: old caches are then ignored.
_CACHE_HEADER = "jailfarm-catalogue-cache 1"


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
    return _entry(manifest, pkg_path_rel, pkg_sum, size)


def _entry(manifest: Mapping[str, Any], path: str, pkg_sum: str, size: int) -> dict[str, Any]:
    entry = {k: manifest[k] for k in _HEAD if k in manifest}
    entry.update(
        sum=pkg_sum, flatsize=manifest.get("flatsize", 0), path=path, repopath=path, pkgsize=size
    )
    skip = {*_HEAD, *_REPO_KEYS, *_FULL_ONLY}
    entry.update((k, v) for k, v in manifest.items() if k not in skip)
    return entry


def content_key(blob: bytes) -> str:
    """The cache key of a package file: hex BLAKE2b-512 of its bytes (the same digest as its
    catalogue `sum`, in a cheaper encoding)."""
    return hashlib.blake2b(blob).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """A package's catalogue entry without its location: `head` is the compact JSON up to and
    including `flatsize` (ending in ','), `tail` the rest from `pkgsize` (ending in '}').
    `key` is `content_key` of the file, `size` its length in bytes."""

    key: str
    sum: str
    size: int
    name: str
    version: str
    head: str
    tail: str

    @property
    def pkgname(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def hashed_name(self) -> str:
        """`pkg repo --hash`'s file name: `<name>-<version>~<first 10 chars of sum>.pkg`
        (hash_file() in libpkg/pkg_repo_create.c, `%z` in pkg_printf.c)."""
        return f"{self.pkgname}~{self.sum[:10]}.pkg"

    def line(self, path: str) -> str:
        """The entry as one compact JSON object, located at `path` (`path` and `repopath`)."""
        where = json.dumps(path, ensure_ascii=False)
        return f'{self.head}"path":{where},"repopath":{where},{self.tail}'

    def entry(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.line(path))
        return result


def make_record(manifest: Mapping[str, Any], key: str, size: int) -> Record:
    """The Record of a package whose +MANIFEST is `manifest`, content key `key` and size
    `size`. Name and version become file names, so both must pass the package name rules
    (InvalidName otherwise)."""
    name, version = PKGNAME.check(manifest.get("name")), VERSION.check(manifest.get("version"))
    pkg_sum = "2$" + pkg_base32(bytes.fromhex(key))
    entry = _entry(manifest, "", pkg_sum, size)
    keys = list(entry)
    at = keys.index("path")
    head = to_json({k: entry[k] for k in keys[:at]}).decode()
    tail = to_json({k: entry[k] for k in keys[at + 2 :]}).decode()
    return Record(key, pkg_sum, size, name, version, head[:-1] + ",", tail[1:])


def read_record(path: str | Path, cache: Mapping[str, Record]) -> tuple[Record, bytes, bool]:
    """Read a package file: (its Record, its bytes, whether the Record came from the cache).
    A cached Record is reused only when the bytes hash to its key and the size matches;
    otherwise the package is unpacked and fully verified (BadPackage or InvalidName naming
    the file if it is broken)."""
    with open(path, "rb") as f:
        blob = f.read()
    key = content_key(blob)
    cached = cache.get(key)
    if cached is not None and cached.size == len(blob):
        return cached, blob, True
    try:
        full, _ = unpack(blob)
        return make_record(full, key, len(blob)), blob, False
    except (BadPackage, InvalidName) as e:
        raise type(e)(f"{path}: {e}") from None


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class CatalogueCache(dict[str, Record]):
    """Content key -> Record, kept in a tab-separated file next to the repository: a header
    with the format version and the SHA-256 of the body, then one record per line (compact
    JSON never holds a raw tab or newline). It is only a cache: a missing, foreign or damaged
    file just means every package is unpacked again."""

    @classmethod
    def load(cls, path: Path) -> CatalogueCache:
        cache = cls()
        try:
            header, _, body = path.read_bytes().partition(b"\n")
            if header.decode() != f"{_CACHE_HEADER} {_digest(body)}":
                return cache
            text = body.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return cache
        for line in text.split("\n"):
            fields = line.split("\t")
            if len(fields) == 7 and fields[2].isdigit():
                key, pkg_sum, size, name, version, head, tail = fields
                cache[key] = Record(key, pkg_sum, int(size), name, version, head, tail)
        return cache

    @staticmethod
    def save(path: Path, records: Iterable[Record]) -> None:
        """Write exactly `records` (the packages of the latest catalogue), atomically."""
        body = "".join(
            f"{r.key}\t{r.sum}\t{r.size}\t{r.name}\t{r.version}\t{r.head}\t{r.tail}\n"
            for r in records
        ).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(f"{_CACHE_HEADER} {_digest(body)}\n".encode() + body)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --- the catalogues and their archives ------------------------------------------------


def _sorted(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(entries, key=lambda e: (str(e.get("name")), str(e.get("path"))))


def render_catalogues(lines: Sequence[str]) -> tuple[bytes, bytes]:
    """(`data`, `packagesite.yaml`) from entries already rendered as compact JSON objects and
    sorted: `data` is one JSON line, packagesite one object per line."""
    data = '{"groups":[],"expired_packages":[],"packages":[' + ",".join(lines) + "]}\n"
    return data.encode(), "".join(line + "\n" for line in lines).encode()


def render_data(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """The `data` catalogue: one line of compact JSON, packages sorted by name then path."""
    return render_catalogues([to_json(e).decode() for e in _sorted(entries)])[0]


def render_packagesite(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """The deprecated `packagesite.yaml`: one compact JSON object per line, same order."""
    return render_catalogues([to_json(e).decode() for e in _sorted(entries)])[1]


def _member(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.size = 0o644, 0, len(data)
    info.uid = info.gid = 0
    info.uname, info.gname = "root", "wheel"
    return info


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
    cctx = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=False)
    out = io.BytesIO()
    # Streamed, so a large catalogue is not copied into an uncompressed tar buffer first.
    with cctx.stream_writer(out, closefd=False) as z:
        with tarfile.TarFile(fileobj=z, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                tar.addfile(_member(member, data), io.BytesIO(data))
    return out.getvalue()


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
