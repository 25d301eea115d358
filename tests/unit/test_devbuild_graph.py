"""The dev builder's pure dependency graph: up-to-date decisions, IGNORE and failure
propagation, and the order N builders take ports in (no files, no processes)."""

from __future__ import annotations

import pytest

from jailfarm.poudriere.devbuild_graph import (
    GraphError,
    PortInfo,
    Scheduler,
    install_set,
    package_meta,
    packages_to_keep,
    plan,
    plan_testport_deps,
)

# The demo tree's shape (examples/ports/README.md), plus a port depending on the broken one.
PORTS = {
    p.origin: p
    for p in (
        PortInfo("devel/libjf", "libjf-1.2.0"),
        PortInfo("devel/jf-buildtool", "jf-buildtool-2.0"),
        PortInfo(
            "misc/jf-hello",
            "jf-hello-1.0_1",
            build_deps=("devel/libjf",),
            run_deps=("devel/libjf",),
        ),
        PortInfo("misc/jf-cowsay", "jf-cowsay-0.3", run_deps=("misc/jf-hello",)),
        PortInfo("textproc/jf-wc", "jf-wc-1.1", build_deps=("devel/jf-buildtool",)),
        PortInfo("misc/jf-broken", "jf-broken-0.1", ignore="is for testing IGNORE"),
        PortInfo("misc/needs-broken", "needs-broken-1", run_deps=("misc/jf-broken",)),
        PortInfo("misc/needs-needs", "needs-needs-1", build_deps=("misc/needs-broken",)),
    )
}
ALL = sorted(PORTS)
BUILDABLE = [
    "devel/jf-buildtool",
    "devel/libjf",
    "misc/jf-cowsay",
    "misc/jf-hello",
    "textproc/jf-wc",
]


def repo(**overrides: frozenset[str]) -> dict[str, frozenset[str]]:
    """A repository holding a current package of every buildable port."""
    existing = {
        "libjf-1.2.0": frozenset(),
        "jf-buildtool-2.0": frozenset(),
        "jf-hello-1.0_1": frozenset({"libjf-1.2.0"}),
        "jf-cowsay-0.3": frozenset({"jf-hello-1.0_1"}),
        "jf-wc-1.1": frozenset(),
    }
    return {**existing, **overrides}


class PlanTests:
    def test_an_empty_repository_builds_everything_deps_first(self) -> None:
        p = plan(PORTS, ALL, {})
        assert sorted(p.tobuild) == BUILDABLE and p.kept == ()
        order = list(p.tobuild)
        for origin in order:
            assert all(order.index(d) < order.index(origin) for d in PORTS[origin].deps)
        assert p.why["devel/libjf"] == "new package"

    def test_current_packages_are_kept(self) -> None:
        p = plan(PORTS, ALL, repo())
        assert p.tobuild == () and sorted(p.kept) == BUILDABLE

    def test_a_changed_pkgname_rebuilds_the_port_and_its_dependents(self) -> None:
        ports = {**PORTS, "devel/libjf": PortInfo("devel/libjf", "libjf-1.2.0_1")}
        p = plan(ports, ALL, repo())
        assert set(p.tobuild) == {"devel/libjf", "misc/jf-hello", "misc/jf-cowsay"}
        assert sorted(p.kept) == ["devel/jf-buildtool", "textproc/jf-wc"]
        assert p.why["misc/jf-hello"] == "dependencies changed"

    def test_a_rebuilt_build_dependency_rebuilds_even_with_same_recorded_deps(self) -> None:
        existing = repo()
        del existing["jf-buildtool-2.0"]
        p = plan(PORTS, ["textproc/jf-wc"], existing)
        assert p.tobuild == ("devel/jf-buildtool", "textproc/jf-wc")
        assert p.why["textproc/jf-wc"] == "dependency devel/jf-buildtool is rebuilt"

    def test_recorded_deps_that_differ_rebuild_the_port(self) -> None:
        p = plan(PORTS, ALL, repo(**{"jf-cowsay-0.3": frozenset({"jf-hello-1.0"})}))
        assert p.tobuild == ("misc/jf-cowsay",)

    def test_ignored_ports_skip_their_dependents_transitively(self) -> None:
        p = plan(PORTS, ALL, {})
        assert p.ignored == {"misc/jf-broken": "is for testing IGNORE"}
        assert p.skipped == {
            "misc/needs-broken": "misc/jf-broken",
            "misc/needs-needs": "misc/jf-broken",
        }
        assert not set(p.tobuild) & {"misc/jf-broken", "misc/needs-broken", "misc/needs-needs"}

    def test_dependencies_are_queued_with_the_package_that_pulled_them_in(self) -> None:
        p = plan(PORTS, ["misc/jf-cowsay"], {})
        assert p.tobuild == ("devel/libjf", "misc/jf-hello", "misc/jf-cowsay")
        assert p.rdep == {
            "misc/jf-cowsay": "listed",
            "misc/jf-hello": "jf-cowsay-0.3",
            "devel/libjf": "jf-hello-1.0_1",
        }

    def test_a_missing_dependency_and_a_cycle_are_errors(self) -> None:
        with pytest.raises(GraphError, match="devel/nothere is needed"):
            plan({"a/b": PortInfo("a/b", "b-1", run_deps=("devel/nothere",))}, ["a/b"], {})
        cyclic = {
            "a/x": PortInfo("a/x", "x-1", run_deps=("a/y",)),
            "a/y": PortInfo("a/y", "y-1", build_deps=("a/x",)),
        }
        with pytest.raises(GraphError, match="cycle"):
            plan(cyclic, ["a/x"], {})

    def test_stale_versions_go_and_packages_of_other_ports_stay(self) -> None:
        ports = {**PORTS, "devel/libjf": PortInfo("devel/libjf", "libjf-1.2.0_1")}
        existing = repo(**{"unrelated-3": frozenset()})
        p = plan(ports, ALL, existing)
        keep = packages_to_keep(ports, p, existing)
        assert keep == ["jf-buildtool-2.0", "jf-wc-1.1", "unrelated-3"]

    def test_the_build_root_gets_build_deps_and_run_closures(self) -> None:
        ports = {**PORTS, "misc/x": PortInfo("misc/x", "x-1", build_deps=("misc/jf-cowsay",))}
        assert install_set(ports, "misc/x") == ["devel/libjf", "misc/jf-cowsay", "misc/jf-hello"]


