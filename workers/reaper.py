"""The reaper: removes the farm's leftover worker jails and clones (ARCHITECTURE.md "Leases").

`plan_reap` is the pure core (what goes and why); `gather`/`reap` survey and act on one jail
host, `ReaperService` sweeps from the master and `reap_command` is `jailfarm reap`. Only what
is provably ours goes: a clone carrying our `jailfarm:owner`, a jail running from our clone.
"""

from __future__ import annotations

import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from buildbot import config as bbconfig
from buildbot.util.service import BuildbotService
from buildbot.worker.latent import States
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from jailfarm.config import load_farm
from jailfarm.errors import FarmError, InvalidName
from jailfarm.host.platform import host_platforms
from jailfarm.names import JAIL
from jailfarm.runner import LocalRunner
from jailfarm.workers.layout import BUILD, EXPIRES, LEASE_PROPERTIES, OWNER, jails_dataset

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from jailfarm.config import FarmConfig
    from jailfarm.host.base import JailInfo
    from jailfarm.host.platform import HostPlatform
    from jailfarm.host.zfs import Dataset
    from jailfarm.runner import Runner

log = Logger()

ActionKind = Literal["remove_jail", "destroy_clone", "leave"]
# Build states in `build_state`; an id that is absent is "unknown to this master".
FINISHED = "finished"
RUNNING = "running"
# A lease whose build is not a master build id (`smoke`, `none`): only its expiry ends it.
NOT_A_BUILD = "not-a-build"
# Plan and execution order: a jail is removed before its clone can be destroyed.
_ORDER: dict[str, int] = {"remove_jail": 0, "destroy_clone": 1, "leave": 2}
_VERBS = {
    "remove_jail": ("remove", "removed", "jail"),
    "destroy_clone": ("destroy", "destroyed", "clone"),
}
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
REAP_HELP = (
    "remove this farm's worker jails and clones whose lease expired (--all: every one, as "
    "`down` does); the master's reaper also removes those of finished or unknown builds"
)


@dataclass(frozen=True)
class ReapAction:
    """One decision of the reaper. `target` is a jail name (`remove_jail`) or a dataset
    (`destroy_clone`, `leave`); `jail` is the jail name it concerns. `lease` is the clone's
    lease as planned: the executor re-reads it and skips the action if it changed, because a
    worker name is reused as soon as its previous jail is gone."""

    kind: ActionKind
    target: str
    reason: str
    jail: str
    clone: str | None = None
    lease: tuple[tuple[str, str], ...] = ()

    @property
    def destructive(self) -> bool:
        return self.kind != "leave"

    def line(self, dry_run: bool = False) -> str:
        """What was done (or, in a dry run, would be), for the operator."""
        if self.kind == "leave":
            return f"{self.target}: {self.reason}, left alone"
        verb, done, what = _VERBS[self.kind]
        return f"{f'would {verb}' if dry_run else done} {what} {self.target}: {self.reason}"

    def failure(self, error: str) -> str:
        verb, _, what = _VERBS[self.kind]
        return f"FAILED to {verb} {what} {self.target} ({self.reason}): {error}"


def _lease_reason(
    lease: Mapping[str, str],
    now: float,
    build_state: Mapping[str, str] | None,
    busy: bool,
    everything: bool,
) -> str | None:
    """Why one of our clones goes, or None if it stays. Rule: an expired lease always ends
    it; a busy worker's clone is otherwise kept; without build knowledge (`None`, the CLI)
    only expiry counts."""
    if everything:
        return "farm going down"
    expires = _number(lease.get(EXPIRES))
    if expires is not None and expires < now:
        return f"lease expired {now - expires:.0f} s ago"
    if busy or build_state is None:
        return None
    build = lease.get(BUILD, "")
    state = build_state.get(build)
    if not build:
        reason: str | None = "its lease names no build"
    elif state is None:
        reason = f"build {build} unknown to this master"
    else:
        reason = f"build {build} finished" if state == FINISHED else None
    return reason


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _leaf(ds: Dataset, parent: str, prefix: str) -> str | None:
    """The jail name of a clone directly below `parent` that starts with `prefix`, else None."""
    head, sep, leaf = ds.name.partition(parent + "/")
    if head or not sep or "/" in leaf or "@" in leaf:
        return None
    return leaf if leaf.startswith(prefix) and _valid_jail(leaf) else None


def _valid_jail(name: str) -> bool:
    try:
        JAIL.check(name)
    except InvalidName:
        return False
    return True


