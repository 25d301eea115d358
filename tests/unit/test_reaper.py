"""The reaper: the pure planner over many cases and a hypothesis property, the executor over
in-memory fake hosts, `reap_command` and the buildbot service through `FakeRunner` (the
service with buildbot's fake master and its real data API over the fake database)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from buildbot.worker.latent import States
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from jailfarm.config import load_farm
from jailfarm.errors import JailError, ZfsError
from jailfarm.host.base import JailInfo, Jails
from jailfarm.host.platform import HostPlatform
from jailfarm.host.zfs import LIST_PROPERTIES, Dataset, Zfs, destroy_cmd, get_cmd
from jailfarm.runner import FakeRunner
from jailfarm.workers.layout import LEASE_PROPERTIES
from jailfarm.workers.reaper import ReaperService, busy_workers, reap, reap_command
from jailfarm.workers.reapplan import (
    FINISHED,
    NOT_A_BUILD,
    RUNNING,
    ReapAction,
    ReapReport,
    build_state_of,
    plan_reap,
)
from tests.support import deferred_test, resolve

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from jailfarm.cmd import Cmd
    from jailfarm.host.base import JailSpec

T = TypeVar("T")

OWNER, OTHER = "alpha", "beta"
ROOT = "tank/farm"
JR = f"{ROOT}/jails"
MNT = "/tank/farm/jails"
NOW = 1_700_000_000.0
LATER = str(int(NOW) + 3600)
EARLIER = str(int(NOW) - 312)


def clone(
    leaf: str,
    owner: str | None = OWNER,
    build: str | None = "42",
    expires: str | None = LATER,
    name: str | None = None,
    kind: str = "filesystem",
) -> Dataset:
    user = {"jailfarm:owner": owner, "jailfarm:build": build, "jailfarm:expires": expires}
    return Dataset(
        name=name or f"{JR}/{leaf}",
        type=kind,
        used=0,
        available=0,
        referenced=0,
        origin=f"{ROOT}/templates/worker@g1",
        mountpoint=f"{MNT}/{leaf}",
        mounted=True,
        user={k: v for k, v in user.items() if v is not None},
    )


def jail(name: str, path: str | None = None) -> JailInfo:
    return JailInfo(name, 100, path or f"{MNT}/{name}", f"{name}.test")


def plan(
    datasets: Sequence[Dataset],
    jails: Sequence[JailInfo] = (),
    build_state: Mapping[str, str] | None = None,
    busy: Iterable[str] = (),
    everything: bool = False,
) -> list[ReapAction]:
    state = {"42": RUNNING} if build_state is None else build_state
    return plan_reap(
        OWNER, "jf", datasets, jails, NOW, state, frozenset(busy), everything,
        jails_dataset=JR, jails_mountpoint=MNT,
    )  # fmt: skip


def kinds(actions: Sequence[ReapAction]) -> list[tuple[str, str]]:
    return [(a.kind, a.target) for a in actions]


class PlanTests:
    def test_expired_lease_removes_the_jail_then_destroys_the_clone(self) -> None:
        actions = plan([clone("jfw1", expires=EARLIER)], [jail("jfw1")])
        assert kinds(actions) == [("remove_jail", "jfw1"), ("destroy_clone", f"{JR}/jfw1")]
        assert {a.reason for a in actions} == {"lease expired 312 s ago"}
        assert actions[0].line(dry_run=True) == "would remove jail jfw1: lease expired 312 s ago"
        assert actions[1].line() == f"destroyed clone {JR}/jfw1: lease expired 312 s ago"

    def test_another_farms_clone_and_its_jail_are_never_touched(self) -> None:
        datasets = [clone("jfw1", owner=OTHER, expires=EARLIER, build="1")]
        assert plan(datasets, [jail("jfw1")], build_state={}) == []
        assert plan(datasets, [jail("jfw1")], everything=True) == []

    def test_unowned_clone_is_reported_and_left_alone_with_its_jail(self) -> None:
        actions = plan([clone("jfw1", owner=None, expires=EARLIER)], [jail("jfw1")], {})
        assert kinds(actions) == [("leave", f"{JR}/jfw1")]
        assert actions[0].line() == f"{JR}/jfw1: unowned, left alone"
        assert kinds(plan([clone("jfw1", owner=None)], everything=True)) == kinds(actions)

    def test_busy_worker_is_kept_unless_its_lease_expired(self) -> None:
        finished = clone("jfw1", build="42")
        unknown = clone("jfw2", build="17")
        assert plan([finished, unknown], build_state={"42": FINISHED}, busy={"jfw1", "jfw2"}) == []
        expired = clone("jfw3", build="42", expires=EARLIER)
        actions = plan([expired], [jail("jfw3")], build_state={"42": RUNNING}, busy={"jfw3"})
        assert kinds(actions) == [("remove_jail", "jfw3"), ("destroy_clone", f"{JR}/jfw3")]

    def test_finished_build_goes(self) -> None:
        actions = plan([clone("jfw1", build="42")], [jail("jfw1")], {"42": FINISHED})
        assert [a.reason for a in actions] == ["build 42 finished"] * 2

    def test_build_unknown_to_the_master_goes(self) -> None:
        actions = plan([clone("jfw1", build="17")], [], {"42": FINISHED})
        assert [(a.kind, a.reason) for a in actions] == [
            ("destroy_clone", "build 17 unknown to this master")
        ]

    def test_running_build_and_non_build_leases_wait_for_expiry(self) -> None:
        datasets = [clone("jfw1", build="42"), clone("jfsmoke", build="smoke")]
        assert plan(datasets, build_state={"42": RUNNING, "smoke": NOT_A_BUILD}) == []

    def test_lease_without_a_build_goes_when_not_busy(self) -> None:
        actions = plan([clone("jfw1", build=None)], build_state={})
        assert [a.reason for a in actions] == ["its lease names no build"]
        assert plan([clone("jfw1", build=None)], build_state={}, busy={"jfw1"}) == []

    def test_unreadable_expiry_counts_as_no_expiry(self) -> None:
        assert plan([clone("jfw1", expires="soon")], build_state={"42": RUNNING}) == []
        actions = plan([clone("jfw1", expires="soon")], build_state={})
        assert [a.reason for a in actions] == ["build 42 unknown to this master"]

    def test_without_a_master_only_expired_leases_go(self) -> None:
        datasets = [clone("jfw1", expires=EARLIER), clone("jfw2", build="17"), clone("jfw3")]
        actions = plan_reap(
            OWNER, "jf", datasets, [jail("jfw4")], NOW, None, jails_dataset=JR,
            jails_mountpoint=MNT,
        )  # fmt: skip
        assert kinds(actions) == [("destroy_clone", f"{JR}/jfw1"), ("leave", "jail jfw4")]
        assert "--all removes it" in actions[1].line()

    def test_everything_takes_all_of_ours_even_busy_and_nothing_else(self) -> None:
        datasets = [
            clone("jfw1"),
            clone("jfw2", build="17"),
            clone("jfw3", owner=OTHER),
            clone("jfw4", owner=None),
        ]
        actions = plan(datasets, [jail("jfw1"), jail("jfw3"), jail("jfw5")], busy={"jfw1"},
                       everything=True)  # fmt: skip
        assert kinds(actions) == [
            ("remove_jail", "jfw1"),
            ("remove_jail", "jfw5"),
            ("destroy_clone", f"{JR}/jfw1"),
            ("destroy_clone", f"{JR}/jfw2"),
            ("leave", f"{JR}/jfw4"),
        ]
        assert {a.reason for a in actions if a.destructive} == {"farm going down"}

    def test_jail_without_a_clone_goes_only_from_our_jails_directory(self) -> None:
        actions = plan([], [jail("jfw1")], build_state={})
        assert [(a.kind, a.target, a.reason) for a in actions] == [
            ("remove_jail", "jfw1", "its clone is gone")
        ]
        assert plan([], [jail("jfw1")], build_state={}, busy={"jfw1"}) == []
        # `jailfarm smoke` runs jfsmoke from <root>/jfsmoke: not one of the jails dataset's.
        smoke = plan([], [jail("jfsmoke", "/tank/farm/jfsmoke")], build_state={})
        assert kinds(smoke) == [("leave", "jail jfsmoke")]
        unknown_root = plan_reap(
            OWNER, "jf", [], [jail("jfw1")], NOW, {}, jails_dataset=JR, jails_mountpoint=None
        )
        assert kinds(unknown_root) == [("leave", "jail jfw1")]

    def test_jail_not_running_from_its_clone_is_left_with_the_clone(self) -> None:
        actions = plan([clone("jfw1", expires=EARLIER)], [jail("jfw1", "/elsewhere/jfw1")])
        assert kinds(actions) == [("leave", "jail jfw1")]
        assert "not from its clone's mountpoint" in actions[0].reason

    def test_clone_without_a_jail_is_destroyed_alone(self) -> None:
        actions = plan([clone("jfw1", expires=EARLIER)])
        assert kinds(actions) == [("destroy_clone", f"{JR}/jfw1")]
        assert actions[0].jail == "jfw1" and actions[0].clone == f"{JR}/jfw1"
        assert dict(actions[0].lease)["jailfarm:expires"] == EARLIER

    def test_jail_removals_come_first_then_destroys_then_notes(self) -> None:
        datasets = [clone(f"jfw{i}", expires=EARLIER) for i in (3, 1, 2)]
        datasets.append(clone("jfw0", owner=None))
        actions = plan(datasets, [jail("jfw2"), jail("jfw3")])
        assert kinds(actions) == [
            ("remove_jail", "jfw2"),
            ("remove_jail", "jfw3"),
            ("destroy_clone", f"{JR}/jfw1"),
            ("destroy_clone", f"{JR}/jfw2"),
            ("destroy_clone", f"{JR}/jfw3"),
            ("leave", f"{JR}/jfw0"),
        ]

    def test_only_clones_directly_below_the_jails_dataset_with_our_prefix(self) -> None:
        old = {"expires": EARLIER}
        datasets = [
            clone("jfw1", name=f"{ROOT}/jfw1", **old),
            clone("jfw1", name=f"{ROOT}/jailsx/jfw1", **old),
            clone("x", name=f"{JR}/jfw1/data", **old),
            clone("x", name=f"{JR}/jfw1@g1", kind="snapshot", **old),
            clone("x", name=JR, **old),
            clone("x", name=f"{JR}/other", **old),
            clone("x", name=f"{JR}/jfvol", kind="volume", **old),
            clone("x", name=f"{JR}/jf.bad", **old),
        ]
        jails = [jail("w1"), jail("jfw1.b01", f"{MNT}/jfw1.b01")]
        actions = plan(datasets, jails, build_state={})
        assert [a.line() for a in actions] == [f"{JR}/jfvol: a volume, not a clone, left alone"]

    def test_a_name_listed_twice_is_left_alone(self) -> None:
        datasets = [clone("jfw1", expires=EARLIER), clone("jfw1", owner=OTHER, expires=EARLIER)]
        assert kinds(plan(datasets, [jail("jfw1")])) == [("leave", f"{JR}/jfw1")]


class PlanPropertyTests:
    leaves = st.sampled_from(["jfw1", "jfw2", "jfxw1", "jf", "other", "w1", "jfw1.b", "JF"])
    names = st.one_of(
        leaves.map(lambda leaf: f"{JR}/{leaf}"),
        leaves.map(lambda leaf: f"{ROOT}/{leaf}"),
        leaves.map(lambda leaf: f"{JR}/{leaf}/child"),
        leaves.map(lambda leaf: f"{JR}/{leaf}@g1"),
        leaves.map(lambda leaf: f"{ROOT}/jailsx/{leaf}"),
        st.just(JR),
    )
    datasets = st.builds(
        lambda name, owner, build, expires, kind, mounted: replace(
            clone("x", owner, build, expires, name=name, kind=kind),
            mountpoint=f"/tank/{name}" if mounted else None,
        ),
        names,
        st.sampled_from([OWNER, OTHER, None, ""]),
        st.sampled_from(["42", "17", "smoke", "", None]),
        st.sampled_from([EARLIER, LATER, "bogus", None]),
        st.sampled_from(["filesystem", "snapshot", "volume"]),
        st.booleans(),
    )
    jails = st.builds(
        lambda name, where: JailInfo(name, 1, f"{where}/{name}", "h"),
        leaves,
        st.sampled_from([MNT, "/tank/farm", f"/tank/{JR}", "/elsewhere"]),
    )

    @given(
        st.lists(datasets, max_size=8),
        st.lists(jails, max_size=5),
        st.none() | st.dictionaries(st.sampled_from(["42", "17", "smoke"]),
                                    st.sampled_from([FINISHED, RUNNING, NOT_A_BUILD])),
        st.frozensets(leaves),
        st.booleans(),
        st.sampled_from([MNT, None, f"/tank/{JR}"]),
    )  # fmt: skip
    def test_no_action_ever_targets_another_owner_or_leaves_our_jails(
        self,
        datasets: list[Dataset],
        jails: list[JailInfo],
        build_state: dict[str, str] | None,
        busy: frozenset[str],
        everything: bool,
        mountpoint: str | None,
    ) -> None:
        actions = plan_reap(
            OWNER, "jf", datasets, jails, NOW, build_state, busy, everything,
            jails_dataset=JR, jails_mountpoint=mountpoint,
        )  # fmt: skip
        owners: dict[str, set[str | None]] = {}
        for d in datasets:
            owners.setdefault(d.name, set()).add(d.user.get("jailfarm:owner"))
        for a in actions:
            if not a.destructive:
                continue
            dataset = a.target if a.kind == "destroy_clone" else f"{JR}/{a.target}"
            leaf = dataset.removeprefix(f"{JR}/")
            assert dataset.startswith(f"{JR}/jf"), a
            assert "/" not in leaf and "@" not in leaf, a
            # Ours, or (a jail only) no dataset of that name at all; never anyone else's.
            assert owners.get(dataset, {OWNER}) == {OWNER}, a
            if a.kind == "remove_jail":
                assert any(j.name == a.target for j in jails), a
        order = [a.kind for a in actions]
        assert order == sorted(order, key=["remove_jail", "destroy_clone", "leave"].index)


# ---------------------------------------------------------------------- executor


class FakeJails(Jails):
    """Running jails in memory; `fail[name]` makes removing that jail raise."""

    capabilities = frozenset()

    def __init__(self, *running: JailInfo) -> None:
        self.running = {j.name: j for j in running}
        self.fail: dict[str, Exception] = {}
        self.calls: list[str] = []

    async def start(self, spec: JailSpec) -> JailInfo:
        raise AssertionError("the reaper never starts a jail")

    async def remove(self, name: str, timeout: float | None = None) -> None:
        self.calls.append(f"remove {name}")
        if name in self.fail:
            raise self.fail[name]
        self.running.pop(name, None)

    async def unmount_below(self, path: str) -> list[str]:
        self.calls.append(f"unmount below {path}")
        return []

    async def list(self) -> list[JailInfo]:
        self.calls.append("list")
        return list(self.running.values())

    def exec_cmd(self, name: str, argv: Sequence[str], *args: Any, **kwargs: Any) -> Cmd:
        raise AssertionError("the reaper never runs commands in a jail")


class FakeZfs(Zfs):
    """Datasets in memory; `fail[name]` makes destroying that dataset raise."""

    def __init__(self, *datasets: Dataset) -> None:
        super().__init__(FakeRunner(), ROOT, clock=Clock())
        self.datasets = {d.name: d for d in datasets}
        self.fail: dict[str, Exception] = {}
        self.calls: list[str] = []

    async def info(self, dataset: str, user_props: Iterable[str] = ()) -> Dataset | None:
        self.calls.append(f"info {dataset}")
        return self.datasets.get(dataset)

    async def destroy(
        self, dataset: str, recursive: bool = False, attempts: int = 6, delay: float = 0.1
    ) -> None:
        self.calls.append(f"destroy{' -r' if recursive else ''} {dataset}")
        if dataset in self.fail:
            raise self.fail[dataset]
        self.datasets.pop(dataset, None)


@dataclass
class Host:
    zfs: FakeZfs
    jails: FakeJails
    lines: list[str]

    @property
    def platform(self) -> HostPlatform:
        return HostPlatform("linux-dev", self.zfs, self.jails, "/run")

    def reap(self, actions: Sequence[ReapAction], **kw: Any) -> ReapReport:
        return resolve(reap(self.platform, actions, self.lines.append, **kw))


def host(datasets: Sequence[Dataset], jails: Sequence[JailInfo]) -> Host:
    return Host(FakeZfs(*datasets), FakeJails(*jails), [])


class ReapTests:
    def test_a_failing_action_does_not_stop_the_rest(self) -> None:
        datasets = [clone(f"jfw{i}", expires=EARLIER) for i in (1, 2, 3)]
        h = host(datasets, [jail("jfw1"), jail("jfw2")])
        h.jails.fail["jfw1"] = JailError("jail jfw1 was not removed cleanly: stuck")
        h.zfs.fail[f"{JR}/jfw2"] = ZfsError(f"cannot destroy {JR}/jfw2: still busy")
        report = h.reap(plan(datasets, [jail("jfw1"), jail("jfw2")]))
        assert not report.ok
        assert [(a.kind, a.target) for a, _ in report.failed] == [
            ("remove_jail", "jfw1"),
            ("destroy_clone", f"{JR}/jfw1"),
            ("destroy_clone", f"{JR}/jfw2"),
        ]
        assert kinds(report.done) == [("remove_jail", "jfw2"), ("destroy_clone", f"{JR}/jfw3")]
        # The clone of a jail that could not be removed is not even tried.
        assert f"destroy -r {JR}/jfw1" not in h.zfs.calls
        assert set(h.zfs.datasets) == {f"{JR}/jfw1", f"{JR}/jfw2"}
        assert h.lines == [
            "FAILED to remove jail jfw1 (lease expired 312 s ago): jail jfw1 was not removed "
            "cleanly: stuck",
            "removed jail jfw2: lease expired 312 s ago",
            f"FAILED to destroy clone {JR}/jfw1 (lease expired 312 s ago): jail jfw1 could "
            "not be removed, so its clone stays",
            f"FAILED to destroy clone {JR}/jfw2 (lease expired 312 s ago): cannot destroy "
            f"{JR}/jfw2: still busy",
            f"destroyed clone {JR}/jfw3: lease expired 312 s ago",
        ]
        assert report.summary() == "reap: 2 action(s) done, 3 failed, 0 left alone"

    def test_dry_run_runs_nothing(self) -> None:
        datasets = [clone("jfw1", expires=EARLIER), clone("jfw2", owner=None)]
        h = host(datasets, [jail("jfw1")])
        report = h.reap(plan(datasets, [jail("jfw1")]), dry_run=True)
        assert h.zfs.calls == [] and h.jails.calls == []
        assert h.lines == [
            "would remove jail jfw1: lease expired 312 s ago",
            f"would destroy clone {JR}/jfw1: lease expired 312 s ago",
            f"{JR}/jfw2: unowned, left alone",
        ]
        assert report.ok and len(report.done) == 2 and len(report.left) == 1
        assert report.summary() == "reap (dry run): 2 action(s) would run, 0 failed, 1 left alone"

    def test_jail_removals_run_before_clone_destroys_whatever_the_order_given(self) -> None:
        datasets = [clone("jfw1", expires=EARLIER)]
        h = host(datasets, [jail("jfw1")])
        h.reap(list(reversed(plan(datasets, [jail("jfw1")]))))
        # The clone's mount table is swept before the destroy (what the jail left mounted).
        assert h.jails.calls == ["remove jfw1", "unmount below /tank/farm/jails/jfw1"]
        assert h.zfs.calls == [f"info {JR}/jfw1", f"info {JR}/jfw1", f"destroy -r {JR}/jfw1"]

    def test_a_worker_that_took_the_name_meanwhile_is_spared(self) -> None:
        old = clone("jfw1", build="41")
        actions = plan([old], [jail("jfw1")], build_state={"41": FINISHED})
        # Between plan and execution the worker stopped and a new build cloned jfw1 again.
        h = host([clone("jfw1", build="43")], [jail("jfw1")])
        report = h.reap(actions)
        assert h.jails.calls == [] and f"destroy -r {JR}/jfw1" not in h.zfs.calls
        assert report.ok and report.done == ()
        assert h.lines == [
            f"jail jfw1: the lease of {JR}/jfw1 changed meanwhile, left alone",
            f"{JR}/jfw1: the lease of {JR}/jfw1 changed meanwhile, left alone",
        ]

    def test_keep_spares_a_worker_that_became_busy(self) -> None:
        datasets = [clone("jfw1", build="17"), clone("jfw2", build="17")]
        h = host(datasets, [])
        report = h.reap(plan(datasets, build_state={}), keep=lambda name: name == "jfw1")
        assert kinds(report.done) == [("destroy_clone", f"{JR}/jfw2")]
        assert h.lines[0] == f"{JR}/jfw1: worker jfw1 became busy, left alone"

    def test_a_clone_already_gone_is_done(self) -> None:
        actions = plan([clone("jfw1", expires=EARLIER)])
        report = host([], []).reap(actions)
        assert report.ok and kinds(report.done) == [("destroy_clone", f"{JR}/jfw1")]

    def test_each_action_is_logged_once(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            datasets = [clone("jfw1", expires=EARLIER)]
            host(datasets, [jail("jfw1")]).reap(plan(datasets, [jail("jfw1")]))
        finally:
            globalLogPublisher.removeObserver(events.append)
        ours = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("reaper")]
        assert ours == [
            "reaper: removed jail jfw1: lease expired 312 s ago",
            f"reaper: destroyed clone {JR}/jfw1: lease expired 312 s ago",
        ]


# ---------------------------------------------------------------------- reap_command


FARM_TOML = """\
[farm]
platform = "linux-dev"
name = "alpha"
state_dir = "{state}"
[zfs]
pool = "tank"
root = "tank/farm"
[[poudriere.jails]]
name = "141amd64"
version = "14.1-RELEASE"
[[trees]]
name = "default"
url = "https://git.FreeBSD.org/ports.git"
"""
LIST = get_cmd([JR], [*LIST_PROPERTIES, *LEASE_PROPERTIES], depth=1).argv
NSJAIL = (sys.executable, "-m", "jailfarm.host.nsjail")


def info_argv(dataset: str) -> tuple[str, ...]:
    return get_cmd([dataset], [*LIST_PROPERTIES, *LEASE_PROPERTIES]).argv


def zfs_get(*datasets: Dataset) -> str:
    """`zfs get -H -p -o name,property,value` output for these datasets (and the parent)."""
    rows = [f"{JR}\ttype\tfilesystem", f"{JR}\tmountpoint\t{MNT}", f"{JR}\tmounted\tyes"]
    for d in datasets:
        rows += [f"{d.name}\ttype\t{d.type}", f"{d.name}\tmountpoint\t{d.mountpoint}"]
        rows += [f"{d.name}\tmounted\tyes", f"{d.name}\torigin\t{d.origin}"]
        rows += [f"{d.name}\t{k}\t{v}" for k, v in d.user.items()]
    return "\n".join(rows) + "\n"


def nsjail_list(*jails: JailInfo) -> str:
    return json.dumps(
        [{"name": j.name, "pid": j.jid, "pidns": 4026532000 + j.jid, "root": j.path,
          "hostname": j.hostname} for j in jails]
    )  # fmt: skip


class ReapCommandTests:
    def test_reports_each_action_and_fails_when_one_fails(self, tmp_path: Path) -> None:
        (tmp_path / "farm.toml").write_text(FARM_TOML.format(state=tmp_path))
        cfg = load_farm(tmp_path / "farm.toml")
        state_dir = f"{tmp_path}/run/jails"
        now = int(time.time())  # reap_command reads the clock itself
        expired = clone("jfw1", expires=str(now - 30))
        fresh = clone("jfw2", build="17", expires=str(now + 3600))
        runner = FakeRunner()
        runner.expect(*NSJAIL, "list", "--state-dir", state_dir, stdout=nsjail_list())
        runner.expect(*LIST, stdout=zfs_get(expired, fresh))
        runner.expect(*info_argv(expired.name), stdout=zfs_get(expired))
        runner.expect(*destroy_cmd(expired.name, recursive=True).argv, rc=1,
                      stderr="cannot destroy: permission denied\n")  # fmt: skip
        lines: list[str] = []
        rc = resolve(reap_command(cfg, runner, False, False, lines.append))
        runner.assert_all_commands_ran()
        assert rc == 1
        assert lines[0].startswith(f"FAILED to destroy clone {JR}/jfw1 (lease expired ")
        assert lines[0].endswith("permission denied")
        assert lines[1] == "reap: 0 action(s) done, 1 failed, 0 left alone"

    def test_dry_run_with_all_only_lists(self, tmp_path: Path) -> None:
        (tmp_path / "farm.toml").write_text(FARM_TOML.format(state=tmp_path))
        cfg = load_farm(tmp_path / "farm.toml")
        runner = FakeRunner()
        runner.expect(*NSJAIL, "list", "--state-dir", f"{tmp_path}/run/jails",
                      stdout=nsjail_list(jail("jfw2")))  # fmt: skip
        runner.expect(*LIST, stdout=zfs_get(clone("jfw2", expires=str(int(time.time()) + 99))))
        lines: list[str] = []
        assert resolve(reap_command(cfg, runner, True, True, lines.append)) == 0
        runner.assert_all_commands_ran()
        assert lines == [
            "would remove jail jfw2: farm going down",
            f"would destroy clone {JR}/jfw2: farm going down",
            "reap (dry run): 2 action(s) would run, 0 failed, 0 left alone",
        ]


# ---------------------------------------------------------------------- service


class BuildStateTests:
    def test_data_api_answers_map_to_states(self) -> None:
        assert build_state_of(None) is None
        assert build_state_of({"buildid": 42, "complete": True}) == FINISHED
        assert build_state_of({"buildid": 42, "complete": False}) == RUNNING

    def test_busy_workers_are_those_the_master_is_working_on(self) -> None:
        workers = [
            FakeWorker("jfw1", States.SUBSTANTIATED),
            FakeWorker("jfw2", States.SUBSTANTIATING_STARTING),
            FakeWorker("jfw3", States.INSUBSTANTIATING),
            FakeWorker("jfw4", States.NOT_SUBSTANTIATED),
            FakeWorker("jfw5", States.SHUT_DOWN),
            FakeWorker("plain", None, conn=object()),
        ]
        assert busy_workers(workers) == {"jfw1", "jfw2", "jfw3", "plain"}


@dataclass
class FakeWorker:
    """What the service reads of a buildbot worker: its name, latent state and connection."""

    workername: str
    state: States | None
    conn: object = None


class ReaperServiceTests(TestReactorMixin, unittest.TestCase):
    @deferred_test
    async def setUp(self) -> None:
        self.setup_test_reactor()
        self.master = await fakemaster.make_master(self, wantData=True)
        await self.master.db.insert_test_data(
            [
                fakedb.Master(id=92),
                fakedb.Worker(id=13, name="jfw1"),
                fakedb.Builder(id=79, name="bulk"),
                fakedb.Buildset(id=98),
                fakedb.BuildRequest(id=11, buildsetid=98, builderid=79),
                fakedb.Build(id=42, buildrequestid=11, builderid=79, workerid=13, masterid=92,
                             complete_at=1304262223, results=0),
                fakedb.Build(id=43, buildrequestid=11, builderid=79, workerid=13, masterid=92),
            ]
        )  # fmt: skip
        state = Path(tempfile.mkdtemp(prefix="jf-reaper-"))
        self.addCleanup(shutil.rmtree, state, ignore_errors=True)
        (state / "farm.toml").write_text(FARM_TOML.format(state=state))
        self.toml = str(state / "farm.toml")
        self.state_dir = f"{state}/run/jails"
        self.runner = FakeRunner()
        self.service = ReaperService(self.toml, interval=60, runner=self.runner)
        await self.service.setServiceParent(self.master)
        self.master.reactor.advance(NOW)  # lease times are epoch seconds

    def expect_survey(self, jails: Sequence[JailInfo], datasets: Sequence[Dataset]) -> None:
        self.runner.expect(
            *NSJAIL, "list", "--state-dir", self.state_dir, stdout=nsjail_list(*jails)
        )
        self.runner.expect(*LIST, stdout=zfs_get(*datasets))

    def expect_destroy(self, ds: Dataset, with_jail: bool) -> None:
        if with_jail:
            self.runner.expect(*info_argv(ds.name), stdout=zfs_get(ds))
            stop = ("stop", "--name", ds.name.rsplit("/", 1)[1], "--state-dir", self.state_dir)
            self.runner.expect(*NSJAIL, *stop, "--timeout", "10.0")
        self.runner.expect(*info_argv(ds.name), stdout=zfs_get(ds))
        self.runner.expect(*destroy_cmd(ds.name, recursive=True).argv)

    @deferred_test
    async def test_first_sweep_at_start_asks_the_data_api_and_reaps_finished_builds(self) -> None:
        finished = clone("jfw1", build="42")  # complete in the database
        running = clone("jfw2", build="43")  # not complete
        unknown_busy = clone("jfw3", build="99")  # no such build, but its worker is busy
        unknown = clone("jfw4", build="77")
        smoke = clone("jfw5", build="smoke")  # not a build id: only expiry ends it
        foreign = clone("jfw6", owner=OTHER, build="42")
        self.master.workers.workers["jfw3"] = FakeWorker("jfw3", States.SUBSTANTIATED)
        self.expect_survey(
            [jail("jfw1"), jail("jfw2"), jail("jfw6")],
            [finished, running, unknown_busy, unknown, smoke, foreign],
        )
        self.expect_destroy(finished, with_jail=True)
        self.expect_destroy(unknown, with_jail=False)
        await self.service.startService()
        await self.service.stopService()  # waits for the sweep started at startService
        self.runner.assert_all_commands_ran()
        (report,) = self.service.last_reports
        assert [(a.kind, a.target, a.reason) for a in report.done] == [
            ("remove_jail", "jfw1", "build 42 finished"),
            ("destroy_clone", f"{JR}/jfw1", "build 42 finished"),
            ("destroy_clone", f"{JR}/jfw4", "build 77 unknown to this master"),
        ]

    @deferred_test
    async def test_sweeps_repeat_every_interval_and_survive_a_failing_host(self) -> None:
        self.runner.expect(
            *NSJAIL, "list", "--state-dir", self.state_dir, rc=1, stderr="nsjail: broken\n"
        )
        expired = clone("jfw1", expires=EARLIER)
        self.expect_survey([], [expired])
        self.expect_destroy(expired, with_jail=False)
        await self.service.startService()
        assert len(self.runner.calls) == 1 and self.service.last_reports == []
        self.master.reactor.advance(59)
        assert len(self.runner.calls) == 1
        self.master.reactor.advance(1)
        await self.service.stopService()
        self.runner.assert_all_commands_ran()
        assert kinds(self.service.last_reports[0].done) == [("destroy_clone", f"{JR}/jfw1")]

    @deferred_test
    async def test_notes_are_logged_once_not_every_sweep(self) -> None:
        unowned = clone("jfw1", owner=None)
        self.expect_survey([], [unowned])
        self.expect_survey([], [unowned])
        await self.service.startService()
        (first,) = self.service.last_reports
        assert [a.line() for a in first.left] == [f"{JR}/jfw1: unowned, left alone"]
        self.master.reactor.advance(60)
        await self.service.stopService()
        self.runner.assert_all_commands_ran()
        assert self.service.last_reports == []


def test_service_config_is_checked_without_io() -> None:
    from buildbot.config.errors import ConfigErrors, capture_config_errors

    with pytest.raises(ConfigErrors) as info, capture_config_errors(raise_on_error=True):
        ReaperService("", interval=0)
    assert "farm_toml must be the path of farm.toml" in str(info.value)
    assert ReaperService("/nonexistent/farm.toml").name == "jailfarm-reaper"
