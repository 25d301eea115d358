"""The clean build environment of one port for `jailfarm-poudriere` (shell: namespaces and
mounts). Poudriere builds every port in a builder jail cloned from a reference jail and rolled
back to its `prepkg` snapshot before the next port (poudriere.md §4.1). The dev host does the
same with Linux namespaces (linux-dev-host.md, "Clean per-port build roots"):

* the reference build root `.m/<MASTERNAME>/ref` is an almost empty tree made once per bulk
  (`make_reference`): the base-jail layout, with `usr/local` empty;
* each port gets a nested "jail": a new user, mount, PID, UTS and IPC namespace
  (`unshare --user --map-root-user`, so an unprivileged worker can make it), where a tmpfs
  holds the upper layer of an overlay over the reference root. The host's system directories
  (/usr/bin, /usr/lib, ..., /etc) are bound read-only into it, the ports tree read-only at
  /usr/ports, the repository being built read-write at /packages, then the namespace pivots
  into the overlay. Dependencies are installed from their packages into its /usr/local, the
  port's phases run as its root, its package is written to /packages/All;
* when the port is done the namespace exits, and the tmpfs with every file the build made goes
  with it: the next port starts from the reference root again, like poudriere's rollback.

`argv` is what the builder starts; `main` (run as `python -m
jailfarm.poudriere.devbuild_sandbox JOB`) is PID 1 inside. It reports each phase on a pipe
(`phase NAME`, then `ok` or `failed NAME`) so the builder keeps poudriere's status files.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from jailfarm.errors import FarmError
from jailfarm.host import nsinit
from jailfarm.poudriere import devbuild_layout as layout
from jailfarm.poudriere.pkgfile import PackageMeta, write_package

if TYPE_CHECKING:
    from collections.abc import Sequence

# Inside the build root (poudriere's builder jail paths, poudriere.md §4.1).
PORTSDIR, PACKAGES, WRKDIRS, DISTFILES = "/usr/ports", "/packages", "/wrkdirs", "/distfiles"
# The base-jail pattern (jails spec i.140): system directories bound read-only; /usr/local
# is the build root's own.
_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
_EMPTY = (
    "usr/local/bin",
    "usr/local/lib",
    "usr/local/include",
    "usr/local/share",
    "usr/local/sbin",
    "usr/local/etc",
    "usr/ports",
    "var/db",
    "var/run",
    "root",
    "proc",
    "dev",
    "packages",
    "wrkdirs",
    "distfiles",
)
_MS_PRIVATE = 1 << 18
_ST_TO_MS = {1: 1, 2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}  # statvfs -> mount
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
    "LC_ALL": "C",
    "HOME": "/root",
    "USER": "root",
}


class SandboxError(FarmError):
    pass


@dataclass(frozen=True)
class Job:
    """Everything PID 1 of a port's build root needs (written by the builder, pickled)."""

    ref: str
    scratch: str
    tree: str
    packages: str
    hostname: str
    origin: str
    pkgname: str
    installs: tuple[str, ...]  # package files under /packages/All, installed in this order
    make_vars: tuple[str, ...]
    phases: tuple[str, ...]
    meta: PackageMeta
    binds: tuple[str, ...]  # extra read-only binds at the same path (the Python environment)
    package_dir: str  # where the package goes, inside the build root
    status_fd: int  # the write end of the builder's pipe, inherited


def make_reference(ref: Path) -> None:
    """The reference build root (poudriere's `ref` jail before `prepkg`): empty directories
    for the mount points and an empty /usr/local. Made once per bulk; never written after."""
    for d in _EMPTY:
        (ref / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (ref / d).mkdir(parents=True, exist_ok=True)
        (ref / d).chmod(0o1777)
    for name in sorted(os.listdir("/usr")):
        if name != "local" and not (ref / "usr" / name).exists():
            (ref / "usr" / name).mkdir()


def argv(job_file: Path) -> list[str]:
    """The nested jail: a new user namespace mapping the caller to root (no privilege needed),
    with its own mounts, PIDs, hostname and IPC; `--kill-child` ends it if the builder dies."""
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "--uts",
        "--ipc",
        "--kill-child",
        sys.executable,
        "-m",
        "jailfarm.poudriere.devbuild_sandbox",
        str(job_file),
    ]


def write_job(job: Job, path: Path) -> None:
    path.write_bytes(pickle.dumps(job))


# ---------------------------------------------------------------- inside (PID 1)


def _bind_ro(source: str, target: Path) -> None:
    """A read-only recursive bind. In a user namespace the flags of the source mount (nodev,
    nosuid, atime) are locked, so the read-only remount repeats them."""
    nsinit._mount(source, str(target), None, nsinit.MS_BIND | nsinit.MS_REC)
    st = os.statvfs(target).f_flag
    flags = sum(ms for bit, ms in _ST_TO_MS.items() if st & bit)
    remount = nsinit.MS_REMOUNT | nsinit.MS_BIND | nsinit.MS_RDONLY
    nsinit._mount("none", str(target), None, remount | flags)


