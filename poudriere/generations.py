"""Published repository generations: build a complete, signed and verified pkg repository per
publish, swap `current` to it with one rename, keep the last N; list, roll back and diff them.

Layout of one repository under publish.root (`<root>/<repo>/`):

    g<N>/            a complete repository: meta.conf, meta, data.pkg, packagesite.pkg,
                     All/Hashed/<name>-<version>~<hash>.pkg (hard links into .pool),
                     All/<name>-<version>.pkg -> Hashed/..., Latest/pkg.pkg + signature,
                     .generation.json
    current -> g<N>  relative symlink, replaced atomically (symlink to a temp name, rename)
    .pool/           every hashed package of every kept generation, by the same name; the web
                     server serves All/Hashed/ from here, so a client holding an older
                     catalogue still finds its packages after a swap
    .g<N>.tmp/       a generation being built; renamed to g<N> only once signed and verified
    .catalogue-cache.tsv, .lock (flock: one publish, rollback or prune at a time)

Shell: touches files only. Blocking (hashing, flock): run it in its own process, as
`jailfarm repo publish` does, not in a reactor thread.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from jailfarm.errors import FarmError, UnsafeOperation
from jailfarm.names import NameRule
from jailfarm.poudriere.genbuild import (
    CURRENT,
    META,
    POOL,
    PublishError,
    build,
    fsync_dir,
)
from jailfarm.poudriere.pkgrepo import HASH_DIR, unpack_catalogue
from jailfarm.poudriere.pkgversion import version_cmp, version_key

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from jailfarm.poudriere.genbuild import Catalogue
    from jailfarm.poudriere.pkgsign import Signer

__all__ = [
    "REPO",
    "Change",
    "Generation",
    "GenerationError",
    "PublishError",
    "RepoDiff",
    "diff",
    "generations",
    "prune",
    "publish",
    "repositories",
    "rollback",
]

REPO = NameRule(
    "repository",
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"),
    64,
    "letters, digits, '_', '.' and '-', not starting with '.' or '-'",
)
_GEN = re.compile(r"g([1-9][0-9]*)")
_TMP = re.compile(r"\.g[0-9]+\.tmp")
LOCK = ".lock"


class GenerationError(FarmError, ValueError):
    """No such repository or generation, or nothing to roll back to."""


@dataclass(frozen=True)
class Generation:
    """One published generation, from its `.generation.json`; `current` if `current` points
    at it. `previous` is the generation that was current when it was published."""

    number: int
    path: Path
    created: str
    packages: int
    info: Mapping[str, str] = field(default_factory=dict)
    current: bool = False
    previous: int | None = None

    @property
    def name(self) -> str:
        return f"g{self.number}"


class Change(NamedTuple):
    """A package in a diff: `old`/`new` version (None when absent on that side)."""

    name: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class RepoDiff:
    """What changed from generation `a` to `b`, by package name and pkg's version order;
    `rebuilt`: same version, different bytes."""

    a: int
    b: int
    added: tuple[Change, ...] = ()
    removed: tuple[Change, ...] = ()
    upgraded: tuple[Change, ...] = ()
    downgraded: tuple[Change, ...] = ()
    rebuilt: tuple[Change, ...] = ()
    unchanged: int = 0


# --- reading -------------------------------------------------------------------------------


def _base(root: Path, repo: str, *, must_exist: bool = True) -> Path:
    base = Path(root) / REPO.check(repo)
    if must_exist and not base.is_dir():
        raise GenerationError(f"no repository {repo!r} under {root}: publish one first")
    return base


def _numbers(base: Path) -> list[int]:
    names = os.listdir(base) if base.is_dir() else []
    return sorted(int(m[1]) for n in names if (m := _GEN.fullmatch(n)) and (base / n).is_dir())


def _current(base: Path) -> int | None:
    try:
        m = _GEN.fullmatch(os.readlink(base / CURRENT))
    except (FileNotFoundError, OSError):
        return None
    return int(m[1]) if m else None


def _read_generation(base: Path, number: int, current: int | None) -> Generation:
    path = base / f"g{number}"
    try:
        meta = json.loads((path / META).read_text())
        return Generation(
            number,
            path,
            str(meta["created"]),
            int(meta["packages"]),
            {str(k): str(v) for k, v in meta.get("info", {}).items()},
            number == current,
            meta.get("previous"),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise GenerationError(
            f"{path / META} is unreadable ({e}); restore it or remove {path}"
        ) from None


def generations(root: Path, repo: str) -> list[Generation]:
    """The kept generations of `repo`, oldest first."""
    base = _base(root, repo)
    current = _current(base)
    return [_read_generation(base, n, current) for n in _numbers(base)]


def repositories(root: Path) -> list[str]:
    """The repositories under publish.root, sorted."""
    names = sorted(os.listdir(root)) if Path(root).is_dir() else []
    return [n for n in names if REPO.pattern.fullmatch(n) and (Path(root) / n / CURRENT).exists()]


def _packages(base: Path, number: int) -> dict[str, tuple[str, str]]:
    path = base / f"g{number}" / "data.pkg"
    try:
        data = json.loads(unpack_catalogue(path.read_bytes())["data"])
        entries = [(str(e["name"]), str(e["version"]), str(e["sum"])) for e in data["packages"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenerationError(f"{path}: unreadable catalogue: {e}") from None
    out: dict[str, tuple[str, str]] = {}
    # One entry per name; should a repository hold a name twice, the newest version counts.
    for name, version, pkg_sum in sorted(entries, key=lambda e: version_key(e[1])):
        out[name] = (version, pkg_sum)
    return out


def diff(root: Path, repo: str, a: int, b: int) -> RepoDiff:
    """Packages added, removed, upgraded, downgraded and rebuilt from generation `a` to `b`,
    read from their `data.pkg`."""
    base = _base(root, repo)
    kept = _numbers(base)
    for n in (a, b):
        if n not in kept:
            raise GenerationError(f"unknown generation g{n} of {repo}: kept are {_names(kept)}")
    old, new = _packages(base, a), _packages(base, b)
    kinds = ("added", "removed", "upgraded", "downgraded", "rebuilt")
    out: dict[str, list[Change]] = {k: [] for k in kinds}
    unchanged = 0
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        change = Change(name, before and before[0], after and after[0])
        if before is None or after is None:
            out["added" if before is None else "removed"].append(change)
        elif (order := version_cmp(before[0], after[0])) != 0:
            out["upgraded" if order < 0 else "downgraded"].append(change)
        elif before[1] != after[1]:
            out["rebuilt"].append(change)
        else:
            unchanged += 1
    return RepoDiff(a, b, unchanged=unchanged, **{k: tuple(v) for k, v in out.items()})


def _names(numbers: list[int]) -> str:
    return ", ".join(f"g{n}" for n in numbers) or "none"


# --- changing ------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    # flock (not a pid file): the kernel drops it when the holder dies, however it dies.
    fd = os.open(base / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _swap_current(base: Path, number: int) -> None:
    tmp = base / f".{CURRENT}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"g{number}", tmp)
    os.replace(tmp, base / CURRENT)  # rename(2): readers see the old or the new target
    fsync_dir(base)


def _remove_tree(base: Path, name: str) -> None:
    path = base / name
    if path.parent != base or not (_GEN.fullmatch(name) or _TMP.fullmatch(name)):
        raise UnsafeOperation(f"refusing to remove {path}: not a generation directory of {base}")
    shutil.rmtree(path)


# What a client asks If-Modified-Since about: pkg keeps the served data.pkg's Last-Modified as
# its catalogue's mtime and treats a 304 (which libcurl also fakes when Last-Modified is not
# newer, in whole seconds) as "up to date". pkg stamps the catalogues with meta.conf's time.
_STAMPED = ("meta.conf", "meta", "data.pkg", "packagesite.pkg")


def _newer_than_served(generation: Path, base: Path) -> None:
    """Stamp the catalogues of the generation about to be served strictly newer (in seconds)
    than the served one, or clients would keep the old catalogue after a publish in the same
    second or a rollback to an older generation. Not being served, it can be changed."""
    try:
        served = int((base / "current" / "data.pkg").stat().st_mtime)
    except FileNotFoundError:
        served = 0
    stamp = max(int(time.time()), served + 1)
    for name in _STAMPED:
        if (generation / name).is_file():
            os.utime(generation / name, (stamp, stamp))


def rollback(root: Path, repo: str, to: int | None = None) -> Generation:
    """Point `current` at generation `to` (default: the newest one older than current) with
    one rename. Raises GenerationError when there is nothing to roll back to, the generation
    is unknown or already current."""
    base = _base(root, repo)
    with _locked(base):
        kept, current = _numbers(base), _current(base)
        if current is None:
            raise GenerationError(f"{repo} has no current generation: publish first")
        if to is None:
            older = [n for n in kept if n < current]
            if not older:
                raise GenerationError(
                    f"nothing to roll back to: g{current} is the oldest kept generation of {repo}"
                )
            to = older[-1]
        if to not in kept:
            raise GenerationError(f"unknown generation g{to} of {repo}: kept are {_names(kept)}")
        if to == current:
            raise GenerationError(f"g{to} is already the current generation of {repo}")
        if not (base / f"g{to}" / "data.pkg").is_file():
            raise GenerationError(f"g{to} of {repo} is incomplete (no data.pkg); not served")
        _newer_than_served(base / f"g{to}", base)
        _swap_current(base, to)
        return _read_generation(base, to, to)


def prune(root: Path, repo: str, keep: int) -> list[int]:
    """Remove all generations of `repo` but the newest `keep` and current's target, then the
    pool files no kept generation uses; the numbers removed."""
    base = _base(root, repo)
    with _locked(base):
        return _prune(base, keep)


def _prune(base: Path, keep: int) -> list[int]:
    if keep < 1:
        raise GenerationError(f"keep must be at least 1, got {keep}")
    kept, current = _numbers(base), _current(base)
    wanted = set(kept[-keep:]) | ({current} if current is not None else set())
    removed = [n for n in kept if n not in wanted]
    for number in removed:
        _remove_tree(base, f"g{number}")
    used: set[str] = set()
    for number in wanted:
        hashed = base / f"g{number}" / "All" / HASH_DIR
        used.update(os.listdir(hashed) if hashed.is_dir() else ())
    pool = base / POOL
    for name in os.listdir(pool):
        if name not in used:
            (pool / name).unlink()
    return removed


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def publish(
    root: Path,
    repo: str,
    source: Path,
    signer: Signer,
    keep: int,
    info: Mapping[str, str] | None = None,
    fingerprints: Path | None = None,
    *,
    pubkey: bytes | None = None,
    catalogue: Catalogue | None = None,
) -> Generation:
    """Publish the packages under `source` (poudriere's `packages/<mastername>/.latest`, or
    any directory of .pkg files) as the next generation of `repo` under `root`: build it in
    `.g<N>.tmp/`, sign it, verify it as a client would (with `pubkey`, by default the public
    half of a KeyFileSigner's key; for a signing command with the CERT it returned, which
    must also be trusted by `fingerprints` if given), rename it to `g<N>`, swap `current`,
    then keep only the newest `keep` generations (and current's) and the pool files they use.
    Verification checks the signatures, every package's presence and size, and the checksum
    of every file new to the pool (the others were checked when they entered it).

    Unchanged packages reuse their catalogue entries from the cache. Publishes of one
    repository are serialised by a lock. On any failure (a broken package, a signer that
    fails or says nothing, a signature that does not verify) PublishError says what, the
    temp directory and new pool files are removed, and `current` is untouched."""
    if keep < 1:
        raise PublishError(f"keep must be at least 1, got {keep}")
    source = Path(source)
    if not source.is_dir():
        raise PublishError(f"{source} is not a directory of packages")
    base = _base(root, repo, must_exist=False)
    (base / POOL).mkdir(parents=True, exist_ok=True)
    with _locked(base):
        for name in os.listdir(base):
            if _TMP.fullmatch(name):
                _remove_tree(base, name)  # left by a publish that was killed
        previous = _current(base)
        number = max(_numbers(base), default=0) + 1
        tmp = base / f".g{number}.tmp"
        meta = {"number": number, "created": _now(), "info": dict(info or {})}
        meta["previous"] = previous
        try:
            await build(base, tmp, source, signer, meta, (pubkey, fingerprints), catalogue)
        except (FarmError, OSError, ValueError) as e:
            served = f"g{previous}" if previous else "nothing"
            raise PublishError(f"{repo}: publish failed, still serving {served}: {e}") from e
        _newer_than_served(tmp, base)
        os.rename(tmp, base / f"g{number}")
        _swap_current(base, number)
        try:
            _prune(base, keep)
        except OSError as e:
            raise PublishError(
                f"{repo}: g{number} is published and current, but removing old generations "
                f"failed: {e}; free the space by hand"
            ) from e
        return _read_generation(base, number, number)
