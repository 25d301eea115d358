"""`jailfarm up` / `provision` on the Linux dev host: plans for examples/farm.toml against the
answers of a described host (fresh, half: pool there but no master, fully up), the stat and
/proc parsers, and the in-process actions of the engine (provision/linuxdev.py, plan.py).

The answer texts are those measured on the Debian 12 dev host (GNU stat 9.1, zfs-fuse 0.7.0):
`stat: cannot statx 'P': No such file or directory`, zfs-fuse's "Please make sure that the
zfs-fuse daemon is running." and zfs's "cannot open 'D': dataset does not exist".
"""

from __future__ import annotations

import argparse
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from jailfarm.cmd import Cmd, Result
from jailfarm.config import FarmConfig, load_farm
from jailfarm.errors import FarmError, ParseError
from jailfarm.provision import linuxdev
from jailfarm.provision.nginx import render_index_html, render_nginx_conf, site_from_config
from jailfarm.provision.plan import (
    Action,
    Answer,
    ApplyError,
    Facts,
    Plan,
    Step,
    apply_plan,
    fact_key,
    format_plan,
    parse_stat,
)
from jailfarm.workers.layout import CURRENT, templates_dataset

ROOT = Path(__file__).resolve().parents[2]
NOT_RUNNING = (
    "connect: No such file or directory\nPlease make sure that the zfs-fuse daemon is running.\n"
    "internal error: failed to initialize ZFS library\n"
)


def config() -> FarmConfig:
    return load_farm(ROOT / "examples" / "farm.toml")


def context() -> linuxdev.Context:
    return linuxdev.Context(
        farm_toml_path=str(ROOT / "examples" / "farm.toml"),
        farm_toml=(ROOT / "examples" / "farm.toml").read_text(),
        master_cfg="# master.cfg\n",
        bin_dir="/opt/jf/bin",
        ids="0:0",
        demo_tree=str(ROOT / "examples" / "ports"),
    )


@dataclass
class DevHostModel:
    """A Linux dev host described by what is there; answers fact queries as the real one."""

    daemon: bool = False
    pools: set[str] = field(default_factory=set)
    datasets: set[str] = field(default_factory=set)
    template_current: str | None = None
    dirs: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)
    procs: dict[int, str] = field(default_factory=dict)

    def exists(self, path: str) -> bool:
        return path in self.dirs or path in self.files

    def answer(self, cmd: Cmd) -> Answer:  # noqa: PLR0911 (one branch per query)
        argv = cmd.argv
        if argv[:2] == ("zpool", "list"):
            return (
                Answer(0, "".join(f"{p}\n" for p in self.pools))
                if self.daemon
                else Answer(1, "", NOT_RUNNING)
            )
        if argv[:2] == ("zfs", "list"):
            return Answer(0, "".join(f"{d}\n" for d in sorted(self.datasets)))
        if argv[:2] == ("zfs", "get"):
            return self.zfs_get(argv[-1])
        if argv[0] == "stat":
            path = argv[-1]
            if path in self.dirs:
                return Answer(0, "0:0:755:directory\n")
            if path in self.files:
                return Answer(0, "0:0:644:regular file\n")
            return Answer(1, "", f"stat: cannot statx '{path}': No such file or directory\n")
        if argv[0] == "cat":
            return self.cat(argv[1])
        raise AssertionError(f"unexpected query {shlex.join(argv)}")

    def cat(self, path: str) -> Answer:
        parts = path.split("/")
        if path.startswith("/proc/") and parts[2].isdigit():
            comm = self.procs.get(int(parts[2]))
            if comm is None:
                return Answer(1, "", f"cat: {path}: No such file or directory\n")
            if parts[3] == "comm":
                return Answer(0, comm + "\n")
            return Answer(0, f"{parts[2]} ({comm}) S 1 1 1 0 -1\n")
        if path in self.files:
            return Answer(0, self.files[path])
        return Answer(1, "", f"cat: {path}: No such file or directory\n")

    def zfs_get(self, dataset: str) -> Answer:
        if dataset not in self.datasets:
            return Answer(1, "", f"cannot open '{dataset}': dataset does not exist\n")
        current = self.template_current or "-"
        rows = [
            f"{dataset}\ttype\tfilesystem",
            f"{dataset}\t{CURRENT}\t{current}",
        ]
        if self.template_current:
            snap = f"{dataset}@{self.template_current}"
            rows += [f"{snap}\ttype\tsnapshot", f"{snap}\tcreation\t1700000000"]
        return Answer(0, "".join(f"{r}\n" for r in rows))

    def facts(self, cfg: FarmConfig, ctx: linuxdev.Context) -> Facts:
        """`plan.gather`, synchronously."""
        answers: dict[str, Answer] = {}
        for _ in range(6):
            todo = [q for q in linuxdev.queries(cfg, ctx)(Facts(dict(answers)))]
            todo = [q for q in todo if fact_key(q) not in answers]
            if not todo:
                return Facts(answers)
            for q in todo:
                answers[fact_key(q)] = self.answer(q)
        raise AssertionError("facts did not settle")


