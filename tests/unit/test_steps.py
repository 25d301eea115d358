"""The poudriere build steps: the pure progress parser, state-file framing and ports table, and
`PoudriereBulk`/`PoudriereTestport` under buildbot's step harness (no master, no worker).

Build state comes from `tests/fixtures/poudriere/build_done/` (see its README): jail
`141amd64`, tree `default`, set `server`, BUILDNAME `2026-05-20_10h00m00s`; five built, one
failed (`databases/foo-client`), one skipped, one ignored, one inspected, one fetched. Progress
lines follow `job_msg_status` in poudriere's `common.sh` (poudriere.md §6.7).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from buildbot.process import properties
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS, WARNINGS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from twisted.trial import unittest

from jailfarm.errors import ParseError
from jailfarm.master.steps import (
    STATE_FILES,
    PoudriereBulk,
    PoudriereTestport,
    Progress,
    port_log_url,
    ports_table,
    read_state_cmd,
    split_state_files,
)
from jailfarm.poudriere.status import parse_build_files
from jailfarm.runner import LocalRunner
from tests.support import deferred_test

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

BUILD_DONE = Path(__file__).parents[1] / "fixtures" / "poudriere" / "build_done"
ETC = "/usr/local/etc/jf"
DATA = "/var/db/poudriere"
MASTER = "141amd64-default-server"
BUILD = "2026-05-20_10h00m00s"
DIR = f"{DATA}/logs/bulk/{MASTER}/{BUILD}"
LOGS = "https://farm.example/logs/bulk/"
POUDRIERE = ["poudriere", "-e", ETC, "-N"]
SELECT = ["-j", "141amd64", "-p", "default", "-z", "server"]
BULK = [*POUDRIERE, "bulk", *SELECT, "-B", BUILD, "www/nginx", "lang/python311", "www/foo-web"]
JAIL_KILL = [*POUDRIERE, "jail", "-k", *SELECT]

PORTS_LOG = """\
ORIGIN                PACKAGE            RESULT     PHASE  REASON
databases/foo-client  foo-client-2.1.0   failed     build  compiler_error
www/foo-web           foo-web-2.1.0      skipped           depends on foo-client-2.1.0
sysutils/oldtool      oldtool-0.9        ignored           is marked as broken: fails to build with clang 18
devel/gmake           gmake-4.4.1        built
devel/pcre2           pcre2-10.44        built
lang/python311        python311-3.11.10  built
security/openssl      openssl-3.0.15,1   built
www/nginx             nginx-1.26.2_1,3   built
devel/libffi          libffi-3.4.6       inspected         no rebuild needed for shlib chase
devel/pkgconf         pkgconf-2.3.0,1    fetched
"""  # noqa: E501  (a table row is as wide as its reason)

CLEAN_PORTS_LOG = """\
ORIGIN            PACKAGE            RESULT     PHASE  REASON
sysutils/oldtool  oldtool-0.9        ignored           is marked as broken: fails to build with clang 18
devel/gmake       gmake-4.4.1        built
devel/pcre2       pcre2-10.44        built
lang/python311    python311-3.11.10  built
security/openssl  openssl-3.0.15,1   built
www/nginx         nginx-1.26.2_1,3   built
devel/libffi      libffi-3.4.6       inspected         no rebuild needed for shlib chase
devel/pkgconf     pkgconf-2.3.0,1    fetched
"""  # noqa: E501

STDOUT = """\
[00:00:01] Building 8 packages using up to 4 builders
[00:12:34] [01] [00:01:05] Finished   devel/gmake | gmake-4.4.1: Success
[00:14:01] [02] [00:03:07] Finished   databases/foo-client | foo-client-2.1.0: Failed: build
[00:14:01] [02] [00:03:07] Skipping   www/foo-web | foo-web-2.1.0: Dependent port databases/foo-client | foo-client-2.1.0 failed
[00:20:00] [03] [00:06:40] Finished   devel/pcre2 | pcre2-10.44: Success
"""  # noqa: E501


def done_files() -> dict[str, str]:
    """The fixture build's state files, as read_state_cmd would print them."""
    return {n: (BUILD_DONE / n).read_text() for n in STATE_FILES if (BUILD_DONE / n).exists()}


def clean_files() -> dict[str, str]:
    """The fixture build without its failure: foo-client and foo-web were never queued."""
    files = done_files()
    del files[".poudriere.ports.failed"], files[".poudriere.ports.skipped"]
    queued = files[".poudriere.ports.queued"].splitlines(keepends=True)
    files[".poudriere.ports.queued"] = "".join(q for q in queued if "foo-" not in q)
    files |= {".poudriere.stats_queued": "8\n", ".poudriere.stats_tobuild": "6\n"}
    return files | {".poudriere.stats_failed": "0\n", ".poudriere.stats_skipped": "0\n"}


