"""Worker templates: the state parser over recorded `zfs get` output, the planners (with
hypothesis for the prune invariants), the secret rules, the golden FreeBSD fill plan, and the
operations through `FakeRunner` (no real zfs, no real time)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jailfarm.config import parse_farm
from jailfarm.errors import CommandFailed, ParseError, UnsafeOperation
from jailfarm.host.platform import make_platform
from jailfarm.host.zfs import LIST_PROPERTIES, parse_get
from jailfarm.poudriere.conf import render_poudriere_conf, worker_conf
from jailfarm.runner import FakeRunner
from jailfarm.workers.errors import TemplateError
from jailfarm.workers.template import (
    build_template,
    clear_tree,
    current_snapshot,
    prune_templates,
    remove_secrets,
    template_command,
)
from jailfarm.workers.templatefill import (
    base_url,
    check_mountpoint,
    is_secret,
    parse_uname,
    plan_freebsd_fill,
    secret_clean_cmd,
)
from jailfarm.workers.templateplan import (
    Generation,
    PointerMove,
    TemplateState,
    format_state,
    parse_state,
    plan_promote,
    plan_prune,
    plan_rollback,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from jailfarm.config import FarmConfig

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "template"
REC = "jfexp1/farm/templates/worker"  # the template dataset in the recorded fixtures


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def recorded(name: str = "get_root_state.txt") -> TemplateState:
    return parse_state(REC, parse_get(fixture(name)))


def state(
    numbers: list[int], current: str | None, cloned: frozenset[int] | set[int] = frozenset()
) -> TemplateState:
    ds = "tank/farm/templates/worker"
    gens = tuple(
        Generation(
            n, f"{ds}@g{n}", 1_700_000_000 + n, (f"tank/farm/jails/c{n}",) if n in cloned else ()
        )
        for n in sorted(numbers)
    )
    return TemplateState(ds, exists=True, current=current, generations=gens)


class ParseStateTests:
    def test_recorded_root_listing_gives_generations_clones_and_current(self) -> None:
        s = recorded()
        assert s.exists and s.current == "g2"
        assert [(g.tag, g.snapshot, g.created) for g in s.generations] == [
            ("g1", f"{REC}@g1", 1795477032),
            ("g2", f"{REC}@g2", 1795477033),
            ("g3", f"{REC}@g3", 1795477034),
        ]
        assert [g.clones for g in s.generations] == [
            ("jfexp1/farm/jails/jfw1",),
            ("jfexp1/farm/jails/jfw2",),
            (),
        ]
        assert s.live is not None and s.live.tag == "g2"
        assert s.next_tag == "g4"

    def test_depth_one_listing_has_no_clones(self) -> None:
        s = recorded("get_template_depth1.txt")
        assert [g.tag for g in s.generations] == ["g1", "g2", "g3"]
        assert all(g.clones == () for g in s.generations)

    def test_snapshots_not_named_gN_are_not_generations(self) -> None:
        assert "pre_update" not in {g.tag for g in recorded().generations}

    def test_inherited_current_on_snapshots_is_ignored(self) -> None:
        # Snapshots inherit jailfarm:current; only the dataset's own value counts.
        rows = {REC: {"type": "filesystem", "jailfarm:current": "-"}}
        rows[f"{REC}@g1"] = {"type": "snapshot", "creation": "5", "jailfarm:current": "g9"}
        s = parse_state(REC, rows)
        assert s.current is None and [g.tag for g in s.generations] == ["g1"]

    def test_missing_dataset_is_an_empty_state(self) -> None:
        s = parse_state(REC, {"jfexp1/farm": {"type": "filesystem"}})
        assert not s.exists and s.generations == () and s.next_tag == "g1"

    def test_bad_creation_is_a_parse_error(self) -> None:
        rows = {REC: {"type": "filesystem"}, f"{REC}@g1": {"type": "snapshot", "creation": "-"}}
        with pytest.raises(ParseError, match="expected epoch seconds"):
            parse_state(REC, rows)

    def test_next_tag_never_reuses_the_tag_the_pointer_names(self) -> None:
        assert state([1, 2], current="g7").next_tag == "g8"


class PlannerTests:
    def test_promote_defaults_to_the_newest(self) -> None:
        assert plan_promote(recorded()) == PointerMove(REC, "g2", "g3")

    @pytest.mark.parametrize("tag", ["g1", "1"])
    def test_promote_a_named_generation(self, tag: str) -> None:
        move = plan_promote(recorded(), tag)
        assert (move.new, move.describe()) == ("g1", "current: g2 -> g1")

    def test_promote_the_current_generation_is_a_no_op(self) -> None:
        move = plan_promote(recorded(), "g2")
        assert not move.changed and move.describe() == "g2 is already current"

    @pytest.mark.parametrize("tag", ["g9", "pre_update", "x", "0"])
    def test_promote_unknown_generation_names_the_known_ones(self, tag: str) -> None:
        with pytest.raises(TemplateError) as e:
            plan_promote(recorded(), tag)
        assert str(e.value) == f"unknown template generation {tag!r}; {REC} has g1, g2, g3"

    @pytest.mark.parametrize("plan", [plan_promote, plan_rollback])
    def test_nothing_built_says_to_build(self, plan: Any) -> None:
        with pytest.raises(TemplateError) as e:
            plan(TemplateState(REC))
        assert (
            str(e.value) == f"no worker template built yet ({REC}): run `jailfarm template build`"
        )

    def test_rollback_moves_to_the_previous_generation(self) -> None:
        assert plan_rollback(state([1, 3, 4], "g4")) == PointerMove(
            "tank/farm/templates/worker", "g4", "g3"
        )

    def test_rollback_from_the_oldest_has_nothing_to_go_to(self) -> None:
        with pytest.raises(TemplateError, match="nothing to roll back to: g1 is the oldest"):
            plan_rollback(state([1, 2], "g1"))

    def test_rollback_without_a_current_generation_says_to_promote(self) -> None:
        with pytest.raises(TemplateError, match=r"points to nothing .*template promote"):
            plan_rollback(state([1, 2], None))
        with pytest.raises(TemplateError, match="points to g7, which no longer exists"):
            plan_rollback(state([1, 2], "g7"))

    def test_prune_keeps_newest_current_and_cloned(self) -> None:
        s = state([1, 2, 3, 4, 5, 6], "g2", cloned={3})
        assert plan_prune(s, 2) == (
            "tank/farm/templates/worker@g1",
            "tank/farm/templates/worker@g4",
        )

    def test_prune_of_the_recorded_state_destroys_nothing(self) -> None:
        # g1 has a clone, g2 is current, g3 is the newest.
        assert plan_prune(recorded(), 1) == ()

    def test_prune_with_keep_beyond_the_count_destroys_nothing(self) -> None:
        assert plan_prune(state([1, 2, 3], "g3"), 5) == ()

    @given(
        numbers=st.sets(st.integers(1, 40), max_size=12),
        data=st.data(),
        keep=st.integers(0, 6),
    )
    def test_prune_never_touches_current_cloned_or_newest(
        self, numbers: set[int], data: st.DataObject, keep: int
    ) -> None:
        cloned = data.draw(st.sets(st.sampled_from(sorted(numbers))) if numbers else st.just(set()))
        current = data.draw(st.none() | st.integers(1, 45).map(lambda n: f"g{n}"))
        s = state(sorted(numbers), current, cloned)
        plan = set(plan_prune(s, keep))
        by_snapshot = {g.snapshot: g for g in s.generations}
        assert plan <= set(by_snapshot)
        assert all(by_snapshot[p].tag != current and not by_snapshot[p].clones for p in plan)
        newest = sorted(numbers)[-keep:] if keep else []
        assert not {f"tank/farm/templates/worker@g{n}" for n in newest} & plan
        # Everything else goes: the plan is exactly the unprotected generations.
        kept = len(s.generations) - len(plan)
        assert kept == len({*newest, *cloned, *(n for n in numbers if f"g{n}" == current)})

    def test_prune_rejects_negative_keep(self) -> None:
        with pytest.raises(ValueError):
            plan_prune(recorded(), -1)


class FormatTests:
    def test_lines_newest_first_with_marker_and_clone_count(self) -> None:
        assert format_state(recorded()) == [
            "g3    2026-11-23 23:37 UTC  -        0 clones",
            "g2    2026-11-23 23:37 UTC  current  1 clone",
            "g1    2026-11-23 23:37 UTC  -        1 clone",
        ]

    def test_nothing_built(self) -> None:
        assert format_state(TemplateState(REC)) == [
            f"no worker template built yet ({REC}): run `jailfarm template build`"
        ]

    def test_unset_or_vanished_pointer_is_reported(self) -> None:
        assert format_state(state([1], None))[-1] == (
            "no current generation: run `jailfarm template promote [GEN]`"
        )
        assert "current points to g4, which no longer exists" in format_state(state([1], "g4"))[-1]


class SecretTests:
    @pytest.mark.parametrize(
        "path",
        [
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "root/.ssh/known_hosts",
            "root/.ssh/id_ed25519",
            "home/buildbot/.ssh/known_hosts",
            "home/buildbot/worker/buildbot.tac",
            "usr/local/etc/pki/poudriere/poudriere.key",
            "etc/worker.password",
        ],
    )
    def test_secrets(self, path: str) -> None:
        assert is_secret(path)

    @pytest.mark.parametrize(
        "path",
        [
            "etc/ssh/sshd_config",
            "etc/master.passwd",
            "etc/passwd",
            "root/.ssh/authorized_keys",
            "usr/share/keys/pkg/trusted/pkg.freebsd.org.2013102301",
            "usr/local/etc/pki/poudriere/poudriere.crt",
            "home/buildbot/worker/info/admin",
        ],
    )
    def test_not_secrets(self, path: str) -> None:
        assert not is_secret(path)

    def test_remove_secrets_deletes_files_and_links_never_their_targets(
        self, tmp_path: Path
    ) -> None:
        root, outside = tmp_path / "root", tmp_path / "outside"
        (root / "etc/ssh").mkdir(parents=True)
        (root / "home/buildbot/worker").mkdir(parents=True)
        outside.mkdir()
        (outside / "repo.key").write_text("target")
        (root / "etc/ssh/ssh_host_rsa_key").write_text("k")
        (root / "etc/ssh/sshd_config").write_text("c")
        (root / "home/buildbot/worker/buildbot.tac").write_text("passwd = 'x'")
        (root / "sign.key").symlink_to(outside / "repo.key")
        (root / "elsewhere").symlink_to(outside)  # a symlinked directory is not entered
        assert remove_secrets(root) == [
            "etc/ssh/ssh_host_rsa_key",
            "home/buildbot/worker/buildbot.tac",
            "sign.key",
        ]
        assert (root / "etc/ssh/sshd_config").exists()
        assert (outside / "repo.key").read_text() == "target"

    def test_clear_tree_refuses_a_directory_that_is_not_a_mount_point(self, tmp_path: Path) -> None:
        (tmp_path / "keep").write_text("x")
        with pytest.raises(UnsafeOperation, match="not a mount point"):
            clear_tree(tmp_path)
        assert (tmp_path / "keep").exists()

    @pytest.mark.parametrize("path", ["/", "relative/dir"])
    def test_clear_tree_refuses_root_and_relative_paths(self, path: str) -> None:
        with pytest.raises(UnsafeOperation):
            clear_tree(Path(path))

    def test_clear_tree_refuses_a_symlinked_path(self, tmp_path: Path) -> None:
        (tmp_path / "link").symlink_to(tmp_path)
        with pytest.raises(UnsafeOperation, match="canonical"):
            clear_tree(tmp_path / "link")

    def test_secret_clean_cmd_stays_on_one_filesystem_and_spares_directories(self) -> None:
        argv = secret_clean_cmd("/j/t").argv
        assert argv[:4] == ("find", "-x", "/j/t", "(")
        assert argv[-6:] == (")", "!", "-type", "d", "-print", "-delete")
        assert ("-path", "/j/t/etc/ssh/*key*") == argv[4:6]

    @pytest.mark.parametrize(
        ("mountpoint", "root"),
        [
            ("/jf/farm/templates/worker", "/jf/farm"),
            ("/jf/farm/templates/worker", "/jf/farm/"),
        ],
    )
    def test_mountpoint_below_the_root_mountpoint_is_accepted(
        self, mountpoint: str, root: str
    ) -> None:
        assert check_mountpoint(mountpoint, root) == mountpoint

    @pytest.mark.parametrize(
        ("mountpoint", "root"),
        [
            ("/", "/jf/farm"),
            ("/jf/farm", "/jf/farm"),
            ("/usr", "/jf/farm"),
            ("/jf/farm/../../usr", "/jf/farm"),
            ("/jf/farmx/t", "/jf/farm"),
            ("/jf/farm/t w", "/jf/farm"),
            (None, "/jf/farm"),
            ("/jf/farm/t", None),
        ],
    )
    def test_mountpoint_elsewhere_is_refused(
        self, mountpoint: str | None, root: str | None
    ) -> None:
        with pytest.raises(UnsafeOperation, match="refusing to write the template"):
            check_mountpoint(mountpoint, root)


def golden(cmds: list[Any]) -> list[str]:
    return [str(c) + (f"  # timeout {c.timeout:g}s" if c.timeout else "") for c in cmds]


class FreeBsdPlanTests:
    def test_fill_plan_matches_the_golden_file(self) -> None:
        expected = [
            line for line in fixture("freebsd_fill.txt").splitlines() if not line.startswith("#")
        ]
        plan = plan_freebsd_fill(
            "/jf/farm/templates/worker",
            "14.1-RELEASE-p4",
            "arm64",
            "aarch64",
            ("py311-buildbot-worker", "poudriere", "git-lite"),
            "/var/db/jailfarm/cache/dist",
            "BASEFS='/usr/local/poudriere'\n",
            [("141amd64", "14.1-RELEASE", "amd64"), ("132i386", "13.2-RELEASE", "i386")],
        )
        assert golden(plan) == expected
        sudo = next(
            c
            for c in plan
            if c.argv[-2:]
            == (
                "of=/jf/farm/templates/worker/usr/local/etc/sudoers.d/jailfarm-poudriere",
                "status=none",
            )
        )
        assert sudo.stdin == b"buildbot ALL=(root) NOPASSWD: /usr/local/bin/poudriere\n"

    def test_no_packages_means_no_devfs_and_no_pkg(self) -> None:
        plan = plan_freebsd_fill("/j/t", "14.1-RELEASE", "amd64", "amd64", (), "/var/cache/jf")
        assert not [c for c in plan if c.argv[0] in ("pkg", "mount", "umount")]
        assert plan[-1] == secret_clean_cmd("/j/t")

    @pytest.mark.parametrize(
        ("release", "url"),
        [
            ("14.1-RELEASE", "releases/amd64/amd64/14.1-RELEASE"),
            ("13.3-RELEASE-p4", "releases/amd64/amd64/13.3-RELEASE"),
            ("14.2-RC1", "releases/amd64/amd64/14.2-RC1"),
            ("15.0-CURRENT", "snapshots/amd64/amd64/15.0-CURRENT"),
            ("14.1-STABLE", "snapshots/amd64/amd64/14.1-STABLE"),
        ],
    )
    def test_base_url(self, release: str, url: str) -> None:
        assert base_url(release, "amd64", "amd64") == f"https://download.FreeBSD.org/{url}/base.txz"

    @pytest.mark.parametrize("release", ["14.1", "14.1-RELEASE; rm", "../14.1-RELEASE"])
    def test_bad_release_is_refused(self, release: str) -> None:
        with pytest.raises(ValueError):
            base_url(release, "amd64", "amd64")

    def test_parse_uname(self) -> None:
        assert parse_uname("arm64 aarch64\n") == ("arm64", "aarch64")
        for bad in ("", "amd64", "amd64 amd64 x", "AMD64 ../x"):
            with pytest.raises(ParseError):
                parse_uname(bad)


# ---- operations through FakeRunner ----------------------------------------------------------

GET = ("zfs", "get", "-H", "-p", "-o", "name,property,value")
STATE = "type,origin,creation,jailfarm:current"
INFO = ",".join(LIST_PROPERTIES)
TPL = "tank/farm/templates/worker"
MNT = "/tank/farm/templates/worker"
BASE: dict[str, object] = {
    "farm": {"platform": "freebsd"},
    "zfs": {"pool": "tank", "root": "tank/farm"},
    "template": {"release": "14.1-RELEASE", "keep": 2},
    "signing": {"key_file": "/etc/jailfarm/repo.key"},
    "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
    "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
}
MISSING_TPL = f"cannot open '{TPL}': dataset does not exist\n"


def config(platform: str = "freebsd", **extra: object) -> FarmConfig:
    data = {**BASE, "farm": {"platform": platform}, **extra}
    if platform != "freebsd":
        data["template"] = {"keep": 2}
        data.pop("signing")
    return parse_farm(data)


def rows(*lines: tuple[str, str, str]) -> str:
    return "".join(f"{n}\t{p}\t{v}\n" for n, p, v in lines)


def template_rows(current: str, *numbers: int, clones: dict[int, str] | None = None) -> str:
    lines = [(TPL, "type", "filesystem"), (TPL, "origin", "-"), (TPL, "creation", "100")]
    lines.append((TPL, "jailfarm:current", current))
    for n in numbers:
        lines += [(f"{TPL}@g{n}", "type", "snapshot"), (f"{TPL}@g{n}", "creation", str(100 + n))]
    for n, clone in (clones or {}).items():
        lines += [(clone, "type", "filesystem"), (clone, "origin", f"{TPL}@g{n}")]
    return rows(*lines)


def info_rows(name: str, mountpoint: str) -> str:
    values = ("filesystem", "1", "1", "1", "-", mountpoint, "yes")
    return rows(*((name, p, v) for p, v in zip(LIST_PROPERTIES, values, strict=True)))


class OperationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = FakeRunner()
        self.said: list[str] = []

    def tearDown(self) -> None:
        self.runner.assert_all_commands_ran()

    def run_ok(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.successResultOf(defer.ensureDeferred(coro))

    def platform(self, cfg: FarmConfig) -> Any:
        return make_platform(cfg, self.runner, clock=Clock())

    def expect_fill(self, fail_at: str | None = None) -> None:
        cfg = config()
        self.runner.expect("uname", "-m", "-p", stdout="amd64 amd64\n")
        for cmd in plan_freebsd_fill(
            MNT,
            "14.1-RELEASE",
            "amd64",
            "amd64",
            cfg.template.packages,
            "/var/db/jailfarm/cache/dist",
            render_poudriere_conf(worker_conf(cfg)),
            [(j.name, j.version, j.poudriere_arch) for j in cfg.poudriere_jails],
        ):
            failing = fail_at is not None and cmd.argv[:2] == tuple(fail_at.split())
            out = f"{MNT}/etc/ssh/ssh_host_rsa_key\n" if cmd.argv[-1] == "-delete" else ""
            self.runner.expect(
                *cmd.revealed_argv(),
                rc=1 if failing else 0,
                stdout=out,
                stderr="pkg: No packages available\n" if failing else "",
            )
            if failing:
                return

    def expect_mountpoint(self) -> None:
        self.runner.expect(*GET, INFO, TPL, stdout=info_rows(TPL, MNT))
        self.runner.expect(*GET, INFO, "tank/farm", stdout=info_rows("tank/farm", "/tank/farm"))

    def test_first_freebsd_build_creates_fills_snapshots_and_makes_g1_current(self) -> None:
        self.runner.expect(*GET, "-d", "1", STATE, TPL, rc=1, stderr=MISSING_TPL)
        self.runner.expect("zfs", "create", "-p", TPL)
        self.expect_mountpoint()
        self.runner.expect("zfs", "set", "readonly=off", TPL)
        self.expect_fill()
        self.runner.expect("zfs", "set", "readonly=on", TPL)
        self.runner.expect("zfs", "snapshot", f"{TPL}@g1")
        self.runner.expect("zfs", "set", "jailfarm:current=g1", TPL)
        self.runner.expect(*GET, "-r", STATE, "tank/farm", stdout=template_rows("g1", 1))
        snap = self.run_ok(build_template(self.platform(config()), config(), self.said.append))
        assert snap == f"{TPL}@g1"
        assert self.said[0] == f"created {TPL}"
        assert f"removed secret files: {MNT}/etc/ssh/ssh_host_rsa_key" in self.said
        assert self.said[-2:] == [f"built {TPL}@g1", "current: none -> g1"]
        # The env of pkg (no bootstrap prompt) is part of the plan.
        pkg = next(c for c in self.runner.calls if c.argv[0] == "pkg")
        assert dict(pkg.env) == {"ASSUME_ALWAYS_YES": "yes"}

    def test_rebuild_leaves_the_pointer_and_prunes_beyond_keep(self) -> None:
        self.runner.expect(*GET, "-d", "1", STATE, TPL, stdout=template_rows("g3", 1, 2, 3))
        self.expect_mountpoint()
        self.runner.expect("zfs", "set", "readonly=off", TPL)
        self.expect_fill()
        self.runner.expect("zfs", "set", "readonly=on", TPL)
        self.runner.expect("zfs", "snapshot", f"{TPL}@g4")
        after = template_rows("g3", 1, 2, 3, 4, clones={2: "tank/farm/jails/jfw1"})
        self.runner.expect(*GET, "-r", STATE, "tank/farm", stdout=after)
        self.runner.expect("zfs", "destroy", f"{TPL}@g1")
        self.run_ok(build_template(self.platform(config()), config(), self.said.append))
        assert "g4 is not current; test it, then `jailfarm template promote g4`" in self.said
        assert self.said[-1] == f"pruned {TPL}@g1"

    def test_failed_fill_unmounts_devfs_and_snapshots_nothing(self) -> None:
        self.runner.expect(*GET, "-d", "1", STATE, TPL, stdout=template_rows("g1", 1))
        self.expect_mountpoint()
        self.runner.expect("zfs", "set", "readonly=off", TPL)
        self.expect_fill(fail_at="pkg -c")
        self.runner.expect("umount", "-f", f"{MNT}/dev", rc=1)
        d = defer.ensureDeferred(
            build_template(self.platform(config()), config(), self.said.append)
        )
        failure = self.failureResultOf(d, CommandFailed)
        assert "No packages available" in str(failure.value)

    def test_build_refuses_a_template_mounted_outside_the_farm(self) -> None:
        self.runner.expect(*GET, "-d", "1", STATE, TPL, stdout=template_rows("g1", 1))
        self.runner.expect(*GET, INFO, TPL, stdout=info_rows(TPL, "/usr"))
        self.runner.expect(*GET, INFO, "tank/farm", stdout=info_rows("tank/farm", "/tank/farm"))
        d = defer.ensureDeferred(
            build_template(self.platform(config()), config(), self.said.append)
        )
        self.failureResultOf(d, UnsafeOperation)

    def test_prune_keeps_a_generation_cloned_after_the_state_was_read(self) -> None:
        self.runner.expect(*GET, "-r", STATE, "tank/farm", stdout=template_rows("g3", 1, 2, 3))
        stderr = fixture("stderr_destroy_has_clones.txt").replace("jfexp1", "tank")
        self.runner.expect("zfs", "destroy", f"{TPL}@g1", rc=1, stderr=stderr)
        zfs = self.platform(config()).zfs
        assert self.run_ok(prune_templates(zfs, config(), 2, self.said.append)) == []
        assert self.said == [f"kept {TPL}@g1: it was cloned while pruning"]

    def test_current_snapshot(self) -> None:
        self.runner.expect(*GET, "-d", "1", STATE, TPL, stdout=template_rows("g2", 1, 2))
        zfs = self.platform(config()).zfs
        assert self.run_ok(current_snapshot(zfs, config())) == f"{TPL}@g2"

    def check_current_error(self, answer: dict[str, Any], message: str) -> None:
        self.runner.expect(*GET, "-d", "1", STATE, TPL, **answer)
        zfs = self.platform(config()).zfs
        failure = self.failureResultOf(defer.ensureDeferred(current_snapshot(zfs, config())))
        failure.trap(TemplateError)
        assert str(failure.value) == message

    def test_current_snapshot_without_a_template_says_to_build(self) -> None:
        self.check_current_error(
            {"rc": 1, "stderr": MISSING_TPL},
            f"no worker template built yet ({TPL}): run `jailfarm template build`",
        )

    def test_current_snapshot_with_an_unset_pointer_says_to_promote(self) -> None:
        self.check_current_error(
            {"stdout": template_rows("-", 1)},
            f"current worker template of {TPL} is unset: run `jailfarm template promote [GEN]`",
        )

    def test_current_snapshot_with_a_vanished_generation_says_to_promote(self) -> None:
        self.check_current_error(
            {"stdout": template_rows("g5", 1)},
            f"current worker template of {TPL} points to g5, which no longer exists: "
            "run `jailfarm template promote [GEN]`",
        )


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = FakeRunner()
        self.said: list[str] = []

    def tearDown(self) -> None:
        self.runner.assert_all_commands_ran()

    def command(self, cfg: FarmConfig, action: str, tag: str | None = None) -> int:
        d = defer.ensureDeferred(template_command(cfg, self.runner, action, tag, self.said.append))
        result: int = self.successResultOf(d)
        return result

    def test_missing_pool_on_linux_dev_says_to_run_up(self) -> None:
        self.runner.expect(
            "zpool",
            "list",
            "-H",
            "-o",
            "name",
            "tank",
            rc=1,
            stderr="cannot open 'tank': no such pool\n",
        )
        assert self.command(config("linux-dev"), "list") == 1
        assert self.said == ["local: error: pool tank not imported: run `jailfarm up`"]

    def test_stopped_zfs_fuse_says_so(self) -> None:
        self.runner.expect(
            "zpool",
            "list",
            "-H",
            "-o",
            "name",
            "tank",
            rc=1,
            stderr="connect: No such file or directory\nPlease make sure that "
            "the zfs-fuse daemon is running.\n",
        )
        assert self.command(config("linux-dev"), "build") == 1
        assert "(the zfs-fuse daemon is not running): run `jailfarm up`" in self.said[0]

    def test_list_runs_on_every_host_with_its_name(self) -> None:
        hosts = [{"name": "a"}, {"name": "b", "ssh": "b.example.org"}]
        cfg = config(jail_hosts=hosts, workers={"master_address": "10.0.0.1"})
        self.runner.expect("zpool", "list", "-H", "-o", "name", "tank")
        self.runner.expect(
            *GET,
            "-r",
            STATE,
            "tank/farm",
            stdout=template_rows("g1", 1, clones={1: "tank/farm/jails/jfw1"}),
        )
        ssh = (
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "ServerAliveInterval=15",
            "-p",
            "22",
            "--",
            "root@b.example.org",
        )
        self.runner.expect(*ssh, "zpool", "list", "-H", "-o", "name", "tank")
        self.runner.expect(
            *ssh,
            *GET,
            "-r",
            STATE,
            "tank/farm",
            rc=1,
            stderr="cannot open 'tank/farm': dataset does not exist\n",
        )
        assert self.command(cfg, "list") == 0
        assert self.said == [
            "a: g1    1970-01-01 00:01 UTC  current  1 clone",
            f"b: no worker template built yet ({TPL}): run `jailfarm template build`",
        ]

    def test_promote_and_rollback_say_old_and_new(self) -> None:
        cfg = config()
        self.runner.expect("zpool", "list", "-H", "-o", "name", "tank")
        self.runner.expect(*GET, "-d", "1", STATE, TPL, stdout=template_rows("g1", 1, 2))
        self.runner.expect("zfs", "set", "jailfarm:current=g2", TPL)
        assert self.command(cfg, "promote") == 0
        self.runner.expect("zpool", "list", "-H", "-o", "name", "tank")
        self.runner.expect(*GET, "-d", "1", STATE, TPL, stdout=template_rows("g2", 1, 2))
        self.runner.expect("zfs", "set", "jailfarm:current=g1", TPL)
        assert self.command(cfg, "rollback") == 0
        assert self.said == ["local: current: g1 -> g2", "local: current: g2 -> g1"]

    def test_unknown_generation_fails_with_the_known_ones(self) -> None:
        self.runner.expect("zpool", "list", "-H", "-o", "name", "tank")
        self.runner.expect(*GET, "-d", "1", STATE, TPL, stdout=template_rows("g1", 1))
        assert self.command(config(), "promote", "g7") == 1
        assert self.said == [f"local: error: unknown template generation 'g7'; {TPL} has g1"]

    def test_bad_action_or_stray_generation_is_a_usage_error(self) -> None:
        assert self.command(config(), "destroy") == 2
        assert self.command(config(), "rollback", "g1") == 2
        assert self.said[0].startswith("usage: jailfarm template {build|list|promote|rollback}")

    def test_linux_dev_build_refuses_a_remote_host(self) -> None:
        cfg = config(
            "linux-dev",
            jail_hosts=[{"name": "b", "ssh": "b.example.org"}],
            workers={"master_address": "10.0.0.1"},
        )
        ssh = (
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "ServerAliveInterval=15",
            "-p",
            "22",
            "--",
            "root@b.example.org",
        )
        self.runner.expect(*ssh, "zpool", "list", "-H", "-o", "name", "tank")
        assert self.command(cfg, "build") == 1
        assert "a linux-dev template is written locally" in self.said[0]
