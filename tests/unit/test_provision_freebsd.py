"""`jailfarm provision` on FreeBSD: golden plans for farm-freebsd.toml against recorded host
facts (fresh, half-provisioned, provisioned), the safety rules, the names it generates, the
[provision] keys of farm.toml, and the plan/apply command (provision/freebsd*.py, provcli.py)."""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from jailfarm.cmd import Cmd, Result
from jailfarm.config import FarmConfig, parse_farm
from jailfarm.errors import ConfigError, FarmError, ParseError
from jailfarm.poudriere.conf import KEYS
from jailfarm.provision import freebsd, provcli
from jailfarm.provision.freebsdfacts import (
    parse_passwd_uid,
    parse_pkg_names,
    parse_pool_size,
    parse_release,
    parse_userland,
)
from jailfarm.provision.plan import (
    Answer,
    Facts,
    Plan,
    PlanRefused,
    Step,
    fact_key,
    format_plan,
    gather,
    write_cmds,
)
from tests.support import resolve

if TYPE_CHECKING:
    from collections.abc import Mapping

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "provision"
ROOT = Path(__file__).resolve().parents[2]
SITE = "/usr/local/jailfarm/lib/python3.11/site-packages"
JAIL_CONF_GET = "cat /etc/jail.conf"
TEMPLATE_GET = (
    "zfs get -H -p -o name,property,value -r type,mountpoint,mounted,readonly,reservation,"
    "origin,creation,jailfarm:owner,jailfarm:current jailfarm/demo"
)
# jail(8) parameters the spec documents (freebsd-jails-zfs.md a.2 #14, a.3); `allow.noX` is
# the "no" form of allow.X (a.2 #10).
DOCUMENTED_PARAMS = {
    *("path", "host.hostname", "allow.set_hostname", "ip4.addr", "ip6.addr", "ip4", "ip6"),
    *("vnet", "vnet.interface", "mount.devfs", "devfs_ruleset", "mount.fdescfs", "mount"),
    *("exec.clean", "exec.start", "exec.stop", "exec.prestart", "exec.poststop"),
    *("exec.created", "exec.timeout", "stop.timeout", "exec.consolelog", "persist"),
    *("children.max", "enforce_statfs", "sysvmsg", "sysvsem", "sysvshm"),
}
# rc.conf variables the spec documents: kld_list (b.37), cloned_interfaces and ifconfig_lo1
# (d.88), pf_enable (d.90), jail_enable and jail_list (a.4 #16), buildbot_* (g.125),
# nginx_enable (g.130), a vnet jail's ifconfig_e0b_<jail> and defaultrouter (d.97).
DOCUMENTED_RC = {
    *("kld_list", "cloned_interfaces", "ifconfig_lo1", "pf_enable", "jail_enable", "jail_list"),
    *("buildbot_enable", "buildbot_basedir", "buildbot_user", "nginx_enable", "defaultrouter"),
}
# rc.conf(5) variables the worker template fill sets (workers/templatefill.py; d.99, e.111).
TEMPLATE_RC = {"sendmail_enable", "cron_enable", "syslogd_flags", "clear_tmp_enable"}


def farm_data() -> dict[str, Any]:
    return tomllib.loads((FIXTURES / "farm-freebsd.toml").read_text())


def farm(data: Mapping[str, Any] | None = None) -> FarmConfig:
    return parse_farm(data if data is not None else farm_data())


def context() -> freebsd.Context:
    return freebsd.Context(
        farm_toml=(FIXTURES / "farm-freebsd.toml").read_text(),
        master_cfg=(ROOT / "master" / "master.cfg").read_text(),
        site_packages=SITE,
        python="3.11",
    )


class ReplayRunner:
    """Answers fact queries from recorded answers (an unrecorded query fails the test) and
    records, successfully, every other command (what apply runs)."""

    def __init__(self, answers: Mapping[str, Answer]) -> None:
        self.answers = dict(answers)
        self.asked: list[str] = []
        self.ran: list[Cmd] = []

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        if cmd.stdin is None and not cmd.env and shlex.join(cmd.argv) in self.answers:
            key = fact_key(cmd)
            self.asked.append(key)
            a = self.answers[key]
            return defer.succeed(Result(cmd, a.rc, a.out.encode(), a.err.encode()))
        self.ran.append(cmd)
        return defer.succeed(Result(cmd, 0))


