"""The smoke job: one worker-jail life cycle on the configured host, narrated (adapter).

Until the farm's own jobs exist this is the README's main command: clone a template, start a
worker jail from the clone with its lease properties, run commands in it (and in a nested
jail, as poudriere would), tear it down and show that nothing is left. It removes everything
it created, including the zfs-fuse pool and daemon on the Linux dev host.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from jailfarm.errors import FarmError
from jailfarm.host import zfsfuse
from jailfarm.host.base import JailSpec
from jailfarm.host.linux import python_dirs
from jailfarm.host.platform import make_platform
from jailfarm.host.thinroot import populate
from jailfarm.workers import layout, workerplan

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig
    from jailfarm.runner import Runner

Say = Callable[[str], None]


class Smoke:
    def __init__(self, cfg: FarmConfig, runner: Runner, say: Say, template: str | None) -> None:
        self.cfg, self.runner, self.say = cfg, runner, say
        self.platform = make_platform(cfg, runner)
        self.template = template
        self.undo: list[tuple[str, Callable[[], object]]] = []
        self.t0 = time.monotonic()

    def step(self, text: str) -> None:
        self.say(f"[{time.monotonic() - self.t0:6.2f}s] {text}")

    async def run(self) -> None:
        try:
            snapshot = await self._prepare()
            await self._cycle(snapshot)
        finally:
            await self._undo()

    async def _prepare(self) -> str:
        cfg, zfs = self.cfg, self.platform.zfs
        if self.template:
            return self.template
        if cfg.platform == "freebsd":
            raise FarmError(
                "on FreeBSD, give --template POOL/...@SNAP: a worker template "
                "snapshot (templates are built by `jailfarm template build`)"
            )
        daemon = zfsfuse.ZfsFuse(self.runner, Path(self.platform.run_dir) / "zfs-fuse.pid")
        await daemon.ensure_running()
        if daemon.started:
            self.step("started the zfs-fuse daemon")
            self.undo.append(("stopped the zfs-fuse daemon", daemon.stop))
        image = Path(cfg.zfs.pool_file or os.path.join(cfg.state_dir, "pool.img"))
        created = await zfsfuse.ensure_pool(
            self.runner,
            cfg.zfs.pool,
            image,
            cfg.zfs.pool_size or (2 << 30),
            cfg.zfs.mountpoint or "/jf",
        )
        self.step(f"pool {cfg.zfs.pool} {'created on ' + str(image) if created else 'imported'}")
        if created:
            self.undo.append(
                (
                    f"destroyed pool {cfg.zfs.pool} and {image}",
                    lambda: zfsfuse.destroy_pool(self.runner, cfg.zfs.pool, image),
                )
            )
        tpl = f"{cfg.zfs.root}/smoke-tpl"
        if await zfs.exists(tpl):
            raise FarmError(
                f"{tpl} exists: a previous smoke run did not finish; "
                f"remove it with `zfs destroy -r {tpl}`"
            )
        await zfs.create(tpl, parents=True)
        self.undo.append((f"destroyed template {tpl}", lambda: zfs.destroy(tpl, recursive=True)))
        info = await zfs.info(tpl)
        assert info is not None and info.mountpoint
        populate(Path(info.mountpoint))
        await zfs.snapshot(f"{tpl}@1")
        self.step(f"template {tpl}@1: a thin root ({info.mountpoint})")
        return f"{tpl}@1"

    async def _cycle(self, snapshot: str) -> None:
        cfg, zfs, jails = self.cfg, self.platform.zfs, self.platform.jails
        name = f"{cfg.prefix}smoke"
        clone = layout.clone_dataset(cfg, name)
        if not await zfs.exists(layout.jails_dataset(cfg)):
            await zfs.create(layout.jails_dataset(cfg), parents=True)
        lease = workerplan.lease(cfg, name, "local", None, time.time())
        lease[layout.BUILD] = "smoke"
        available = await zfs.available(cfg.zfs.root)
        if available < cfg.zfs.reserve:
            raise FarmError(
                f"pool {cfg.zfs.pool}: {available} bytes available, below the "
                f"reserve of {cfg.zfs.reserve}; not cloning"
            )
        t = time.monotonic()
        await zfs.clone(snapshot, clone, lease)
        info = await zfs.info(clone)
        assert info is not None and info.mountpoint
        self.step(
            f"cloned {snapshot} -> {clone} in {1000 * (time.monotonic() - t):.0f} ms, "
            f"lease {dict(info.user)}"
        )
        spec = JailSpec(
            name=name,
            path=info.mountpoint,
            hostname=f"{name}.jailfarm",
            profile="worker",
            children_max=2 * (cfg.workers.builders + 1),
        )
        t = time.monotonic()
        started = await jails.start(spec)
        self.step(
            f"jail {name} started in {1000 * (time.monotonic() - t):.0f} ms "
            f"(id {started.jid}, root {started.path})"
        )
        try:
            for argv in (
                ["uname", "-sr"],
                ["hostname"],
                ["id"],
                [sys.executable, "-c", "import sys; print('python', sys.version.split()[0])"],
            ):
                out = (await jails.exec(name, argv, timeout=30)).check().out.strip()
                self.step(
                    f"jail {name}$ {' '.join(argv[:1] if argv[0] == sys.executable else argv)}"
                    f" -> {out}"
                )
            if cfg.platform == "linux-dev":
                await self._nested(name)
        finally:
            t = time.monotonic()
            await jails.remove(name, timeout=10)
            self.step(f"jail {name} removed in {1000 * (time.monotonic() - t):.0f} ms")
            await zfs.destroy(clone)
            self.step(f"clone {clone} destroyed")
        left = [d.name for d in await zfs.list(cfg.zfs.root) if d.name == clone]
        alive = [j.name for j in await jails.list() if j.name == name]
        if left or alive:
            raise FarmError(f"left behind: datasets {left}, jails {alive}")
        self.step("verified: no clone in `zfs get -r`, no jail in the jail list")

    async def _nested(self, name: str) -> None:
        py = sys.executable
        binds = " ".join(f"--bind-ro {d}" for d in python_dirs())
        script = (
            "set -e; mkdir -p /build/etc; cp /etc/passwd /etc/group /build/etc/; "
            f"{py} -m jailfarm.host.nsjail start --name b01 --root /build --hostname b01.{name} "
            f"--state-dir /var/run/jf --system-dir /usr --system-dir /bin --system-dir /lib "
            f"--system-dir /lib64 {binds} >/dev/null; "
            f"{py} -m jailfarm.host.nsjail exec --name b01 --state-dir /var/run/jf -- hostname"
        )
        out = (await self.platform.jails.exec(name, ["sh", "-c", script], timeout=60)).check()
        self.step(
            f"nested jail inside {name}: hostname {out.out.strip()} (as poudriere's "
            "build jails are nested in the worker)"
        )

    async def _undo(self) -> None:
        while self.undo:
            text, action = self.undo.pop()
            result = action()
            if hasattr(result, "__await__"):
                await result
            self.step(text)


async def smoke(cfg: FarmConfig, runner: Runner, say: Say, template: str | None = None) -> None:
    await Smoke(cfg, runner, say, template).run()
