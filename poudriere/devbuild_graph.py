"""The dev-host bulk builder's dependency graph: what to build, keep, ignore or skip, and in
which order builders may take ports (pure: no files, processes or clock).

The rules follow poudriere's `prepare_ports` (shared/spec/poudriere.md §1.3, §4.2): IGNOREd
ports are never built and whatever depends on them is skipped; a package already in the
repository is kept only when its recorded dependencies still match and every dependency is
kept too (CHECK_CHANGED_DEPS); a failure skips everything that depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING

from jailfarm.errors import FarmError
from jailfarm.poudriere.pkgfile import PackageMeta

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence


# poudriere's build_port phases that the demo framework has as targets, in order; each runs as
# its own make call, so a failure is recorded in the phase that failed (§4.2).
PHASES = (
    "pkg-depends",
    "fetch-depends",
    "fetch",
    "checksum",
    "extract-depends",
    "extract",
    "patch-depends",
    "patch",
    "build-depends",
    "lib-depends",
    "configure",
    "build",
    "run-depends",
    "stage",
    "check-plist",
    "package",
)


class GraphError(FarmError, ValueError):
    """The ports cannot be planned: a dependency cycle or a dependency that was not gathered."""


@dataclass(frozen=True)
class PortInfo:
    """What `make -V` says about one port. `build_deps` are ALL_BUILD_DEPENDS_ORIGINS, and
    `run_deps` ALL_RUN_DEPENDS_ORIGINS (LIB + RUN: what the package records as its deps)."""

    origin: str
    pkgname: str
    ignore: str = ""
    build_deps: tuple[str, ...] = ()
    run_deps: tuple[str, ...] = ()
    comment: str = ""
    maintainer: str = ""
    www: str = ""
    licenses: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    prefix: str = "/usr/local"
    descr: str = ""

    @property
    def deps(self) -> tuple[str, ...]:
        """Every origin that must be built before this one (and installed to build it)."""
        return tuple(sorted({*self.build_deps, *self.run_deps}))


@dataclass(frozen=True)
class Plan:
    """The queue of one bulk. `tobuild` is in topological order; `kept` are up-to-date
    packages; `ignored` maps origin -> IGNORE reason; `skipped` maps origin -> the origin whose
    IGNORE caused it; `rdep` maps each queued origin to `listed` or the pkgname that pulled it
    in (the third field of `.poudriere.ports.tobuild`); `why` says why each port is rebuilt."""

    tobuild: tuple[str, ...]
    kept: tuple[str, ...]
    ignored: Mapping[str, str]
    skipped: Mapping[str, str]
    rdep: Mapping[str, str]
    why: Mapping[str, str] = field(default_factory=dict)


def closure(ports: Mapping[str, PortInfo], listed: Iterable[str]) -> list[str]:
    """Every origin reachable from `listed` through build and run dependencies, sorted.
    Raises GraphError naming an origin that is needed but not in `ports`."""
    seen: set[str] = set()
    todo = list(listed)
    while todo:
        origin = todo.pop()
        if origin in seen:
            continue
        if origin not in ports:
            raise GraphError(f"{origin} is needed but was not gathered")
        seen.add(origin)
        todo.extend(ports[origin].deps)
    return sorted(seen)


def topological(ports: Mapping[str, PortInfo], origins: Collection[str]) -> tuple[str, ...]:
    """`origins`, each after its dependencies; ties in name order. GraphError on a cycle."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for origin in sorted(origins):
        sorter.add(origin, *(d for d in ports[origin].deps if d in origins))
    try:
        return tuple(sorter.static_order())
    except CycleError as e:
        raise GraphError(f"dependency cycle: {' -> '.join(e.args[1])}") from None


def run_closure(ports: Mapping[str, PortInfo], origin: str) -> list[str]:
    """What installing `origin`'s package pulls in: itself and, recursively, its run deps."""
    seen: list[str] = []
    todo = [origin]
    while todo:
        o = todo.pop()
        if o not in seen:
            seen.append(o)
            todo.extend(ports[o].run_deps)
    return sorted(seen)


def install_set(ports: Mapping[str, PortInfo], origin: str) -> list[str]:
    """The packages a clean build root needs before `origin` builds: its build and run deps
    and their run-time closures (poudriere installs them with `pkg install`)."""
    need: set[str] = set()
    for dep in ports[origin].deps:
        need.update(run_closure(ports, dep))
    return sorted(need)


def recorded_deps(ports: Mapping[str, PortInfo], origin: str) -> frozenset[str]:
    """The dependency pkgnames a fresh package of `origin` records (its run + lib deps)."""
    return frozenset(ports[d].pkgname for d in ports[origin].run_deps)


def plan(
    ports: Mapping[str, PortInfo],
    listed: Sequence[str],
    existing: Mapping[str, frozenset[str]],
) -> Plan:
    """Plan a bulk of `listed` (and their dependencies). `existing` maps each pkgname in the
    current repository to the dependency pkgnames its manifest records. A port is kept when
    its package exists, its recorded deps equal `recorded_deps` and all its deps are kept."""
    needed = closure(ports, listed)
    order = topological(ports, needed)
    ignored = {o: ports[o].ignore for o in order if ports[o].ignore}
    skipped: dict[str, str] = {}
    kept: list[str] = []
    why: dict[str, str] = {}
    for origin in order:  # dependencies come first, so their verdicts are known
        port = ports[origin]
        if origin in ignored:
            continue
        # The cause is the IGNOREd port at the root, even through skipped ones.
        causes = [
            d if d in ignored else skipped[d] for d in port.deps if d in ignored or d in skipped
        ]
        cause = causes[0] if causes else ""
        if cause:
            skipped[origin] = cause
            continue
        why[origin] = _rebuild_reason(ports, origin, existing, set(kept))
        if not why[origin]:
            del why[origin]
            kept.append(origin)
    tobuild = tuple(o for o in order if o not in ignored and o not in skipped and o not in kept)
    return Plan(tobuild, tuple(kept), ignored, skipped, _rdeps(ports, listed, needed), why)