def answers(name: str, **overrides: Answer | None) -> dict[str, Answer]:
    """A fixture's answers, with `overrides` (keyed by query with '_' for ' ') applied."""
    record = json.loads((FIXTURES / f"{name}.json").read_text())
    assert (record["site_packages"], record["python"]) == (SITE, "3.11")
    recorded = dict(Facts.from_rows(record["answers"]).answers)
    for key, answer in overrides.items():
        if answer is None:
            recorded.pop(key, None)
        else:
            recorded[key] = answer
    return recorded


def facts_for(recorded: Mapping[str, Answer], cfg: FarmConfig | None = None) -> Facts:
    runner = ReplayRunner(recorded)
    facts = resolve(gather(runner, freebsd.queries(cfg or farm(), context())))
    assert not runner.ran, f"queries the fixture does not answer: {runner.ran}"
    return facts


def plan_for(name: str, cfg: FarmConfig | None = None, **overrides: Answer | None) -> Plan:
    cfg = cfg or farm()
    return freebsd.plan_freebsd(cfg, context(), facts_for(answers(name, **overrides), cfg))


def steps(plan: Plan) -> dict[str, Step]:
    return {s.name: s for s in plan.steps}


# ---- golden plans ------------------------------------------------------------------------------


class GoldenPlanTests:
    """The whole plan, commands and files, as `provision plan` prints it."""

    @pytest.mark.parametrize("name", ["fresh", "half"])
    def test_plan_matches_the_golden_file(self, name: str) -> None:
        expected = (FIXTURES / f"{name}.plan").read_text()
        assert format_plan(plan_for(name)) == expected, (
            f"re-run tests/fixtures/provision/make_facts.py and review {name}.plan's diff"
        )

    def test_a_provisioned_host_plans_nothing(self) -> None:
        plan = plan_for("full")
        assert plan.steps == () and plan.problems == ()
        assert format_plan(plan).startswith("nothing to do: the host is as farm.toml describes")

    @pytest.mark.parametrize("name", ["fresh", "half", "full"])
    def test_every_recorded_answer_is_asked_for(self, name: str) -> None:
        recorded = answers(name)
        runner = ReplayRunner(recorded)
        resolve(gather(runner, freebsd.queries(farm(), context())))
        assert runner.ran == []
        assert sorted(set(recorded) - set(runner.asked)) == []

    def test_the_fresh_plan_covers_every_part_of_the_farm(self) -> None:
        assert [s.name for s in plan_for("fresh").steps] == [
            "kernel-modules", "datasets", "reservation", "jail-network", "pf", "sshd",
            "host-directories", "signing-key", "master-userland", "nginx-userland",
            "mountpoints", "jail.conf", "jail-service", "master-jail", "nginx-jail",
            "master-packages", "nginx-packages", "master-user", "master-ssh-key",
            "master-known-hosts", "master-directories", "master-config", "master-rc",
            "nginx-rc", "nginx-config", "master-service", "nginx-service", "worker-template",
        ]  # fmt: skip

    def test_the_half_host_only_gets_what_it_lacks(self) -> None:
        plan = plan_for("half")
        names = [s.name for s in plan.steps]
        for done in (
            "kernel-modules",
            "datasets",
            "jail-network",
            "master-userland",
            "master-user",
        ):
            assert done not in names
        assert steps(plan)["master-packages"].check == ("not installed: py311-buildbot-www",)
        assert steps(plan)["worker-template"].check == ("poudriere.conf differs",)
        # g1 stays current: the rebuilt generation waits for testing (workers/template.py).
        template = steps(plan)["worker-template"].commands
        assert template[-1].argv == ("zfs", "snapshot", "jailfarm/demo/templates/worker@g2")


# ---- safety ------------------------------------------------------------------------------------


