"""Benchmark: the rebuild planner on a synthetic 30,000-port tree (not a test).

The graph has FreeBSD's shape: a few infrastructure ports (pkgconf, gmake, gettext, perl5,
python...) that thousands of ports depend on, and libraries whose popularity falls off with a
power law; every port depends only on older ones, so it is a DAG. Timings, each the median of
`--repeat` runs:

* the index: built from 30,000 entries, written to JSON and read back (what a worker loads);
* a plan with the cached index, for a 1-port change (a median port, and the most depended-on
  one) and a 50-port change: updating the index from the diff, then the reverse closure;
* the same plans recomputed from scratch per request, the baseline: the forward dependency
  map only, reversed and walked anew each time (and, for reference, the naive way: every
  port's whole dependency closure tested against the change).

Figures are printed as ratios against the baseline measured in the same run. With bmake on the
PATH it also times one `make -V` query on the demo tree, the cost that dominates a real index:
an incremental update asks make about the changed ports, a fresh index about all 30,000.

Run:  .venv/bin/python bench/planner.py [--ports 30000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailfarm.plancli import make_argv
from jailfarm.poudriere.planner import DependencyIndex, PortEntry, plan_rebuild

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

DEMO = Path(__file__).resolve().parents[1] / "examples" / "ports"
HUBS = 40  # infrastructure ports
ZIPF = [1 / (h + 1) for h in range(HUBS)]


def synthetic(n: int, seed: int = 1) -> dict[str, PortEntry]:
    rnd = random.Random(seed)
    names = [f"cat{i % 64}/port{i}" for i in range(n)]
    ports = {}
    for i, name in enumerate(names):
        deps: set[str] = set()
        if i >= HUBS:
            # Zipf over the hubs: about a quarter of all ports use hub 0 directly, few hub 39.
            deps.update(rnd.choices(names[:HUBS], weights=ZIPF, k=rnd.randint(0, 3)))
            # Libraries: older ports are depended on more (power law over the index).
            for _ in range(rnd.randint(0, 6)):
                deps.add(names[HUBS + int((i - HUBS) * rnd.random() ** 4)])
        elif i:
            deps.update(rnd.sample(names[:i], rnd.randint(0, 1)))
        deps.discard(name)
        ports[name] = PortEntry(f"{name.split('/')[1]}-1.0", tuple(sorted(deps)))
    return ports


def median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def from_scratch(forward: Mapping[str, Sequence[str]], seeds: Sequence[str]) -> set[str]:
    """The baseline: reverse the forward map, then walk it (no cached reverse index)."""
    reverse: dict[str, list[str]] = {}
    for origin, deps in forward.items():
        for dep in deps:
            reverse.setdefault(dep, []).append(origin)
    seen, queue = set(seeds), deque(seeds)
    while queue:
        for user in reverse.get(queue.popleft(), ()):
            if user not in seen:
                seen.add(user)
                queue.append(user)
    return seen


def naive(forward: Mapping[str, Sequence[str]], seeds: Sequence[str]) -> set[str]:
    """Every port's whole dependency closure (memoized), tested against the change."""
    closure: dict[str, frozenset[str]] = {}
    for origin in forward:  # keys are in dependency order: deps come first
        acc: set[str] = set()
        for dep in forward[origin]:
            acc.add(dep)
            acc |= closure.get(dep, frozenset())
        closure[origin] = frozenset(acc)
    wanted = set(seeds)
    return {o for o, c in closure.items() if o in wanted or c & wanted}


def make_query_seconds() -> float | None:
    if not shutil.which("bmake"):
        return None
    origins = [
        f"{c.name}/{p.name}"
        for c in DEMO.iterdir()
        if c.name.islower() and c.is_dir()
        for p in c.iterdir()
        if (p / "Makefile").is_file()
    ]
    t = time.perf_counter()
    for origin in origins:
        subprocess.run(make_argv("bmake", str(DEMO), origin), capture_output=True, check=True)
    return (time.perf_counter() - t) / len(origins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=int, default=30000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ports = synthetic(args.ports)
    forward = {o: e.deps for o, e in ports.items()}
    edges = sum(len(d) for d in forward.values())
    build_s, index = median_time(lambda: DependencyIndex("r1", ports), args.repeat)
    fan_in = sorted(((len(index.dependents([o])), o) for o in list(ports)[:HUBS]), reverse=True)
    print(f"synthetic tree: {len(ports)} ports, {edges} dependency edges")
    print(
        f"most depended-on: {fan_in[0][1]} ({fan_in[0][0]} dependents), {fan_in[1][1]} "
        f"({fan_in[1][0]}), {fan_in[2][1]} ({fan_in[2][0]}); "
        f"{sum(1 for n, _ in fan_in if n >= 1000)} ports have 1000+"
    )
    text = index.to_json()
    dump_s, _ = median_time(index.to_json, args.repeat)
    load_s, _ = median_time(lambda: DependencyIndex.from_json(text), args.repeat)
    print(
        f"index: build {build_s * 1000:.0f} ms, write {dump_s * 1000:.0f} ms, "
        f"read {load_s * 1000:.0f} ms ({len(text) / 1e6:.1f} MB JSON)"
    )

    rnd = random.Random(7)
    names = list(ports)
    by_fan_in = sorted(names[HUBS:], key=lambda o: len(index.dependents([o])))
    cases = {
        "1 port (median fan-in)": [by_fan_in[len(by_fan_in) // 2]],
        f"1 port ({fan_in[0][1]}, the hub)": [fan_in[0][1]],
        "50 ports (random)": rnd.sample(names, 50),
    }
    print(f"\nplan per request, ms (median of {args.repeat}); ratios: baseline / cached")
    head = ("change", "rebuilds", "cached", "scratch", "ratio", "naive", "ratio", "+JSON read")
    print("{:<30} {:>8} {:>8} {:>8} {:>6} {:>8} {:>6} {:>11}".format(*head))
    worst = 0.0
    for label, changed in cases.items():
        changed_entries = {o: ports[o] for o in changed}

        def cached(changed: Sequence[str] = changed, entries: Any = changed_entries) -> Any:
            index.update("r2", entries, ())  # what the worker does with a diff
            return plan_rebuild(index, changed)

        ours_s, plan = median_time(cached, args.repeat)
        base_s, scratch = median_time(lambda c=changed: from_scratch(forward, c), args.repeat)
        naive_s, slow = median_time(lambda c=changed: naive(forward, c), 1)
        assert set(plan.ports) == scratch == slow, label
        worst = max(worst, load_s + ours_s)
        print(
            f"{label:<30} {len(plan.ports):>8} {ours_s * 1000:>8.1f} {base_s * 1000:>8.1f} "
            f"{base_s / ours_s:>5.1f}x {naive_s * 1000:>8.0f} {naive_s / ours_s:>5.0f}x "
            f"{(load_s + ours_s) * 1000:>8.0f} ms"
        )
    print(f"target < 1 s per plan, index read included: {'met' if worst < 1 else 'MISSED'}")
    query = make_query_seconds()
    if query is not None:
        print(
            f"\nmake -V, one port of the demo tree: {query * 1000:.1f} ms; an index from scratch "
            f"asks {args.ports} of them ({args.ports * query:.0f} s here; FreeBSD's Mk is far "
            f"slower per port), an incremental update asks only the ports the push touched"
        )


if __name__ == "__main__":
    main()
