"""The pkg package file (`name-version.pkg`): metadata, manifests, checksums and the archive.

Pure except `write_package` and `read_package`, the only functions here that touch files. The
format is shared/spec/pkg-repository.md, "A package file": a ustar archive holding
`+COMPACT_MANIFEST`, `+MANIFEST`, then the payload by absolute path, as one zstd frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import zstandard

from jailfarm.errors import FarmError, InvalidName, UnsafeOperation
from jailfarm.names import ORIGIN, NameRule

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# pkg's z-base-32 alphabet (libpkg/pkg_checksum.c, `b32[]`).
_B32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
# pkg_arch_to_legacy() maps the ABI's arch to the legacy "arch" field (libpkg/pkg_abi.c,
# machine_arch_translation[]).
_LEGACY_ARCH = {
    "amd64": "x86:64",
    "i386": "x86:32",
    "aarch64": "aarch64:64",
    "armv6": "armv6:32:el:eabi:hardfp",
    "armv7": "armv7:32:el:eabi:hardfp",
    "powerpc": "powerpc:32:eb",
    "powerpc64": "powerpc:64:eb",
    "powerpc64le": "powerpc:64:el",
    "riscv64": "riscv:64:hf",
}
_ABI = re.compile(r"FreeBSD:([1-9][0-9]*):([a-z0-9]+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_NL_TAB = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_NO_SPACE = re.compile(r"[^\s\x00-\x1f\x7f]+")
COMPACT, MANIFEST = "+COMPACT_MANIFEST", "+MANIFEST"
_HEAD = ("name", "origin", "version", "comment", "maintainer", "www", "abi", "arch", "prefix")
# Keys `pkg_emit_object()` leaves out of the compact manifest (PKG_MANIFEST_EMIT_COMPACT).
_FULL_ONLY = ("files", "config", "directories", "scripts", "lua_scripts")

_PKGNAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]*")
PKGNAME = NameRule("package", _PKGNAME, 255, "letters, digits, '_.+-', no leading '-' or '.'")
# PORTVERSION[_PORTREVISION][,PORTEPOCH]; '-' would split name from version.
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+,]*")
VERSION = NameRule("package version", _VERSION, 128, "letters, digits and '._+,' (no '-')")
_WORD = NameRule("category or license", re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*"), 64, "a word")
_OPTION = NameRule("option", re.compile(r"[A-Za-z0-9_]+"), 64, "letters, digits and '_'")


class BadPackage(FarmError, ValueError):
    """A package file is truncated, corrupt, out of order or fails a checksum."""


def pkg_base32(data: bytes) -> str:
    """Encode like pkg_checksum_encode_base32() (libpkg/pkg_checksum.c): z-base-32 digits taken
    five bits at a time from the LOW end of each byte (not RFC 4648's MSB-first), with a final
    partial digit for leftover bits. 64 bytes give 103 digits."""
    out, acc, bits = [], 0, 0
    for byte in data:
        acc |= byte << bits
        bits += 8
        while bits >= 5:
            out.append(_B32[acc & 0x1F])
            acc >>= 5
            bits -= 5
    if bits:
        out.append(_B32[acc])
    return "".join(out)


def file_sum(data: bytes) -> str:
    """pkg's file checksum `<type>$<hash>` with type 2 = PKG_HASH_TYPE_BLAKE2_BASE32: BLAKE2b-512
    in pkg_base32 (pkg_checksum_generate_fileat(), libpkg/pkg_checksum.c). The `2` is the hash
    type, not the `2$<type>$…` checksum-format version of pkg_checksum_generate()."""
    return "2$" + pkg_base32(hashlib.blake2b(data).digest())


def symlink_sum(target: str) -> str:
    """`file_sum` of a symlink: pkg hashes the target with one leading '/' skipped but the
    length unchanged, so an absolute target's sum covers its trailing NUL
    (pkg_checksum_symlink_readlink(), "kept for compat")."""
    return file_sum(_link_bytes(target))


def _link_bytes(target: str) -> bytes:
    raw = target.encode()
    return raw[1:] + b"\0" if raw.startswith(b"/") else raw


def sum_matches(expected: str, data: bytes) -> bool:
    """Check `data` against a recorded sum in any form pkg_checksum_validate_fileat() accepts:
    `2$` BLAKE2b base32 or `1$`/bare SHA-256 hex. Other types raise BadPackage."""
    kind, sep, value = expected.partition("$")
    if not sep:
        kind, value = "1", expected
    if kind == "2":
        return value == pkg_base32(hashlib.blake2b(data).digest())
    if kind == "1":
        return value == hashlib.sha256(data).hexdigest()
    raise BadPackage(f"unsupported checksum type {kind!r} in {expected!r}")


def pkg_arch(abi: str) -> str:
    """The legacy `arch` for a FreeBSD ABI: "FreeBSD:14:amd64" -> "freebsd:14:x86:64"
    (pkg_arch_to_legacy(), libpkg/pkg_abi.c). Unknown ABIs and arches raise InvalidName."""
    m = _ABI.fullmatch(abi)
    if not m:
        raise InvalidName(f"invalid ABI {abi!r}: expected FreeBSD:<major>:<arch>")
    if m[2] not in _LEGACY_ARCH:
        raise InvalidName(f"unknown arch {m[2]!r} in ABI {abi!r}: known {sorted(_LEGACY_ARCH)}")
    return f"freebsd:{m[1]}:{_LEGACY_ARCH[m[2]]}"


def _text(what: str, value: str, *, multiline: bool = False, spaces: bool = True) -> str:
    bad = _CONTROL_BUT_NL_TAB if multiline else _CONTROL
    if not isinstance(value, str) or bad.search(value):
        raise InvalidName(f"{what} {value!r} has control characters")
    if not spaces and value and not _NO_SPACE.fullmatch(value):
        raise InvalidName(f"{what} {value!r} must not contain whitespace")
    return value


@dataclass(frozen=True)
class PackageMeta:
    """What a package says about itself; validated on construction (InvalidName, a ValueError).

    `deps` maps a package name to {"origin": ..., "version": ...}; `options` maps an option
    name to "on"/"off". `origin` carries no @flavor (pkg keeps flavors in annotations)."""

    name: str
    origin: str
    version: str
    comment: str
    desc: str
    maintainer: str
    www: str
    abi: str
    prefix: str = "/usr/local"
    deps: Mapping[str, Mapping[str, str]] = field(default_factory=dict, hash=False)
    options: Mapping[str, str] = field(default_factory=dict, hash=False)
    categories: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    licenselogic: Literal["single", "and", "or"] = "single"

    def __post_init__(self) -> None:
        PKGNAME.check(self.name)
        VERSION.check(self.version)
        if "@" in ORIGIN.check(self.origin):
            raise InvalidName(f"origin {self.origin!r}: the manifest origin has no @flavor")
        if not self.comment.strip() or not self.desc.strip():
            raise InvalidName(f"{self.name}: comment and desc must not be empty")
        _text("comment", self.comment)
        _text("desc", self.desc, multiline=True)
        _text("maintainer", self.maintainer, spaces=False)
        _text("www", self.www, spaces=False)
        pkg_arch(self.abi)
        p = self.prefix
        if not p.startswith("/") or str(PurePosixPath(p)) != p or ".." in p.split("/"):
            raise InvalidName(f"prefix {p!r} must be a normalised absolute path")
        _text("prefix", p, spaces=False)
        deps: dict[str, Mapping[str, str]] = {}
        for dep, spec in sorted(self.deps.items()):
            if set(spec) != {"origin", "version"}:
                raise InvalidName(f"dependency {dep!r} must have exactly origin and version")
            deps[PKGNAME.check(dep)] = MappingProxyType(
                {"origin": ORIGIN.check(spec["origin"]), "version": VERSION.check(spec["version"])}
            )
        for opt, val in self.options.items():
            if _OPTION.check(opt) and val not in ("on", "off"):
                raise InvalidName(f"option {opt!r} must be 'on' or 'off', got {val!r}")
        for word in (*self.categories, *self.licenses):
            _WORD.check(word)
        if self.licenselogic not in ("single", "and", "or"):
            raise InvalidName(f"licenselogic {self.licenselogic!r}: expected single/and/or")
        object.__setattr__(self, "deps", MappingProxyType(deps))
        object.__setattr__(self, "options", MappingProxyType(dict(sorted(self.options.items()))))

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable (the dev builder hands it to a build root); rebuilt, so re-validated."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["deps"] = {name: dict(spec) for name, spec in self.deps.items()}
        values["options"] = dict(self.options)
        return (_package_meta, (values,))

    @property
    def arch(self) -> str:
        return pkg_arch(self.abi)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.pkg"


def _package_meta(values: dict[str, Any]) -> PackageMeta:
    return PackageMeta(**values)


@dataclass(frozen=True)
class PayloadFile:
    """One payload member: absolute path, pkg `sum`, permission bits, mtime, size (bytes of
    content, or of the link target for a symlink)."""

    path: str
    sum: str
    perm: int
    mtime: int
    size: int
    link: str | None = None


@dataclass(frozen=True)
class PackageInfo:
    """A written package. `pkg_sum` is the catalogue `sum` ("2$" BLAKE2b of the .pkg file);
    `sha256` is its plain hex SHA-256, which the client also accepts in `sum`."""

    path: Path
    size: int
    sha256: str
    pkg_sum: str
    meta: PackageMeta
    flatsize: int


def _urlencode(text: str) -> str:
    # pkg_manifest.c urlencode(): every non-ASCII byte and '%' becomes %xx (lowercase hex).
    return "".join(f"%{b:02x}" if b >= 0x80 or b == 0x25 else chr(b) for b in text.encode("utf-8"))


def _urldecode(text: str) -> str:
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode())
    return raw.decode("utf-8", "surrogateescape")


def _perm(mode: int) -> str:
    # pkg writes perm with printf("%#4.4o"): at least four octal digits and a leading 0.
    digits = format(mode & 0o7777, "o").zfill(4)
    return digits if digits.startswith("0") else "0" + digits


def compact_manifest(meta: PackageMeta, flatsize: int = 0) -> dict[str, Any]:
    """The `+COMPACT_MANIFEST` object, keys in pkg_emit_object()'s order
    (libpkg/pkg_manifest.c): desc is trimmed and URL-encoded as pkg does."""
    obj: dict[str, Any] = {key: getattr(meta, key) for key in _HEAD}
    obj["flatsize"] = flatsize
    if meta.licenses:
        obj["licenselogic"] = meta.licenselogic
        obj["licenses"] = list(meta.licenses)
    obj["desc"] = _urlencode(meta.desc.strip())
    if meta.deps:
        obj["deps"] = {name: dict(spec) for name, spec in meta.deps.items()}
    if meta.categories:
        obj["categories"] = list(meta.categories)
    if meta.options:
        obj["options"] = dict(meta.options)
    return obj


def manifest(meta: PackageMeta, files: Sequence[PayloadFile]) -> dict[str, Any]:
    """The `+MANIFEST` object: the compact manifest (flatsize = total payload size) plus the
    `files` map, each entry {sum, uname, gname, perm, mtime} as the spec shows."""
    obj = compact_manifest(meta, sum(f.size for f in files))
    obj["files"] = {
        _urlencode(f.path): dict(
            sum=f.sum, uname="root", gname="wheel", perm=_perm(f.perm), mtime=f.mtime
        )
        for f in sorted(files, key=lambda f: f.path)
    }
    return obj


def to_json(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON as UCL_EMIT_JSON_COMPACT writes it: no spaces, UTF-8, no trailing newline."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def plist_paths(prefix: str, plist: Sequence[str]) -> list[str]:
    """Absolute, sorted payload paths for a plist whose entries are relative to `prefix` or
    absolute under it. Raises UnsafeOperation for '..', paths outside the prefix, or empty,
    duplicate or control-character entries."""
    paths: set[str] = set()
    for entry in plist:
        if not entry or _CONTROL.search(entry):
            raise UnsafeOperation(f"plist entry {entry!r} is empty or has control characters")
        parts = entry.split("/")
        if ".." in parts or "." in parts:
            raise UnsafeOperation(f"plist entry {entry!r} contains '.' or '..'")
        path = str(PurePosixPath(prefix, entry))
        if not (path.startswith(prefix.rstrip("/") + "/") and path != prefix):
            raise UnsafeOperation(f"plist entry {entry!r} is outside the prefix {prefix!r}")
        if path in paths:
            raise UnsafeOperation(f"plist entry {entry!r} is listed twice")
        paths.add(path)
    return sorted(paths)


def _member(name: str, perm: int, mtime: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.size = perm, mtime, size
    info.uid = info.gid = 0
    info.uname, info.gname = "root", "wheel"
    return info


def pack(meta: PackageMeta, payload: Sequence[tuple[PayloadFile, bytes]]) -> bytes:
    """The .pkg bytes (pure): ustar members in the spec's order, manifests 0644 with the
    newest payload mtime, payload sorted by path; one zstd frame, no content checksum."""
    files = sorted(payload, key=lambda item: item[0].path)
    full = manifest(meta, [f for f, _ in files])
    stamp = max((f.mtime for f, _ in files), default=0)
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in ((COMPACT, compact_manifest(meta, full["flatsize"])), (MANIFEST, full)):
            data = to_json(body)
            tar.addfile(_member(name, 0o644, stamp, len(data)), io.BytesIO(data))
        for f, data in files:
            if f.link is not None:
                info = _member(f.path, f.perm, f.mtime)
                info.type, info.linkname = tarfile.SYMTYPE, f.link
                tar.addfile(info)
            else:
                tar.addfile(_member(f.path, f.perm, f.mtime, len(data)), io.BytesIO(data))
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=False, write_content_size=True)
    return cctx.compress(buf.getvalue())


def decompress_frame(blob: bytes) -> bytes:
    """The bytes of one complete zstd frame (a package or a catalogue archive); BadPackage for
    corrupt data, a frame that ends early, or trailing bytes after it."""
    obj = zstandard.ZstdDecompressor().decompressobj()
    try:
        tar = obj.decompress(blob)
    except zstandard.ZstdError as e:
        raise BadPackage(f"corrupt zstd data: {e}") from None
    if not obj.eof:
        raise BadPackage("truncated archive: the zstd frame ends early")
    if obj.unused_data:
        raise BadPackage("trailing data after the zstd frame")
    return tar


def _manifest_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> dict[str, Any]:
    handle = tar.extractfile(info)
    try:
        obj = json.loads(handle.read() if handle else b"")
    except ValueError as e:
        raise BadPackage(f"{info.name} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadPackage(f"{info.name} is not a JSON object")
    return obj


def _check_payload(info: tarfile.TarInfo, data: bytes, entry: object) -> PayloadFile:
    recorded = entry.get("sum") if isinstance(entry, dict) else entry
    if not isinstance(recorded, str) or recorded in ("", "-"):
        raise BadPackage(f"{info.name}: no checksum in +MANIFEST")
    target = info.linkname if info.issym() else None
    if not sum_matches(recorded, data if target is None else _link_bytes(target)):
        raise BadPackage(f"checksum mismatch for {info.name}")
    size = len(data) if target is None else len(target.encode())
    return PayloadFile(info.name, recorded, info.mode, int(info.mtime), size, target)


def unpack(blob: bytes) -> tuple[dict[str, Any], list[PayloadFile]]:
    """Parse and verify .pkg bytes (pure): one complete zstd frame, `+COMPACT_MANIFEST` then
    `+MANIFEST` first, the compact manifest equal to the full one without files, every payload
    member listed in `files` exactly once with a matching sum. Raises BadPackage naming the
    problem (truncated archive, wrong member order, checksum mismatch for <path>, ...)."""
    raw = decompress_frame(blob)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
            # tarfile stops quietly at a cut-off header or member; a whole archive ends with
            # zero blocks where reading stopped.
            if raw[tar.offset : tar.offset + 1024] != bytes(1024):
                raise BadPackage("truncated archive: the tar end-of-archive blocks are missing")
            names = [m.name for m in members[:2]]
            if names != [COMPACT, MANIFEST]:
                raise BadPackage(f"wrong member order: expected {COMPACT}, {MANIFEST}; got {names}")
            compact, full = (_manifest_member(tar, m) for m in members[:2])
            files = full.get("files", {})
            if not isinstance(files, dict):
                raise BadPackage(f"{MANIFEST}: files is not a map")
            if compact != {k: v for k, v in full.items() if k not in _FULL_ONLY}:
                raise BadPackage(f"{COMPACT} does not match {MANIFEST}")
            listed = {_urldecode(k): v for k, v in files.items()}
            out: list[PayloadFile] = []
            for info in members[2:]:
                if info.name not in listed:
                    raise BadPackage(f"{info.name} is not in {MANIFEST} or appears twice")
                if not (info.isfile() or info.issym()):
                    raise BadPackage(f"{info.name}: only regular files and symlinks are supported")
                handle = tar.extractfile(info) if info.isfile() else None
                out.append(
                    _check_payload(info, handle.read() if handle else b"", listed.pop(info.name))
                )
    except tarfile.TarError as e:
        raise BadPackage(f"truncated archive or corrupt tar data: {e}") from None
    if listed:
        raise BadPackage(f"{MANIFEST} lists files missing from the archive: {sorted(listed)}")
    return full, out


def _stage(root: Path, path: str) -> tuple[PayloadFile, bytes]:
    staged = root / path.lstrip("/")
    # A symlinked directory in the stage must not lead the writer outside it.
    if not staged.parent.resolve().is_relative_to(root.resolve()):
        raise UnsafeOperation(f"{path}: staged parent {staged.parent} escapes {root}")
    st = staged.lstat()
    perm, mtime = st.st_mode & 0o7777, int(st.st_mtime)
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(staged)
        return PayloadFile(path, symlink_sum(link), perm, mtime, len(link.encode()), link), b""
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: {staged} is not a regular file or symlink")
    data = staged.read_bytes()
    return PayloadFile(path, file_sum(data), perm, mtime, len(data)), data


def write_package(
    path: Path, meta: PackageMeta, staged_root: Path, plist: Sequence[str]
) -> PackageInfo:
    """Build `path` from the files `plist` names under `staged_root` (a DESTDIR: a payload
    file /usr/local/x is staged_root/usr/local/x). Modes and mtimes come from the stage;
    owners are root/wheel. Written atomically (temp file in the same directory, fsync,
    rename), so readers never see a partial package. Same inputs give the same bytes."""
    payload = [_stage(staged_root, p) for p in plist_paths(meta.prefix, plist)]
    blob = pack(meta, payload)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sha256, flatsize = hashlib.sha256(blob).hexdigest(), sum(f.size for f, _ in payload)
    return PackageInfo(path, len(blob), sha256, file_sum(blob), meta, flatsize)


def read_package(path: Path) -> tuple[dict[str, Any], list[PayloadFile]]:
    """Read and verify a .pkg file: see `unpack` for the checks and errors."""
    return unpack(path.read_bytes())
