"""The reaper's planner: which of the farm's leftover worker jails and clones go, and why
(ARCHITECTURE.md "Leases"), over one jail host's survey (pure). Only what is provably ours goes:
a clone carrying our `jailfarm:owner`, a jail running from our clone.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from jailfarm.errors import InvalidName
from jailfarm.names import JAIL
from jailfarm.workers.layout import BUILD, EXPIRES, OWNER, jails_dataset

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from jailfarm.config import FarmConfig
    from jailfarm.host.base import JailInfo
    from jailfarm.host.zfs import Dataset

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

    def left_alone(self, why: str) -> ReapAction:
        """This action as a `leave` note: it was not run because `why`."""
        target = f"jail {self.target}" if self.kind == "remove_jail" else self.target
        return ReapAction("leave", target, why, self.jail)


def in_order(actions: Iterable[ReapAction]) -> list[ReapAction]:
    """`actions` in plan and execution order: jail removals, clone destroys, then notes.
    sorted() is stable: per kind, the order of names stays."""
    return sorted(actions, key=lambda a: _ORDER[a.kind])


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
    return in_order(plan)


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


@dataclass(frozen=True)
class Survey:
    """One jail host as `gather` saw it: our jails dataset's children, the running jails, and
    where the jails dataset is mounted (None if it does not exist or is not mounted)."""

    datasets: tuple[Dataset, ...]
    jails: tuple[JailInfo, ...]
    mountpoint: str | None


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
