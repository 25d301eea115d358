"""A worker jail's life: start it for a build, tear it down after (shell, through the platform).

`start_worker_jail` and `teardown_worker_jail` are what `JailLatentWorker` runs; they take the
platform, so the FreeBSD command sequence is tested as golden argv with a FakeRunner and the
Linux one for real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import task
from twisted.logger import Logger

from jailfarm.errors import CommandFailed, FarmError
from jailfarm.host.base import WORKER_USER
from jailfarm.workers import layout, workerplan
from jailfarm.workers.template import current_snapshot

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig
    from jailfarm.host.platform import HostPlatform

log = Logger()
PACKAGES_WAIT = 40  # polls, 0.25 s apart


async def start_worker_jail(
    platform: HostPlatform,
    cfg: FarmConfig,
    name: str,
    host: str,
    master: tuple[str, int],
    password: str,
    buildid: int | None,
    now: float,
) -> None:
    """Space guard, clone with lease, buildbot.tac, jail, buildbot-worker: raises `FarmError`
    (or `CommandFailed`/`JailError`, both FarmErrors) with the reason on any failure."""
    zfs, jails = platform.zfs, platform.jails
    # A leftover of this worker (a master killed mid-build) would block the clone.
    await teardown_worker_jail(platform, cfg, name, fast=True)
    available = await zfs.available(cfg.zfs.root)
    if available < cfg.zfs.reserve:
        raise FarmError(workerplan.below_reserve(cfg, host, available))
    snapshot = await current_snapshot(zfs, cfg)
    clone = layout.clone_dataset(cfg, name)
    await zfs.clone(snapshot, clone, workerplan.lease(cfg, name, host, buildid, now))
    info = await zfs.info(clone)
    if info is None or not info.mountpoint or not info.mounted:
        # Never write the password into whatever filesystem holds an unmounted mountpoint.
        raise FarmError(f"clone {clone} is not mounted; not starting a worker on it")
    packages = await packages_dataset(platform, cfg)
    for cmd in workerplan.packages_dirs(platform.name, info.mountpoint, packages):
        (await jails.runner.run(cmd)).check()
    tac = workerplan.worker_tac(
        master[0], master[1], name, password, workerplan.tool_dirs(platform.name)
    )
    for cmd in workerplan.write_worker_files(info.mountpoint, tac):
        (await jails.runner.run(cmd)).check()
    await jails.start(workerplan.jail_spec(cfg, name, info.mountpoint, packages, platform.name))
    started = await jails.exec(
        name, workerplan.start_worker_argv(platform.name), user=WORKER_USER, timeout=60
    )
    if not started.ok:
        detail = (started.err or started.out).strip()[-800:]
        raise FarmError(f"buildbot-worker did not start in jail {name}: {detail}")
    log.info(
        "worker jail {name} started from {snap} for build {b}", name=name, snap=snapshot, b=buildid
    )


async def packages_dataset(platform: HostPlatform, cfg: FarmConfig) -> str:
    """The jail host's packages dataset (made on first use); its mountpoint."""
    zfs, dataset = platform.zfs, layout.packages_dataset(cfg)
    info = await zfs.info(dataset, ())
    if info is None:
        try:
            await zfs.create(dataset)
        except CommandFailed:
            pass  # another worker is making it right now: wait for it below
        info = await zfs.info(dataset, ())
    # Two workers starting together: the other one's dataset can exist a moment before it
    # is mounted, and its create fails here with "dataset already exists".
    for _ in range(PACKAGES_WAIT):
        if info is not None and info.mounted and info.mountpoint:
            return info.mountpoint
        await task.deferLater(zfs.clock, 0.25, lambda: None)
        info = await zfs.info(dataset, ())
    raise FarmError(f"{dataset} is missing or not mounted; mount it with `zfs mount -a`")


async def teardown_worker_jail(
    platform: HostPlatform, cfg: FarmConfig, name: str, fast: bool
) -> None:
    """Remove the jail (grace period unless `fast`), unmount what it left below its root,
    destroy the clone (busy retries), and check that nothing is left. Idempotent. The clone's
    owner is read first: a clone of another farm (and its jail) is never touched."""
    zfs, jails = platform.zfs, platform.jails
    clone = layout.clone_dataset(cfg, name)
    info = await zfs.info(clone, layout.LEASE_PROPERTIES)
    if info is not None and info.user.get(layout.OWNER) != cfg.name:
        raise FarmError(
            f"{clone} belongs to {info.user.get(layout.OWNER)!r}, not to this farm "
            f"({cfg.name!r}); two farms must not share a prefix on one jail host"
        )
    if any(j.name == name for j in await jails.list()):
        await jails.remove(name, timeout=2 if fast else 10)
    if info is not None:
        if info.mountpoint:
            await jails.unmount_below(info.mountpoint)
        await zfs.destroy(clone)
    still_jailed = any(j.name == name for j in await jails.list())
    if still_jailed or await zfs.exists(clone):
        what = f"jail {name}" if still_jailed else clone
        raise FarmError(f"worker {name}: teardown left {what}; the reaper will retry")
