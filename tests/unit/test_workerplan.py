"""What a worker jail is made of, without running anything: slots, leases, buildbot.tac, the
commands that write it, the jail spec and the space-guard message (`workers.workerplan` and
`workers.layout`; pure)."""

from __future__ import annotations

import ast
import inspect
import os
import sys
from typing import Any

import pytest
from buildbot_worker.bot import Worker

from jailfarm.cmd import Secret
from jailfarm.config import FarmConfig, parse_farm
from jailfarm.host.jailconf import jail_params
from jailfarm.workers import layout, workerplan
from jailfarm.workers.layout import WorkerSlot, worker_slots

MIB, GIB = 1 << 20, 1 << 30
PASSWORD = "s3cr'et\"pw"  # quotes on purpose: the tac must still be valid Python


def freebsd_farm(**sections: dict[str, Any]) -> FarmConfig:
    """A FreeBSD farm (as in test_preflight.py), with `sections` replacing whole tables."""
    data: dict[str, Any] = {
        "farm": {"platform": "freebsd", "name": "ci", "prefix": "jf"},
        "zfs": {"pool": "zroot", "root": "zroot/jf", "reserve": "10G"},
        "template": {"release": "14.1-RELEASE"},
        "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
        "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
        "signing": {"key_file": "/usr/local/etc/jailfarm/repo.key"},
    }
    data.update(sections)
    return parse_farm(data)


CFG = freebsd_farm(workers={"lease": 7200, "builders": 3, "memory_limit": "8G"})


class WorkerSlotTests:
    def test_slots_are_numbered_across_hosts_and_bound_to_their_host(self) -> None:
        cfg = freebsd_farm(
            jail_hosts=[
                {"name": "local", "max_jails": 2},
                {"name": "build2", "ssh": "build2.example.org", "max_jails": 3},
                {"name": "build3", "ssh": "build3.example.org", "max_jails": 1},
            ],
            workers={"master_address": "10.0.0.1"},
        )
        assert worker_slots(cfg) == (
            WorkerSlot("jfw1", "local"),
            WorkerSlot("jfw2", "local"),
            WorkerSlot("jfw3", "build2"),
            WorkerSlot("jfw4", "build2"),
            WorkerSlot("jfw5", "build2"),
            WorkerSlot("jfw6", "build3"),
        )

    def test_default_is_two_slots_on_this_machine(self) -> None:
        assert worker_slots(freebsd_farm()) == (
            WorkerSlot("jfw1", "local"),
            WorkerSlot("jfw2", "local"),
        )

    def test_names_carry_the_farm_prefix(self) -> None:
        cfg = freebsd_farm(farm={"platform": "freebsd", "prefix": "ci"})
        assert [s.name for s in worker_slots(cfg)] == ["ciw1", "ciw2"]

    def test_names_are_unique_and_each_host_gets_max_jails(self) -> None:
        cfg = freebsd_farm(
            jail_hosts=[
                {"name": f"h{i}", "ssh": f"h{i}.example.org", "max_jails": i} for i in (1, 4, 2)
            ],
            workers={"master_address": "10.0.0.1"},
        )
        slots = worker_slots(cfg)
        assert len({s.name for s in slots}) == len(slots) == 7
        assert [sum(s.host == h for s in slots) for h in ("h1", "h4", "h2")] == [1, 4, 2]

    def test_clone_dataset_is_below_the_jails_dataset(self) -> None:
        assert layout.clone_dataset(CFG, "jfw3") == "zroot/jf/jails/jfw3"
        assert layout.templates_dataset(CFG) == "zroot/jf/templates/worker"


class LeaseTests:
    def test_lease_names_owner_build_expiry_worker_and_host(self) -> None:
        lease = workerplan.lease(CFG, "jfw2", "build2", 42, 1_767_225_600.9)
        assert lease == {
            "jailfarm:owner": "ci",
            "jailfarm:build": "42",
            "jailfarm:expires": str(1_767_225_600 + 7200),
            "jailfarm:worker": "jfw2",
            "jailfarm:host": "build2",
        }
        assert tuple(lease) == layout.LEASE_PROPERTIES

    def test_lease_without_a_build_says_none(self) -> None:
        assert workerplan.lease(CFG, "jfw1", "local", None, 0.0)["jailfarm:build"] == "none"

    def test_expiry_follows_workers_lease(self) -> None:
        cfg = freebsd_farm(workers={"lease": 14400})
        assert workerplan.lease(cfg, "jfw1", "local", 1, 100.0)["jailfarm:expires"] == "14500"