def _clones(
    datasets: Iterable[Dataset], parent: str, prefix: str
) -> tuple[dict[str, Dataset], set[str]]:
    """Candidate clones by jail name, and the names listed more than once in any form (a
    confused listing: never touched)."""
    listed = list(datasets)
    seen = Counter(d.name for d in listed)
    clones: dict[str, Dataset] = {}
    twice: set[str] = set()
    for ds in listed:
        leaf = _leaf(ds, parent, prefix)
        if leaf is not None:
            clones[leaf] = ds
            if seen[ds.name] > 1:
                twice.add(leaf)
    return clones, twice


def _rooted(jail: JailInfo, where: str | None) -> bool:
    return where is not None and posixpath.normpath(jail.path) == posixpath.normpath(where)


def plan_reap(
    owner: str,
    prefix: str,
    datasets: Sequence[Dataset],
    jails: Sequence[JailInfo],
    now: float,
    build_state: Mapping[str, str] | None,
    busy: frozenset[str] = frozenset(),
    everything: bool = False,
    *,
    jails_dataset: str,
    jails_mountpoint: str | None = None,
) -> list[ReapAction]:
    """Decide what goes on one jail host: jail removals first, then clone destroys, then
    `leave` notes for what looks like ours but cannot be proven so.

    Considered: clones directly below `jails_dataset` and jails, both named `<prefix>...`.
    A clone owned by another farm is never touched, nor is a jail of the same name; an
    unowned clone is left alone with a note. Our clone goes when its lease expired, its build
    finished, its build is unknown (`build_state` has no entry) and its worker is not `busy`,
    or `everything`. A jail goes with its clone, and only if it runs from the clone's
    mountpoint. A jail without a clone goes (unless busy) only if it runs from
    `<jails_mountpoint>/<name>`. `build_state=None` means no master to ask (the CLI): only
    expired leases count, and jails without a clone are noted, not removed.
    """
    clones, twice = _clones(datasets, jails_dataset, prefix)
    running = {j.name: j for j in jails if j.name.startswith(prefix) and _valid_jail(j.name)}
    plan: list[ReapAction] = []
    for name in sorted(set(clones) | set(running)):
        ds, jail = clones.get(name), running.get(name)
        if name in twice:
            plan.append(ReapAction("leave", f"{jails_dataset}/{name}", "listed twice", name))
        elif ds is not None:
            reason = None
            if ds.user.get(OWNER) == owner:
                reason = _lease_reason(ds.user, now, build_state, name in busy, everything)
            plan += _clone_plan(owner, ds, jail, name, reason)
        elif jail is not None:
            where = posixpath.join(jails_mountpoint, name) if jails_mountpoint else None
            plan += _orphan_plan(jail, where, build_state, name in busy, everything)
    # sorted() is stable: per kind, the order of names stays.
    return sorted(plan, key=lambda a: _ORDER[a.kind])


def _clone_plan(
    owner: str, ds: Dataset, jail: JailInfo | None, name: str, reason: str | None
) -> list[ReapAction]:
    holder = ds.user.get(OWNER)
    if holder is None:
        return [ReapAction("leave", ds.name, "unowned", name)]
    if holder != owner or reason is None:
        return []  # another farm's (masters may share a jail host), or still in use
    if ds.type != "filesystem":  # a volume, say: nothing the farm makes there
        return [ReapAction("leave", ds.name, f"a {ds.type}, not a clone", name)]
    lease = tuple(sorted(ds.user.items()))
    destroy = ReapAction("destroy_clone", ds.name, reason, name, ds.name, lease)
    if jail is None:
        return [destroy]
    if not _rooted(jail, ds.mountpoint):
        why = f"runs from {jail.path}, not from its clone's mountpoint {ds.mountpoint}"
        return [ReapAction("leave", f"jail {name}", why, name)]
    return [ReapAction("remove_jail", name, reason, name, ds.name, lease), destroy]


def _orphan_plan(
    jail: JailInfo,
    where: str | None,
    build_state: Mapping[str, str] | None,
    busy: bool,
    everything: bool,
) -> list[ReapAction]:
    """A jail named like ours without a clone: no lease to go by. It goes only where a clone
    of ours would be mounted, and (the master being asked) not while its worker is busy."""
    name = jail.name
    if not everything and build_state is None:
        why = "a jail without a clone or lease (the master's reaper or --all removes it)"
        return [ReapAction("leave", f"jail {name}", why, name)]
    if not everything and busy:
        return []
    if not _rooted(jail, where):
        why = f"a jail without a clone, running from {jail.path}, not {where}"
        return [ReapAction("leave", f"jail {name}", why, name)]
    reason = "farm going down" if everything else "its clone is gone"
    return [ReapAction("remove_jail", name, reason, name)]


