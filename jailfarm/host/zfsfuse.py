"""The zfs-fuse daemon and file-backed pools of the Linux development host (shell).

Facts (linux-dev-host.md, re-measured): `zfs-fuse --pidfile F` forks into the background and
serves /run/zfs/zfs_socket; it silently refuses to start while a stale pidfile exists; `zpool
create -m MOUNTPOINT NAME /abs/file` makes a pool on a sparse file; after a daemon restart the
pool comes back with `zpool import -d DIR NAME`. The daemon is stopped by the PID it wrote.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import task

from jailfarm.cmd import Cmd, Result
from jailfarm.errors import FarmError
from jailfarm.names import DATASET

if TYPE_CHECKING:
    from pathlib import Path

    from jailfarm.runner import Runner

NOT_RUNNING = "Please make sure that the zfs-fuse daemon is running"


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its parent is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class ZfsFuse:
    """Controls one zfs-fuse daemon; `started` is True only if this object started it, so
    only that daemon is ever stopped by us."""

    runner: Runner
    pidfile: Path
    clock: Any = None
    started: bool = False

    def __post_init__(self) -> None:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor

    async def answering(self) -> bool:
        result: Result = await self.runner.run(
            Cmd(("zpool", "list", "-H", "-o", "name"), timeout=30)
        )
        return result.ok

    async def ensure_running(self, timeout: float = 15.0) -> None:
        """Start the daemon unless one already answers on the socket."""
        if await self.answering():
            return
        pid = _read_pid(self.pidfile)
        if pid is not None and not pid_alive(pid):
            self.pidfile.unlink()  # zfs-fuse will not start over a stale pidfile
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        (
            await self.runner.run(Cmd(("zfs-fuse", "--pidfile", str(self.pidfile)), timeout=30))
        ).check()
        self.started = True
        for _ in range(int(timeout / 0.1)):
            if await self.answering():
                return
            await task.deferLater(self.clock, 0.1, lambda: None)
        raise FarmError(
            f"zfs-fuse started (pidfile {self.pidfile}) but does not answer on "
            "/run/zfs/zfs_socket; see syslog, or run `zfs-fuse -n` by hand"
        )

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop the daemon this object started (by its PID), waiting until it is gone."""
        if not self.started:
            return
        pid = _read_pid(self.pidfile)
        if pid is None:
            return
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
        for _ in range(int(timeout / 0.1)):
            if not pid_alive(pid):
                break
            await task.deferLater(self.clock, 0.1, lambda: None)
        else:
            raise FarmError(f"zfs-fuse (pid {pid}) did not stop within {timeout}s")
        self.pidfile.unlink(missing_ok=True)
        self.started = False


async def pool_exists(runner: Runner, pool: str) -> bool:
    result: Result = await runner.run(
        Cmd(("zpool", "list", "-H", "-o", "name", DATASET.check(pool)))
    )
    return result.ok


async def ensure_pool(runner: Runner, pool: str, image: Path, size: int, mountpoint: str) -> bool:
    """Make the file-backed pool exist (import it, or create it); True if it was created."""
    DATASET.check(pool)
    if "/" in pool:
        raise FarmError(f"pool name {pool!r} may not contain '/'")
    if await pool_exists(runner, pool):
        return False
    image = image.resolve()
    if image.exists():
        result: Result = await runner.run(Cmd(("zpool", "import", "-d", str(image.parent), pool)))
        if result.ok:
            return False
        raise FarmError(
            f"{image} exists but pool {pool} cannot be imported from it: "
            f"{result.err.strip()}; remove the file to start afresh"
        )
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    result = await runner.run(Cmd(("zpool", "create", "-m", mountpoint, pool, str(image))))
    if not result.ok:
        image.unlink(missing_ok=True)
        result.check()
    return True


async def destroy_pool(
    runner: Runner, pool: str, image: Path | None, clock: Any = None, attempts: int = 8
) -> None:
    """Destroy the pool (forced: its datasets are ours) and its image file. Like a dataset, a
    just-used pool may answer "pool is busy" for a moment; retry with growing delays."""
    if clock is None:
        from twisted.internet import reactor as clock
    for attempt in range(attempts):
        if not await pool_exists(runner, pool):
            break
        result: Result = await runner.run(Cmd(("zpool", "destroy", "-f", DATASET.check(pool))))
        if result.ok:
            break
        if "busy" not in result.err or attempt == attempts - 1:
            result.check()
        await task.deferLater(clock, 0.05 * 2**attempt, lambda: None)
    if image is not None:
        image.unlink(missing_ok=True)
