"""ZFS argv builders, the `zfs get` parser over recorded output, and `Zfs` operations through
`FakeRunner` with a fake clock (no real time, no real zfs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jailfarm.errors import CommandFailed, InvalidName, ParseError, UnsafeOperation, ZfsError
from jailfarm.host.zfs import (
    LEASE,
    LIST_PROPERTIES,
    Dataset,
    Zfs,
    clone_cmd,
    create_cmd,
    destroy_cmd,
    get_cmd,
    mount_cmd,
    parse_get,
    set_cmd,
    snapshot_cmd,
    umount_cmd,
)
from jailfarm.runner import FakeRunner

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "zfs"
GET_FIXTURES = sorted(FIXTURES.glob("get_*.txt"))


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# Every read is `zfs get -H -p -o name,property,value`: scripted (-H: no header, tab-separated),
# exact numbers (-p), fixed columns (zfs-get(8)). It is the one read both platforms accept:
# zfs-fuse 0.7 rejects `zfs list -p` and `zfs get -t` ("invalid option"), measured on the dev
# host (tests/fixtures/zfs/README.md).
GET = ("zfs", "get", "-H", "-p", "-o", "name,property,value")
LEASE_PROPS = {"jailfarm:owner": "w1", "jailfarm:build": "42", "jailfarm:expires": "1767225600"}


class BuilderTests:
    def test_create(self) -> None:
        assert create_cmd("pool/farm/tpl").argv == ("zfs", "create", "pool/farm/tpl")

    def test_create_with_parents_and_properties(self) -> None:
        # zfs-create(8): -p makes missing parents; each -o sets a property atomically.
        cmd = create_cmd(
            "pool/farm/a/b",
            {"mountpoint": "/jails/b", "compression": "lz4", "jailfarm:owner": "w1"},
            parents=True,
        )
        # fmt: off
        assert cmd.argv == (
            "zfs", "create", "-p", "-o", "mountpoint=/jails/b", "-o", "compression=lz4",
            "-o", "jailfarm:owner=w1", "pool/farm/a/b",
        )
        # fmt: on

    @pytest.mark.parametrize("mountpoint", ["none", "legacy", "/", "/jails/with space"])
    def test_create_accepts_absolute_none_and_legacy_mountpoints(self, mountpoint: str) -> None:
        cmd = create_cmd("pool/a", {"mountpoint": mountpoint})
        assert cmd.argv == ("zfs", "create", "-o", f"mountpoint={mountpoint}", "pool/a")

    def test_snapshot(self) -> None:
        assert snapshot_cmd("pool/farm/tpl@1").argv == ("zfs", "snapshot", "pool/farm/tpl@1")

    def test_snapshot_with_properties(self) -> None:
        # zfs-snapshot(8) takes -o like create (zfs-fuse 0.7 too, per its zfs(8)).
        assert snapshot_cmd("pool/tpl@1", {"jailfarm:build": "7"}).argv == (
            "zfs",
            "snapshot",
            "-o",
            "jailfarm:build=7",
            "pool/tpl@1",
        )

    def test_clone_sets_lease_properties_with_the_clone(self) -> None:
        # zfs-clone(8) -o: the lease exists from the first moment the clone does, so a reaper
        # never sees an unleased clone.
        # fmt: off
        assert clone_cmd("pool/farm/tpl@1", "pool/farm/w1", LEASE_PROPS).argv == (
            "zfs", "clone", "-o", "jailfarm:owner=w1", "-o", "jailfarm:build=42",
            "-o", "jailfarm:expires=1767225600", "pool/farm/tpl@1", "pool/farm/w1",
        )
        # fmt: on

    def test_get(self) -> None:
        assert get_cmd(["pool/farm"], ["type", "used"]).argv == (*GET, "type,used", "pool/farm")

    def test_get_recursive(self) -> None:
        assert get_cmd(["pool/farm"], ["type"], recursive=True).argv == (
            *GET,
            "-r",
            "type",
            "pool/farm",
        )

    def test_get_depth(self) -> None:
        assert get_cmd(["pool/farm"], ["type"], depth=1).argv == (
            *GET,
            "-d",
            "1",
            "type",
            "pool/farm",
        )

    def test_get_recursive_wins_over_depth(self) -> None:
        assert get_cmd(["p"], ["type"], recursive=True, depth=2).argv == (*GET, "-r", "type", "p")

    def test_get_several_targets_and_user_properties(self) -> None:
        assert get_cmd(["p/a", "p/a@1"], ["origin", "jailfarm:owner"]).argv == (
            *GET,
            "origin,jailfarm:owner",
            "p/a",
            "p/a@1",
        )

    @pytest.mark.parametrize(("targets", "props"), [([], ["type"]), (["p"], [])])
    def test_get_needs_a_target_and_a_property(self, targets: list[str], props: list[str]) -> None:
        with pytest.raises(ValueError, match="at least one property and one target"):
            get_cmd(targets, props)

    def test_set(self) -> None:
        assert set_cmd("pool/farm/w1", "jailfarm:expires", "0").argv == (
            "zfs",
            "set",
            "jailfarm:expires=0",
            "pool/farm/w1",
        )

    def test_destroy(self) -> None:
        assert destroy_cmd("pool/farm/w1").argv == ("zfs", "destroy", "pool/farm/w1")

    def test_destroy_recursive_uses_small_r_never_big_r(self) -> None:
        # zfs-destroy(8): -R would also destroy dependent clones elsewhere.
        assert destroy_cmd("pool/farm/tpl", recursive=True).argv == (
            "zfs",
            "destroy",
            "-r",
            "pool/farm/tpl",
        )

    def test_destroy_snapshot(self) -> None:
        assert destroy_cmd("pool/farm/tpl@1").argv == ("zfs", "destroy", "pool/farm/tpl@1")

    def test_umount(self) -> None:
        assert umount_cmd("pool/farm/w1").argv == ("zfs", "umount", "pool/farm/w1")

    def test_umount_force(self) -> None:
        assert umount_cmd("pool/farm/w1", force=True).argv == (
            "zfs",
            "umount",
            "-f",
            "pool/farm/w1",
        )

    def test_mount(self) -> None:
        assert mount_cmd("pool/farm/w1").argv == ("zfs", "mount", "pool/farm/w1")


class BuilderValidationTests:
    @pytest.mark.parametrize(
        "build",
        [
            lambda: create_cmd("-pool"),
            lambda: create_cmd("pool/a b"),
            lambda: create_cmd("pool/a", {"sharenfs": "on"}),
            lambda: create_cmd("pool/a", {"jailfarm:Owner": "x"}),
            lambda: create_cmd("pool/a", {"jailfarm:owner": "a b"}),
            lambda: create_cmd("pool/a", {"compression": "lz4;id"}),
            lambda: snapshot_cmd("pool/a"),
            lambda: snapshot_cmd("pool/a@"),
            lambda: snapshot_cmd("pool/a@x y"),
            lambda: clone_cmd("pool/a", "pool/b", {}),
            lambda: clone_cmd("pool/a@1", "pool/b@2", {}),
            lambda: clone_cmd("pool/a@1", "-pool/b", {}),
            lambda: get_cmd(["pool a"], ["type"]),
            lambda: get_cmd(["pool/a@"], ["type"]),
            lambda: get_cmd(["pool"], ["nosuchprop"]),
            lambda: get_cmd(["pool"], ["type,used"]),
            lambda: set_cmd("pool/a", "jailfarm:x", "$(id)"),
            lambda: set_cmd("-r", "jailfarm:x", "1"),
            lambda: destroy_cmd("pool/a@b c"),
            lambda: destroy_cmd("-r"),
            lambda: umount_cmd("pool/../x"),
            lambda: mount_cmd("/pool"),
        ],
    )
    def test_invalid_name_or_property_is_rejected(self, build: object) -> None:
        with pytest.raises(InvalidName):
            build()  # type: ignore[operator]

    @pytest.mark.parametrize("mountpoint", ["relative/dir", "-o", "", "/a\nb", "None"])
    def test_bad_mountpoint_is_rejected(self, mountpoint: str) -> None:
        with pytest.raises(ValueError, match="must be absolute, 'none' or 'legacy'"):
            create_cmd("pool/a", {"mountpoint": mountpoint})

    @given(st.text())
    def test_property_value_stays_inside_its_argument(self, value: str) -> None:
        try:
            cmd = set_cmd("pool/a", "jailfarm:note", value)
        except InvalidName:
            return
        assert cmd.argv == ("zfs", "set", f"jailfarm:note={value}", "pool/a")


class ParseGetTests:
    @pytest.mark.parametrize("path", GET_FIXTURES, ids=lambda p: p.name)
    def test_recorded_output_parses_to_one_entry_per_line(self, path: Path) -> None:
        text = path.read_text()
        rows = parse_get(text)
        # Written back in zfs's order, the rows are the recorded text again.
        again = "".join(f"{n}\t{p}\t{v}\n" for n, props in rows.items() for p, v in props.items())
        assert again == text

    def test_clone_with_lease(self) -> None:
        assert parse_get(fixture("get_clone_with_lease.txt")) == {
            "jfrec1/farm/w1": {
                "type": "filesystem",
                "used": "0",
                "available": "227819520",
                "referenced": "118784",
                "origin": "jfrec1/farm/tpl@1",
                "mountpoint": "/tmp/jfrec-9KjO/mnt/farm/w1",
                "mounted": "yes",
                "jailfarm:owner": "w1",
                "jailfarm:build": "42",
                "jailfarm:expires": "1767225600",
            }
        }

    def test_recursive_list_keeps_zfs_order_and_includes_snapshots(self) -> None:
        rows = parse_get(fixture("get_recursive_list.txt"))
        assert list(rows) == [
            "jfrec1/farm",
            "jfrec1/farm/tpl",
            "jfrec1/farm/tpl@1",
            "jfrec1/farm/w1",
        ]
        assert rows["jfrec1/farm/tpl@1"]["type"] == "snapshot"
        assert rows["jfrec1/farm/tpl@1"]["available"] == "-"

    def test_depth_one(self) -> None:
        assert parse_get(fixture("get_depth1_type.txt")) == {
            "jfrec1/farm": {"type": "filesystem"},
            "jfrec1/farm/tpl": {"type": "filesystem"},
            "jfrec1/farm/w1": {"type": "filesystem"},
        }

    def test_unset_user_property_reads_dash(self) -> None:
        rows = parse_get(fixture("get_unset_user_properties.txt"))
        assert {k: rows["jfrec1/farm/tpl"][k] for k in LEASE} == dict.fromkeys(LEASE, "-")

    def test_set_user_property_reads_its_value(self) -> None:
        assert parse_get(fixture("get_user_property_set.txt")) == {
            "jfrec1": {"jailfarm:owner": "-", "used": "733184"},
            "jfrec1/farm": {"jailfarm:owner": "x", "used": "241664"},
        }

    def test_empty_output_and_blank_lines(self) -> None:
        assert parse_get("") == {}
        assert parse_get("\np\ttype\tfilesystem\n\n") == {"p": {"type": "filesystem"}}

    def test_empty_value_is_kept(self) -> None:
        assert parse_get("p\tjailfarm:note\t\n") == {"p": {"jailfarm:note": ""}}

    @pytest.mark.parametrize(
        ("text", "line_no", "line"),
        [
            ("jfrec1/farm\tused\n", 1, "jfrec1/farm\tused"),
            ("jfrec1/farm\tused\t1\textra\n", 1, "jfrec1/farm\tused\t1\textra"),
            ("\tused\t1\n", 1, "\tused\t1"),
            ("jfrec1\t\t1\n", 1, "jfrec1\t\t1"),
            # `zfs get` without -H: the human table.
            (
                "NAME    PROPERTY  VALUE       SOURCE\njfrec1  type      filesystem  -\n",
                1,
                "NAME    PROPERTY  VALUE       SOURCE",
            ),
            ("jfrec1\ttype\tfilesystem\n\njfrec1 used 1\n", 3, "jfrec1 used 1"),
        ],
    )
    def test_malformed_line_raises_parse_error_naming_it(
        self, text: str, line_no: int, line: str
    ) -> None:
        with pytest.raises(ParseError) as info:
            parse_get(text)
        assert (info.value.tool, info.value.line_no, info.value.line) == ("zfs get", line_no, line)
        assert f"line {line_no}" in str(info.value)
        assert repr(line) in str(info.value)

    def test_truncated_recording_fails_on_the_first_bad_line(self) -> None:
        lines = fixture("get_recursive_list.txt").splitlines()
        lines[9] = lines[9].rpartition("\t")[0]
        with pytest.raises(ParseError, match="line 10: expected NAME<TAB>PROPERTY<TAB>VALUE"):
            parse_get("\n".join(lines))


class DatasetTests:
    def test_from_props_of_a_leased_clone(self) -> None:
        name = "jfrec1/farm/w1"
        ds = Dataset.from_props(name, parse_get(fixture("get_clone_with_lease.txt"))[name])
        assert ds == Dataset(
            name=name,
            type="filesystem",
            used=0,
            available=227819520,
            referenced=118784,
            origin="jfrec1/farm/tpl@1",
            mountpoint="/tmp/jfrec-9KjO/mnt/farm/w1",
            mounted=True,
            user=LEASE_PROPS,
        )

    def test_unset_user_properties_and_origin_are_left_out(self) -> None:
        name = "jfrec1/farm/tpl"
        ds = Dataset.from_props(name, parse_get(fixture("get_unset_user_properties.txt"))[name])
        assert ds.user == {}
        assert ds.origin is None
        assert ds.mounted

    def test_snapshot_has_no_mountpoint_and_zero_available(self) -> None:
        name = "jfrec1/farm/tpl@1"
        ds = Dataset.from_props(name, parse_get(fixture("get_recursive_list.txt"))[name])
        assert (ds.type, ds.available, ds.referenced) == ("snapshot", 0, 118784)
        assert ds.mountpoint is None
        assert not ds.mounted

    @pytest.mark.parametrize(
        ("value", "expected"), [("none", None), ("-", None), ("legacy", "legacy"), ("/m", "/m")]
    )
    def test_mountpoint(self, value: str, expected: str | None) -> None:
        ds = Dataset.from_props("p", {"type": "filesystem", "mountpoint": value})
        assert ds.mountpoint == expected

    def test_missing_type_is_a_parse_error(self) -> None:
        with pytest.raises(ParseError, match="no 'type' property"):
            Dataset.from_props("p", {"used": "1"})

    def test_non_numeric_size_is_a_parse_error_naming_it(self) -> None:
        with pytest.raises(ParseError, match=r"expected a number: 'p\\tused\\t1\.5K'"):
            Dataset.from_props("p", {"type": "filesystem", "used": "1.5K"})


ROOT = "jfrec1/farm"
DS = "jfrec1/farm/w1"
BUSY_UMOUNT = fixture("stderr_destroy_busy_umount.txt")
BUSY = fixture("stderr_destroy_busy.txt")
MISSING = fixture("stderr_missing.txt")
HAS_CHILDREN = fixture("stderr_has_children.txt")


class ZfsDestroyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = FakeRunner()
        self.clock = Clock()
        self.zfs = Zfs(self.runner, ROOT, clock=self.clock)

    def argvs(self) -> list[tuple[str, ...]]:
        return [c.argv for c in self.runner.calls]

    def pending(self) -> list[float]:
        return [c.getTime() for c in self.clock.getDelayedCalls()]

    def destroy(self, target: str = DS, **kwargs: object) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.zfs.destroy(target, **kwargs))  # type: ignore[arg-type]

    def test_success_runs_one_destroy(self) -> None:
        self.runner.expect("zfs", "destroy", DS)
        assert self.successResultOf(self.destroy()) is None
        assert self.pending() == []
        self.runner.assert_all_commands_ran()

    def test_recursive_passes_r(self) -> None:
        self.runner.expect("zfs", "destroy", "-r", DS)
        self.successResultOf(self.destroy(recursive=True))
        self.runner.assert_all_commands_ran()

    def test_already_gone_counts_as_done(self) -> None:
        self.runner.expect("zfs", "destroy", DS, rc=1, stderr=MISSING)
        self.successResultOf(self.destroy())
        assert self.pending() == []

    def test_busy_unmounts_retries_with_growing_delays_and_forces_from_the_third(self) -> None:
        destroy = ("zfs", "destroy", DS)
        umount, force = ("zfs", "umount", DS), ("zfs", "umount", "-f", DS)
        # zfs-fuse's answers as recorded (fixtures/zfs/stderr_*); the umount answer is ignored.
        (
            self.runner.expect(*destroy, rc=1, stderr=BUSY_UMOUNT)
            .expect(*umount, rc=1, stderr=BUSY_UMOUNT)
            .expect(*destroy, rc=1, stderr=BUSY)
            .expect(*umount)
            .expect(*destroy, rc=1, stderr=BUSY)
            .expect(*force)
            .expect(*destroy, rc=1, stderr=BUSY)
            .expect(*force)
            .expect(*destroy)
        )
        d = self.destroy(delay=0.125)
        # The first retry follows the first unmount at once; then delay, 2 * delay, ...
        assert self.argvs() == [destroy, umount, destroy, umount]
        assert self.pending() == [0.125]
        self.clock.advance(0.124)
        assert len(self.argvs()) == 4
        self.assertNoResult(d)

        self.clock.advance(0.001)
        assert self.argvs()[4:] == [destroy, force]
        assert self.pending() == [0.125 + 0.25]

        self.clock.advance(0.25)
        assert self.argvs()[6:] == [destroy, force]
        assert self.pending() == [0.125 + 0.25 + 0.5]
        self.assertNoResult(d)

        self.clock.advance(0.5)
        assert self.successResultOf(d) is None
        assert self.argvs()[8:] == [destroy]
        assert self.pending() == []
        self.runner.assert_all_commands_ran()

    def test_default_first_delay_is_a_tenth_of_a_second(self) -> None:
        destroy, umount = ("zfs", "destroy", DS), ("zfs", "umount", DS)
        self.runner.expect(*destroy, rc=1, stderr=BUSY).expect(*umount)
        self.runner.expect(*destroy, rc=1, stderr=BUSY).expect(*umount)
        d = self.destroy()
        assert self.pending() == [0.1]
        self.runner.expect(*destroy)
        self.clock.advance(0.1)
        self.successResultOf(d)

    def test_gone_while_retrying_counts_as_done(self) -> None:
        self.runner.expect("zfs", "destroy", DS, rc=1, stderr=BUSY).expect("zfs", "umount", DS)
        self.runner.expect("zfs", "destroy", DS, rc=1, stderr=MISSING)
        self.successResultOf(self.destroy(delay=1))
        assert self.pending() == []
        self.runner.assert_all_commands_ran()

    def test_busy_snapshot_is_retried_without_unmounting(self) -> None:
        snap = f"{DS}@1"
        self.runner.expect("zfs", "destroy", snap, rc=1, stderr=BUSY)
        self.runner.expect("zfs", "destroy", snap, rc=1, stderr=BUSY)
        self.runner.expect("zfs", "destroy", snap)
        d = self.destroy(snap, delay=1)
        assert self.argvs() == [("zfs", "destroy", snap)] * 2
        assert self.pending() == [1]
        self.clock.advance(1)
        self.successResultOf(d)
        assert self.argvs() == [("zfs", "destroy", snap)] * 3
        self.runner.assert_all_commands_ran()

    def test_other_error_raises_command_failed_at_once(self) -> None:
        self.runner.expect("zfs", "destroy", "jfrec1/farm/tpl", rc=1, stderr=HAS_CHILDREN)
        failure = self.failureResultOf(self.destroy("jfrec1/farm/tpl"), CommandFailed)
        assert failure.value.rc == 1
        assert "filesystem has children" in str(failure.value)
        assert self.pending() == []
        self.runner.assert_all_commands_ran()

    def test_busy_forever_raises_zfs_error_naming_dataset_and_attempts(self) -> None:
        destroy, umount = ("zfs", "destroy", DS), ("zfs", "umount", DS)
        self.runner.expect(*destroy, rc=1, stderr=BUSY_UMOUNT).expect(*umount, rc=1)
        self.runner.expect(*destroy, rc=1, stderr=BUSY).expect(*umount, rc=1)
        self.runner.expect(*destroy, rc=1, stderr=BUSY)
        d = self.destroy(attempts=3, delay=1)
        for _ in range(10):
            self.clock.advance(10)
        failure = self.failureResultOf(d, ZfsError)
        message = str(failure.value)
        assert f"cannot destroy {DS}: still busy after 3 attempts" in message
        assert "dataset is busy" in message
        assert self.argvs().count(destroy) == 3
        self.runner.assert_all_commands_ran()

    def test_gives_up_right_after_the_last_attempt(self) -> None:
        destroy, umount = ("zfs", "destroy", DS), ("zfs", "umount", DS)
        self.runner.expect(*destroy, rc=1, stderr=BUSY).expect(*umount)
        self.runner.expect(*destroy, rc=1, stderr=BUSY)
        d = self.destroy(attempts=2, delay=1)
        self.failureResultOf(d, ZfsError)
        assert self.pending() == []

    def test_outside_root_raises_unsafe_operation_and_runs_nothing(self) -> None:
        for target in ("jfrec1/other", ROOT, "jfrec1/farmer/w1", "jfrec1", "jfrec1/farm@1"):
            self.failureResultOf(self.destroy(target), UnsafeOperation)
        assert self.runner.calls == []

    def test_invalid_name_raises_before_any_command(self) -> None:
        for target in (f"{DS} x", f"{ROOT}/../x", "-r"):
            self.failureResultOf(self.destroy(target), InvalidName)
        assert self.runner.calls == []


class ZfsOpsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = FakeRunner()
        self.zfs = Zfs(self.runner, ROOT, clock=Clock())

    def tearDown(self) -> None:
        self.runner.assert_all_commands_ran()

    def test_invalid_root_is_rejected(self) -> None:
        with pytest.raises(InvalidName):
            Zfs(self.runner, "jfrec1/farm/", clock=Clock())

    def test_exists(self) -> None:
        self.runner.expect(*GET, "type", DS, stdout=f"{DS}\ttype\tfilesystem\n")
        assert self.successResultOf(defer.ensureDeferred(self.zfs.exists(DS))) is True

    def test_exists_is_false_when_missing(self) -> None:
        self.runner.expect(*GET, "type", DS, rc=1, stderr=MISSING)
        assert self.successResultOf(defer.ensureDeferred(self.zfs.exists(DS))) is False

    def test_exists_raises_on_other_errors(self) -> None:
        self.runner.expect(*GET, "type", DS, rc=1, stderr="internal error: out of memory\n")
        self.failureResultOf(defer.ensureDeferred(self.zfs.exists(DS)), CommandFailed)

    def test_info_reads_facts_and_lease(self) -> None:
        props = ",".join((*LIST_PROPERTIES, *LEASE))
        self.runner.expect(*GET, props, DS, stdout=fixture("get_clone_with_lease.txt"))
        ds = self.successResultOf(defer.ensureDeferred(self.zfs.info(DS)))
        assert ds is not None
        assert ds.origin == "jfrec1/farm/tpl@1"
        assert ds.user == LEASE_PROPS

    def test_info_is_none_when_missing(self) -> None:
        self.runner.expect(*GET, ",".join((*LIST_PROPERTIES, *LEASE)), DS, rc=1, stderr=MISSING)
        assert self.successResultOf(defer.ensureDeferred(self.zfs.info(DS))) is None

    def test_info_raises_on_other_errors(self) -> None:
        self.runner.expect(*GET, ",".join((*LIST_PROPERTIES, *LEASE)), DS, rc=2, stderr="boom")
        self.failureResultOf(defer.ensureDeferred(self.zfs.info(DS)), CommandFailed)

    def test_list_is_recursive_and_keeps_order(self) -> None:
        self.runner.expect(
            *GET, "-r", ",".join(LIST_PROPERTIES), ROOT, stdout=fixture("get_recursive_list.txt")
        )
        found = self.successResultOf(defer.ensureDeferred(self.zfs.list(ROOT)))
        assert [(d.name, d.type) for d in found] == [
            ("jfrec1/farm", "filesystem"),
            ("jfrec1/farm/tpl", "filesystem"),
            ("jfrec1/farm/tpl@1", "snapshot"),
            ("jfrec1/farm/w1", "filesystem"),
        ]
        assert found[3].origin == "jfrec1/farm/tpl@1"

    def test_list_with_depth_and_user_properties(self) -> None:
        props = ",".join((*LIST_PROPERTIES, "jailfarm:owner"))
        self.runner.expect(*GET, "-d", "1", props, ROOT, stdout="")
        assert (
            self.successResultOf(
                defer.ensureDeferred(self.zfs.list(ROOT, ["jailfarm:owner"], depth=1))
            )
            == []
        )

    def test_list_is_empty_when_missing(self) -> None:
        self.runner.expect(*GET, "-r", ",".join(LIST_PROPERTIES), ROOT, rc=1, stderr=MISSING)
        assert self.successResultOf(defer.ensureDeferred(self.zfs.list(ROOT))) == []

    def test_list_raises_on_other_errors(self) -> None:
        self.runner.expect(*GET, "-r", ",".join(LIST_PROPERTIES), ROOT, rc=1, stderr="boom")
        self.failureResultOf(defer.ensureDeferred(self.zfs.list(ROOT)), CommandFailed)

    def test_clone_below_root(self) -> None:
        self.runner.expect(*clone_cmd(f"{ROOT}/tpl@1", DS, LEASE_PROPS).argv)
        self.successResultOf(defer.ensureDeferred(self.zfs.clone(f"{ROOT}/tpl@1", DS, LEASE_PROPS)))

    def test_clone_refuses_target_outside_root(self) -> None:
        for target in ("jfrec1/other", ROOT, "jfrec1/farmer"):
            d = defer.ensureDeferred(self.zfs.clone(f"{ROOT}/tpl@1", target, LEASE_PROPS))
            self.failureResultOf(d, UnsafeOperation)
        assert self.runner.calls == []

    def test_clone_failure_raises_command_failed(self) -> None:
        self.runner.expect(
            *clone_cmd(f"{ROOT}/tpl@1", DS, {}).argv,
            rc=1,
            stderr=f"cannot create '{DS}': dataset already exists\n",
        )
        d = defer.ensureDeferred(self.zfs.clone(f"{ROOT}/tpl@1", DS, {}))
        assert "already exists" in str(self.failureResultOf(d, CommandFailed).value)

    def test_create_snapshot_and_set_check_their_result(self) -> None:
        self.runner.expect("zfs", "create", "-p", DS)
        self.runner.expect("zfs", "snapshot", f"{DS}@1", rc=1, stderr="out of space")
        self.runner.expect("zfs", "set", "jailfarm:expires=0", DS)
        self.successResultOf(defer.ensureDeferred(self.zfs.create(DS, parents=True)))
        self.failureResultOf(defer.ensureDeferred(self.zfs.snapshot(f"{DS}@1")), CommandFailed)
        self.successResultOf(defer.ensureDeferred(self.zfs.set(DS, "jailfarm:expires", "0")))

    def test_invalid_names_run_no_command(self) -> None:
        for coro in (
            self.zfs.create("bad name"),
            self.zfs.snapshot("nosnap"),
            self.zfs.set(DS, "sharenfs", "on"),
            self.zfs.exists("-r"),
            self.zfs.info("a b"),
            self.zfs.list("/abs"),
        ):
            self.failureResultOf(defer.ensureDeferred(coro), InvalidName)  # type: ignore[arg-type]
        assert self.runner.calls == []

    def test_get_and_available(self) -> None:
        self.runner.expect(
            *GET,
            "used",
            "jfrec1",
            "jfrec1/farm",
            stdout="jfrec1\tused\t733184\njfrec1/farm\tused\t241664\n",
        )
        self.runner.expect(*GET, "available", DS, stdout=f"{DS}\tavailable\t227819520\n")
        rows = self.successResultOf(
            defer.ensureDeferred(self.zfs.get(["jfrec1", "jfrec1/farm"], ["used"]))
        )
        assert rows == {"jfrec1": {"used": "733184"}, "jfrec1/farm": {"used": "241664"}}
        assert self.successResultOf(defer.ensureDeferred(self.zfs.available(DS))) == 227819520