def _parents(*paths: str) -> set[str]:
    out: set[str] = set()
    for path in paths:
        p = path
        while p not in ("/", ""):
            out.add(p)
            p = posixpath.dirname(p)
    return out


def half_up(cfg: FarmConfig) -> DevHostModel:
    """zfs-fuse running, the pool, datasets and template there; no master, nginx, key."""
    return DevHostModel(
        daemon=True,
        pools={cfg.zfs.pool},
        datasets={cfg.zfs.pool, cfg.zfs.root, f"{cfg.zfs.root}/jails", templates_dataset(cfg)},
        template_current="g1",
        dirs=_parents(cfg.state_dir) | {f"{cfg.state_dir}/run"},
        files={linuxdev.pool_image(cfg): ""},
    )


def fully_up(cfg: FarmConfig, ctx: linuxdev.Context) -> DevHostModel:
    host = half_up(cfg)
    site = site_from_config(cfg)
    master = linuxdev.master_dir(cfg)
    key = cfg.signing.key_file or ""
    host.dirs |= _parents(*linuxdev.repository_dirs(cfg), master, site.temp_dir)
    host.dirs |= _parents(site.html_root, f"{site.prefix}/logs", posixpath.dirname(key))
    host.dirs.add("/var/lib/jailfarm/src/ports.git")
    host.files |= {
        key: "key",
        linuxdev.public_key_file(key): "pub",
        f"{master}/buildbot.tac": "tac",
        f"{master}/twistd.pid": "4242\n",
        f"{master}/master.cfg": ctx.master_cfg,
        f"{master}/farm.toml": ctx.farm_toml,
        site.conf_file: render_nginx_conf(site),
        f"{site.html_root}/index.html": render_index_html(site),
        site.pid_file: "4343\n",
    }
    host.procs = {4242: "buildbot", 4343: "nginx"}
    return host


def plan_for(host: DevHostModel) -> Plan:
    cfg, ctx = config(), context()
    return linuxdev.plan_linuxdev(cfg, ctx, host.facts(cfg, ctx))


def names(plan: Plan) -> list[str]:
    return [s.name for s in plan.steps]


