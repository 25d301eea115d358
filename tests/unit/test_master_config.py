"""The Buildbot configuration built from a farm (`jailfarm.master.config.build_config`).

Constructing a `JailLatentWorker` runs only `checkConfig` (no farm.toml is read, no I/O), and
buildbot services keep their constructor arguments in `_config_args`/`_config_kwargs`
(buildbot/util/service.py `BuildbotService.__init__`), so the wiring is inspected without a
master. `MasterConfig.loadFromDict` is buildbot's own validation of a `BuildmasterConfig`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from buildbot.config.master import MasterConfig
from buildbot.schedulers.forcesched import ForceScheduler
from buildbot.steps.shell import ShellCommand
from twisted.internet import endpoints
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from jailfarm.cmd import Secret
from jailfarm.config import ConfigError, FarmConfig, parse_farm
from jailfarm.master.config import JAIL_CHECK, build_config
from jailfarm.workers.latent import JailLatentWorker
from jailfarm.workers.reaper import ReaperService

FARM_TOML = "/x/farm.toml"
PG_URL = "postgresql+psycopg2://buildbot:pg-Pa55word@db.example.org:5432/buildbot"


def linux_farm(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "farm": {"platform": "linux-dev", "name": "demo", "prefix": "jf"},
        "zfs": {"pool": "jailfarm", "root": "jailfarm/demo"},
        "jail_hosts": [
            {"name": "local", "max_jails": 2},
            {"name": "build2", "ssh": "build2.example.org", "ssh_user": "jf", "max_jails": 1},
        ],
        "workers": {"pb_port": 9990, "master_address": "10.0.0.1"},
        "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
        "trees": [{"name": "default", "url": "file:///var/lib/jailfarm/src/ports.git"}],
        "web": {"bind": "127.0.0.1", "port": 8011, "url": "http://localhost:8080/buildbot/"},
        "database": {"url": PG_URL},
    }
    data.update(sections)
    return data


CFG: FarmConfig = parse_farm(linux_farm())


def config(cfg: FarmConfig = CFG) -> dict[str, Any]:
    return build_config(cfg, FARM_TOML)


def service_args(service: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What a buildbot service was constructed with (kept for reconfig comparisons)."""
    return service._config_args, service._config_kwargs


class WorkerTests:
    def test_one_latent_worker_per_slot_bound_to_its_host(self) -> None:
        workers = config()["workers"]
        assert all(isinstance(w, JailLatentWorker) for w in workers)
        assert [(w.name, service_args(w)) for w in workers] == [
            (
                "jfw1",
                (("jfw1",), {"farm_toml": FARM_TOML, "host": "local", "master_host": "10.0.0.1"}),
            ),
            (
                "jfw2",
                (("jfw2",), {"farm_toml": FARM_TOML, "host": "local", "master_host": "10.0.0.1"}),
            ),
            (
                "jfw3",
                (("jfw3",), {"farm_toml": FARM_TOML, "host": "build2", "master_host": "10.0.0.1"}),
            ),
        ]

    def test_one_build_per_worker_jail(self) -> None:
        assert [w.max_builds for w in config()["workers"]] == [1, 1, 1]

    def test_slots_follow_max_jails(self) -> None:
        hosts = [
            {"name": "local", "max_jails": 1},
            {"name": "build2", "ssh": "build2.example.org", "max_jails": 3},
        ]
        workers = config(parse_farm(linux_farm(jail_hosts=hosts)))["workers"]
        assert [service_args(w)[1]["host"] for w in workers] == ["local", *["build2"] * 3]
        assert [w.name for w in workers] == ["jfw1", "jfw2", "jfw3", "jfw4"]

    def test_workers_on_a_remote_jail_host_are_told_an_address_they_can_reach(self) -> None:
        try:
            workers = config(parse_farm(linux_farm()))["workers"]
        except ConfigError:
            return  # refusing a farm whose remote workers cannot reach the master is a fix too
        remote = [w for w in workers if service_args(w)[1]["host"] == "build2"]
        assert remote
        for worker in remote:
            master = service_args(worker)[1].get("master_host", "127.0.0.1")
            try:
                address = ipaddress.ip_address(master)
            except ValueError:
                assert master != "localhost"
            else:
                assert not (address.is_loopback or address.is_unspecified), master


