"""The Linux development host's jail(8): namespace jails rooted in a dataset (shell program).

Run as `python -m jailfarm.host.nsjail start|exec|stop|list ...` through a `Runner`, like
jail(8)/jexec(8) on FreeBSD. A jail is a PID-namespace init (`nsinit.init`, PID 1 of
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
import errno
import json
import os
import select
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jailfarm.host.nsinit import NsJailError, init

if TYPE_CHECKING:
    from collections.abc import Sequence

JAIL_NAME_MAX = 11


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
    ops = {"start": start, "_init": init, "exec": exec_, "stop": stop, "list": list_}
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