class PlanTests:
    def test_fresh_host_plans_everything_in_order(self) -> None:
        plan = plan_for(DevHostModel())
        assert plan.problems == ()
        assert names(plan) == [
            "zfs-fuse",
            "pool",
            "datasets",
            "worker-template",
            "ports-tree-default",
            "repository-directories",
            "signing-key",
            "master-basedir",
            "master",
            "nginx-directories",
            "nginx-config",
            "nginx",
        ]
        assert plan.destructive == ()

    def test_fresh_pool_is_created_on_its_file_with_owned_datasets(self) -> None:
        cfg = config()
        steps = {s.name: s for s in plan_for(DevHostModel()).steps}
        image = linuxdev.pool_image(cfg)
        assert [c.argv for c in steps["pool"].commands] == [
            ("mkdir", "-p", "/var/lib/jailfarm"),
            ("truncate", "-s", str(4 << 30), image),
            ("zpool", "create", "-m", "/jf", "jailfarm", image),
        ]
        assert [c.argv for c in steps["datasets"].commands] == [
            ("zfs", "create", "-p", "-o", "jailfarm:owner=demo", "jailfarm/demo"),
            ("zfs", "create", "-o", "jailfarm:owner=demo", "jailfarm/demo/jails"),
        ]
        assert steps["datasets"].creates == ("jailfarm/demo", "jailfarm/demo/jails")
        assert steps["worker-template"].commands[0].argv == (
            "/opt/jf/bin/jailfarm",
            "template",
            "build",
            "-c",
            str(ROOT / "examples" / "farm.toml"),
        )

    def test_repository_dirs_record_the_first_directory_made(self) -> None:
        host = DevHostModel(dirs={"/var", "/var/lib"})
        step = next(s for s in plan_for(host).steps if s.name.startswith("repository"))
        assert step.creates == ("/var/lib/jailfarm",)
        # Never a top-level directory, even if it is missing: `down` removes what is recorded.
        step = next(s for s in plan_for(DevHostModel()).steps if s.name.startswith("repository"))
        assert step.creates == ("/var/lib",)
        step = next(s for s in plan_for(half_up(config())).steps if s.name.startswith("repository"))
        assert step.creates == (
            "/var/lib/jailfarm/repo",
            "/var/lib/jailfarm/logs",
            "/var/lib/jailfarm/incoming",
        )

    def test_signing_key_is_0600_before_it_holds_the_key(self) -> None:
        step = next(s for s in plan_for(DevHostModel()).steps if s.name == "signing-key")
        argv = [c.argv for c in step.commands]
        key = "/var/lib/jailfarm/keys/repo.key"
        made = argv.index(("install", "-m", "0600", "/dev/null", f"{key}.new"))
        written = argv.index(("openssl", "genrsa", "-out", f"{key}.new", "4096"))
        # Renamed into place only when complete: a failed openssl leaves no empty key.
        assert made < written < argv.index(("mv", f"{key}.new", key))
        assert step.creates == (key,)

    def test_half_up_host_plans_only_what_is_missing(self) -> None:
        plan = plan_for(half_up(config()))
        assert names(plan) == [
            "ports-tree-default",
            "repository-directories",
            "signing-key",
            "master-basedir",
            "master",
            "nginx-directories",
            "nginx-config",
            "nginx",
        ]
        master = next(s for s in plan.steps if s.name == "master")
        assert [f.path.rsplit("/", 1)[1] for f in master.files] == ["master.cfg", "farm.toml"]
        assert [a.text for a in master.actions] == [
            "/opt/jf/bin/buildbot start /var/lib/jailfarm/master"
        ]

    def test_fully_up_host_plans_nothing(self) -> None:
        plan = plan_for(fully_up(config(), context()))
        assert plan == Plan()
        assert "nothing to do" in format_plan(plan)

    def test_dead_master_is_started_again(self) -> None:
        host = fully_up(config(), context())
        del host.procs[4242]
        assert names(plan_for(host)) == ["master"]

    def test_other_process_behind_nginx_pid_is_not_nginx(self) -> None:
        host = fully_up(config(), context())
        host.procs[4343] = "python3"  # the pid was reused: start nginx, never signal 4343
        assert names(plan_for(host)) == ["nginx"]

    def test_changed_farm_toml_reconfigures_the_running_master(self) -> None:
        host = fully_up(config(), context())
        host.files["/var/lib/jailfarm/master/farm.toml"] = "# old\n"
        (step,) = plan_for(host).steps
        assert step.name == "master-config"
        assert step.commands[0].argv[1:] == ("reconfig", "/var/lib/jailfarm/master")

    def test_imported_pool_defers_its_datasets_to_the_next_round(self) -> None:
        cfg = config()
        host = DevHostModel(files={linuxdev.pool_image(cfg): ""})
        plan = plan_for(host)
        assert names(plan)[:2] == ["zfs-fuse", "pool-import"]
        assert "datasets" not in names(plan)
        assert any("planned once it is imported" in n for n in plan.notes)

    def test_missing_demo_tree_is_a_problem(self) -> None:
        cfg = config()
        ctx = linuxdev.Context("/f.toml", "", "", "/bin", demo_tree=None)
        plan = linuxdev.plan_linuxdev(cfg, ctx, DevHostModel().facts(cfg, ctx))
        assert any("no demo tree" in p for p in plan.problems)

    def test_unexpected_zpool_error_is_a_parse_error(self) -> None:
        cfg, ctx = config(), context()
        facts = DevHostModel().facts(cfg, ctx)
        answers = dict(facts.answers)
        answers[fact_key(linuxdev.ZPOOLS)] = Answer(2, "", "zpool: permission denied\n")
        with pytest.raises(ParseError):
            linuxdev.plan_linuxdev(cfg, ctx, Facts(answers))


