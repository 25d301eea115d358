"""Golden command sequences of a FreeBSD worker jail's life (`workers.lifecycle`), through the
real FreeBSD platform (`make_platform` -> `Zfs` + `FreeBsdJails`) on a `FakeRunner`.

What the goldens encode, and where each fact comes from:

* Create, in order (shared/spec/freebsd-jails-zfs.md, "Features the seeds imply" item 9, and
  ARCHITECTURE.md "Space guard" / "Leases"): clear any leftover of this worker first; check the
  pool's free space against `zfs.reserve` *before* the clone (item 12); find the current
  generation through the `jailfarm:current` pointer (item 8); `zfs clone tpl@current
  <root>/jails/<name>` with the whole lease set atomically by `-o` (zfs-clone(8)); write the
  per-build worker credential (buildbot.tac) into the clone - from stdin, never an argv; render
  the jail config with the poudriere-parent profile and `jail -f conf -c`; then start the
  worker, unprivileged, with `jexec -l -U buildbot` (jails spec gotcha 7: clean environment).
* The worker jail's parameters (shared/spec/poudriere.md 3.2, "What the host jail really
  needs"): children.max >= 2 x (builders + 1), enforce_statfs = 1, allow.mount{,.devfs,
  .nullfs,.tmpfs,.procfs}, allow.raw_sockets, allow.socket_af, allow.chflags, allow.sysvipc,
  allow.mlock, a devfs_ruleset that is not 0 (4), plus item 13's rctl `vmemoryuse:deny`
  applied in exec.created and removed in exec.poststop.
* Teardown, idempotent and in order (item 10): `jail -r` with a timeout (falling back to
  `jail -R`), then `zfs destroy` of the clone tolerating "dataset is busy" with unmount and
  retries (ARCHITECTURE.md "Leases"), then check that `jls` and `zfs` show nothing left.
* Not encoded, because lifecycle.py does not do it: item 9's separate delegated dataset
  (`jailed=on`, `zfs jail`, `exec.start` with `zfs mount -a`; without it poudriere runs with
  NO_ZFS) and item 10's unmount sweep below the jail root (RegressionTests).

jls output is written in the shape of tests/fixtures/jls/v_one_jail.json and v_mixed.json
(`jls --libxo json -v`, libxo version 2); zfs output in the shape of tests/fixtures/zfs/
(`zfs get -H -p -o name,property,value`, tab-separated) with FreeBSD values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from jailfarm.cmd import Cmd, Result
from jailfarm.config import FarmConfig, parse_farm
from jailfarm.errors import FarmError, ZfsError
from jailfarm.host.platform import HostPlatform, make_platform
from jailfarm.runner import FakeRunner
from jailfarm.workers.lifecycle import (
    packages_dataset,
    start_worker_jail,
    teardown_worker_jail,
)
from jailfarm.workers.template import TemplateError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

GIB = 1 << 30
NAME = "jfw1"
HOST = "local"
MASTER = ("10.17.0.2", 9989)
PASSWORD = "Zq7-worker-password-9f3c"
BUILD = 42
NOW = 1_767_225_600.0
LEASE_SECONDS = 14400

ROOT = "zroot/jf"
CLONE = f"{ROOT}/jails/{NAME}"
TEMPLATE = f"{ROOT}/templates/worker"
MOUNTPOINT = f"/jf/jails/{NAME}"
WORKER_DIR = f"{MOUNTPOINT}/home/buildbot/worker"
TAC = f"{WORKER_DIR}/buildbot.tac"
CONF_DIR = "/var/db/jailfarm/run/jails"  # <state_dir>/run/jails (make_platform)
CONF = f"{CONF_DIR}/{NAME}.conf"
CONSOLE_DIR = "/var/log/jailfarm"

GET = ("zfs", "get", "-H", "-p", "-o", "name,property,value")
INFO = "type,used,available,referenced,origin,mountpoint,mounted"
LEASE_GET = (
    *GET,
    f"{INFO},jailfarm:owner,jailfarm:build,jailfarm:expires,jailfarm:worker,jailfarm:host",
    CLONE,
)
CLONE_INFO_GET = (*GET, f"{INFO},jailfarm:owner,jailfarm:build,jailfarm:expires", CLONE)
CLONE_TYPE_GET = (*GET, "type", CLONE)
# The jail host's packages dataset, mounted into every worker at poudriere's packages place.
PACKAGES = f"{ROOT}/packages"
PACKAGES_GET = (*GET, INFO, PACKAGES)
AVAILABLE_GET = (*GET, "available", ROOT)
TEMPLATE_GET = (*GET, "-d", "1", "type,origin,creation,jailfarm:current", TEMPLATE)
JLS = ("jls", "--libxo", "json", "-v")
# The whole lease goes on with the clone, atomically (zfs-clone(8) -o).
CLONE_ARGV = (
    "zfs", "clone",
    "-o", "jailfarm:owner=ci",
    "-o", f"jailfarm:build={BUILD}",
    "-o", f"jailfarm:expires={int(NOW) + LEASE_SECONDS}",
    "-o", f"jailfarm:worker={NAME}",
    "-o", f"jailfarm:host={HOST}",
    f"{TEMPLATE}@g2", CLONE,
)  # fmt: skip
JEXEC_START = (
    "jexec", "-l", "-U", "buildbot", NAME,
    "/usr/local/bin/buildbot-worker", "start", "--quiet", "/home/buildbot/worker",
)  # fmt: skip

MISSING = f"cannot open '{CLONE}': dataset does not exist\n"
BUSY = f"cannot destroy '{CLONE}': dataset is busy\n"


def freebsd_farm() -> FarmConfig:
    return parse_farm(
        {
            "farm": {"platform": "freebsd", "name": "ci", "prefix": "jf"},
            "zfs": {"pool": "zroot", "root": ROOT, "reserve": "10G"},
            "jail_hosts": [{"name": HOST, "max_jails": 2}],
            "workers": {"lease": LEASE_SECONDS, "builders": 2, "memory_limit": "8G"},
            "template": {"release": "14.1-RELEASE"},
            "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
            "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
            "signing": {"key_file": "/usr/local/etc/jailfarm/repo.key"},
        }
    )


CFG = freebsd_farm()


# ---- recorded-shape outputs -------------------------------------------------------------------


def rows(name: str, *pairs: tuple[str, str]) -> str:
    """`zfs get -H -p -o name,property,value` output: one NAME<TAB>PROPERTY<TAB>VALUE line each."""
    return "".join(f"{name}\t{prop}\t{value}\n" for prop, value in pairs)


def jail_entry(jid: int, name: str, path: str, hostname: str) -> dict[str, Any]:
    return {
        "jid": jid,
        "hostname": hostname,
        "path": path,
        "name": name,
        "state": "ACTIVE",
        "cpusetid": jid + 1,
        "ipv4_addrs": [],
        "ipv6_addrs": [],
    }


def jls(*entries: dict[str, Any]) -> str:
    """`jls --libxo json -v` with libxo's spacing (tests/fixtures/jls/v_mixed.json): scalar
    fields packed, the address lists spaced."""

    def entry(e: dict[str, Any]) -> str:
        scalars = ",".join(
            f"{json.dumps(k)}:{json.dumps(v)}" for k, v in e.items() if not isinstance(v, list)
        )
        lists = "".join(
            f", {json.dumps(k)}: {json.dumps(v)}" for k, v in e.items() if isinstance(v, list)
        )
        return "{" + scalars + lists + "}"

    body = ", ".join(entry(e) for e in entries)
    return '{"__version": "2", "jail-information": {"jail": [' + body + "]}}\n"


NO_JAILS = jls()
OUR_JAIL = jail_entry(5, NAME, MOUNTPOINT, f"{NAME}.ci")
# poudriere's build jail inside the worker (name `<parent>.<child>`, poudriere.md 3.2).
BUILD_JAIL = jail_entry(
    8,
    f"{NAME}.141amd64-default-job-01",
    f"{MOUNTPOINT}/usr/local/poudriere/data/.m/141amd64-default/01",
    "141amd64-default-job-01",
)
LISTED = jls(OUR_JAIL, BUILD_JAIL)
JUST_STARTED = jls(OUR_JAIL)

AVAILABLE_50G = rows(ROOT, ("available", str(50 * GIB)))
TEMPLATE_G2_CURRENT = (
    rows(TEMPLATE, ("type", "filesystem"), ("origin", "-"), ("creation", "1767139200"),
         ("jailfarm:current", "g2"))
    + rows(f"{TEMPLATE}@g1", ("type", "snapshot"), ("origin", "-"), ("creation", "1767139200"),
           ("jailfarm:current", "g2"))
    + rows(f"{TEMPLATE}@g2", ("type", "snapshot"), ("origin", "-"), ("creation", "1767182400"),
           ("jailfarm:current", "g2"))
)  # fmt: skip


PACKAGES_ROWS = "".join(
    f"{PACKAGES}\t{k}\t{v}\n"
    for k, v in (
        ("type", "filesystem"),
        ("used", "1000"),
        ("available", str(50 * 2**30)),
        ("referenced", "1000"),
        ("origin", "-"),
        ("mountpoint", "/jf/packages"),
        ("mounted", "yes"),
    )
)


def clone_rows(owner: str = "ci", extra: Sequence[tuple[str, str]] = ()) -> str:
    return rows(
        CLONE,
        ("type", "filesystem"),
        ("used", "1622016"),
        ("available", str(50 * GIB)),
        ("referenced", "1187323904"),
        ("origin", f"{TEMPLATE}@g2"),
        ("mountpoint", MOUNTPOINT),
        ("mounted", "yes"),
        ("jailfarm:owner", owner),
        ("jailfarm:build", str(BUILD)),
        ("jailfarm:expires", str(int(NOW) + LEASE_SECONDS)),
        *extra,
    )


LEASED_CLONE = clone_rows(extra=(("jailfarm:worker", NAME), ("jailfarm:host", HOST)))


# ---- scripts ----------------------------------------------------------------------------------

Step = tuple[tuple[str, ...], dict[str, Any]]


def step(*argv: str, **answer: Any) -> Step:
    return argv, answer


def mount_table() -> str:
    """`mount -p` on the jail host with the clone mounted and nothing below it."""
    return (
        f"zroot/ROOT/default\t/\tzfs\trw\t0 0\ndevfs\t/dev\tdevfs\trw\t0 0\n"
        f"{CLONE}\t{MOUNTPOINT}\tzfs\trw\t0 0\n"
    )


MOUNT_P = ("mount", "-p")


def nothing_left_over() -> list[Step]:
    """start's first teardown when this worker has no jail and no clone."""
    return [
        # The clone's owner is read before any jail is touched.
        step(*LEASE_GET, rc=1, stderr=MISSING),
        step(*JLS, stdout=NO_JAILS),
        step(*JLS, stdout=NO_JAILS),
        step(*CLONE_TYPE_GET, rc=1, stderr=MISSING),
    ]