def listening(strport: str) -> tuple[int, str]:
    """The (port, interface) Twisted listens on for a strports description, as the master's
    PB and www services parse it (endpoints.serverFromString), on a MemoryReactor."""
    reactor = MemoryReactor()
    endpoints.serverFromString(reactor, strport).listen(Factory())
    (port, _factory, _backlog, interface), *_ = reactor.tcpServers
    return port, interface


class ListenerTests:
    def test_pb_and_www_listen_on_web_bind(self) -> None:
        c = config()
        # Workers (one host is remote) connect to workers.master_address; the UI stays local.
        assert c["protocols"] == {"pb": {"port": "tcp:9990:interface=10.0.0.1"}}
        assert c["www"]["port"] == "tcp:8011:interface=127.0.0.1"
        assert listening(c["protocols"]["pb"]["port"]) == (9990, "10.0.0.1")
        assert listening(c["www"]["port"]) == (8011, "127.0.0.1")

    def test_an_ipv6_loopback_bind_reaches_both_listeners(self) -> None:
        local_only = [{"name": "local", "max_jails": 2}]
        c = config(
            parse_farm(
                linux_farm(
                    web={"bind": "::1", "port": 8011},
                    workers={"pb_port": 9990},
                    jail_hosts=local_only,
                )
            )
        )
        assert listening(c["protocols"]["pb"]["port"]) == (9990, "::1")
        assert listening(c["www"]["port"]) == (8011, "::1")

    def test_www_serves_the_view_plugins(self) -> None:
        assert set(config()["www"]["plugins"]) == {
            "waterfall_view",
            "console_view",
            "grid_view",
            "wsgi_dashboards",
        }

    def test_urls_and_title_come_from_the_farm(self) -> None:
        c = config()
        assert c["title"] == "jailfarm demo"
        assert c["titleURL"] == c["buildbotURL"] == "http://localhost:8080/buildbot/"
        assert c["buildbotNetUsageData"] is None


class DatabaseTests:
    def test_buildbot_gets_the_real_url_as_a_plain_string(self) -> None:
        url = config()["db"]["db_url"]
        assert url == PG_URL
        # A Secret would print *** wherever SQLAlchemy turns the URL into text.
        assert type(url) is str and not isinstance(url, Secret)

    def test_default_database_is_sqlite_in_the_master_directory(self) -> None:
        data = linux_farm()
        del data["database"]
        assert config(parse_farm(data))["db"] == {"db_url": "sqlite:///state.sqlite"}


