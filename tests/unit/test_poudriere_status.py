"""poudriere state parsers over the fixtures in tests/fixtures/poudriere (see its README), the
verdict on a bulk, and `poudriere version` (pure). Section numbers: shared/spec/poudriere.md."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jailfarm.errors import ParseError
from jailfarm.poudriere.status import (
    BuildStatus,
    BulkResult,
    Policy,
    PortResult,
    Result,
    Stats,
    judge,
    parse_build_files,
    parse_data_json,
    parse_port_list,
    parse_stat,
    parse_status,
    parse_status_rows,
    parse_version,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "poudriere"
BAD_JSON = sorted(FIXTURES.glob("bad_data_*.json"))
BAD_LINES = sorted((FIXTURES / "bad_lines").iterdir())
MASTER = parse_version("poudriere-git-3.4.99\n")
RELEASE_34 = parse_version("poudriere-git-3.4.8\n")


def read_dir(name: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in (FIXTURES / name).iterdir()}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_pkg(result: BulkResult) -> dict[str, PortResult]:
    return {p.pkgname: p for p in result.ports or ()}


class VersionTests:
    @pytest.mark.parametrize(
        ("text", "release", "master"),
        [
            ("poudriere-git-3.4.8\n", (3, 4, 8), False),  # release tarball (§0)
            ("poudriere-git-3.4.8-2-g2e891d4a\n", (3, 4, 8), False),  # git describe (§0)
            ("poudriere-git-3.4.0\n", (3, 4, 0), False),
            ("poudriere-git-3.4.99\n", (3, 4, 99), True),  # master's configure version
            ("poudriere-git-3.5.0\n", (3, 5, 0), True),
        ],
    )
    def test_leading_release_picks_the_line(
        self, text: str, release: tuple[int, int, int], master: bool
    ) -> None:
        version = parse_version(text)
        assert version.release == release
        assert version.is_master is master

    @pytest.mark.parametrize(
        "text", ["", "3.4.8\n", "poudriere-git-\n", "poudriere-git-3.4\n", "a\nb\n"]
    )
    def test_other_shapes_are_refused(self, text: str) -> None:
        with pytest.raises(ParseError):
            parse_version(text)

    def test_versions_before_3_4_are_unsupported(self) -> None:
        with pytest.raises(ParseError, match=r"before 3\.4\.0"):
            parse_version("poudriere-git-3.3.7\n")


class StatusTests:
    @pytest.mark.parametrize(
        ("raw", "finished", "done", "phase"),
        [
            ("parallel_build:", False, False, "parallel_build"),
            ("stopped:done:", True, True, "done"),
            ("stopped:crashed:err:Build failed", True, False, "crashed"),
            ("stopped:SIGTERM:", True, False, "SIGTERM"),
            ("stopped:parallel_build:", True, False, "parallel_build"),
        ],
    )
    def test_phases(self, raw: str, finished: bool, done: bool, phase: str) -> None:
        # §4.2: jail_stop prefixes the last status with stopped:; §6.3: done vs crashed/SIG*.
        status = parse_status(raw + "\n")
        assert (status.finished, status.done, status.phase) == (finished, done, phase)

    def test_crash_detail_is_kept(self) -> None:
        status = parse_status("stopped:crashed:err:jail already running: x\n")
        assert status.detail == "err:jail already running: x"


class PortListTests:
    def test_failed_with_errortype(self) -> None:
        # §4.2: <originspec> <pkgname> <phase> <errortype> <elapsed_s>
        (port,) = parse_port_list(
            "failed", "www/foo@py311 py311-foo-1.0 build compiler_error 187\n", "f"
        )
        assert (port.origin, port.flavor, port.phase, port.errortype, port.elapsed) == (
            "www/foo",
            "py311",
            "build",
            "compiler_error",
            187,
        )

    def test_failed_without_errortype_keeps_the_time(self) -> None:
        # DETERMINE_BUILD_FAILURE_REASON=no: badd writes "<phase>  <elapsed>" (§4.2 quirk 2).
        (port,) = parse_port_list("failed", "www/foo foo-1.0 build/timeout  86400\n", "f")
        assert (port.phase, port.errortype, port.elapsed) == ("build/timeout", "", 86400)

    def test_crashed_builder_has_no_time(self) -> None:
        # §4.2 / §7: a crashed build is "<originspec> <pkgname> <phase> <phase>".
        (port,) = parse_port_list("failed", "www/foo foo-1.0 stuck_in_queue stuck_in_queue\n", "f")
        assert (port.phase, port.errortype, port.elapsed) == (
            "stuck_in_queue",
            "stuck_in_queue",
            None,
        )

    def test_skipped_is_deduplicated_by_pkgname(self) -> None:
        # §6.3: "the same package may appear more than once".
        text = "www/a a-1 b-2\nwww/a a-1 c-3\nwww/d d-1 b-2\n"
        ports = parse_port_list("skipped", text, "s")
        assert [(p.pkgname, p.skipped_because) for p in ports] == [("a-1", "b-2"), ("d-1", "b-2")]

    def test_ignored_reason_keeps_every_word(self) -> None:
        text = "sysutils/x x-1 is marked as broken:  two  spaces\n"
        (port,) = parse_port_list("ignored", text, "i")
        assert port.reason == "is marked as broken:  two  spaces"

    def test_empty_file_is_an_empty_list(self) -> None:
        assert parse_port_list("built", "", "b") == ()

    @pytest.mark.parametrize("path", BAD_LINES, ids=[p.name for p in BAD_LINES])
    def test_malformed_files_name_the_file_and_line(self, path: Path) -> None:
        name = path.name.partition("--")[0]
        source = f"/data/logs/bulk/M/B/.poudriere.{name}"
        with pytest.raises(ParseError) as info:
            if name.startswith("ports."):
                parse_port_list(cast("Result", name[6:]), path.read_text(), source)
            elif name.startswith("stats_"):
                parse_stat(path.read_text(), source)
            else:
                parse_status(path.read_text(), source)
        assert info.value.tool == source
        assert info.value.line_no >= 1
        assert str(info.value).startswith(f"{source}: line {info.value.line_no}:")

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["www/nginx", "devel/gmake", "lang/python311@py"]),
                st.from_regex(
                    r"[a-z][a-z0-9]{0,8}-[0-9]{1,3}\.[0-9]{1,3}(_[0-9])?", fullmatch=True
                ),
                st.integers(0, 10**6),
            ),
            unique_by=lambda t: t[1],
        )
    )
    def test_built_lines_round_trip(self, rows: list[tuple[str, str, int]]) -> None:
        text = "".join(f"{o} {p} {e}\n" for o, p, e in rows)
        ports = parse_port_list("built", text, "b")
        assert [(p.pkgname, p.elapsed) for p in ports] == [(p, e) for _, p, e in rows]


class BuildFilesTests:
    def test_running_build(self) -> None:
        result = parse_build_files(read_dir("build_running"), "/data/logs/bulk/M/B")
        assert result.status == BuildStatus("parallel_build:")
        assert result.names.mastername == "141amd64-default-server"
        assert result.names.setname == "server"
        assert result.started == 1779271200
        assert result.ended is None
        assert result.stats == Stats(10, 8, 3, 1, 1, 1, 1, 1)
        ports = by_pkg(result)
        assert ports["foo-client-2.1.0"].errortype == "compiler_error"
        assert ports["foo-web-2.1.0"].skipped_because == "foo-client-2.1.0"
        assert ports["oldtool-0.9"].reason.startswith("is marked as broken")
        # §4.2 example: remaining = 10 - (3+1+1+1+1+1) = 2, the two ports building.
        pending = {p.pkgname for p in result.by_result("pending")}
        assert pending == {"nginx-1.26.2_1,3", "python311-3.11.10"}

    def test_files_and_json_agree(self) -> None:
        # json.awk turns the build's files into .data.json (§4.2): both readings match.
        for directory, data in (("build_running", "data.json"), ("build_done", "data_done.json")):
            from_files = parse_build_files(read_dir(directory))
            from_json = parse_data_json(fixture(data), data)
            assert replace(from_files, ports=None) == replace(from_json, ports=None)
            assert by_pkg(from_files) == by_pkg(from_json)

    def test_status_is_required(self) -> None:
        files = read_dir("build_running")
        del files[".poudriere.status"]
        with pytest.raises(ParseError, match="has not started"):
            parse_build_files(files, "/d")

    def test_a_package_in_two_outcomes_is_refused(self) -> None:
        files = read_dir("build_done")
        files[".poudriere.ports.fetched"] += "devel/gmake gmake-4.4.1\n"
        with pytest.raises(ParseError, match="both built and fetched"):
            parse_build_files(files)

    def test_unset_set_is_empty(self) -> None:
        files = read_dir("build_done")
        files[".poudriere.setname"] = "\n"  # an empty bset value is one empty line (§4.2)
        assert parse_build_files(files).names.setname == ""


class DataJsonTests:
    def test_spec_example(self) -> None:
        result = parse_data_json(fixture("data.json"))
        assert result.names.buildname == "2026-05-20_10h00m00s"
        assert result.status.raw == "parallel_build:"
        assert result.stats.inspected == 1
        assert result.count("pending") == 2
        # Quirk 1 (§4.2): pkgconf's queued reason is pcre2's; pending keeps no reason.
        assert by_pkg(result)["pkgconf-2.3.0,1"].result == "fetched"

    def test_mini_json_has_no_port_lists(self) -> None:
        result = parse_data_json(fixture("data_mini.json"), "data.mini.json")
        assert result.ports is None
        assert result.stats.built == 3
        assert result.count("failed") == 1

    def test_quirks_are_undone(self) -> None:
        ports = by_pkg(parse_data_json(fixture("data_quirks.json")))
        crashed, noreason = ports["crashy-1.0"], ports["py311-noreason-2.0"]
        assert (crashed.phase, crashed.errortype, crashed.elapsed) == ("crashed", "crashed", None)
        assert (noreason.phase, noreason.errortype, noreason.elapsed) == ("build/runaway", "", 7200)
        assert (noreason.origin, noreason.flavor) == ("lang/noreason", "py311")

    @pytest.mark.parametrize("path", BAD_JSON, ids=[p.name for p in BAD_JSON])
    def test_malformed_json_is_refused_with_its_name(self, path: Path) -> None:
        with pytest.raises(ParseError) as info:
            parse_data_json(path.read_text(), str(path))
        assert info.value.tool.startswith(str(path))

    def test_truncated_json_names_the_line(self) -> None:
        with pytest.raises(ParseError, match=r"line 1: not JSON"):
            parse_data_json(fixture("bad_data_truncated.json"), ".data.json")


class StatusRowsTests:
    def test_master_columns(self) -> None:
        # §1.5 master: SET PORTS JAIL BUILD STATUS QUEUE INSPECT IGNORE BUILT FAIL SKIP FETCH
        # REMAIN TIME LOGS.
        running, done, crashed = parse_status_rows(fixture("status_H_master.txt"), MASTER)
        assert (running.set_name, running.status) == ("server", "parallel_build")
        assert running.remaining == 2
        assert running.counts == Stats(10, None, 3, 1, 1, 1, 1, 1)
        assert (done.set_name, done.elapsed) == ("", 93784)  # 1D:02:03:04
        assert crashed.counts == Stats() and crashed.status == "crashed:err"

    def test_3_4_columns(self) -> None:
        # §1.5 3.4.x: no INSPECT; BUILT FAIL SKIP IGNORE order; REMAIN leaves inspected out.
        running, done = parse_status_rows(fixture("status_H_3.4.txt"), RELEASE_34)
        assert running.counts == Stats(10, None, 3, 1, 1, 1, None, 1)
        assert running.remaining == 3
        assert done.counts.failed == 2

    def test_wrong_version_is_caught_by_the_column_count(self) -> None:
        with pytest.raises(ParseError, match="15 tab-separated columns"):
            parse_status_rows(fixture("status_H_3.4.txt"), MASTER)


class JudgeTests:
    def done(self) -> BulkResult:
        return parse_build_files(read_dir("build_done"))

    def test_failed_port_fails_the_build(self) -> None:
        verdict = judge(self.done())
        assert verdict.outcome == "failure"
        assert "foo-client-2.1.0 (build: compiler_error)" in verdict.why[0]

    def test_policy_can_allow_failures(self) -> None:
        verdict = judge(self.done(), Policy(max_failed=1, max_skipped=1), exit_code=2)
        assert verdict.outcome == "success"

    def test_ignored_ports_fail_only_by_policy(self) -> None:
        policy = Policy(max_failed=1, max_skipped=1, fail_on_ignored=True)
        assert judge(self.done(), policy).outcome == "failure"

    def test_running_build_is_an_error(self) -> None:
        verdict = judge(parse_build_files(read_dir("build_running")))
        assert verdict.outcome == "error"
        assert "jail -k" in verdict.why[0]

    @pytest.mark.parametrize("raw", ["stopped:crashed:err:Build failed", "stopped:SIGTERM:"])
    def test_abnormal_stop_is_an_error(self, raw: str) -> None:
        assert judge(replace(self.done(), status=BuildStatus(raw))).outcome == "error"

    def test_queued_ports_without_result_are_an_error(self) -> None:
        result = replace(self.done(), stats=replace(self.done().stats, queued=12))
        assert judge(result, Policy(max_failed=1, max_skipped=1)).outcome == "error"

    def test_256_failures_exit_0_and_still_fail(self) -> None:
        # §1.3: the exit code is (failed + skipped) mod 256, so 256 failures exit 0.
        failed = tuple(
            PortResult("www/p", f"p{i}-1.0", "failed", phase="build") for i in range(256)
        )
        result = BulkResult(BuildStatus("stopped:done:"), ports=failed)
        verdict = judge(result, exit_code=0)
        assert verdict.outcome == "failure"
        assert verdict.why[0].startswith("256 port(s) failed")

    def test_exit_code_disagreeing_with_counters_is_an_error(self) -> None:
        # An err in poudriere after the build, or death by a signal (negative returncode).
        for code in (1, -15):
            verdict = judge(self.done(), Policy(max_failed=1, max_skipped=1), exit_code=code)
            assert verdict.outcome == "error"


def test_a_failed_testport_status_parses() -> None:
    # testport leaves `stopped:failed/<phase>:` (or failed/depends) when the port fails.
    status = parse_status("stopped:failed/build:devel/jf-flaky:jf-flaky-0.9\n")
    assert status.finished and not status.done
    assert status.phase == "failed/build"
    assert parse_status("stopped:failed/depends:\n").phase == "failed/depends"