def clone_and_start() -> list[Step]:
    """Everything after the leftover check of a successful start."""
    return [
        step(*AVAILABLE_GET, stdout=AVAILABLE_50G),
        step(*TEMPLATE_GET, stdout=TEMPLATE_G2_CURRENT),
        step(*CLONE_ARGV),
        step(*CLONE_INFO_GET, stdout=clone_rows()),
        step(*PACKAGES_GET, stdout=PACKAGES_ROWS),
        step("install", "-d", "-m", "0755", f"{MOUNTPOINT}/usr/local/poudriere/data/packages"),
        step("install", "-d", "-o", "1001", "-g", "1001", "-m", "0700", WORKER_DIR),
        step("dd", f"of={TAC}", "status=none"),
        step("chmod", "0600", TAC),
        step("chown", "1001:1001", TAC),
        step("install", "-d", "-m", "0700", CONF_DIR, CONSOLE_DIR),
        step("tee", CONF),
        step("jail", "-f", CONF, "-c", NAME, stdout=f"{NAME}: created\n"),
        step(*JLS, "-j", NAME, stdout=JUST_STARTED),
        step(*JEXEC_START),
    ]


def full_teardown() -> list[Step]:
    """Teardown of a running worker whose clone is ours and answers busy once."""
    return [
        # The clone's owner first: another farm's clone and jail are never touched.
        step(*LEASE_GET, stdout=LEASED_CLONE),
        step(*JLS, stdout=LISTED),
        # FreeBsdJails.remove: list again, jail -r with its conf, verify, delete the conf.
        step(*JLS, stdout=LISTED),
        step("jail", "-f", CONF, "-r", NAME, stdout=f"{NAME}: removed\n"),
        step(*JLS, stdout=NO_JAILS),
        step("rm", "-f", CONF),
        # The unmount sweep below the clone (jails spec feature 10, gotcha 10): nothing left.
        step(*MOUNT_P, stdout=mount_table()),
        step("zfs", "destroy", CLONE, rc=1, stderr=BUSY),
        step("zfs", "umount", CLONE),
        step("zfs", "destroy", CLONE),
        # Nothing may be left: no jail, no clone.
        step(*JLS, stdout=NO_JAILS),
        step(*CLONE_TYPE_GET, rc=1, stderr=MISSING),
    ]