class BuilderAndSchedulerTests:
    def test_requests_are_never_collapsed(self) -> None:
        c = config()
        assert c["collapseRequests"] is False
        assert [b.collapseRequests for b in c["builders"]] == [False, False, False]

    def test_jail_check_builder_runs_on_every_worker(self) -> None:
        builder = config()["builders"][0]
        assert builder.name == JAIL_CHECK == "jail-check"
        assert builder.workernames == ["jfw1", "jfw2", "jfw3"]
        steps = builder.factory.steps
        assert [s.step_class for s in steps] == [ShellCommand] * 3
        assert [s.kwargs["name"] for s in steps] == ["where", "processes", "filesystem"]
        assert all(s.kwargs["haltOnFailure"] and not s.kwargs["logEnviron"] for s in steps)

    def test_a_force_scheduler_for_the_jail_check(self) -> None:
        scheduler = config()["schedulers"][0]
        assert isinstance(scheduler, ForceScheduler)
        assert scheduler.name == "force"
        assert scheduler.builderNames == [JAIL_CHECK]

    def test_one_bulk_builder_per_jail_tree_and_set(self) -> None:
        builder = config()["builders"][1]
        assert builder.name == "bulk-141amd64-default"
        assert builder.workernames == ["jfw1", "jfw2", "jfw3"]
        names = [s.kwargs.get("name") or s.step_class.name for s in builder.factory.steps]
        # This farm's default set has no make.conf settings: only poudriere.conf is written.
        assert names == [
            "ports-tree",
            "planner-planner",
            "planner-plancli",
            "planner-index",
            "plan",
            "planner-index-keep",
            "etc-poudriere-conf",
            "poudriere-setup",
            "poudriere-bulk",
            "upload-logs",
            "upload-packages",
            "publish",
            "remove-upload",
        ]
        steps = dict(zip(names, builder.factory.steps, strict=True))
        bulk = steps["poudriere-bulk"]
        # The plan step decides: every port, or the list file it wrote (master/changes.py).
        assert bulk.kwargs["jail"] == "141amd64"
        assert bulk.kwargs["all_ports"].key == "plan_bulk_all"
        assert bulk.kwargs["list_files"].key == "plan_list_file"
        # One bulk per MASTERNAME at a time: its packages are shared by the worker jails.
        (lock,) = builder.locks
        assert (lock.lockid.name, lock.mode) == ("bulk-141amd64-default", "exclusive")
        assert bulk.kwargs["poudriere"] == "poudriere"  # from the worker's PATH
        # Failed ports link to their logs as nginx serves them, next to the web UI.
        assert bulk.kwargs["log_url"] == "http://localhost:8080/data"
        publish = steps["publish"].buildStep()
        command = publish.command
        assert command[1:6] == ["repo", "publish", "-c", FARM_TOML, "141amd64-default-default"]
        assert command[0].endswith("/jailfarm")
        # Logs go up even after a failed bulk; packages only after a passing one.
        upload_logs, upload_packages = steps["upload-logs"], steps["upload-packages"]
        assert upload_logs.kwargs["alwaysRun"] is True
        assert upload_packages.kwargs.get("alwaysRun") is not True
        assert upload_packages.kwargs["workersrc"] == (
            "/home/buildbot/poudriere/data/packages/141amd64-default-default/.latest/All"
        )
        force = config()["schedulers"][1]
        assert (force.name, force.builderNames) == ("force-bulk", ["bulk-141amd64-default"])

    def test_on_freebsd_poudriere_runs_through_sudo_with_the_template_jail(self) -> None:
        """poudriere must run as root (poudriere.md §3) while the worker is unprivileged: the
        FreeBSD template's sudo rule; the jail is the template's (checked, not created), the
        tree the checkout of the pushed commit."""
        data = linux_farm(
            farm={"platform": "freebsd", "name": "ci", "prefix": "jf"},
            jail_hosts=[{"name": "local", "max_jails": 2}],
            workers={"pb_port": 9990},
            database={"url": "sqlite:///state.sqlite"},
        )
        del data["zfs"]
        data["zfs"] = {"pool": "zroot", "root": "zroot/jf"}
        data["signing"] = {"key_file": "/usr/local/etc/jailfarm/repo.key"}
        data["template"] = {"release": "14.1-RELEASE"}
        builder = build_config(parse_farm(data), FARM_TOML)["builders"][1]
        steps = {s.kwargs.get("name") or s.step_class.name: s for s in builder.factory.steps}
        poudriere = ["sudo", "-n", "poudriere", "-e", "/home/buildbot/poudriere"]
        jail, ports = steps["poudriere-setup"].kwargs["commands"]
        assert jail.command == [*poudriere, "jail", "-i", "-j", "141amd64"]
        assert ports.command[:-1] == [
            *poudriere,
            "ports",
            "-c",
            "-p",
            "default",
            "-m",
            "null",
            "-M",
        ]
        conf = steps["etc-poudriere-conf"].args[0]
        assert "BASEFS='/usr/local/poudriere'\n" in conf and "NO_ZFS='yes'\n" in conf
        bulk = steps["poudriere-bulk"].kwargs
        assert bulk["privilege"] == ("sudo", "-n")
        assert bulk["data_dir"] == "/usr/local/poudriere/data"

    def test_the_reaper_service_reads_the_same_farm_file(self) -> None:
        (reaper,) = config()["services"]
        assert isinstance(reaper, ReaperService)
        assert reaper.name == "jailfarm-reaper"
        assert service_args(reaper) == ((FARM_TOML,), {})


class BuildbotAcceptsTests:
    def test_master_config_loads_the_dict(self) -> None:
        master = MasterConfig.loadFromDict(config(), "master.cfg")
        assert [w.name for w in master.workers] == ["jfw1", "jfw2", "jfw3"]
        assert list(master.builders[0].workernames) == ["jfw1", "jfw2", "jfw3"]
        assert set(master.schedulers) == {
            "force",
            "force-bulk",
            "push-default",
            "push-default-testport",
            "nightly-default",
            "rebuild",
        }
        assert set(master.services) == {"jailfarm-reaper"}
        assert master.protocols == {"pb": {"port": "tcp:9990:interface=10.0.0.1"}}
        assert master.db.db_url == PG_URL
        assert master.collapseRequests is False