def build_state_of(build: Mapping[str, Any] | None) -> str | None:
    """A build as the data API returns it -> its state for `plan_reap` (None: unknown)."""
    if build is None:
        return None
    return FINISHED if build.get("complete") else RUNNING


def busy_workers(workers: Iterable[Any]) -> frozenset[str]:
    """Names of the master's workers whose jail the master is making, using or tearing down:
    a latent worker in one of `_BUSY_STATES`, or any worker with a live connection."""
    return frozenset(
        w.workername
        for w in workers
        if getattr(w, "state", None) in _BUSY_STATES or getattr(w, "conn", None) is not None
    )


# ---------------------------------------------------------------------- executor (shell)


@dataclass(frozen=True)
class ReapReport:
    """What one sweep of one host did: `done` (or would do, in a dry run), `failed` with the
    error, `left` (notes and actions skipped because their target changed meanwhile)."""

    dry_run: bool
    done: tuple[ReapAction, ...] = ()
    failed: tuple[tuple[ReapAction, str], ...] = ()
    left: tuple[ReapAction, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        if not (self.done or self.failed or self.left):
            return "reap: nothing to do"
        verb = "would run" if self.dry_run else "done"
        return (
            f"reap{' (dry run)' if self.dry_run else ''}: {len(self.done)} action(s) {verb}, "
            f"{len(self.failed)} failed, {len(self.left)} left alone"
        )


@dataclass
class _Tally:
    done: list[ReapAction] = field(default_factory=list)
    failed: list[tuple[ReapAction, str]] = field(default_factory=list)
    left: list[ReapAction] = field(default_factory=list)
    stuck: set[str] = field(default_factory=set)


async def _changed(platform: HostPlatform, action: ReapAction) -> str | None:
    """Why `action` must not run any more, or None: its clone's lease is not the planned one
    (a new instance of the worker took the name), or the clone is gone (for a jail: the jail
    now belongs to something else)."""
    if action.clone is None:
        return None
    info = await platform.zfs.info(action.clone, LEASE_PROPERTIES)
    if info is None:
        return None if action.kind == "destroy_clone" else f"{action.clone} is gone meanwhile"
    if tuple(sorted(info.user.items())) != action.lease:
        return f"the lease of {action.clone} changed meanwhile"
    return None


async def _run_one(platform: HostPlatform, action: ReapAction, tally: _Tally) -> str | None:
    """Run one destructive action; the reason it was skipped, or None. Raises `FarmError`."""
    if action.kind == "destroy_clone" and action.jail in tally.stuck:
        raise FarmError(f"jail {action.jail} could not be removed, so its clone stays")
    changed = await _changed(platform, action)
    if changed is not None:
        return changed
    if action.kind == "remove_jail":
        await platform.jails.remove(action.target)
    else:
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
    for action in sorted(actions, key=lambda a: _ORDER[a.kind]):
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
            left = action if not action.destructive else _skipped(action, skipped)
            tally.left.append(left)
            say(left.line())
            log.info("reaper: {line}", line=left.line())
            continue
        tally.done.append(action)
        say(action.line(dry_run))
        log.info("reaper: {line}", line=action.line(dry_run))
    return ReapReport(dry_run, tuple(tally.done), tuple(tally.failed), tuple(tally.left))


def _skipped(action: ReapAction, why: str) -> ReapAction:
    target = f"jail {action.target}" if action.kind == "remove_jail" else action.target
    return ReapAction("leave", target, why, action.jail)


@dataclass(frozen=True)
class Survey:
    """One jail host as `gather` saw it: our jails dataset's children, the running jails, and
    where the jails dataset is mounted (None if it does not exist or is not mounted)."""

    datasets: tuple[Dataset, ...]
    jails: tuple[JailInfo, ...]
    mountpoint: str | None


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


def plan_for(
    cfg: FarmConfig,
    survey: Survey,
    now: float,
    build_state: Mapping[str, str] | None,
    busy: frozenset[str] = frozenset(),
    everything: bool = False,
) -> list[ReapAction]:
    """`plan_reap` for this farm over one host's survey."""
    return plan_reap(
        cfg.name,
        cfg.prefix,
        survey.datasets,
        survey.jails,
        now,
        build_state,
        busy,
        everything,
        jails_dataset=jails_dataset(cfg),
        jails_mountpoint=survey.mountpoint,
    )


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