def _worker_call(text: str) -> ast.Call:
    calls = [
        node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Worker"
    ]
    assert len(calls) == 1
    return calls[0]


class WorkerTacTests:
    def tac(self) -> Secret:
        return workerplan.worker_tac("10.17.0.2", 9989, "jfw1", PASSWORD)

    def test_tac_compiles(self) -> None:
        compile(self.tac().reveal(), "buildbot.tac", "exec")

    def test_tac_has_the_line_buildbot_worker_looks_for(self) -> None:
        # buildbot_worker.scripts.base.isWorkerDir() refuses to start a basedir whose
        # buildbot.tac lacks exactly this text.
        assert "Application('buildbot-worker')" in self.tac().reveal()

    def test_tac_is_a_secret(self) -> None:
        tac = self.tac()
        assert isinstance(tac, Secret)
        assert str(tac) == "***" and repr(tac) == "Secret('***')" and f"{tac}" == "***"
        assert PASSWORD not in str(tac)

    def test_worker_gets_master_port_name_password_and_basedir(self) -> None:
        call = _worker_call(self.tac().reveal())
        args = [
            workerplan.WORKER_DIR if isinstance(a, ast.Name) and a.id == "basedir" else a
            for a in call.args
        ]
        values = [a if isinstance(a, str) else ast.literal_eval(a) for a in args]
        assert values[:6] == ["10.17.0.2", 9989, "jfw1", PASSWORD, workerplan.WORKER_DIR, 600]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        # Binding against the installed buildbot-worker catches a renamed or missing argument.
        bound = inspect.signature(Worker).bind(*values, **kwargs)
        assert bound.arguments["protocol"] == "pb"
        assert bound.arguments["allow_shutdown"] == "signal"

    def test_basedir_is_the_workers_home(self) -> None:
        tree = ast.parse(self.tac().reveal())
        assigned = {
            node.targets[0].id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        }
        assert ast.literal_eval(assigned["basedir"]) == "/home/buildbot/worker"

    def test_a_secret_password_is_written_in_clear_into_the_tac(self) -> None:
        tac = workerplan.worker_tac("10.17.0.2", 9989, "jfw1", Secret("hunter2"))
        assert "'hunter2'" in tac.reveal()
        assert "***" not in tac.reveal()


class WriteWorkerFilesTests:
    ROOT = "/jf/jails/jfw1"

    def cmds(self) -> list[Any]:
        tac = workerplan.worker_tac("10.17.0.2", 9989, "jfw1", PASSWORD)
        return workerplan.write_worker_files(self.ROOT, tac)

    def test_argv_and_modes(self) -> None:
        worker = "/jf/jails/jfw1/home/buildbot/worker"
        assert [c.argv for c in self.cmds()] == [
            ("install", "-d", "-o", "1001", "-g", "1001", "-m", "0700", worker),
            ("dd", f"of={worker}/buildbot.tac", "status=none"),
            ("chmod", "0600", f"{worker}/buildbot.tac"),
            ("chown", "1001:1001", f"{worker}/buildbot.tac"),
        ]

    def test_the_tac_travels_on_stdin_only(self) -> None:
        cmds = self.cmds()
        tac = workerplan.worker_tac("10.17.0.2", 9989, "jfw1", PASSWORD)
        assert cmds[1].stdin == tac.reveal().encode()
        assert [c.stdin is None for c in cmds] == [True, False, True, True]
        for cmd in cmds:
            assert not any(PASSWORD in word for word in cmd.revealed_argv())
            assert PASSWORD not in str(cmd)
            assert not cmd.env


