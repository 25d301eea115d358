"""The init of a Linux dev-host jail: PID 1 of its namespaces (shell program, part of nsjail).

`nsjail start` runs `python -m jailfarm.host.nsjail _init ...` under unshare(1); this module
is that process: it bind-mounts the host's system directories and the Python environment
read-only into the root, mounts /proc and a small /dev, sets the hostname, pivots into the root
(dropping every other mount), reports readiness, then reaps children until told to stop.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


class NsJailError(Exception):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        src.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise NsJailError(f"mount {src} on {target} ({fstype or 'bind'}): {os.strerror(err)}")


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing any path whose resolution leaves root (symlinks planted in a tree)."""
    target = root / rel.lstrip("/")
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise NsJailError(f"{target} resolves to {resolved}, outside the jail root {root}")
    return target


def _bind(root: Path, host: str, jail_path: str, read_only: bool) -> None:
    host_path = Path(host)
    if not host_path.exists():
        return
    if host_path.is_symlink() and jail_path == host:
        # Merged-/usr hosts: /bin -> usr/bin. Mirror the link instead of binding through it.
        target = _inside(root, os.path.dirname(jail_path)) / host_path.name
        if not target.exists() and not target.is_symlink():
            target.symlink_to(os.readlink(host_path))
        return
    target = _inside(root, jail_path)
    if host_path.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    _traversable(root, target.parent)
    _mount(str(host_path), str(target), None, MS_BIND | MS_REC)
    if read_only:
        _mount("none", str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _pivot(root: Path) -> None:
    """Make `root` the jail's / and drop every other mount from the jail's namespace.

    unshare(1) copies the host's whole mount table, including the zfs-fuse mounts of every
    other worker's clone; a jail that kept those copies would keep those clones "busy" until it
    exited. pivot_root(".", ".") then a lazy unmount of the old root (pivot_root(2) NOTES)
    leaves only the jail's own tree.
    """
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise NsJailError(f"pivot_root: unsupported machine {os.uname().machine}")
    os.chdir(root)
    if _libc.syscall(number, b".", b".") != 0:
        raise NsJailError(f"pivot_root into {root}: {os.strerror(ctypes.get_errno())}")
    if _libc.umount2(b".", MNT_DETACH) != 0:
        raise NsJailError(f"detaching the old root: {os.strerror(ctypes.get_errno())}")
    os.chdir("/")


def _traversable(root: Path, directory: Path) -> None:
    """Let every user of the jail pass through the jail's directories leading to a bind mount
    (o+x, not o+r), as they can on the host: the jail's 0700 /root would otherwise hide a
    Python environment bound below it from the unprivileged worker user."""
    while directory != root and root in directory.parents:
        mode = directory.lstat().st_mode
        if not mode & 0o001:
            directory.chmod(stat.S_IMODE(mode) | 0o011)
        directory = directory.parent


def _make_dev(root: Path) -> None:
    dev = _inside(root, "/dev")
    dev.mkdir(exist_ok=True)
    _mount("tmpfs", str(dev), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m")
    for node in DEV_NODES:
        (dev / node).touch()
        _mount(f"/dev/{node}", str(dev / node), None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        (dev / name).symlink_to(f"/proc/self/fd/{i}")
    (dev / "fd").symlink_to("/proc/self/fd")
    (dev / "shm").mkdir()
    _mount("tmpfs", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    (dev / "pts").mkdir()
    _mount(
        "devpts",
        str(dev / "pts"),
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
    )
    (dev / "ptmx").symlink_to("pts/ptmx")


def _loopback_up() -> None:
    # SIOCSIFFLAGS on "lo" with IFF_UP|IFF_RUNNING: a private network namespace starts with lo down.
    import fcntl
    import struct

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x40))
    finally:
        sock.close()


# ---------------------------------------------------------------- init (PID 1 of the jail)


def init(args: argparse.Namespace) -> int:
    ready = os.fdopen(args.ready_fd, "w")
    try:
        host_pid = int(os.readlink("/proc/self"))  # still the host's /proc: our host PID
        root = Path(args.root).resolve()
        if not os.path.ismount(root):  # pivot_root needs the new root to be a mount point
            _mount(str(root), str(root), None, MS_BIND | MS_REC)
        for host_dir in args.system_dir:
            _bind(root, host_dir, host_dir, read_only=True)
        for spec in args.bind_ro:
            host, _, inside = spec.partition(":")
            _bind(root, host, inside or host, read_only=True)
        for spec in args.bind_rw:
            host, _, inside = spec.partition(":")
            _bind(root, host, inside or host, read_only=False)
        proc = _inside(root, "/proc")
        proc.mkdir(exist_ok=True)
        _mount("proc", str(proc), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _make_dev(root)
        tmp = _inside(root, "/tmp")
        if not tmp.exists():
            tmp.mkdir()
            tmp.chmod(0o1777)
        socket.sethostname(args.hostname)
        if args.private_network:
            _loopback_up()
        _pivot(root)
        inode = os.stat("/proc/self/ns/pid").st_ino
    except Exception as e:
        ready.write(f"error {e}\n")
        ready.close()
        return 1
    ready.write(f"ok {host_pid} {inode}\n")
    ready.close()
    return _reap_until_stopped(args.grace)


def _reap_until_stopped(grace: float) -> int:
    wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    while True:
        _reap()
        info = signal.sigtimedwait(wanted, 5.0)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            break
    # jail -r: ask everything to stop, give it the grace period, then leave; the kernel
    # SIGKILLs whatever is left when PID 1 exits.
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _reap():
            return 0
        signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    return 0


def _reap() -> bool:
    """Reap finished children; True while some child is still alive."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