def _mirror(source: Path, target: Path) -> None:
    """Bind `source` at `target`, or copy its link when it is a symlink (merged /usr)."""
    if source.is_symlink():
        if not target.is_symlink():
            if target.is_dir():
                target.rmdir()
            target.symlink_to(os.readlink(source))
        return
    if not source.exists():
        return
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    _bind_ro(str(source), target)


def _assemble(job: Job) -> Path:
    """Mount the build root and return it (still at its path in the worker's tree)."""
    nsinit._mount("none", "/", None, _MS_PRIVATE | nsinit.MS_REC)
    scratch = Path(job.scratch)
    nsinit._mount("tmpfs", job.scratch, "tmpfs", nsinit.MS_NOSUID, "mode=0755")
    upper, work, root = scratch / "upper", scratch / "work", scratch / "root"
    for d in (upper, work, root):
        d.mkdir()
    layers = f"lowerdir={job.ref},upperdir={upper},workdir={work}"
    nsinit._mount("overlay", str(root), "overlay", 0, layers)
    for name in _TOP:
        _mirror(Path("/", name), root / name)
    for entry in sorted(os.listdir("/usr")):
        if entry != "local":
            _mirror(Path("/usr", entry), root / "usr" / entry)
    for path in job.binds:
        target = nsinit._inside(root, path)
        if not any(target == root / top or root / top in target.parents for top in _TOP):
            _mirror(Path(path), target)
            nsinit._traversable(root, target.parent)
    _bind_ro(job.tree, root / PORTSDIR.lstrip("/"))
    nsinit._mount(job.packages, str(root / PACKAGES.lstrip("/")), None, nsinit.MS_BIND)
    nsinit._mount("proc", str(root / "proc"), "proc", nsinit.MS_NOSUID | nsinit.MS_NODEV)
    nsinit._make_dev(root)
    import socket

    socket.sethostname(job.hostname)
    return root


def _bmake(job: Job, *args: str) -> list[str]:
    return ["bmake", "-m", f"{PORTSDIR}/Mk", "-C", f"{PORTSDIR}/{job.origin}", *args]


def _run_phases(job: Job, log: IO[str], status: IO[str]) -> str:
    """Each phase in the build root; the failed phase, or ""."""
    make_vars = [
        f"WRKDIRPREFIX={WRKDIRS}",
        f"DISTDIR={DISTFILES}",
        "LOCALBASE=/usr/local",
        *job.make_vars,
    ]
    for phase in job.phases:
        status.write(f"phase {phase}\n")
        status.flush()
        log.write(f"=======================<phase: {phase:<15}>============================\n")
        log.flush()
        try:
            if phase == "pkg-depends":  # poudriere installs the deps' packages first
                for name in job.installs:
                    log.write(f"===>   Installing {name.removesuffix('.pkg')}\n")
                    layout.install_package(Path(PACKAGES, "All", name), Path("/"))
            log.flush()
            rc = subprocess.run(
                _bmake(job, *make_vars, phase),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_ENV,
                check=False,
            ).returncode
            if rc == 0 and phase == "package":
                _package(job, make_vars)
        except (FarmError, OSError, ValueError, subprocess.CalledProcessError) as e:
            log.write(f"Error: {e}\n")
            rc = 1
        log.write("=" * 75 + "\n")
        if rc != 0:
            return phase
    return ""


def _package(job: Job, make_vars: Sequence[str]) -> None:
    out = subprocess.run(
        _bmake(job, *make_vars, "-V", "TMPPLIST", "-V", "STAGEDIR"),
        capture_output=True,
        text=True,
        env=_ENV,
        check=True,
    )
    tmpplist, stagedir = out.stdout.splitlines()[:2]
    lines = Path(tmpplist).read_text().splitlines()
    plist = [line for line in lines if line.strip() and not line.startswith("@")]
    Path(job.package_dir).mkdir(parents=True, exist_ok=True)
    dest = Path(job.package_dir, f"{job.pkgname}.pkg")
    write_package(dest, job.meta, Path(stagedir), plist)


def main(args: Sequence[str]) -> int:
    # PID 1 of a namespace ignores signals it has no handler for; the builder's SIGTERM must
    # end the build (the kernel then kills everything else in the namespace).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
    job: Job = pickle.loads(Path(args[0]).read_bytes())
    status = os.fdopen(job.status_fd, "w")
    try:
        root = _assemble(job)
        nsinit._pivot(root)
    except (OSError, nsinit.NsJailError) as e:
        print(f"Error: cannot make the clean build root: {e}", flush=True)
        status.write(f"failed {job.phases[0]}\n")
        return 1
    failed = _run_phases(job, sys.stdout, status)
    status.write(f"failed {failed}\n" if failed else "ok\n")
    status.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