def scripted(steps: Sequence[Step]) -> FakeRunner:
    runner = FakeRunner()
    for argv, answer in steps:
        runner.expect(*argv, **answer)
    return runner


def argvs(runner: FakeRunner) -> list[tuple[str, ...]]:
    return [tuple(c.revealed_argv()) for c in runner.calls]


def one(runner: FakeRunner, *argv: str) -> Cmd:
    found = [c for c in runner.calls if tuple(c.revealed_argv()) == argv]
    assert len(found) == 1, argv
    return found[0]


def statements(conf: str) -> set[str]:
    """The jail.conf statements, comments and indentation dropped."""
    return {line.strip() for line in conf.splitlines() if not line.strip().startswith("#")}


class LifecycleCase(SynchronousTestCase):
    def platform(self, runner: Any) -> HostPlatform:
        self.clock = task.Clock()
        platform = make_platform(CFG, runner, self.clock)
        assert platform.name == "freebsd"
        return platform

    def start(self, runner: Any, buildid: int | None = BUILD) -> defer.Deferred[None]:
        return defer.ensureDeferred(
            start_worker_jail(
                self.platform(runner), CFG, NAME, HOST, MASTER, PASSWORD, buildid, NOW
            )
        )

    def teardown(self, runner: Any, fast: bool = False) -> defer.Deferred[None]:
        return defer.ensureDeferred(teardown_worker_jail(self.platform(runner), CFG, NAME, fast))


# ---- start ------------------------------------------------------------------------------------


