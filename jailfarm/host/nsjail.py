"""The Linux development host's jail(8): namespace jails rooted in a dataset (shell program).

Run as `python -m jailfarm.host.nsjail start|exec|stop|list ...` through a `Runner`, like
jail(8)/jexec(8) on FreeBSD. A jail is a PID-namespace init (this module's `_init`, PID 1 of
new pid, mount, uts and ipc namespaces, optionally net) made with unshare(1). The init
bind-mounts the host's system directories and the Python environment read-only into the root,
mounts a fresh /proc and a small /dev, sets the hostname, pivots into the root (dropping every
other mount) and then only reaps children until told to stop. `exec` enters it with nsenter(1)
after checking that the recorded PID still is that jail (same pid-namespace inode), so a
recycled PID is never entered. `stop` is `jail -r` (SIGTERM to everything, grace period)
escalating to `jail -R` (SIGKILL of the init: the kernel kills every process of the namespace,
and its mounts vanish with it); it then checks that no process of the namespace is left.
Facts: shared/spec/linux-dev-host.md.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import select
import shutil
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

JAIL_NAME_MAX = 11
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEFAULT_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc/alternatives")


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


def _pidns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _ns_members(inode: int) -> list[int]:
    """Host PIDs of every live process in the pid namespace `inode` (or nested below it:
    a nested jail's processes are in a child namespace, so they are found by ancestry)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _pidns(entry) == inode:
            found.append(int(entry))
    return found


def _all_in_ns_tree(init_pid: int) -> list[int]:
    """Every live process that descends from `init_pid` (the jail and any nested jails)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [init_pid]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


# ---------------------------------------------------------------- init (PID 1 of the jail)


def _init(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------- host-side commands


def _state(state_dir: str, name: str) -> Path:
    if not name or len(name) > JAIL_NAME_MAX or not all(c.isalnum() or c in "_-" for c in name):
        raise NsJailError(f"invalid jail name {name!r}")
    return Path(state_dir) / name


def _load(state_dir: str, name: str) -> dict[str, object] | None:
    try:
        with open(_state(state_dir, name) / "state.json") as f:
            data: dict[str, object] = json.load(f)
            return data
    except FileNotFoundError:
        return None


def _alive(state: dict[str, object]) -> bool:
    return _pidns(str(state["pid"])) == state["pidns"]


def _unshare_argv(args: argparse.Namespace, root: Path, ready_fd: int) -> list[str]:
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    flags = "--pid --fork --kill-child --mount --uts --ipc --propagation private".split()
    argv = [unshare, *flags, *(["--net"] if args.private_network else []), "--"]
    argv += [sys.executable, "-m", "jailfarm.host.nsjail", "_init", "--ready-fd", str(ready_fd)]
    argv += ["--root", str(root), "--hostname", args.hostname, "--grace", str(args.grace)]
    for option, values in (
        ("--system-dir", args.system_dir),
        ("--bind-ro", args.bind_ro),
        ("--bind-rw", args.bind_rw),
    ):
        for value in values:
            argv += [option, value]
    return argv + (["--private-network"] if args.private_network else [])


def _spawn_detached(argv: list[str], ready_fd: int, console_path: Path) -> int:
    """Fork; the child leaves our session and becomes unshare(1), with stdout and stderr on the
    console log. The jail outlives this command, as a `jail -c persist` jail does."""
    console = os.open(console_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            os.set_inheritable(ready_fd, True)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(console, 1)
            os.dup2(console, 2)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(console)
    return child


def start(args: argparse.Namespace) -> int:
    sdir = _state(args.state_dir, args.name)
    old = _load(args.state_dir, args.name)
    if old is not None and _alive(old):
        raise NsJailError(f"jail {args.name} already exists (pid {old['pid']})")
    root = Path(args.root)
    if not root.is_dir():
        raise NsJailError(f"jail root {root} is not a directory")
    root = root.resolve()
    sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    rfd, wfd = os.pipe()
    child = _spawn_detached(_unshare_argv(args, root, wfd), wfd, sdir / "console.log")
    os.close(wfd)
    answer = _read_ready(rfd, args.timeout)
    if not answer.startswith("ok "):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(child, 0)
        detail = answer.removeprefix("error ").strip() or "no answer from the jail's init"
        log = (sdir / "console.log").read_text(errors="replace")[-1000:]
        raise NsJailError(f"jail {args.name} did not start: {detail}\n{log}".rstrip())
    _, pid, inode = answer.split()
    state = {
        "name": args.name, "pid": int(pid), "pidns": int(inode), "unshare_pid": child,
        "root": str(root), "hostname": args.hostname,
        "private_network": bool(args.private_network), "started": time.time(),
    }  # fmt: skip
    tmp = sdir / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.rename(sdir / "state.json")
    print(json.dumps(state))
    return 0


def _read_ready(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data.decode(errors="replace")


def exec_(args: argparse.Namespace) -> int:
    state = _load(args.state_dir, args.name)
    if state is None or not _alive(state):
        raise NsJailError(f"jail {args.name} is not running")
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    argv = [nsenter, "--target", str(state["pid"]), "--pid", "--mount", "--uts", "--ipc"]
    if state.get("private_network"):
        argv.append("--net")
    # Like `jexec -l [-U user]`: a clean login environment from the jail's own passwd.
    argv += ["--root", "--wd", "--", "/usr/bin/setpriv"]
    if args.user:
        uid, gid = _lookup_user(int(str(state["pid"])), args.user)
        argv += ["--reuid", str(uid), "--regid", str(gid), "--init-groups"]
    argv += ["--reset-env", "--", "/usr/bin/env", "--", *args.env, *args.command]
    os.execv(nsenter, argv)
    return 127


def _lookup_user(pid: int, user: str) -> tuple[int, int]:
    """uid and gid of `user` in the jail's own /etc/passwd (read through the init's root)."""
    try:
        with open(f"/proc/{pid}/root/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 4 and fields[0] == user:
                    return int(fields[2]), int(fields[3])
    except (OSError, ValueError) as e:
        raise NsJailError(f"cannot read the jail's /etc/passwd: {e}") from e
    raise NsJailError(f"no user {user!r} in the jail's /etc/passwd")


def stop(args: argparse.Namespace) -> int:
    sdir = _state(args.state_dir, args.name)
    state = _load(args.state_dir, args.name)
    if state is None:
        shutil.rmtree(sdir, ignore_errors=True)
        return 0
    pid, inode = int(str(state["pid"])), int(str(state["pidns"]))
    how = "gone already"
    if _alive(state):
        how = "stopped"
        if not args.force:
            os.kill(pid, signal.SIGTERM)
        if args.force or not _wait_gone(pid, inode, args.timeout):
            how = "killed"  # jail -R
            os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, inode, 5.0):
                raise NsJailError(f"jail {args.name}: init {pid} survived SIGKILL")
    left = _ns_members(inode)
    if left:
        raise NsJailError(f"jail {args.name}: processes still in its namespace: {left}")
    shutil.rmtree(sdir, ignore_errors=True)
    print(json.dumps({"name": args.name, "result": how}))
    return 0


def _wait_gone(pid: int, inode: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _pidns(pid) != inode and not _ns_members(inode):
            return True
        time.sleep(0.02)
    return False


def list_(args: argparse.Namespace) -> int:
    jails = []
    base = Path(args.state_dir)
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        state = _load(args.state_dir, entry.name)
        if state is not None:
            jails.append({**state, "alive": _alive(state)})
    print(json.dumps(jails))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jailfarm.host.nsjail")
    sub = p.add_subparsers(dest="op", required=True)
    s = sub.add_parser("start")
    s.add_argument("--name", required=True)
    s.add_argument("--state-dir", required=True)
    s.add_argument("--timeout", type=float, default=15.0)
    i = sub.add_parser("_init")
    i.add_argument("--ready-fd", type=int, required=True)
    for shared in (s, i):  # what `start` hands on to the jail's init
        shared.add_argument("--root", required=True)
        shared.add_argument("--hostname", required=True)
        shared.add_argument("--system-dir", action="append", default=[])
        shared.add_argument("--bind-ro", action="append", default=[])
        shared.add_argument("--bind-rw", action="append", default=[])
        shared.add_argument("--private-network", action="store_true")
        shared.add_argument("--grace", type=float, default=10.0)
    e = sub.add_parser("exec")
    e.add_argument("--name", required=True)
    e.add_argument("--state-dir", required=True)
    e.add_argument("--user")
    e.add_argument("--env", action="append", default=[])
    e.add_argument("command", nargs="+")
    t = sub.add_parser("stop")
    t.add_argument("--name", required=True)
    t.add_argument("--state-dir", required=True)
    t.add_argument("--timeout", type=float, default=10.0)
    t.add_argument("--force", action="store_true")
    ls = sub.add_parser("list")
    ls.add_argument("--state-dir", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ops = {"start": start, "_init": _init, "exec": exec_, "stop": stop, "list": list_}
    try:
        return ops[args.op](args)
    except NsJailError as e:
        print(f"nsjail: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno == errno.EPERM:
            print(f"nsjail: {e} (jails need root)", file=sys.stderr)
        else:
            print(f"nsjail: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