def framed(files: Mapping[str, str]) -> str:
    return "".join(f"\x1e{name}\n{text}\x1e\n" for name, text in files.items())


def collected(text: str) -> Callable[[Any], Any]:
    """A harness behaviour: `text` on the stdout of a command that has no log (it collects)."""
    return lambda command: command.remote_update([({"stdout": text}, 0)])


def bulk_step(**kwargs: Any) -> PoudriereBulk:
    args: dict[str, Any] = {
        "jail": "141amd64",
        "set_name": "server",
        "origins": ["www/nginx", "lang/python311", "www/foo-web"],
        "etcdir": ETC,
        "data_dir": DATA,
        "log_url": LOGS,
        "buildname": BUILD,
    }
    return PoudriereBulk(**(args | kwargs))


def shell(command: list[str], timeout: int | None = None) -> ExpectShell:
    return ExpectShell(workdir="wkdir", command=command, timeout=timeout, log_environ=False)


def read_state(files: Mapping[str, str] | str, rc: int = 0, directory: str = DIR) -> ExpectShell:
    text = files if isinstance(files, str) else framed(files)
    argv = list(read_state_cmd(directory).argv)
    return shell(argv, timeout=600).behavior(collected(text)).exit(rc)


class ProgressTests:
    def test_counts_finished_skipped_and_total_lines(self) -> None:
        progress = Progress()
        for line in STDOUT.splitlines():
            progress.feed(line)
        assert (progress.total, progress.count("built"), progress.count("failed")) == (8, 2, 1)
        assert progress.summary("bulk M") == "bulk M: 2/8 built, 1 failed, 1 skipped"

    def test_the_spec_example_line_is_a_success(self) -> None:
        progress = Progress()
        line = "[00:12:34] [01] [00:01:05] Finished www/nginx | nginx-1.26.2_1,3: Success"
        assert progress.feed(line)
        assert progress.results == {"nginx-1.26.2_1,3": "built"}

    @pytest.mark.parametrize(
        ("line", "kind"),
        [
            ("[01] Crashed    a/b | b-1.0: Failed: build", "failed"),
            ("[01] Finished   a/b@py311 | py311-b-1.0: Nothing to do", "inspected"),
            ("\x1b[0;32m[01]\x1b[0m Finished   a/b | b-1.0\x1b[0;32m: Success\x1b[0m", "built"),
        ],
    )
    def test_line_kinds(self, line: str, kind: str) -> None:
        progress = Progress()
        assert progress.feed(line)
        assert progress.results == {"b-1.0" if "py311" not in line else "py311-b-1.0": kind}

    def test_a_crash_after_a_failure_counts_once(self) -> None:
        progress = Progress()
        progress.feed("[01] Finished   a/b | b-1.0: Failed: build")
        progress.feed("[01] Crashed    a/b | b-1.0: Failed: clean_pool")
        assert progress.count("failed") == 1

    @pytest.mark.parametrize(
        "line",
        ["[01] Building   a/b | b-1.0", "Building 8", "Finished   a/b | b-1.0: Odd", "", "=>> x"],
    )
    def test_other_lines_change_nothing(self, line: str) -> None:
        progress = Progress()
        assert not progress.feed(line)
        assert progress.summary("bulk M") == "bulk M: starting"


class StateFileTests:
    def test_split_keeps_each_file_byte_for_byte(self) -> None:
        files = done_files() | {".poudriere.ports.built": "a/b b-1.0 5\na/c c-1"}  # torn
        assert split_state_files(framed(files)) == files

    @pytest.mark.parametrize(
        "text", ["garbage\n", "\x1e.poudriere.status\nstopped:done:\n", "\x1e\nx\x1e\n"]
    )
    def test_split_refuses_other_shapes(self, text: str) -> None:
        with pytest.raises(ParseError, match="expected a framed file"):
            split_state_files(text)

    def test_ports_table(self) -> None:
        result = parse_build_files(done_files())
        assert ports_table(result) == PORTS_LOG

    def test_log_urls_encode_package_names(self) -> None:
        url = port_log_url(LOGS, MASTER, BUILD, "nginx-1.26.2_1,3")
        assert url == f"{LOGS}{MASTER}/{BUILD}/logs/nginx-1.26.2_1%2C3.log"
        assert port_log_url(LOGS.rstrip("/"), MASTER, BUILD) == f"{LOGS}{MASTER}/{BUILD}/"