class PackagesDatasetTests(LifecycleCase):
    def test_a_dataset_another_worker_is_making_is_waited_for(self) -> None:
        """Two workers start together: this one's create fails (the other made it), and the
        dataset is mounted a moment later; the start goes on with it."""
        unmounted = PACKAGES_ROWS.replace("mounted\tyes", "mounted\tno")
        runner = scripted(
            [
                step(
                    *PACKAGES_GET, rc=1, stderr=f"cannot open '{PACKAGES}': dataset does not exist"
                ),
                step(
                    "zfs",
                    "create",
                    PACKAGES,
                    rc=1,
                    stderr=f"cannot create '{PACKAGES}': dataset already exists",
                ),
                step(*PACKAGES_GET, stdout=unmounted),
                step(*PACKAGES_GET, stdout=PACKAGES_ROWS),
            ]
        )
        d = defer.ensureDeferred(packages_dataset(self.platform(runner), CFG))
        self.clock.advance(0.25)
        self.assertEqual(self.successResultOf(d), "/jf/packages")
        runner.assert_all_commands_ran()


class StartWorkerJailTests(LifecycleCase):
    def test_golden_start_sequence(self) -> None:
        runner = scripted(nothing_left_over() + clone_and_start())
        self.successResultOf(self.start(runner))
        runner.assert_all_commands_ran()
        lease_props = (
            "type,used,available,referenced,origin,mountpoint,mounted,"
            "jailfarm:owner,jailfarm:build,jailfarm:expires"
        )
        conf = "/var/db/jailfarm/run/jails/jfw1.conf"
        tac = "/jf/jails/jfw1/home/buildbot/worker/buildbot.tac"
        # fmt: off
        assert argvs(runner) == [
            # Leftover of this worker? (none: no clone, no jail; the owner is read first)
            ("zfs", "get", "-H", "-p", "-o", "name,property,value",
             f"{lease_props},jailfarm:worker,jailfarm:host", "zroot/jf/jails/jfw1"),
            ("jls", "--libxo", "json", "-v"),
            ("jls", "--libxo", "json", "-v"),
            ("zfs", "get", "-H", "-p", "-o", "name,property,value", "type",
             "zroot/jf/jails/jfw1"),
            # Space guard, before any clone.
            ("zfs", "get", "-H", "-p", "-o", "name,property,value", "available", "zroot/jf"),
            # The current generation (pointer on the template dataset).
            ("zfs", "get", "-H", "-p", "-o", "name,property,value", "-d", "1",
             "type,origin,creation,jailfarm:current", "zroot/jf/templates/worker"),
            # The clone, lease set atomically.
            ("zfs", "clone",
             "-o", "jailfarm:owner=ci",
             "-o", "jailfarm:build=42",
             "-o", "jailfarm:expires=1767240000",
             "-o", "jailfarm:worker=jfw1",
             "-o", "jailfarm:host=local",
             "zroot/jf/templates/worker@g2", "zroot/jf/jails/jfw1"),
            ("zfs", "get", "-H", "-p", "-o", "name,property,value", lease_props,
             "zroot/jf/jails/jfw1"),
            # The host's packages dataset (there already), and its mount point in the clone.
            ("zfs", "get", "-H", "-p", "-o", "name,property,value",
             "type,used,available,referenced,origin,mountpoint,mounted", "zroot/jf/packages"),
            ("install", "-d", "-m", "0755", "/jf/jails/jfw1/usr/local/poudriere/data/packages"),
            # buildbot.tac: 0700 directory, contents from stdin, 0600, owned by buildbot.
            ("install", "-d", "-o", "1001", "-g", "1001", "-m", "0700",
             "/jf/jails/jfw1/home/buildbot/worker"),
            ("dd", f"of={tac}", "status=none"),
            ("chmod", "0600", tac),
            ("chown", "1001:1001", tac),
            # The jail: root-only conf and console-log directories, conf, create, confirm.
            ("install", "-d", "-m", "0700", "/var/db/jailfarm/run/jails", "/var/log/jailfarm"),
            ("tee", conf),
            ("jail", "-f", conf, "-c", "jfw1"),
            ("jls", "--libxo", "json", "-v", "-j", "jfw1"),
            # The worker, unprivileged, in a clean login environment.
            ("jexec", "-l", "-U", "buildbot", "jfw1",
             "/usr/local/bin/buildbot-worker", "start", "--quiet", "/home/buildbot/worker"),
        ]
        # fmt: on

    def test_password_travels_only_on_dds_stdin(self) -> None:
        runner = scripted(nothing_left_over() + clone_and_start())
        self.successResultOf(self.start(runner))
        holders = [c for c in runner.calls if c.stdin and PASSWORD.encode() in c.stdin]
        assert [c.argv for c in holders] == [("dd", f"of={TAC}", "status=none")]
        for cmd in runner.calls:
            assert not any(PASSWORD in word for word in cmd.revealed_argv()), cmd
            assert PASSWORD not in str(cmd) and PASSWORD not in repr(cmd)
            assert not any(PASSWORD in value for value in cmd.revealed_env().values())

    def test_tac_points_the_worker_at_the_master(self) -> None:
        runner = scripted(nothing_left_over() + clone_and_start())
        self.successResultOf(self.start(runner))
        stdin = one(runner, "dd", f"of={TAC}", "status=none").stdin
        assert stdin is not None
        tac = stdin.decode()
        compile(tac, "buildbot.tac", "exec")
        assert "Application('buildbot-worker')" in tac
        assert f"Worker('10.17.0.2', 9989, '{NAME}', '{PASSWORD}', basedir" in tac

    def test_jail_conf_has_the_poudriere_parent_profile(self) -> None:
        runner = scripted(nothing_left_over() + clone_and_start())
        self.successResultOf(self.start(runner))
        stdin = one(runner, "tee", CONF).stdin
        assert stdin is not None
        conf = stdin.decode()
        assert conf.startswith(f"{NAME} {{\n") and conf.endswith("}\n")
        rctl_rule = f"vmemoryuse:deny={8 * GIB}"
        assert {
            f'path = "{MOUNTPOINT}";',
            f"host.hostname = {NAME}.ci;",
            "persist;",
            "exec.timeout = 90;",
            "stop.timeout = 30;",
            f'exec.consolelog = "{CONSOLE_DIR}/{NAME}.console";',
            "mount.devfs;",
            "devfs_ruleset = 4;",
            "children.max = 6;",  # 2 x (builders 2 + 1)
            "enforce_statfs = 1;",
            "allow.mount;",
            "allow.mount.devfs;",
            "allow.mount.nullfs;",
            "allow.mount.tmpfs;",
            "allow.mount.procfs;",
            "allow.raw_sockets;",
            "allow.socket_af;",
            "allow.chflags;",
            "allow.mlock;",
            "allow.sysvipc;",
            f'exec.created += "/usr/bin/rctl -a jail:{NAME}:{rctl_rule}";',
            f'exec.poststop += "/usr/bin/rctl -r jail:{NAME}";',
        } <= statements(conf)
        # The host's packages dataset, read-write where poudriere keeps packages (§4.3).
        packages = f"{MOUNTPOINT}/usr/local/poudriere/data/packages"
        assert f'mount += "/jf/packages {packages} nullfs rw 0 0";' in statements(conf)
        # No delegated dataset, so no ZFS privilege (jails spec b.50).
        assert "allow.mount.zfs;" not in statements(conf)

    def test_commands_are_bounded_where_they_can_hang(self) -> None:
        runner = scripted(nothing_left_over() + clone_and_start())
        self.successResultOf(self.start(runner))
        assert one(runner, *JEXEC_START).timeout == 60

    def test_a_build_less_start_leases_with_build_none(self) -> None:
        steps = nothing_left_over() + clone_and_start()
        assert steps[6][0] == CLONE_ARGV
        steps[6] = step(*(w.replace(f"build={BUILD}", "build=none") for w in CLONE_ARGV))
        runner = scripted(steps)
        self.successResultOf(self.start(runner, buildid=None))
        runner.assert_all_commands_ran()

    def test_a_leftover_of_this_worker_is_removed_fast_before_the_clone(self) -> None:
        # A master killed mid-build left the jail running and the clone behind.
        expected = full_teardown() + clone_and_start()
        runner = scripted(expected)
        self.successResultOf(self.start(runner))
        runner.assert_all_commands_ran()
        assert one(runner, "jail", "-f", CONF, "-r", NAME).timeout == 2
        calls = argvs(runner)
        assert calls.index(("zfs", "destroy", CLONE)) < next(
            i for i, a in enumerate(calls) if a[:2] == ("zfs", "clone")
        )

    def test_space_guard_refuses_below_the_reserve_without_cloning(self) -> None:
        available = 5 * GIB + 12345
        runner = scripted(
            [
                *nothing_left_over(),
                step(*AVAILABLE_GET, stdout=rows(ROOT, ("available", str(available)))),
            ]
        )
        failure = self.failureResultOf(self.start(runner), FarmError)
        runner.assert_all_commands_ran()
        message = str(failure.value)
        assert "pool zroot" in message
        assert f"jail host {HOST}" in message
        assert "5120 MiB available" in message and "10240 MiB (zfs.reserve)" in message
        assert not any(a[:2] == ("zfs", "clone") for a in argvs(runner))

    def test_exactly_the_reserve_is_enough(self) -> None:
        steps = nothing_left_over() + clone_and_start()
        steps[4] = step(*AVAILABLE_GET, stdout=rows(ROOT, ("available", str(10 * GIB))))
        runner = scripted(steps)
        self.successResultOf(self.start(runner))
        runner.assert_all_commands_ran()

    def check_no_template(self, answer: dict[str, Any], hint: str) -> None:
        runner = scripted(
            [
                *nothing_left_over(),
                step(*AVAILABLE_GET, stdout=AVAILABLE_50G),
                step(*TEMPLATE_GET, **answer),
            ]
        )
        failure = self.failureResultOf(self.start(runner), TemplateError)
        runner.assert_all_commands_ran()
        assert isinstance(failure.value, FarmError)
        assert hint in str(failure.value)
        assert not any(a[:2] == ("zfs", "clone") for a in argvs(runner))

    def test_no_template_dataset_says_to_build_one(self) -> None:
        missing = f"cannot open '{TEMPLATE}': dataset does not exist\n"
        self.check_no_template({"rc": 1, "stderr": missing}, "run `jailfarm template build`")

    def test_a_template_without_generations_says_to_build_one(self) -> None:
        bare = rows(
            TEMPLATE,
            ("type", "filesystem"),
            ("origin", "-"),
            ("creation", "1767139200"),
            ("jailfarm:current", "-"),
        )
        self.check_no_template({"stdout": bare}, "run `jailfarm template build`")

    def test_generations_without_a_current_pointer_say_to_promote(self) -> None:
        unset = TEMPLATE_G2_CURRENT.replace("jailfarm:current\tg2", "jailfarm:current\t-")
        self.check_no_template({"stdout": unset}, "run `jailfarm template promote [GEN]`")

    def test_a_pointer_to_a_vanished_generation_says_to_promote(self) -> None:
        vanished = TEMPLATE_G2_CURRENT.replace("jailfarm:current\tg2", "jailfarm:current\tg3")
        self.check_no_template({"stdout": vanished}, "points to g3, which no longer exists")

    def test_buildbot_worker_failing_to_start_is_a_farm_error_with_its_stderr(self) -> None:
        steps = nothing_left_over() + clone_and_start()
        stderr = (
            "/usr/local/bin/buildbot-worker: invalid worker directory '/home/buildbot/worker'\n"
        )
        steps[-1] = step(*JEXEC_START, rc=1, stderr=stderr)
        runner = scripted(steps)
        failure = self.failureResultOf(self.start(runner), FarmError)
        runner.assert_all_commands_ran()
        assert f"buildbot-worker did not start in jail {NAME}" in str(failure.value)
        assert "invalid worker directory '/home/buildbot/worker'" in str(failure.value)

    def test_buildbot_worker_reporting_on_stdout_only_is_still_shown(self) -> None:
        steps = nothing_left_over() + clone_and_start()
        steps[-1] = step(*JEXEC_START, rc=1, stdout="jexec: getpwnam: buildbot: no such user\n")
        failure = self.failureResultOf(self.start(scripted(steps)), FarmError)
        assert "no such user" in str(failure.value)

    def test_a_failing_clone_stops_the_start(self) -> None:
        steps = nothing_left_over() + clone_and_start()[:3]
        argv, _ = steps[-1]
        steps[-1] = step(*argv, rc=1, stderr=f"cannot create '{CLONE}': out of space\n")
        runner = scripted(steps)
        failure = self.failureResultOf(self.start(runner), FarmError)
        runner.assert_all_commands_ran()
        assert "out of space" in str(failure.value)

    def test_a_clone_without_mountpoint_is_refused_before_writing_files(self) -> None:
        steps = nothing_left_over() + clone_and_start()[:4]
        unmounted = clone_rows().replace(f"mountpoint\t{MOUNTPOINT}", "mountpoint\tnone")
        steps[-1] = step(*CLONE_INFO_GET, stdout=unmounted)
        runner = scripted(steps)
        failure = self.failureResultOf(self.start(runner), FarmError)
        runner.assert_all_commands_ran()
        assert f"clone {CLONE} is not mounted" in str(failure.value)