class SafetyTests:
    def test_someone_elses_pf_conf_is_a_destructive_step_kept_as_a_backup(self) -> None:
        plan = plan_for("half")
        assert [s.name for s in plan.destructive] == ["pf"]
        write = steps(plan)["pf"].files[0]
        assert write.backup and write.before.startswith(b"# the admin's own ruleset")

    def test_apply_refuses_destructive_steps_without_allow_destroy(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(provcli, "context", lambda path: context())
        runner = ReplayRunner(answers("half"))
        args = argparse.Namespace(
            provision_command="apply",
            config=str(FIXTURES / "farm-freebsd.toml"),
            save_facts=None,
            allow_destroy=False,
        )
        with pytest.raises(PlanRefused, match="step pf is destructive"):
            resolve(provcli.run(farm(), args, runner, lambda line: None))
        assert runner.ran == []

    def test_someone_elses_jail_conf_is_replaced_only_destructively(self) -> None:
        foreign = Answer(0, "www {\n  path = /jails/www;\n}\n")
        plan = plan_for("fresh", **{JAIL_CONF_GET: foreign})
        step = steps(plan)["jail.conf"]
        assert step.destructive and step.files[0].backup
        # Its jails are unknown to jailfarm: ours restart from the new file, theirs stay put.
        assert "restart" not in " ".join(str(c) for s in plan.steps for c in s.commands)

    def test_an_existing_signing_key_is_never_regenerated(self) -> None:
        key = "stat -f %u:%g:%Lp:%HT /var/db/jailfarm/keys/repo.key"
        plan = plan_for("fresh", **{key: Answer(0, "0:0:600:Regular File\n")})
        commands = [c.argv for c in steps(plan)["signing-key"].commands]
        assert not any(argv[:2] == ("openssl", "genrsa") for argv in commands)
        assert ("chown", "1002:1002", "/var/db/jailfarm/keys/repo.key") in commands

    def test_a_template_dataset_jailfarm_did_not_make_is_emptied_only_destructively(
        self,
    ) -> None:
        full = answers("full")
        rows = (
            full[TEMPLATE_GET]
            .out.replace(
                "jailfarm/demo/templates/worker\tjailfarm:owner\tdemo",
                "jailfarm/demo/templates/worker\tjailfarm:owner\t-",
            )
            .replace(
                "jailfarm/demo/templates/worker\tjailfarm:current\tg1",
                "jailfarm/demo/templates/worker\tjailfarm:current\t-",
            )
        )
        plan = freebsd.plan_freebsd(
            farm(), context(), facts_for({**full, TEMPLATE_GET: Answer(0, rows)})
        )
        assert [s.name for s in plan.destructive] == ["worker-template"]

    def test_a_service_dataset_jailfarm_did_not_make_gets_no_system_extracted(self) -> None:
        full = answers("full")
        rows = full[TEMPLATE_GET].out.replace(
            "jailfarm/demo/services/jfnginx\tjailfarm:owner\tdemo",
            "jailfarm/demo/services/jfnginx\tjailfarm:owner\t-",
        )
        version = "cat /jailfarm/demo/services/jfnginx/bin/freebsd-version"
        missing = Answer(1, "", f"cat: {version[4:]}: No such file or directory\n")
        recorded = {**full, TEMPLATE_GET: Answer(0, rows), version: missing}
        plan = freebsd.plan_freebsd(farm(), context(), facts_for(recorded))
        assert any("jfnginx exists and is not jailfarm's" in p for p in plan.problems)
        assert "nginx-userland" not in steps(plan)

    def test_an_admins_lo1_is_not_reconfigured(self) -> None:
        key = "sysrc -e -i kld_list cloned_interfaces ifconfig_lo1 jail_enable jail_list pf_enable"
        rc = 'kld_list=""\ncloned_interfaces="lo1"\nifconfig_lo1="inet 192.168.7.1/24"\n'
        plan = plan_for("fresh", **{key: Answer(1, rc)})
        assert any("ifconfig_lo1" in p for p in plan.problems)
        assert "jail-network" not in steps(plan)

    def test_a_mount_point_a_jail_made_a_symlink_is_refused(self) -> None:
        link = "stat -f %u:%g:%Lp:%HT /jailfarm/demo/services/jfmaster/var/db/jailfarm/keys"
        plan = plan_for("full", **{link: Answer(0, "1002:1002:755:Symbolic Link\n")})
        assert any("is a symbolic link, not a directory" in p for p in plan.problems)
        assert plan.steps == ()

    def test_the_plan_never_destroys_a_dataset(self) -> None:
        for name in ("fresh", "half"):
            for step in plan_for(name).steps:
                for cmd in step.commands:
                    assert cmd.argv[:2] != ("zfs", "destroy"), step.name


class MixedHostTests:
    """Whatever mix of a fresh and a provisioned host's answers the host gives, the plan keeps
    to the safety rules."""

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_the_plan_keeps_to_the_rules_on_any_mix_of_states(self, data: st.DataObject) -> None:
        fresh, full = answers("fresh"), answers("full")
        mixed = {
            key: data.draw(st.sampled_from([a for a in (fresh.get(key), full.get(key)) if a]))
            for key in sorted(set(fresh) | set(full))
        }
        runner = ReplayRunner(mixed)
        facts = resolve(gather(runner, freebsd.queries(farm(), context())))
        assume(not runner.ran)  # a combination no host could answer
        try:
            plan = freebsd.plan_freebsd(farm(), context(), facts)
        except ParseError:
            assume(False)  # e.g. a package list without a package database
            raise
        for step in plan.steps:
            for cmd in step.commands:
                assert cmd.argv[:2] != ("zfs", "destroy")
                if cmd.argv[:2] in (("zfs", "create"), ("zfs", "set"), ("zfs", "snapshot")):
                    target = cmd.argv[-1].split("@")[0]
                    assert target == "jailfarm/demo" or target.startswith("jailfarm/demo/")
            for write in step.files:
                assert not write.backup or step.destructive, step.name
            assert not step.destructive or step.name in ("pf", "jail.conf", "worker-template")


# ---- does farm.toml fit? ------------------------------------------------------------------------


class FitTests:
    def test_the_master_must_reach_this_host_over_ssh_as_root(self) -> None:
        data = farm_data()
        del data["jail_hosts"]
        problems = plan_for("fresh", farm(data)).problems
        assert any('ssh = "10.87.0.1"' in p for p in problems)
        assert any("jail_hosts 'local' has no ssh" in p for p in problems)

    def test_workers_connect_to_the_master_jails_address(self) -> None:
        data = farm_data()
        data["workers"]["master_address"] = "10.87.0.9"
        problems = plan_for("fresh", farm(data)).problems
        assert any('workers.master_address = "10.87.0.2"' in p for p in problems)

    def test_nat_needs_the_external_interface(self) -> None:
        data = farm_data()
        del data["provision"]["external_interface"]
        plan = plan_for("fresh", farm(data))
        assert any("external_interface is not set" in p for p in plan.problems)
        assert "pf" not in steps(plan)
        data["provision"]["external_interface"] = "igb0"
        assert any(
            "'igb0' is not an interface" in p for p in plan_for("fresh", farm(data)).problems
        )

    def test_a_template_newer_than_the_host_kernel_is_refused(self) -> None:
        data = farm_data()
        data["template"]["release"] = "15.0-RELEASE"
        assert any(
            "newer than this host's kernel" in p for p in plan_for("fresh", farm(data)).problems
        )

    def test_a_missing_pool_is_a_problem_not_a_crash(self) -> None:
        missing = Answer(1, "", "cannot open 'jailfarm': no such pool\n")
        plan = plan_for(
            "fresh",
            **{
                "zpool list -H -p -o name,size jailfarm": missing,
                "zfs get -H -p -o name,property,value type,mountpoint,available jailfarm": Answer(
                    1, "", "cannot open 'jailfarm': dataset does not exist\n"
                ),
            },
        )
        assert any("pool jailfarm is not imported" in p for p in plan.problems)
        assert "reservation" not in steps(plan) and "master-userland" not in steps(plan)

    def test_a_reservation_larger_than_the_free_space_is_refused(self) -> None:
        data = farm_data()
        data["provision"]["reservation"] = "200G"
        plan = plan_for("fresh", farm(data))
        assert any("204800 MiB cannot be reserved" in p for p in plan.problems)

    def test_old_kernels_limit_poudriere_mount_paths_to_88_characters(self) -> None:
        data = farm_data()
        data["template"]["release"] = "11.4-RELEASE"
        data["poudriere"]["jails"][0]["version"] = "11.4-RELEASE"
        plan = plan_for("fresh", farm(data), **{"freebsd-version -r": Answer(0, "11.4-RELEASE\n")})
        assert any("over the 88 this kernel allows" in p for p in plan.problems)

    def test_sshd_must_run(self) -> None:
        plan = plan_for("fresh", **{"service sshd onestatus": Answer(1, "sshd is not running.\n")})
        assert any("sshd is not running" in p for p in plan.problems)

    def test_a_web_ui_without_users_is_noted(self) -> None:
        assert any("web.auth = 'none'" in n for n in plan_for("full").notes)


# ---- what it generates ---------------------------------------------------------------------------


def _jail_conf(plan: Plan) -> str:
    return steps(plan)["jail.conf"].files[0].content.decode()


class GeneratedNameTests:
    def test_every_jail_parameter_is_documented(self) -> None:
        names = set()
        for line in _jail_conf(plan_for("fresh")).splitlines():
            m = re.match(r"\s+([a-z][a-z0-9_.]*)( \+?= |;)", line)
            if m:
                name = m[1]
                names.add(
                    name.replace("allow.no", "allow.") if name.startswith("allow.no") else name
                )
        assert names and names <= DOCUMENTED_PARAMS, names - DOCUMENTED_PARAMS

    def test_every_rc_conf_variable_is_documented(self) -> None:
        for plan in (plan_for("fresh"), _vnet_plan()):
            for step in plan.steps:
                allowed = DOCUMENTED_RC | (TEMPLATE_RC if step.name == "worker-template" else set())
                for cmd in step.commands:
                    if cmd.argv[0] != "sysrc":
                        continue
                    for word in cmd.argv[1:]:
                        if "=" in word:
                            name = re.split(r"\+?=", word, maxsplit=1)[0]
                            assert name in allowed or name.startswith("ifconfig_e0b_"), name

    def test_every_poudriere_conf_key_is_documented(self) -> None:
        template = steps(plan_for("fresh"))["worker-template"]
        conf = next(
            c
            for c in template.commands
            if c.argv[1:2] == ("of=/jailfarm/demo/templates/worker/usr/local/etc/poudriere.conf",)
        )
        assert conf.stdin is not None
        keys = [line.split("=")[0] for line in conf.stdin.decode().splitlines() if "=" in line]
        assert keys and set(keys) <= set(KEYS)

    def test_names_fit_their_budgets(self) -> None:
        cfg = farm()
        for name in (cfg.provision.master_jail, cfg.provision.nginx_jail):
            assert len(name) <= 11 and len(f"e0b_{name}") <= 15  # IFNAMSIZ (jails spec a.5 #31)

    def test_service_jails_get_no_host_ipv6_and_their_lo1_address(self) -> None:
        text = _jail_conf(plan_for("fresh"))
        assert 'ip4.addr += "lo1|10.87.0.2";' in text and 'ip4.addr += "lo1|10.87.0.3";' in text
        assert "ip6 = disable;" in text and "= inherit" not in text
        assert "enforce_statfs = 2;" in text and "children.max = 0;" in text

    def test_nginx_proxies_buildbot_at_the_master_jails_address(self) -> None:
        nginx = steps(plan_for("fresh"))["nginx-config"].files[0].content.decode()
        assert "proxy_pass http://10.87.0.2:8010/;" in nginx
        assert "127.0.0.1:8010" not in nginx

    def test_the_master_gets_farm_toml_privately_and_the_host_jailfarm_read_only(self) -> None:
        step = steps(plan_for("fresh"))["master-config"]
        files = {f.path.rsplit("/", 1)[1]: f for f in step.files}
        assert (files["farm.toml"].mode, files["farm.toml"].owner) == (0o600, "1002:1002")
        assert files["farm.toml"].content == (FIXTURES / "farm-freebsd.toml").read_bytes()
        assert SITE.encode() in files["jailfarm.pth"].content
        assert f"{SITE} /jailfarm/demo/services/jfmaster{SITE} nullfs ro" in _jail_conf(
            plan_for("fresh")
        )

    def test_sshd_admits_only_the_master_jail_with_its_key(self) -> None:
        sshd = steps(plan_for("fresh"))["sshd"].files[0].content.decode()
        assert "Match User root Address 10.87.0.2\n" in sshd
        assert "\tAuthorizedKeysFile /var/db/jailfarm/ssh/master.pub\n" in sshd
        assert sshd.startswith((FIXTURES / "sshd_config").read_text())


def _vnet_data() -> dict[str, Any]:
    data = farm_data()
    data["provision"] = {
        "network_mode": "vnet",
        "external_interface": "em0",
        "network": "192.0.2.0/24",
        "host_address": "192.0.2.10",
        "master_address": "192.0.2.11",
        "nginx_address": "192.0.2.12",
        "gateway": "192.0.2.1",
    }
    data["jail_hosts"][0]["ssh"] = "192.0.2.10"
    data["workers"]["master_address"] = "192.0.2.11"
    return data


def _vnet_plan(**overrides: Answer | None) -> Plan:
    jib = "stat -f %u:%g:%Lp:%HT /usr/share/examples/jails/jib"
    recorded = {jib: Answer(0, "0:0:444:Regular File\n"), **overrides}
    return plan_for("fresh", farm(_vnet_data()), **recorded)


class VnetTests:
    def test_vnet_jails_are_bridged_by_jib_and_configure_themselves(self) -> None:
        plan = _vnet_plan()
        assert "pf" not in steps(plan) and "jail-network" not in steps(plan)
        text = _jail_conf(plan)
        assert "vnet = new;" in text and "vnet.interface = e0b_jfmaster;" in text
        assert 'exec.prestart += "/bin/sh /usr/share/examples/jails/jib addm jfmaster em0";' in text
        assert "ip4.addr" not in text
        rc = steps(plan)["master-network"].commands[0].argv
        assert "ifconfig_e0b_jfmaster=inet 192.0.2.11/24" in rc and "defaultrouter=192.0.2.1" in rc
        names = [s.name for s in plan.steps]
        assert names.index("master-network") < names.index("master-jail")

    def test_vnet_needs_jib(self) -> None:
        missing = Answer(
            1, "", "stat: /usr/share/examples/jails/jib: lstat: No such file or directory\n"
        )
        plan = _vnet_plan(**{"stat -f %u:%g:%Lp:%HT /usr/share/examples/jails/jib": missing})
        assert any("jib is missing" in p for p in plan.problems)


# ---- parsers ------------------------------------------------------------------------------------


class ParserTests:
    def test_release(self) -> None:
        assert parse_release("14.1-RELEASE-p5\n") == (14, 1)
        assert parse_release("15.0-CURRENT") == (15, 0)
        with pytest.raises(ParseError):
            parse_release("FreeBSD 14.1")

    def test_userland_is_read_from_the_script(self) -> None:
        script = '#!/bin/sh\nUSERLAND_VERSION="14.1-RELEASE-p4"\nprint() { :; }\n'
        assert parse_userland(script) == "14.1-RELEASE-p4"
        with pytest.raises(ParseError, match="USERLAND_VERSION"):
            parse_userland("#!/bin/sh\n")

    def test_pool_size(self) -> None:
        assert parse_pool_size("tank\t1024\n", "tank") == 1024
        for bad in ("tank 1024", "other\t1024", "tank\t1.0T"):
            with pytest.raises(ParseError):
                parse_pool_size(bad, "tank")

    def test_pkg_names(self) -> None:
        assert parse_pkg_names("nginx\npy311-buildbot\n") == {"nginx", "py311-buildbot"}
        with pytest.raises(ParseError):
            parse_pkg_names("nginx-1.26.2 Robust and small WWW server\n")

    def test_passwd(self) -> None:
        text = "# c\nroot:*:0:0:Charlie &:/root:/bin/sh\nbuildbot-master:*:1002:1002::/h:/bin/sh\n"
        assert parse_passwd_uid(text, "buildbot-master") == 1002
        assert parse_passwd_uid(text, "www") is None
        with pytest.raises(ParseError):
            parse_passwd_uid("root:x:0\n", "root")

    def test_an_unexpected_host_key_is_refused(self) -> None:
        with pytest.raises(ParseError, match="ssh-ed25519"):
            plan_for(
                "fresh", **{"cat /etc/ssh/ssh_host_ed25519_key.pub": Answer(0, "ssh-rsa AAAA x\n")}
            )


# ---- [provision] in farm.toml ------------------------------------------------------------------


def problems(data: Mapping[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_farm(data)
    return e.value.problems


class ProvisionConfigTests:
    def test_lo1_defaults_follow_the_network(self) -> None:
        data = farm_data()
        data["provision"] = {"network": "10.9.8.0/29"}
        p = farm(data).provision
        assert (p.host_address, p.master_address, p.nginx_address) == (
            "10.9.8.1",
            "10.9.8.2",
            "10.9.8.3",
        )
        assert (p.master_jail, p.nginx_jail, p.reservation_percent) == ("jfmaster", "jfnginx", 20)

    def test_reservation_is_a_size_or_a_share_of_the_pool(self) -> None:
        data = farm_data()
        data["provision"]["reservation"] = "40G"
        p = farm(data).provision
        assert (p.reservation, p.reservation_percent) == (40 << 30, None)
        data["provision"]["reservation"] = "70%"
        assert problems(data) == [
            "provision.reservation: '70%' is not a share of the pool; expected '1%' to '50%'"
        ]

    def test_vnet_needs_its_addresses_and_router_and_reports_them_together(self) -> None:
        data = farm_data()
        data["provision"] = {"network_mode": "vnet", "network": "192.0.2.0/24"}
        found = problems(data)
        for key in ("host_address", "master_address", "nginx_address", "gateway"):
            assert any(p.startswith(f"provision.{key}: missing") for p in found), key

    def test_addresses_lie_in_the_network_and_differ(self) -> None:
        data = farm_data()
        data["provision"] |= {"master_address": "10.99.0.2", "nginx_address": "10.87.0.1"}
        found = problems(data)
        assert any(
            p.startswith("provision.master_address: '10.99.0.2' is not a host") for p in found
        )
        assert "provision.nginx_address: '10.87.0.1' is also provision.host_address" in found

    def test_jail_names_are_not_workers_and_differ(self) -> None:
        data = farm_data()
        data["provision"] |= {"master_jail": "jfw1", "nginx_jail": "jfw1"}
        found = problems(data)
        assert "provision.master_jail: 'jfw1' is a worker jail's name; expected another" in found

    def test_lo1_has_no_gateway(self) -> None:
        data = farm_data()
        data["provision"]["gateway"] = "10.87.0.254"
        assert problems(data) == [
            "provision.gateway: '10.87.0.254' is only used with network_mode = 'vnet'; remove it"
        ]

    def test_network_keys_are_freebsd_only_but_the_reservation_is_not(self) -> None:
        data = tomllib.loads((ROOT / "examples" / "farm.toml").read_text())
        data["provision"] = {"reservation": "10%"}
        assert parse_farm(copy.deepcopy(data)).provision.reservation_percent == 10
        data["provision"]["network_mode"] = "lo1"
        assert any("only valid with platform 'freebsd'" in p for p in problems(data))

    def test_a_bad_network_and_interface_are_reported(self) -> None:
        data = farm_data()
        data["provision"] |= {"network": "10.87.0.1/24", "external_interface": "Em 0"}
        found = problems(data)
        assert any(p.startswith("provision.network: '10.87.0.1/24' is not valid") for p in found)
        assert any(p.startswith("provision.external_interface:") for p in found)


# ---- the command ------------------------------------------------------------------------------


def _args(command: str, **extra: Any) -> argparse.Namespace:
    return argparse.Namespace(
        provision_command=command,
        config=str(FIXTURES / "farm-freebsd.toml"),
        save_facts=None,
        allow_destroy=False,
        facts=None,
        **extra,
    )


class CommandTests:
    def test_plan_from_recorded_facts_exits_3_when_there_is_work(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(provcli, "context", lambda path: context())
        said: list[str] = []
        args = _args("plan")
        args.facts = str(FIXTURES / "fresh.json")
        assert resolve(provcli.run(farm(), args, None, said.append)) == provcli.EXIT_CHANGES
        assert said[0] + "\n" == (FIXTURES / "fresh.plan").read_text()

    def test_the_fixtures_plan_the_same_from_any_installation(self) -> None:
        elsewhere = replace(context(), site_packages="/opt/jf/site-packages", python="3.12")
        plan = provcli.recorded_plan(farm(), elsewhere, str(FIXTURES / "fresh.json"))
        assert format_plan(plan) == (FIXTURES / "fresh.plan").read_text()

    def test_plan_on_a_provisioned_host_exits_0(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(provcli, "context", lambda path: context())
        runner = ReplayRunner(answers("full"))
        assert resolve(provcli.run(farm(), _args("plan"), runner, lambda s: None)) == 0

    def test_apply_runs_every_step_then_plans_again(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(provcli, "context", lambda path: context())
        runner = ReplayRunner(answers("fresh"))
        said: list[str] = []
        rc = resolve(provcli.run(farm(), _args("apply"), runner, said.append))
        plan = plan_for("fresh")
        expected = [c for s in plan.steps for f in s.files for c in write_cmds(f)]
        assert len(runner.ran) == len(expected) + sum(len(s.commands) for s in plan.steps)
        assert runner.ran[0].argv[:2] == ("kldload", "-n")
        assert runner.ran[-1].argv == (
            "zfs", "set", "jailfarm:current=g1", "jailfarm/demo/templates/worker",
        )  # fmt: skip
        # The replayed host did not change, so planning again still finds the same steps.
        assert rc == 1 and any("planning again still finds steps" in line for line in said)

    def test_apply_on_a_provisioned_host_changes_nothing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(provcli, "context", lambda path: context())
        runner = ReplayRunner(answers("full"))
        assert resolve(provcli.run(farm(), _args("apply"), runner, lambda s: None)) == 0
        assert runner.ran == []

    def test_problems_make_plan_and_apply_exit_2(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(provcli, "context", lambda path: context())
        data = farm_data()
        del data["provision"]["external_interface"]
        for command in ("plan", "apply"):
            runner = ReplayRunner(answers("fresh"))
            assert resolve(provcli.run(farm(data), _args(command), runner, lambda s: None)) == 2
            assert runner.ran == []

    def test_save_facts_records_what_the_host_answered(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setattr(provcli, "context", lambda path: context())
        args = _args("plan")
        args.save_facts = str(tmp_path / "facts.json")
        resolve(provcli.run(farm(), args, ReplayRunner(answers("full")), lambda s: None))
        saved = json.loads(Path(args.save_facts).read_text())
        assert Facts.from_rows(saved["answers"]) == Facts(answers("full"))
        assert (saved["site_packages"], saved["python"]) == (SITE, "3.11")
        # Planned elsewhere, by another installation: the recorded one's side is used.
        other = replace(context(), site_packages="/opt/elsewhere/site-packages")
        assert provcli.recorded_plan(farm(), other, args.save_facts).steps == ()

    def test_facts_that_do_not_cover_the_farm_are_refused_clearly(self, tmp_path: Path) -> None:
        path = tmp_path / "facts.json"
        path.write_text(Facts(answers("fresh", **{"ifconfig -l": None})).to_json())  # bare list
        with pytest.raises(FarmError, match=r"does not answer every query.*ifconfig -l"):
            provcli.recorded_plan(farm(), context(), str(path))

    def test_register_adds_plan_and_apply(self) -> None:
        parser = argparse.ArgumentParser()
        provcli.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["provision", "apply", "--allow-destroy", "-c", "f.toml"])
        assert (args.command, args.provision_command, args.allow_destroy) == (
            "provision",
            "apply",
            True,
        )
        assert parser.parse_args(["provision", "plan", "--facts", "x.json"]).facts == "x.json"

    def test_context_describes_this_installation(self) -> None:
        ctx = provcli.context(str(FIXTURES / "farm-freebsd.toml"))
        assert ctx.master_cfg.startswith("# -*- python -*-")
        assert Path(ctx.site_packages).is_dir() and ctx.python.startswith("3.")