class JailSpecTests:
    def test_worker_profile_with_room_for_poudriere_and_a_memory_cap(self) -> None:
        spec = workerplan.jail_spec(CFG, "jfw1", "/jf/jails/jfw1")
        assert (spec.name, spec.path, spec.hostname) == ("jfw1", "/jf/jails/jfw1", "jfw1.ci")
        assert spec.profile == "worker"
        assert spec.children_max == 2 * (3 + 1)
        assert spec.rctl == (f"vmemoryuse:deny={8 * GIB}",)
        assert spec.devfs_ruleset == 4
        assert spec.private_network is False
        assert spec.delegated_datasets == () and spec.mounts == ()

    @pytest.mark.parametrize("builders", [1, 2, 5])
    def test_children_max_is_twice_builders_plus_one(self, builders: int) -> None:
        cfg = freebsd_farm(workers={"builders": builders})
        assert workerplan.jail_spec(cfg, "jfw1", "/j/jfw1").children_max == 2 * (builders + 1)

    def test_no_memory_limit_means_no_rctl_rule(self) -> None:
        spec = workerplan.jail_spec(freebsd_farm(), "jfw1", "/j/jfw1")
        assert spec.rctl == ()

    def test_farm_settings_reach_the_spec(self) -> None:
        cfg = freebsd_farm(workers={"private_network": True, "devfs_ruleset": 5})
        spec = workerplan.jail_spec(cfg, "jfw1", "/j/jfw1")
        assert spec.private_network is True and spec.devfs_ruleset == 5

    def test_spec_renders_under_the_worker_profile(self) -> None:
        # The smallest farm (one builder) still gives poudriere its 4 child jails.
        spec = workerplan.jail_spec(freebsd_farm(workers={"builders": 1}), "jfw1", "/j/jfw1")
        params = {p.name: p.value for p in jail_params(spec)}
        assert params["children.max"] == 4
        assert params["devfs_ruleset"] == 4


class CommandTests:
    def test_freebsd_worker_starts_from_the_package_path(self) -> None:
        assert workerplan.start_worker_argv("freebsd") == [
            "/usr/local/bin/buildbot-worker",
            "start",
            "--quiet",
            "/home/buildbot/worker",
        ]

    def test_linux_dev_worker_starts_from_the_projects_venv(self) -> None:
        argv = workerplan.start_worker_argv("linux-dev")
        assert argv[0] == os.path.join(os.path.dirname(sys.executable), "buildbot-worker")
        assert argv[1:] == ["start", "--quiet", "/home/buildbot/worker"]

    def test_alive_and_log_commands(self) -> None:
        assert workerplan.worker_alive_argv() == [
            "sh",
            "-c",
            'kill -0 "$(cat /home/buildbot/worker/twistd.pid)"',
        ]
        assert workerplan.worker_log_argv() == [
            "tail",
            "-n",
            "30",
            "/home/buildbot/worker/twistd.log",
        ]


class BelowReserveTests:
    def test_message_names_pool_host_and_figures(self) -> None:
        text = workerplan.below_reserve(CFG, "build2", 5 * GIB + 123)
        assert text.startswith(
            "space guard: pool zroot on jail host build2 has 5120 MiB available, below the "
            "reserve of 10240 MiB (zfs.reserve); no clone was made."
        )
        assert "retried" in text

    def test_figures_round_down_to_whole_mib(self) -> None:
        text = workerplan.below_reserve(CFG, "local", MIB - 1)
        assert "has 0 MiB available" in text


def test_tool_dirs_go_first_on_the_workers_path() -> None:
    tac = workerplan.worker_tac("10.17.0.2", 9989, "jfw1", "pw", ("/opt/venv/bin",)).reveal()
    scope: dict[str, object] = {}
    code = tac.split("# buildbot-worker's isWorkerDir()")[0]
    import os

    saved = os.environ.get("PATH", "")
    try:
        exec(compile(code, "buildbot.tac", "exec"), scope)
        assert os.environ["PATH"].split(os.pathsep)[0] == "/opt/venv/bin"
    finally:
        os.environ["PATH"] = saved
    assert workerplan.tool_dirs("freebsd") == ()
