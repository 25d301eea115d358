"""The on-disk layout the dev-host bulk builder writes, as poudriere writes it (shell: files).

The build directory `logs/bulk/<MASTERNAME>/<BUILDNAME>/` with its `.poudriere.*` state files
and `.data.json` (shared/spec/poudriere.md §4.2), and the package repository
`packages/<MASTERNAME>/` with its `.building` -> `.real_<epoch>` -> `.latest` swap (§4.3).
`render_data_json` is pure: json.awk's shape computed from the state files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zstandard

from jailfarm.errors import UnsafeOperation
from jailfarm.poudriere.pkgfile import BadPackage, read_package

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_NAME_FILES = (
    "buildname",
    "mastername",
    "jailname",
    "ptname",
    "setname",
    "started",
    "ended",
    "status",
    "svn_url",
    "git_hash",
    "git_dirty",
    "overlays",
)
# json.awk's extra keys per `.poudriere.ports.<type>` line (fields after origin and pkgname).
_PORT_FIELDS: dict[str, tuple[str, ...]] = {
    "built": ("elapsed",),
    "failed": ("phase", "errortype", "elapsed"),
    "skipped": ("depends",),
    "ignored": ("reason",),
    "queued": ("reason",),
    "inspected": ("reason",),
    "tobuild": (),
    "fetched": (),
}
_MINI_SKIP = ("ports", "jobs", "snap", "skipped")


def write_atomic(path: Path, text: str) -> None:
    """Write `path` by a temp file in the same directory and a rename (poudriere's
    write_atomic: readers see the old or the new content, never a part)."""
    fd, tmp = tempfile.mkstemp(prefix=f".write_atomic-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_settled(path: Path) -> str:
    """Read a state file that another builder thread may be replacing (write_atomic) at this
    very moment. On zfs-fuse (the dev host's worker clones) a lookup racing the rename can
    answer ENOENT although the file exists before and after; these files are never deleted
    during a build, so ENOENT here is transient: look again."""
    for _ in range(100):
        try:
            return path.read_text()
        except FileNotFoundError:
            time.sleep(0.01)
    return path.read_text()


def render_data_json(files: Mapping[str, str], mini: bool = False) -> str:
    """`.data.json` (or `.data.mini.json`) from a build directory's `.poudriere.*` files, in
    json.awk's shape (§4.2): every value a string except the `skipped` counts; files ending
    in `%` and `.poudriere.builders` are not read; reasons lose backslashes and quotes are
    escaped (json.dumps does both)."""
    out: dict[str, Any] = {}
    ports: dict[str, list[dict[str, str]]] = {}
    jobs: list[dict[str, str]] = []
    skipped: dict[str, int] = {}
    for name in sorted(files):
        key = name.removeprefix(".poudriere.")
        if not name.startswith(".poudriere.") or key.endswith("%") or key == "builders":
            continue
        text = files[name]
        if key in _NAME_FILES:
            out[key] = text.split("\n", 1)[0]
        elif key.startswith(("stats_", "snap_")):
            group = "stats" if key.startswith("stats_") else "snap"
            out.setdefault(group, {})[key.split("_", 1)[1]] = text.strip()
        elif key.startswith("status."):
            jobs.append(_job(key[7:], text.strip()))
        elif key.startswith("ports.") and key[6:] in _PORT_FIELDS:
            kind = key[6:]
            ports[kind] = [_port(kind, line) for line in text.splitlines() if line]
            if kind == "skipped":
                for entry in ports[kind]:
                    skipped[entry["depends"]] = skipped.get(entry["depends"], 0) + 1
    out.update(ports=ports, jobs=jobs, skipped=skipped)
    if mini:
        out = {k: v for k, v in out.items() if k not in _MINI_SKIP}
    return json.dumps(out, separators=(",", ":")) + "\n"


def _job(builder: str, status: str) -> dict[str, str]:
    parts = status.split(":")
    if len(parts) < 5:  # idle:, done:, crashed:err:<msg> keep the raw value
        return {"id": builder, "status": status}
    keys = ("status", "origin", "pkgname", "started", "elapsed")
    return {"id": builder, **dict(zip(keys, parts[:5], strict=True))}


def _port(kind: str, line: str) -> dict[str, str]:
    words = line.split(" ")
    entry = {"origin": words[0], "pkgname": words[1] if len(words) > 1 else ""}
    extra = _PORT_FIELDS[kind]
    if extra == ("reason",):
        entry["reason"] = " ".join(words[2:]).replace("\\", "")
    else:
        entry.update(zip(extra, words[2:], strict=False))
    return entry


class BuildDir:
    """One build's log directory. `bset` replaces a state file atomically, `badd` appends a
    line; every status change is also appended to `.poudriere.status.journal%` (§4.2)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, names: Mapping[str, str], builders: int) -> None:
        """Make the directory and its `logs/` tree and write the name and start files."""
        for sub in ("logs", "logs/built", "logs/errors"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        for key, value in names.items():
            self.bset(key, value)
        self.bset("started", str(int(time.time())))
        self.bset("builders", " ".join(f"{n:02d}" for n in range(1, builders + 1)))
        for name in ("built", "failed", "skipped", "ignored", "inspected", "fetched"):
            (self.path / f".poudriere.ports.{name}").touch()

    def bset(self, name: str, value: str) -> None:
        write_atomic(self.path / f".poudriere.{name}", value + "\n")

    def write_list(self, name: str, lines: Iterable[str]) -> None:
        """Replace a `.poudriere.ports.*` list: one complete line per entry, or empty."""
        write_atomic(self.path / f".poudriere.{name}", "".join(f"{line}\n" for line in lines))

    def badd(self, name: str, line: str) -> None:
        with (self.path / f".poudriere.{name}").open("a") as out:
            out.write(line + "\n")

    def status(self, value: str, builder: str = "") -> None:
        """Set the top-level status (or builder `NN`'s) and journal it with the epoch time."""
        name = f"status.{builder}" if builder else "status"
        self.bset(name, value)
        self.badd(f"{name}.journal%", f"{int(time.time())}:{value}")

    def read(self) -> dict[str, str]:
        return {
            p.name: _read_settled(p)
            for p in self.path.iterdir()
            if p.name.startswith(".poudriere.") and p.is_file()
        }

    def update_json(self, stats: Mapping[str, int], started_mono: float) -> None:
        """Refresh the `stats_*` and `snap_*` files, then `.data.json` and `.data.mini.json`
        (what poudriere's HTML updater does every HTML_JSON_UPDATE_INTERVAL)."""
        for key, value in stats.items():
            self.bset(f"stats_{key}", str(value))
        now = time.monotonic()
        self.bset("snap_now", str(int(now)))
        self.bset("snap_elapsed", str(int(now - started_mono)))
        self.bset("snap_loadavg", "({:.0f}%) {:.2f} {:.2f} {:.2f}".format(0, *os.getloadavg()))
        self.bset("snap_swapinfo", "0.00%")
        files = self.read()
        write_atomic(self.path / ".data.json", render_data_json(files))
        write_atomic(self.path / ".data.mini.json", render_data_json(files, mini=True))

    def update_index(self) -> None:
        """`logs/bulk/<M>/.data.json`: {"builds": {<B>: mini JSON, ..., "latest": <B>}}."""
        index_path = self.path.parent / ".data.json"
        builds: dict[str, Any] = {}
        if index_path.exists():
            builds = json.loads(index_path.read_text()).get("builds", {})
        builds[self.path.name] = json.loads((self.path / ".data.mini.json").read_text())
        builds["latest"] = self.path.name
        write_atomic(index_path, json.dumps({"builds": builds}, separators=(",", ":")) + "\n")

    def log_path(self, pkgname: str) -> Path:
        return self.path / "logs" / f"{pkgname}.log"

    def link_log(self, kind: str, pkgname: str) -> None:
        """`logs/<kind>/<pkgname>.log -> ../<pkgname>.log` (kind: built or errors)."""
        link = self.path / "logs" / kind / f"{pkgname}.log"
        link.unlink(missing_ok=True)
        link.symlink_to(f"../{pkgname}.log")


def relink(link: Path, target: str) -> None:
    """Point symlink `link` at `target` atomically (a new link renamed over the old one)."""
    tmp = link.with_name(f"{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def existing_packages(pkgdir: Path, jail_version: str) -> dict[str, frozenset[str]]:
    """Pkgname -> recorded dependency pkgnames of every package in `.latest/All`. A changed
    jail version deletes every package in poudriere (§1.1), so then nothing is kept; an
    unreadable package is treated as missing (it will be rebuilt)."""
    latest = pkgdir / ".latest"
    jv = latest / ".jailversion"
    if not jv.is_file() or jv.read_text().strip() != jail_version:
        return {}
    found: dict[str, frozenset[str]] = {}
    for pkg in sorted((latest / "All").glob("*.pkg")):
        try:
            manifest, _ = read_package(pkg)
        except (BadPackage, OSError):
            continue
        deps = manifest.get("deps", {})
        found[pkg.name[:-4]] = frozenset(f"{n}-{d['version']}" for n, d in deps.items())
    return found


def stash_packages(pkgdir: Path, keep: Iterable[str]) -> Path:
    """A fresh `.building/All` holding hard links (copies across filesystems) of the kept
    packages of `.latest`. A leftover `.building` is discarded: unlike poudriere, the dev
    builder does not resume from it; its plan already keeps what is up to date."""
    building = _under(pkgdir, pkgdir / ".building")
    if building.exists():
        shutil.rmtree(building)
    (building / "All").mkdir(parents=True)
    for pkgname in keep:
        src = pkgdir / ".latest" / "All" / f"{pkgname}.pkg"
        dst = building / "All" / src.name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return building


def commit_packages(pkgdir: Path, buildname: str, jail_version: str, keep_old: int = 2) -> Path:
    """Commit `.building` (§4.3): rename it to `.real_<epoch>`, then switch `.latest` with one
    rename of a new symlink, add top-level links, and delete all but the newest `keep_old`
    real directories (the one just committed and, by default, the previous one)."""
    building = _under(pkgdir, pkgdir / ".building")
    (building / ".jailversion").write_text(jail_version + "\n")
    (building / ".buildname").write_text(buildname + "\n")
    epoch = int(time.time())
    while (pkgdir / f".real_{epoch}").exists():  # two commits in one second (tests)
        epoch += 1
    real = pkgdir / f".real_{epoch}"
    os.rename(building, real)
    relink(pkgdir / ".latest", real.name)
    for name in ("All", ".jailversion", ".buildname"):
        link = pkgdir / name
        if not link.exists() or link.is_symlink():
            relink(link, f".latest/{name}")
    reals = sorted(pkgdir.glob(".real_*"), key=lambda p: int(p.name[6:]))
    for old in reals[:-keep_old] if keep_old > 0 else []:
        shutil.rmtree(_under(pkgdir, old))
    return real


def _under(root: Path, path: Path) -> Path:
    if not path.resolve().is_relative_to(root.resolve()) or path.resolve() == root.resolve():
        raise UnsafeOperation(f"refusing to touch {path}: not under {root}")
    return path


def install_package(pkg: Path, root: Path) -> None:
    """Unpack a verified package into `root` (payload /usr/local/x -> root/usr/local/x), as
    `pkg -r root install` would, without the database. Paths must stay under `root`."""
    read_package(pkg)  # checks the archive and every checksum first
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(pkg.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar.getmembers()[2:]:
            dest = root / info.name.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            _under(root, dest.parent / "x")
            dest.unlink(missing_ok=True)
            if info.issym():
                dest.symlink_to(info.linkname)
                continue
            handle = tar.extractfile(info)
            dest.write_bytes(handle.read() if handle else b"")
            dest.chmod(info.mode & 0o7777)