class ReadScriptTests(unittest.TestCase):
    """read_state_cmd on a real `sh`: the one real process here."""

    def setUp(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="jf-steps-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.dir = tmp / "build"
        shutil.copytree(BUILD_DONE, self.dir)

    @deferred_test
    async def test_prints_the_state_files_framed(self) -> None:
        with (self.dir / ".poudriere.ports.built").open("a") as f:
            f.write("devel/torn torn-1.0")  # a `badd` append caught half-way (§6)
        result = await LocalRunner().run(read_state_cmd(str(self.dir)))
        assert result.rc == 0, result.err
        files = split_state_files(result.out)
        assert list(files) == [n for n in STATE_FILES if n in files]  # snap_*, status.NN left
        assert files == {n: (self.dir / n).read_text() for n in files}
        with pytest.raises(ParseError, match="incomplete"):
            parse_build_files(files)

    @deferred_test
    async def test_a_missing_build_directory_exits_3(self) -> None:
        result = await LocalRunner().run(read_state_cmd(str(self.dir / "nope")))
        assert (result.rc, result.out) == (3, "")


class PoudriereBulkTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self) -> Any:
        self.setup_test_reactor()
        return self.setup_test_build_step()

    async def urls(self) -> list[tuple[str, str]]:
        step = await self.master.data.get(("steps", self.get_nth_step(0).stepid))
        return [(u["name"], u["url"]) for u in step["urls"]]

    async def test_success_golden(self) -> None:
        """Also the proof that `async def run` works under the harness (startStep)."""
        self.setup_step(bulk_step())
        self.expect_commands(
            shell(BULK).stdout(STDOUT).exit(0),
            read_state(clean_files()),
        )
        self.expect_outcome(SUCCESS, f"bulk {MASTER}: 5 built, 0 failed, 0 skipped, 1 ignored")
        built = ["devel/gmake", "devel/pcre2", "security/openssl", "www/nginx", "lang/python311"]
        self.expect_property("poudriere_built", built, "PoudriereBulk")
        self.expect_property("poudriere_failed", [], "PoudriereBulk")
        self.expect_property("poudriere_skipped", [], "PoudriereBulk")
        self.expect_property("poudriere_ignored", ["sysutils/oldtool"], "PoudriereBulk")
        self.expect_property("poudriere_buildname", BUILD, "PoudriereBulk")
        self.expect_log_file("ports", CLEAN_PORTS_LOG)
        await self.run_step()
        assert await self.urls() == [("poudriere build", f"{LOGS}{MASTER}/{BUILD}/")]

    async def test_bulk_gets_sigterm_time_before_sigkill(self) -> None:
        self.setup_step(bulk_step())

        def check(command: Any) -> None:
            assert command.args["sigtermTime"] == 900
            assert command.args["interruptSignal"] == "KILL"

        self.expect_commands(shell(BULK).behavior(check).exit(0), read_state(clean_files()))
        self.expect_outcome(SUCCESS)
        await self.run_step()

    async def test_failed_port_is_failure_by_default(self) -> None:
        self.setup_step(bulk_step())
        self.expect_commands(shell(BULK).stdout(STDOUT).exit(2), read_state(done_files()))
        summary = f"bulk {MASTER}: 5 built, 1 failed, 1 skipped, 1 ignored (failure)"
        self.expect_outcome(FAILURE, summary)
        self.expect_property("poudriere_failed", ["databases/foo-client"], "PoudriereBulk")
        self.expect_property("poudriere_skipped", ["www/foo-web"], "PoudriereBulk")
        self.expect_log_file("ports", PORTS_LOG)
        self.expect_log_file(
            "policy",
            "1 port(s) failed (at most 0 allowed): foo-client-2.1.0 (build: compiler_error)\n"
            "1 port(s) skipped (at most 0 allowed): foo-web-2.1.0\n",
        )
        await self.run_step()
        failed_log = (
            "databases/foo-client log",
            f"{LOGS}{MASTER}/{BUILD}/logs/foo-client-2.1.0.log",
        )
        assert failed_log in await self.urls()

    async def test_failed_port_is_warnings_by_policy(self) -> None:
        self.setup_step(bulk_step(on_port_failure="warnings"))
        self.expect_commands(shell(BULK).exit(2), read_state(done_files()))
        summary = f"bulk {MASTER}: 5 built, 1 failed, 1 skipped, 1 ignored (warnings)"
        self.expect_outcome(WARNINGS, summary)
        await self.run_step()
        assert len(await self.urls()) == 2

    async def test_256_failures_exit_0_and_still_fail(self) -> None:
        """bulk exits (failed + skipped) mod 256 (§1.3): 0 here, yet every port failed."""
        ports = [(f"cat/p{i}", f"p{i}-1.0") for i in range(256)]
        files = clean_files() | {
            ".poudriere.ports.failed": "".join(f"{o} {p} build ??? 9\n" for o, p in ports),
            ".poudriere.ports.queued": "".join(f"{o} {p} listed\n" for o, p in ports),
            ".poudriere.ports.built": "",
            ".poudriere.ports.ignored": "",
            ".poudriere.ports.inspected": "",
            ".poudriere.ports.fetched": "",
            ".poudriere.stats_queued": "256\n",
            ".poudriere.stats_failed": "256\n",
        }
        files |= {f".poudriere.stats_{k}": "0\n" for k in ("built", "ignored", "inspected")}
        self.setup_step(bulk_step(origins=["cat/p0"], on_port_failure="warnings"))
        argv = [*BULK[: BULK.index("www/nginx")], "cat/p0"]
        self.expect_commands(
            shell(argv).exit(0), read_state(files | {".poudriere.stats_fetched": "0\n"})
        )
        self.expect_outcome(
            WARNINGS, f"bulk {MASTER}: 0 built, 256 failed, 0 skipped, 0 ignored (warnings)"
        )
        await self.run_step()
        assert len(await self.urls()) == 1 + 50  # the build page and the first 50 failures

    async def test_an_exit_code_that_disagrees_with_the_files_is_an_error(self) -> None:
        self.setup_step(bulk_step(on_port_failure="warnings"))
        self.expect_commands(shell(BULK).exit(0), read_state(done_files()))
        why = "exit code 0, expected 2 (failed+skipped mod 256)"
        self.expect_outcome(FAILURE, f"bulk {MASTER}: {why} (failure)")
        self.expect_log_file("error", why + "\n")
        self.expect_log_file("ports", PORTS_LOG)
        await self.run_step()

    async def test_unparsable_state_files_fail_with_the_parse_message(self) -> None:
        self.setup_step(bulk_step())
        files = done_files() | {".poudriere.stats_built": "five\n"}
        self.expect_commands(shell(BULK).exit(2), read_state(files))
        self.expect_outcome(FAILURE, f"bulk {MASTER}: unreadable build state (failure)")
        self.expect_log_file(
            "error",
            f"{DIR}/.poudriere.stats_built: line 1: 'five' is not a non-negative integer: 'five'\n",
        )
        await self.run_step()

    async def test_garbled_output_of_the_read_fails_too(self) -> None:
        self.setup_step(bulk_step())
        self.expect_commands(shell(BULK).exit(2), read_state("cat: no\n"))
        self.expect_outcome(FAILURE, f"bulk {MASTER}: unreadable build state (failure)")
        await self.run_step()

    async def test_no_build_directory_means_poudriere_failed_early(self) -> None:
        self.setup_step(bulk_step())
        self.expect_commands(
            shell(BULK).stderr("Error: No such jail: 141amd64\n").exit(1), read_state("", rc=3)
        )
        self.expect_outcome(FAILURE, f"bulk {MASTER}: no build directory {DIR} (failure)")
        self.expect_log_file(
            "error", f"no build directory {DIR}: poudriere exited 1 before the build\n"
        )
        await self.run_step()

    async def test_a_hard_killed_bulk_is_cleaned_up_with_jail_k(self) -> None:
        self.setup_step(bulk_step())
        files = done_files() | {".poudriere.status": "parallel_build:\n"}
        self.expect_commands(
            shell(BULK).exit(-1),
            read_state(files),
            shell(JAIL_KILL).log("recovery", stdout="====>> Cleaning up\n").exit(0),
        )
        self.expect_outcome(FAILURE)
        await self.run_step()
        assert "jail -k" in self.get_nth_step(0).logs["error"].stdout

    async def test_cancel_stops_bulk_then_runs_jail_k(self) -> None:
        self.setup_step(bulk_step(builders=12))
        bulk = shell(
            [*BULK[: BULK.index("www/nginx")], "-J", "12", *BULK[BULK.index("www/nginx") :]]
        )
        bulk.interrupted = True
        self.interrupt_nth_remote_command(0)
        self.expect_commands(
            bulk.stdout("[00:00:01] Building 8 packages using up to 4 builders\n").exit(-1),
            shell([*JAIL_KILL, "-J", "12"]).exit(0),
        )
        self.expect_outcome(CANCELLED, f"bulk {MASTER}: cancelled (cancelled)")
        await self.run_step()
        assert "recovery" in self.get_nth_step(0).logs

    async def test_summary_follows_progress_lines(self) -> None:
        self.setup_step(bulk_step())
        seen: list[str] = []

        def summary(command: Any) -> None:
            seen.append(self.get_nth_step(0).getCurrentSummary()["step"])

        first, *rest = STDOUT.splitlines(keepends=True)
        self.expect_commands(
            shell(BULK)
            .behavior(summary)
            .stdout(first)
            .behavior(summary)
            .stdout("".join(rest))
            .behavior(summary)
            .exit(2),
            read_state(done_files()),
        )
        self.expect_outcome(FAILURE)
        await self.run_step()
        label = f"bulk {MASTER}"
        assert seen == [
            f"{label}: starting",
            f"{label}: 0/8 built, 0 failed, 0 skipped",
            f"{label}: 2/8 built, 1 failed, 1 skipped",
        ]

    async def test_renders_properties_and_defaults_the_buildname_from_the_build(self) -> None:
        step = bulk_step(
            jail=properties.Property("jail"),
            set_name=None,
            origins=properties.Property("origins"),
            buildname=None,
        )
        self.setup_step(step)
        self.build.setProperty("jail", "150arm64", "test")
        self.build.setProperty("origins", ["www/nginx"], "test")
        # FakeBuild is build number 13.
        argv = [*POUDRIERE, "bulk", "-j", "150arm64", "-p", "default", "-B", "jf-13-1", "www/nginx"]
        directory = f"{DATA}/logs/bulk/150arm64-default/jf-13-1"
        self.expect_commands(shell(argv).exit(0), read_state("", 3, directory))
        self.expect_outcome(FAILURE)
        self.expect_property("poudriere_buildname", "jf-13-1", "PoudriereBulk")
        await self.run_step()

    async def test_a_bad_property_fails_without_running_anything(self) -> None:
        self.setup_step(bulk_step(jail=properties.Property("jail")))
        self.build.setProperty("jail", "14.1-amd64", "test")
        why = "invalid poudriere jail name '14.1-amd64': expected letters, digits and '_' only"
        summary = f"bulk: invalid arguments: {why} (no '-' or '.': poudriere joins names with them)"
        self.expect_outcome(FAILURE, summary + " (failure)")
        await self.run_step()


class PoudriereTestportTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self) -> Any:
        self.setup_test_reactor()
        return self.setup_test_build_step()

    def step(self) -> PoudriereTestport:
        return PoudriereTestport(
            jail="141amd64", set_name="server", origin="www/nginx", etcdir=ETC, data_dir=DATA,
            buildname=BUILD,
        )  # fmt: skip

    async def test_success(self) -> None:
        self.setup_step(self.step())
        argv = [*POUDRIERE, "testport", *SELECT, "-B", BUILD, "-o", "www/nginx"]
        self.expect_commands(shell(argv).exit(0), read_state(clean_files()))
        summary = f"testport {MASTER}: 5 built, 0 failed, 0 skipped, 1 ignored"
        self.expect_outcome(SUCCESS, summary)
        await self.run_step()

    async def test_failure_exits_1_before_done(self) -> None:
        self.setup_step(self.step())
        argv = [*POUDRIERE, "testport", *SELECT, "-B", BUILD, "-o", "www/nginx"]
        files = done_files() | {".poudriere.status": "stopped:parallel_build:\n"}
        self.expect_commands(shell(argv).exit(1), read_state(files))
        self.expect_outcome(
            FAILURE, f"testport {MASTER}: 5 built, 1 failed, 1 skipped, 1 ignored (failure)"
        )
        self.expect_log_file("policy", "foo-client-2.1.0 failed in build\nfoo-web-2.1.0 skipped\n")
        await self.run_step()


def test_the_reason_of_a_failed_port_tells_a_crash_from_a_failure() -> None:
    from jailfarm.master.steps import _reason
    from jailfarm.poudriere.status import PortResult

    failed = PortResult("devel/a", "a-1", "failed", phase="build", errortype="build", elapsed=12)
    crashed = PortResult("devel/a", "a-1", "failed", phase="build", errortype="build")
    compiler = PortResult(
        "devel/a", "a-1", "failed", phase="build", errortype="compiler_error", elapsed=3
    )
    assert _reason(failed) == "build"
    assert _reason(crashed) == "builder crashed"
    assert _reason(compiler) == "compiler_error"