class ParserTests:
    @pytest.mark.parametrize(
        ("out", "kind", "is_dir"),
        [
            ("0:0:1777:directory\n", "directory", True),
            ("0:0:755:regular file\n", "regular file", False),
        ],
    )
    def test_gnu_stat(self, out: str, kind: str, is_dir: bool) -> None:
        st = parse_stat(Answer(0, out), "/tmp")
        assert st is not None and st.kind == kind and st.is_dir is is_dir

    def test_gnu_stat_missing(self) -> None:
        err = "stat: cannot statx '/nonexist': No such file or directory\n"
        assert parse_stat(Answer(1, "", err), "/nonexist") is None

    @pytest.mark.parametrize(
        ("answer", "alive"),
        [
            (Answer(0, "1 (process_api) S 0 0 0 0 -1 4194560\n"), True),
            (Answer(0, "7 (a) b) Z 1 7\n"), False),
            (Answer(1, "", "cat: /proc/9/stat: No such file or directory\n"), False),
        ],
    )
    def test_proc_stat(self, answer: Answer, alive: bool) -> None:
        assert linuxdev.parse_alive(answer) is alive


class FakeRunner:
    def __init__(self) -> None:
        self.calls: list[Cmd] = []

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        self.calls.append(cmd)
        return defer.succeed(Result(cmd, 0, "", ""))


class ActionTests:
    def run(self, plan: Plan, **kw: object) -> tuple[FakeRunner, list[str]]:
        runner, said = FakeRunner(), []
        d = defer.ensureDeferred(apply_plan(plan, runner, said.append, **kw))  # type: ignore[arg-type]
        failures: list[object] = []
        d.addErrback(failures.append)
        if failures:
            failures[0].raiseException()  # type: ignore[attr-defined]
        return runner, said

    def test_actions_run_after_commands_and_steps_are_announced(self) -> None:
        done: list[str] = []

        async def act(runner: object, say: object) -> None:
            done.append("act")

        seen: list[str] = []
        step = Step("s", "why", commands=(Cmd(("true",)),), actions=(Action("act", act),))
        runner, said = self.run(Plan((step,)), before_step=lambda s: seen.append(s.name))
        assert [c.argv for c in runner.calls] == [("true",)]
        assert done == ["act"] and seen == ["s"] and said == ["[1/1] s"]
        assert "  do: act" in format_plan(Plan((step,)))

    def test_failing_action_names_the_step(self) -> None:
        async def fail(runner: object, say: object) -> None:
            raise FarmError("no socket")

        with pytest.raises(ApplyError, match="step s failed: start: no socket"):
            self.run(Plan((Step("s", "why", actions=(Action("start", fail),)),)))


class ProvisionCommandTests:
    """`jailfarm provision plan --facts FILE` on a linux-dev farm.toml (provcli.py)."""

    def plan(self, host: DevHostModel, tmp_path: Path) -> tuple[int, list[str]]:
        from jailfarm.provision import provcli

        cfg = config()
        ctx = context()
        facts = tmp_path / "facts.json"
        facts.write_text(host.facts(cfg, ctx).to_json())
        args = argparse.Namespace(
            provision_command="plan",
            config=str(ROOT / "examples" / "farm.toml"),
            save_facts=None,
            allow_destroy=False,
            facts=str(facts),
        )
        said: list[str] = []
        results: list[int] = []
        defer.ensureDeferred(provcli.run(cfg, args, FakeRunner(), said.append)).addBoth(
            results.append
        )
        (rc,) = results
        return rc, said

    def test_fresh_host_plans_steps(self, tmp_path: Path) -> None:
        rc, said = self.plan(DevHostModel(), tmp_path)
        assert rc == 3
        text = "\n".join(said)
        assert "12 step(s):" in text
        assert "[1/12] zfs-fuse" in text
        assert "  do: zfs-fuse --pidfile /var/lib/jailfarm/run/zfs-fuse.pid" in text

    def test_recorded_facts_missing_a_query_say_so(self, tmp_path: Path) -> None:
        from jailfarm.provision import provcli

        facts = tmp_path / "facts.json"
        facts.write_text("[]\n")
        args = argparse.Namespace(
            provision_command="plan",
            config=str(ROOT / "examples" / "farm.toml"),
            save_facts=None,
            allow_destroy=False,
            facts=str(facts),
        )
        failures: list[Any] = []
        d = defer.ensureDeferred(provcli.run(config(), args, FakeRunner(), lambda s: None))
        d.addErrback(failures.append)
        assert failures and failures[0].check(FarmError)
        assert "does not answer every query" in str(failures[0].value)