class TestportDepsTests:
    def test_the_tested_port_leaves_the_dependency_bulk(self) -> None:
        full = plan(PORTS, ["misc/jf-cowsay"], {})
        deps = plan_testport_deps(full, "misc/jf-cowsay")
        assert deps.tobuild == ("devel/libjf", "misc/jf-hello")
        assert deps.rdep == {"misc/jf-hello": "jf-cowsay-0.3", "devel/libjf": "jf-hello-1.0_1"}
        assert "misc/jf-cowsay" not in deps.why

    def test_an_up_to_date_tested_port_is_still_not_kept_in_the_bulk(self) -> None:
        full = plan(PORTS, ["misc/jf-hello"], repo())
        assert full.kept == ("devel/libjf", "misc/jf-hello")
        deps = plan_testport_deps(full, "misc/jf-hello")
        assert (deps.tobuild, deps.kept) == ((), ("devel/libjf",))

    def test_an_ignored_dependency_blocks_the_tested_port(self) -> None:
        full = plan(PORTS, ["misc/needs-needs"], {})
        assert full.skipped.get("misc/needs-needs") == "misc/jf-broken"
        deps = plan_testport_deps(full, "misc/needs-needs")
        assert deps.ignored == {"misc/jf-broken": "is for testing IGNORE"}
        assert deps.skipped == {"misc/needs-broken": "misc/jf-broken"}
        assert deps.tobuild == ()


def test_a_package_records_its_run_deps_with_origin_and_version() -> None:
    hello = PortInfo(
        "misc/jf-hello", "jf-hello-1.0_1", run_deps=("devel/libjf",), comment="Hi", descr="Hi."
    )
    meta = package_meta({**PORTS, hello.origin: hello}, hello.origin, "FreeBSD:14:amd64")
    assert (meta.name, meta.version, meta.origin) == ("jf-hello", "1.0_1", "misc/jf-hello")
    assert meta.deps == {"libjf": {"origin": "devel/libjf", "version": "1.2.0"}}


def simulate(
    sched: Scheduler, builders: int, fail: frozenset[str] = frozenset()
) -> list[list[str]]:
    """Run rounds: each round starts up to `builders` ready ports and finishes them all."""
    rounds = []
    while not sched.finished:
        batch = sched.ready()[:builders]
        assert batch, "deadlock: nothing ready but not finished"
        for origin in batch:
            sched.start(origin)
        for origin in batch:
            if origin in fail:
                sched.failed(origin)
            else:
                sched.done(origin)
        rounds.append(batch)
    return rounds


class SchedulerTests:
    def test_n_builders_run_at_most_n_ports_and_deps_finish_first(self) -> None:
        p = plan(PORTS, ALL, {})
        rounds = simulate(Scheduler(PORTS, p.tobuild), 2)
        assert [set(r) for r in rounds] == [
            {"devel/jf-buildtool", "devel/libjf"},
            {"misc/jf-hello", "textproc/jf-wc"},
            {"misc/jf-cowsay"},
        ]

    def test_one_builder_follows_the_topological_order(self) -> None:
        p = plan(PORTS, ALL, {})
        assert [o for r in simulate(Scheduler(PORTS, p.tobuild), 1) for o in r] == list(p.tobuild)

    def test_a_failure_skips_dependents_transitively_and_nothing_else(self) -> None:
        p = plan(PORTS, ALL, {})
        sched = Scheduler(PORTS, p.tobuild)
        sched.start("devel/libjf")
        assert sched.failed("devel/libjf") == ["misc/jf-hello", "misc/jf-cowsay"]
        assert sched.ready() == ["devel/jf-buildtool"]
        simulate(sched, 2)
        assert sched.finished

    def test_only_ready_ports_can_start(self) -> None:
        sched = Scheduler(PORTS, plan(PORTS, ALL, {}).tobuild)
        with pytest.raises(ValueError, match="not ready"):
            sched.start("misc/jf-hello")
        with pytest.raises(ValueError, match="not running"):
            sched.done("devel/libjf")