# ---- teardown ---------------------------------------------------------------------------------


class TeardownWorkerJailTests(LifecycleCase):
    def test_golden_teardown_sequence(self) -> None:
        expected = full_teardown()
        runner = scripted(expected)
        self.successResultOf(self.teardown(runner))
        runner.assert_all_commands_ran()
        assert argvs(runner) == [argv for argv, _ in expected]
        # The grace period of a normal stop; jail -r's hooks are bounded by the runner.
        assert one(runner, "jail", "-f", CONF, "-r", NAME).timeout == 10

    def test_busy_clone_is_unmounted_forced_and_retried_with_backoff(self) -> None:
        runner = scripted(
            [
                # No jail is listed, so teardown goes straight to the clone.
                step(*LEASE_GET, stdout=LEASED_CLONE),
                step(*JLS, stdout=NO_JAILS),
                step(*MOUNT_P, stdout=mount_table()),
                step("zfs", "destroy", CLONE, rc=1, stderr=BUSY),
                step("zfs", "umount", CLONE, rc=1, stderr="cannot unmount: Device busy\n"),
                step("zfs", "destroy", CLONE, rc=1, stderr=BUSY),
                step("zfs", "umount", CLONE, rc=1, stderr="cannot unmount: Device busy\n"),
                step("zfs", "destroy", CLONE, rc=1, stderr=BUSY),
                step("zfs", "umount", "-f", CLONE),
                step("zfs", "destroy", CLONE),
                step(*JLS, stdout=NO_JAILS),
                step(*CLONE_TYPE_GET, rc=1, stderr=MISSING),
            ]
        )
        d = self.teardown(runner)
        self.assertNoResult(d)  # waiting 0.1 s after the second unmount
        self.clock.advance(0.1)
        self.assertNoResult(d)  # then 0.2 s after the forced one
        self.clock.advance(0.2)
        self.successResultOf(d)
        runner.assert_all_commands_ran()

    def test_a_clone_that_stays_busy_is_a_zfs_error_naming_it(self) -> None:
        steps = [
            step(*LEASE_GET, stdout=LEASED_CLONE),
            step(*JLS, stdout=NO_JAILS),
            step(*MOUNT_P, stdout=mount_table()),
        ]
        for attempt in range(6):
            steps.append(step("zfs", "destroy", CLONE, rc=1, stderr=BUSY))
            if attempt < 5:
                force = ("-f",) if attempt >= 2 else ()
                steps.append(step("zfs", "umount", *force, CLONE))
        runner = scripted(steps)
        d = self.teardown(runner)
        self.clock.pump([0.1, 0.2, 0.4, 0.8])
        failure = self.failureResultOf(d, ZfsError)
        runner.assert_all_commands_ran()
        assert f"cannot destroy {CLONE}" in str(failure.value)
        assert "jailfarm reap" in str(failure.value)

    def test_teardown_of_nothing_only_checks(self) -> None:
        runner = scripted(nothing_left_over())
        self.successResultOf(self.teardown(runner))
        runner.assert_all_commands_ran()

    def test_refuses_a_clone_another_farm_owns(self) -> None:
        foreign = clone_rows(owner="other")
        runner = scripted([step(*LEASE_GET, stdout=foreign)])
        failure = self.failureResultOf(self.teardown(runner), FarmError)
        runner.assert_all_commands_ran()
        assert f"{CLONE} belongs to 'other', not to this farm ('ci')" in str(failure.value)
        assert not any(a[:2] == ("zfs", "destroy") for a in argvs(runner))

    def test_refuses_a_clone_without_an_owner(self) -> None:
        ownerless = rows(
            CLONE,
            ("type", "filesystem"),
            ("mountpoint", MOUNTPOINT),
            ("mounted", "yes"),
            ("jailfarm:owner", "-"),
        )
        runner = scripted([step(*LEASE_GET, stdout=ownerless)])
        failure = self.failureResultOf(self.teardown(runner), FarmError)
        assert "belongs to None" in str(failure.value)
        assert not any(a[:2] == ("zfs", "destroy") for a in argvs(runner))

    def test_a_jail_that_survives_is_reported_for_the_reaper(self) -> None:
        runner = scripted(
            [
                step(*LEASE_GET, rc=1, stderr=MISSING),
                step(*JLS, stdout=NO_JAILS),
                # Something started the jail again in between (a concurrent start).
                step(*JLS, stdout=JUST_STARTED),
                step(*CLONE_TYPE_GET, rc=1, stderr=MISSING),
            ]
        )
        failure = self.failureResultOf(self.teardown(runner), FarmError)
        assert f"teardown left jail {NAME}; the reaper will retry" in str(failure.value)

    def test_a_clone_that_survives_is_reported_for_the_reaper(self) -> None:
        runner = scripted(
            [
                step(*LEASE_GET, stdout=LEASED_CLONE),
                step(*JLS, stdout=NO_JAILS),
                step(*MOUNT_P, stdout=mount_table()),
                step("zfs", "destroy", CLONE),
                step(*JLS, stdout=NO_JAILS),
                step(*CLONE_TYPE_GET, stdout=rows(CLONE, ("type", "filesystem"))),
            ]
        )
        failure = self.failureResultOf(self.teardown(runner), FarmError)
        assert f"teardown left {CLONE}" in str(failure.value)


