"""The reaper at work: `gather` surveys and `reap` acts on one jail host (shell),
`ReaperService` sweeps from the master and `reap_command` is `jailfarm reap` (adapters). What
goes and why is decided by `reapplan`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from buildbot import config as bbconfig
from buildbot.util.service import BuildbotService
from buildbot.worker.latent import States
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from jailfarm.config import load_farm
from jailfarm.errors import FarmError
from jailfarm.host.platform import host_platforms
from jailfarm.runner import LocalRunner
from jailfarm.workers.layout import BUILD, LEASE_PROPERTIES, OWNER, jails_dataset
from jailfarm.workers.reapplan import (
    NOT_A_BUILD,
    RUNNING,
    ReapAction,
    ReapReport,
    Survey,
    build_state_of,
    in_order,
    plan_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from jailfarm.config import FarmConfig
    from jailfarm.host.platform import HostPlatform
    from jailfarm.host.zfs import Dataset
    from jailfarm.runner import Runner

log = Logger()

# Latent worker states in which the worker's jail is being made, used or torn down by the
# master itself (buildbot worker/latent.py `States`): the reaper keeps out of its way.
_BUSY_STATES = frozenset(
    {
        States.SUBSTANTIATING,
        States.SUBSTANTIATING_STARTING,
        States.SUBSTANTIATED,
        States.INSUBSTANTIATING,
        States.INSUBSTANTIATING_SUBSTANTIATING,
    }
)


def busy_workers(workers: Iterable[Any]) -> frozenset[str]:
    """Names of the master's workers whose jail the master is making, using or tearing down:
    a latent worker in one of `_BUSY_STATES`, or any worker with a live connection."""
    return frozenset(
        w.workername
        for w in workers
        if getattr(w, "state", None) in _BUSY_STATES or getattr(w, "conn", None) is not None
    )


# ---------------------------------------------------------------------- executor (shell)


@dataclass
class _Tally:
    done: list[ReapAction] = field(default_factory=list)
    failed: list[tuple[ReapAction, str]] = field(default_factory=list)
    left: list[ReapAction] = field(default_factory=list)
    stuck: set[str] = field(default_factory=set)


def _changed(action: ReapAction, info: Dataset | None) -> str | None:
    """Why `action` must not run any more, or None: its clone's lease is not the planned one
    (a new instance of the worker took the name), or the clone is gone (for a jail: the jail
    now belongs to something else)."""
    if action.clone is None:
        return None
    if info is None:
        return None if action.kind == "destroy_clone" else f"{action.clone} is gone meanwhile"
    if tuple(sorted(info.user.items())) != action.lease:
        return f"the lease of {action.clone} changed meanwhile"
    return None


async def _run_one(platform: HostPlatform, action: ReapAction, tally: _Tally) -> str | None:
    """Run one destructive action; the reason it was skipped, or None. Raises `FarmError`."""
    if action.kind == "destroy_clone" and action.jail in tally.stuck:
        raise FarmError(f"jail {action.jail} could not be removed, so its clone stays")
    info = await platform.zfs.info(action.clone, LEASE_PROPERTIES) if action.clone else None
    changed = _changed(action, info)
    if changed is not None:
        return changed
    if action.kind == "remove_jail":
        await platform.jails.remove(action.target)
    else:
        if info is not None and info.mountpoint:
            # What the removed jail left mounted below its root keeps the clone busy.
            await platform.jails.unmount_below(info.mountpoint)
        # -r: the clone's own snapshots and children (never -R: other clones are not ours).
        await platform.zfs.destroy(action.target, recursive=True)
    return None


async def reap(
    platform: HostPlatform,
    actions: Iterable[ReapAction],
    say: Callable[[str], None],
    dry_run: bool = False,
    keep: Callable[[str], bool] | None = None,
) -> ReapReport:
    """Run a plan on one host: jail removals before clone destroys, each action logged once
    (a `say` line and an info event). A failing action is reported and the sweep goes on; a
    clone whose jail could not be removed is not destroyed. `keep(jail)` is asked right
    before each destructive action (the service: "is that worker busy now?"). A dry run runs
    no command at all."""
    tally = _Tally()
    for action in in_order(actions):
        skipped: str | None = None
        if not action.destructive:
            skipped = action.reason
        elif not dry_run and keep is not None and keep(action.jail):
            skipped = f"worker {action.jail} became busy"
        elif not dry_run:
            try:
                skipped = await _run_one(platform, action, tally)
            except FarmError as e:
                if action.kind == "remove_jail":
                    tally.stuck.add(action.jail)
                tally.failed.append((action, str(e)))
                say(action.failure(str(e)))
                log.warn("reaper: {line}", line=action.failure(str(e)))
                continue
        if skipped is not None:
            left = action if not action.destructive else action.left_alone(skipped)
            tally.left.append(left)
            say(left.line())
            log.info("reaper: {line}", line=left.line())
            continue
        tally.done.append(action)
        say(action.line(dry_run))
        log.info("reaper: {line}", line=action.line(dry_run))
    return ReapReport(dry_run, tuple(tally.done), tuple(tally.failed), tuple(tally.left))


async def gather(platform: HostPlatform, cfg: FarmConfig) -> Survey:
    """List the running jails, then the clones directly below `<root>/jails` with their
    leases. Jails first: a worker clones before it starts its jail and removes its jail
    before it destroys its clone, so a jail seen here has its clone in the later listing
    unless it was really orphaned."""
    jails = tuple(await platform.jails.list())
    parent = jails_dataset(cfg)
    listed = await platform.zfs.list(parent, LEASE_PROPERTIES, depth=1)
    mountpoint = next((d.mountpoint for d in listed if d.name == parent and d.mounted), None)
    datasets = tuple(d for d in listed if d.name != parent and "@" not in d.name)
    return Survey(datasets, jails, mountpoint)


async def reap_command(
    cfg: FarmConfig,
    runner: Runner,
    dry_run: bool,
    everything: bool,
    say: Callable[[str], None],
) -> int:
    """`jailfarm reap [--dry-run] [--all]` over every jail host of the farm.

    Without a master to ask there are no build states: only expired leases are reaped, unless
    `everything` (`--all`, as `jailfarm down` does). The master's reaper also removes the
    jails of finished or unknown builds. One line per action, a summary per host; exit 1 if
    any action failed or a host could not be surveyed.
    """
    platforms = host_platforms(cfg, runner)
    rc = 0
    for host, platform in platforms.items():
        tell = say if len(platforms) == 1 else _prefixed(say, host)
        try:
            survey = await gather(platform, cfg)
        except FarmError as e:
            tell(f"cannot survey jail host {host}: {e}")
            rc = 1
            continue
        actions = plan_for(cfg, survey, time.time(), None, everything=everything)
        report = await reap(platform, actions, tell, dry_run)
        tell(report.summary())
        rc = rc or (0 if report.ok else 1)
    return rc


def _prefixed(say: Callable[[str], None], host: str) -> Callable[[str], None]:
    return lambda line: say(f"{host}: {line}")


# ---------------------------------------------------------------------- service (adapter)


class ReaperService(BuildbotService):  # type: ignore[misc]  # buildbot is untyped
    """Sweeps every jail host at master start and every `interval` seconds (for
    `c['services']`): survey, ask the data API about each build a lease names, plan with the
    master's busy workers, reap. Never raises out of the loop; sweeps never overlap.
    `runner` is for tests (FakeRunner); by default a `LocalRunner` on the master's reactor."""

    name = "jailfarm-reaper"
    log = Logger()

    def checkConfig(
        self, farm_toml: str, interval: float = 60, runner: Runner | None = None
    ) -> None:
        if not isinstance(farm_toml, str) or not farm_toml:
            bbconfig.error(f"{self.name}: farm_toml must be the path of farm.toml")
        if not isinstance(interval, int | float) or interval <= 0:
            bbconfig.error(f"{self.name}: interval must be a positive number of seconds")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = defer.DeferredLock()
        self._loop: LoopingCall | None = None
        self._noted: set[str] = set()
        self.last_reports: list[ReapReport] = []  # of the latest sweep, for status views

    def reconfigService(
        self, farm_toml: str, interval: float = 60, runner: Runner | None = None
    ) -> defer.Deferred[None]:
        self.cfg: FarmConfig = load_farm(farm_toml)
        self.interval = float(interval)
        self.runner: Runner = runner or LocalRunner(self.master.reactor)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            self._start_loop()
        return defer.succeed(None)

    def startService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        await super().startService()
        self._start_loop()

    def _start_loop(self) -> None:
        self._loop = LoopingCall(lambda: defer.ensureDeferred(self.sweep()))
        self._loop.clock = self.master.reactor
        # The first sweep runs now, at master start. sweep() never fails; the errback is for
        # a bug in the loop itself.
        done = self._loop.start(self.interval, now=True)
        done.addErrback(lambda f: self.log.failure("reaper loop stopped", failure=f))

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        async with self._lock:  # let a sweep in progress finish
            pass
        await super().stopService()

    async def sweep(self) -> list[ReapReport]:
        """One sweep over all jail hosts; logs and swallows any error (the next sweep retries)."""
        async with self._lock:
            try:
                self.last_reports = await self._sweep()
            except Exception:  # anything at all: the loop must go on (the next sweep retries)
                self.last_reports = []
                self.log.failure(
                    "reaper sweep failed; retrying in {interval} s", interval=self.interval
                )
            return self.last_reports

    def _busy(self) -> frozenset[str]:
        return busy_workers(self.master.workers.workers.values())

    async def _sweep(self) -> list[ReapReport]:
        surveys: dict[str, tuple[HostPlatform, Survey]] = {}
        for host, platform in host_platforms(self.cfg, self.runner, self.master.reactor).items():
            try:
                surveys[host] = (platform, await gather(platform, self.cfg))
            except FarmError as e:
                self.log.warn("reaper: cannot survey jail host {host}: {e}", host=host, e=str(e))
        leases = [d.user for _, s in surveys.values() for d in s.datasets]
        states = await self._build_states(leases)
        now = self.master.reactor.seconds()
        reports = []
        for platform, survey in surveys.values():
            actions = [
                a
                for a in plan_for(self.cfg, survey, now, states, self._busy())
                if a.destructive or a.line() not in self._noted
            ]
            self._noted.update(a.line() for a in actions if not a.destructive)
            if actions:
                reports.append(await reap(platform, actions, lambda _: None, keep=self._keep))
        return reports

    def _keep(self, jail: str) -> bool:
        return jail in self._busy()

    async def _build_states(self, leases: Iterable[Mapping[str, str]]) -> dict[str, str]:
        """The state of every build our leases name. Lease words that are not build ids
        (`smoke`, `none`) are not master builds: only their lease expiry ends them."""
        states: dict[str, str] = {}
        ours = {lease.get(BUILD, "") for lease in leases if lease.get(OWNER) == self.cfg.name}
        for build in sorted(ours - {""}):
            if not build.isdigit():
                states[build] = NOT_A_BUILD
                continue
            try:
                data = await self.master.data.get(("builds", int(build)))
            except Exception:
                # Not knowing is not "unknown": keep the clone until the data API answers.
                self.log.failure("reaper: cannot look up build {build}", build=build)
                states[build] = RUNNING
                continue
            state = build_state_of(data)
            if state is not None:
                states[build] = state
        return states