def _rebuild_reason(
    ports: Mapping[str, PortInfo],
    origin: str,
    existing: Mapping[str, frozenset[str]],
    kept: set[str],
) -> str:
    port = ports[origin]
    if port.pkgname not in existing:
        return "new package"
    if existing[port.pkgname] != recorded_deps(ports, origin):
        return "dependencies changed"
    changed = [d for d in port.deps if d not in kept]
    if changed:
        return f"dependency {changed[0]} is rebuilt"
    return ""


def _rdeps(
    ports: Mapping[str, PortInfo], listed: Sequence[str], needed: Sequence[str]
) -> dict[str, str]:
    rdep = {o: "listed" for o in listed}
    for origin in needed:
        for dep in ports[origin].deps:
            rdep.setdefault(dep, ports[origin].pkgname)
    return rdep


def packages_to_keep(
    ports: Mapping[str, PortInfo], plan: Plan, existing: Mapping[str, frozenset[str]]
) -> list[str]:
    """The repository's packages that survive this bulk: the kept ones, and every package of
    a port outside this bulk. Other versions of a gathered port are stale, and so are the
    packages of ports rebuilt, ignored or skipped now (poudriere deletes them in `sanity`)."""
    kept = {ports[o].pkgname for o in plan.kept}
    gathered = {ports[o].pkgname.rpartition("-")[0] for o in ports}
    return sorted(p for p in existing if p in kept or p.rpartition("-")[0] not in gathered)


class Scheduler:
    """Hands out ports to builders: a port is ready when all of its dependencies that are in
    the build set are done. A failed (or skipped) port skips its dependents, transitively.
    Pure state: the caller runs the ports and reports back."""

    def __init__(self, ports: Mapping[str, PortInfo], tobuild: Sequence[str]) -> None:
        self._order = list(tobuild)
        members = set(tobuild)
        self._waiting = {o: {d for d in ports[o].deps if d in members} for o in tobuild}
        self._dependents: dict[str, list[str]] = {o: [] for o in tobuild}
        for origin in tobuild:
            for dep in self._waiting[origin]:
                self._dependents[dep].append(origin)
        self._state = dict.fromkeys(tobuild, "queued")

    def ready(self) -> list[str]:
        """Queued ports whose dependencies are all done, in build order."""
        return [o for o in self._order if self._state[o] == "queued" and not self._waiting[o]]

    def start(self, origin: str) -> None:
        if origin not in self.ready():
            raise ValueError(f"{origin} is not ready to build")
        self._state[origin] = "running"

    def done(self, origin: str) -> None:
        self._finish(origin, "done")
        for dependent in self._dependents[origin]:
            self._waiting[dependent].discard(origin)

    def failed(self, origin: str) -> list[str]:
        """Mark `origin` failed; returns the dependents skipped because of it, in order."""
        self._finish(origin, "failed")
        skipped: list[str] = []
        todo = list(self._dependents[origin])
        while todo:
            o = todo.pop()
            if self._state[o] == "queued":
                self._state[o] = "skipped"
                skipped.append(o)
                todo.extend(self._dependents[o])
        return [o for o in self._order if o in skipped]

    @property
    def finished(self) -> bool:
        return all(s in ("done", "failed", "skipped") for s in self._state.values())

    @property
    def running(self) -> list[str]:
        return [o for o in self._order if self._state[o] == "running"]

    def _finish(self, origin: str, state: str) -> None:
        if self._state.get(origin) != "running":
            raise ValueError(f"{origin} is not running")
        self._state[origin] = state


def package_meta(ports: Mapping[str, PortInfo], origin: str, abi: str) -> PackageMeta:
    """The manifest of `origin`'s package: its run deps recorded as name -> origin, version."""
    port = ports[origin]
    name, _, version = port.pkgname.rpartition("-")
    deps = {}
    for dep in port.run_deps:
        dep_name, _, dep_version = ports[dep].pkgname.rpartition("-")
        deps[dep_name] = {"origin": dep, "version": dep_version}
    return PackageMeta(
        name=name,
        origin=origin,
        version=version,
        comment=port.comment,
        desc=port.descr,
        maintainer=port.maintainer,
        www=port.www,
        abi=abi,
        prefix=port.prefix,
        deps=deps,
        categories=port.categories,
        licenses=port.licenses,
        licenselogic="single" if len(port.licenses) <= 1 else "and",
    )


def plan_testport_deps(full: Plan, origin: str) -> Plan:
    """The dependency bulk of `testport origin`, from the plan of a bulk of `origin` alone:
    the same plan without the tested port, which testport builds itself, last, in the
    reference root, whatever the repository holds (§1.4). Whether it can be built at all is
    `full.skipped.get(origin)` (an IGNOREd dependency)."""

    def drop(m: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in m.items() if k != origin}

    return Plan(
        tuple(o for o in full.tobuild if o != origin),
        tuple(o for o in full.kept if o != origin),
        drop(full.ignored),
        drop(full.skipped),
        drop(full.rdep),
        drop(full.why),
    )