# ---- former bugs (regression tests) ------------------------------------------------------


@dataclass
class FakeJailHost:
    """A FreeBSD jail host in memory, for tests whose command order a fix may change: jails,
    the mount table and datasets, answering the commands teardown may run (jls, jail -r/-R,
    rctl, rm, zfs get/destroy/umount, mount -p, umount) the way FreeBSD does. Anything else
    answers rc 127. `calls` records every command."""

    jails: dict[str, str] = field(default_factory=dict)  # name -> path
    mounts: dict[str, str] = field(default_factory=dict)  # mount point -> fstype
    datasets: dict[str, str] = field(default_factory=dict)  # name -> `zfs get` rows
    calls: list[Cmd] = field(default_factory=list)
    jail_r_fails: bool = False

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        self.calls.append(cmd)
        rc, out, err = self._answer(tuple(cmd.revealed_argv()))
        return defer.succeed(Result(cmd, rc, out.encode(), err.encode()))

    def _below(self, path: str) -> list[str]:
        return [m for m in self.mounts if m.startswith(path.rstrip("/") + "/")]

    def _answer(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        handlers: dict[tuple[str, ...], Callable[[tuple[str, ...]], tuple[int, str, str]]] = {
            ("jls",): self._jls,
            ("jail",): self._jail,
            ("rctl",): lambda a: (0, "", ""),
            ("rm",): lambda a: (0, "", ""),
            ("zfs", "get"): self._zfs_get,
            ("zfs", "destroy"): self._zfs_destroy,
            ("zfs", "umount"): self._zfs_umount,
            ("mount", "-p"): self._mount_p,
            ("umount",): self._umount,
        }
        for prefix, handler in handlers.items():
            if argv[: len(prefix)] == prefix:
                return handler(argv)
        return 127, "", f"{argv[0]}: not scripted in FakeJailHost\n"

    def _jls(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        entries = [
            jail_entry(i + 2, name, path, f"{name}.ci")
            for i, (name, path) in enumerate(self.jails.items())
        ]
        return 0, jls(*entries), ""

    def _jail(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        name = argv[-1]
        if "-r" in argv and self.jail_r_fails:
            return 1, "", f"jail: {name}: /bin/sh /etc/rc.shutdown: timed out\n"
        # jail -r unmounts what jail(8) mounted (mount.devfs, mount.fdescfs); jail -R does not
        # (jail(8) -R; jails spec gotcha 10), and neither unmounts what the jail mounted.
        path = self.jails.pop(name, None)
        if path and "-r" in argv:
            for point in (f"{path}/dev/fd", f"{path}/dev"):
                self.mounts.pop(point, None)
        return 0, "", ""

    def _zfs_get(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        name = argv[-1]
        if name not in self.datasets:
            return 1, "", f"cannot open '{name}': dataset does not exist\n"
        return 0, self.datasets[name], ""

    def _zfs_destroy(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        name = argv[-1]
        if name not in self.datasets:
            return 1, "", f"cannot open '{name}': dataset does not exist\n"
        if self._below(MOUNTPOINT) and name == CLONE:
            return 1, "", f"cannot unmount '{MOUNTPOINT}': Device busy\n"
        del self.datasets[name]
        return 0, "", ""

    def _zfs_umount(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        if argv[-1] == CLONE and self._below(MOUNTPOINT):
            return 1, "", f"cannot unmount '{MOUNTPOINT}': Device busy\n"
        return 0, "", ""

    def _mount_p(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        table = {"/": "zfs", "/dev": "devfs", **self.mounts}
        lines = [f"{fs}\t\t{point}\t\t{fs}\trw\t\t0 0" for point, fs in table.items()]
        return 0, "\n".join(lines) + "\n", ""

    def _umount(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        point = argv[-1]
        if point not in self.mounts:
            return 1, "", f"umount: {point}: not a file system root directory\n"
        if self._below(point):
            return 1, "", f"umount: unmount of {point} failed: Device busy\n"
        del self.mounts[point]
        return 0, "", ""


class RegressionTests(LifecycleCase):
    def run_on(self, host: FakeJailHost) -> defer.Deferred[None]:
        d = self.teardown(host)
        # zfs destroy's busy retries wait on the clock: let them all run out.
        self.clock.pump([1.0] * 10)
        return d

    def test_teardown_never_removes_a_jail_running_from_another_farms_clone(self) -> None:
        host = FakeJailHost(
            jails={NAME: MOUNTPOINT},
            datasets={CLONE: clone_rows(owner="other")},
        )
        failure = self.failureResultOf(self.run_on(host), FarmError)
        assert "belongs to 'other'" in str(failure.value)
        assert CLONE in host.datasets
        assert not [c for c in host.calls if c.argv[0] == "jail"], "touched the other farm's jail"
        assert NAME in host.jails

    def test_teardown_unmounts_what_the_jail_left_below_the_clone(self) -> None:
        poudriere_ref = f"{MOUNTPOINT}/usr/local/poudriere/data/.m/141amd64-default/ref"
        host = FakeJailHost(
            jails={NAME: MOUNTPOINT},
            # jail(8)'s own devfs/fdescfs, and a build jail's mounts made inside the worker.
            mounts={
                f"{MOUNTPOINT}/dev": "devfs",
                f"{MOUNTPOINT}/dev/fd": "fdescfs",
                poudriere_ref: "tmpfs",
                f"{poudriere_ref}/dev": "devfs",
            },
            datasets={CLONE: LEASED_CLONE},
            jail_r_fails=True,  # the stop hooks hang: jail -R, which unmounts nothing
        )
        self.successResultOf(self.run_on(host))
        assert NAME not in host.jails
        assert CLONE not in host.datasets
        assert not [m for m in host.mounts if m.startswith(MOUNTPOINT + "/")]

    def test_an_unmounted_clone_is_refused_before_the_password_is_written(self) -> None:
        steps = nothing_left_over() + clone_and_start()[:4]
        unmounted = clone_rows().replace("mounted\tyes", "mounted\tno")
        steps[-1] = step(*CLONE_INFO_GET, stdout=unmounted)
        runner = scripted(steps)
        failure = self.failureResultOf(self.start(runner), FarmError)
        runner.assert_all_commands_ran()
        assert CLONE in str(failure.value)
        assert not [c for c in runner.calls if c.stdin and PASSWORD.encode() in c.stdin]
