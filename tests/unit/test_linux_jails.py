"""Linux namespace jails without root: `LinuxJails` argv builders (checked against the
`nsjail` tool's own argument parser) and its operations driven through `FakeRunner`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.logger import Logger, LogLevel, formatEvent

from jailfarm.cmd import Cmd, Secret
from jailfarm.errors import CommandFailed, InvalidName, JailError, ParseError
from jailfarm.host.base import CAP_NESTED, JailInfo, JailSpec, Mount
from jailfarm.host.linux import SYSTEM_DIRS, LinuxJails, python_dirs
from jailfarm.host.nsjail import _parser
from jailfarm.runner import FakeRunner
from tests.support import resolve

if TYPE_CHECKING:
    import argparse

T = TypeVar("T")

PY = "/opt/jf/bin/python"
TOOL = (PY, "-m", "jailfarm.host.nsjail")
STATE = "/var/run/jailfarm/jails"

SPEC = JailSpec(
    name="w1",
    path="/jails/w1",
    hostname="w1.farm.test",
    mounts=(
        Mount("/usr/ports", "/usr/ports"),
        Mount("/var/cache/distfiles", "/distfiles", read_only=False),
    ),
    private_network=True,
    stop_timeout=20,
)
# What `nsjail start`/`list` print: the state file the tool writes (nsjail.py `start`).
STATE_W1 = {
    "name": "w1", "pid": 41234, "pidns": 4026532871, "unshare_pid": 41230, "root": "/jails/w1",
    "hostname": "w1.farm.test", "private_network": True, "started": 1763940000.5,
}  # fmt: skip
INFO_W1 = JailInfo(
    "w1", 41234, "/jails/w1", "w1.farm.test", {"pidns": "4026532871", "alive": "true"}
)


def parsed(cmd: Cmd) -> argparse.Namespace:
    """The argv as the nsjail tool itself will read it."""
    assert cmd.argv[:3] == TOOL
    return _parser().parse_args(cmd.revealed_argv()[3:])


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def jails(runner: FakeRunner) -> LinuxJails:
    # extra_ro given explicitly: the default depends on where this venv lives.
    return LinuxJails(runner, STATE, python=PY, extra_ro=("/opt/jf",))


class StartCmdTests:
    def test_golden_argv(self, jails: LinuxJails) -> None:
        cmd = jails.start_cmd(SPEC)
        # fmt: off
        assert cmd.argv == (
            *TOOL, "start", "--name", "w1", "--root", "/jails/w1", "--hostname", "w1.farm.test",
            "--state-dir", STATE, "--timeout", "15.0", "--grace", "20", "--system-dir", "/usr",
            "--system-dir", "/bin", "--system-dir", "/lib", "--system-dir", "/lib64",
            "--system-dir", "/sbin", "--system-dir", "/etc/alternatives", "--bind-ro", "/opt/jf",
            "--bind-ro", "/usr/ports:/usr/ports", "--bind-rw", "/var/cache/distfiles:/distfiles",
            "--private-network",
        )
        # fmt: on
        # The runner's limit leaves the tool time to report its own start timeout.
        assert cmd.timeout == 20.0
        assert cmd.stdin is None

    def test_argv_is_what_the_nsjail_tool_reads(self, jails: LinuxJails) -> None:
        args = parsed(jails.start_cmd(SPEC))
        assert (args.op, args.name, args.root, args.hostname) == (
            "start",
            "w1",
            "/jails/w1",
            "w1.farm.test",
        )
        assert args.system_dir == list(SYSTEM_DIRS)
        assert args.bind_ro == ["/opt/jf", "/usr/ports:/usr/ports"]
        assert args.bind_rw == ["/var/cache/distfiles:/distfiles"]
        assert args.private_network
        assert (args.timeout, args.grace) == (15.0, 20.0)

    def test_shared_network_and_no_mounts(self, runner: FakeRunner) -> None:
        jails = LinuxJails(
            runner, STATE, python=PY, system_dirs=("/usr",), extra_ro=(), start_timeout=3
        )
        spec = JailSpec(name="m", path="/jails/m", hostname="m")
        cmd = jails.start_cmd(spec)
        # fmt: off
        assert cmd.argv == (
            *TOOL, "start", "--name", "m", "--root", "/jails/m", "--hostname", "m",
            "--state-dir", STATE, "--timeout", "3", "--grace", "30", "--system-dir", "/usr",
        )
        # fmt: on
        assert cmd.timeout == 8

    @pytest.mark.parametrize(
        "mount", [Mount("/a:b", "/b"), Mount("/a", "/b:c"), Mount("/a", "/b:c", read_only=False)]
    )
    def test_mount_path_with_colon_is_rejected(self, jails: LinuxJails, mount: Mount) -> None:
        spec = JailSpec(name="w1", path="/jails/w1", hostname="w1", mounts=(mount,))
        with pytest.raises(JailError, match="neither path may contain ':'"):
            jails.start_cmd(spec)

    def test_relative_mount_source_is_rejected(self, jails: LinuxJails) -> None:
        spec = JailSpec(
            name="w1", path="/jails/w1", hostname="w1", mounts=(Mount("srv/data", "/data"),)
        )
        with pytest.raises(JailError, match="host path must be absolute"):
            jails.start_cmd(spec)


class ExecCmdTests:
    def test_golden_argv(self, jails: LinuxJails) -> None:
        cmd = jails.exec_cmd(
            "w1",
            ["sh", "-c", "echo hi"],
            user="build",
            env={"A": "1", "B": "x y"},
            timeout=30,
            stdin=b"in",
        )
        # fmt: off
        assert cmd.argv == (
            *TOOL, "exec", "--name", "w1", "--state-dir", STATE, "--user", "build", "--env=A=1",
            "--env=B=x y", "--", "sh", "-c", "echo hi",
        )
        # fmt: on
        assert cmd.timeout == 30
        assert cmd.stdin == b"in"

    def test_without_user_or_env(self, jails: LinuxJails) -> None:
        cmd = jails.exec_cmd("w1", ["id"])
        assert cmd.argv == (*TOOL, "exec", "--name", "w1", "--state-dir", STATE, "--", "id")
        assert cmd.timeout is None
        assert cmd.stdin is None

    def test_dashed_command_stays_the_command(self, jails: LinuxJails) -> None:
        # `--` ends the tool's options: a command word like "--user" is not read as one.
        args = parsed(jails.exec_cmd("w1", ["--user", "root", "--", "-x"], env={"K": "--"}))
        assert args.command == ["--user", "root", "--", "-x"]
        assert args.user is None
        assert args.env == ["K=--"]

    @given(
        st.lists(st.text(st.characters(blacklist_characters="\0")), min_size=1),
        st.dictionaries(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]*", fullmatch=True),
            st.text(st.characters(blacklist_characters="\0")),
        ),
    )
    @example(["--"], {})
    @example(["--", "--"], {})
    @example(["-h"], {"K": "--name"})
    @example(["x", "--", "--name", "y"], {})
    def test_tool_reads_back_exactly_the_command_and_env(
        self, argv: list[str], env: dict[str, str]
    ) -> None:
        jails = LinuxJails(FakeRunner(), STATE, python=PY, extra_ro=())
        args = parsed(jails.exec_cmd("w1", argv, env=env))
        assert args.command == argv
        assert args.env == [f"{k}={v}" for k, v in sorted(env.items())]

    @pytest.mark.parametrize("user", ["Root", "-u", "a b", "1x", "a;b"])
    def test_user_is_validated(self, jails: LinuxJails, user: str) -> None:
        with pytest.raises(InvalidName, match="user"):
            jails.exec_cmd("w1", ["id"], user=user)

    @pytest.mark.parametrize("name", ["W1", "-x", "w1.x", "a" * 12])
    def test_jail_name_is_validated(self, jails: LinuxJails, name: str) -> None:
        with pytest.raises(InvalidName, match="jail"):
            jails.exec_cmd(name, ["id"])

    @pytest.mark.parametrize("key", ["", "1A", "A-B", "A=B", "A B", "-A", "A\n"])
    def test_env_key_is_validated(self, jails: LinuxJails, key: str) -> None:
        with pytest.raises(JailError, match="invalid environment variable name"):
            jails.exec_cmd("w1", ["id"], env={key: "v"})

    def test_empty_command_is_rejected(self, jails: LinuxJails) -> None:
        with pytest.raises(JailError, match="needs a command"):
            jails.exec_cmd("w1", [])

    def test_secret_env_value_reaches_the_jail_but_not_the_log(self, jails: LinuxJails) -> None:
        cmd = jails.exec_cmd("w1", ["fetch"], env={"TOKEN": Secret("t0k3n")})
        assert "--env=TOKEN=t0k3n" in cmd.revealed_argv()
        assert "t0k3n" not in str(cmd)

    def test_exec_runs_the_exec_cmd(self, jails: LinuxJails, runner: FakeRunner) -> None:
        runner.expect(*jails.exec_cmd("w1", ["id", "-u"]).argv, rc=0, stdout="0\n")
        result = resolve(jails.exec("w1", ["id", "-u"]))
        assert result.out == "0\n"
        runner.assert_all_commands_ran()


class StartTests:
    def test_returns_the_jail_info(self, jails: LinuxJails, runner: FakeRunner) -> None:
        runner.expect(*jails.start_cmd(SPEC).argv, stdout=json.dumps(STATE_W1) + "\n")
        assert resolve(jails.start(SPEC)) == INFO_W1
        runner.assert_all_commands_ran()

    def test_failure_raises_jail_error_with_stderr(
        self, jails: LinuxJails, runner: FakeRunner
    ) -> None:
        runner.expect(
            *jails.start_cmd(SPEC).argv, rc=1, stderr="nsjail: /jails/w1 is not a directory\n"
        )
        with pytest.raises(JailError, match="jail w1 did not start: nsjail: /jails/w1 is not a"):
            resolve(jails.start(SPEC))

    def test_garbage_output_is_a_parse_error(self, jails: LinuxJails, runner: FakeRunner) -> None:
        runner.expect(*jails.start_cmd(SPEC).argv, stdout="started w1\n")
        with pytest.raises(ParseError, match="nsjail start: line 1: not JSON"):
            resolve(jails.start(SPEC))

    def test_features_without_a_linux_counterpart_are_warned_not_applied(
        self, jails: LinuxJails, runner: FakeRunner
    ) -> None:
        events: list[dict[str, Any]] = []
        jails.log = Logger(observer=events.append)
        spec = JailSpec(
            name="w1",
            path="/jails/w1",
            hostname="w1",
            rctl=("pcpu:deny=400",),
            delegated_datasets=("pool/farm/w1/data",),
            ip4=("10.0.0.9",),
        )
        runner.expect(*jails.start_cmd(spec).argv, stdout=json.dumps(STATE_W1))
        resolve(jails.start(spec))
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        assert len(warnings) == 3
        assert all("not applied" in w for w in warnings)
        assert [
            "rctl limits" in warnings[0],
            "zfs jail delegation" in warnings[1],
            "fixed addresses" in warnings[2],
        ] == [True, True, True]


class RemoveTests:
    def test_stops_with_the_default_grace(self, jails: LinuxJails, runner: FakeRunner) -> None:
        seen: list[Cmd] = []
        runner.expect(
            *TOOL,
            "stop",
            "--name",
            "w1",
            "--state-dir",
            STATE,
            "--timeout",
            "10.0",
            stdout='{"name": "w1", "result": "stopped"}\n',
            check=seen.append,
        )
        assert resolve(jails.remove("w1")) is None
        # The tool escalates after the grace; the runner's limit comes only after that.
        assert seen[0].timeout == 25.0
        runner.assert_all_commands_ran()

    def test_passes_the_given_grace(self, jails: LinuxJails, runner: FakeRunner) -> None:
        seen: list[Cmd] = []
        runner.expect(
            *TOOL, "stop", "--name", "w1", "--state-dir", STATE, "--timeout", "3", check=seen.append
        )
        resolve(jails.remove("w1", timeout=3))
        assert seen[0].timeout == 18

    def test_failed_stop_raises_jail_error_with_stderr(
        self, jails: LinuxJails, runner: FakeRunner
    ) -> None:
        runner.expect(
            *TOOL,
            "stop",
            "--name",
            "w1",
            "--state-dir",
            STATE,
            "--timeout",
            "10.0",
            rc=1,
            stderr="nsjail: jail w1 still has 2 processes\n",
        )
        with pytest.raises(JailError) as info:
            resolve(jails.remove("w1"))
        assert str(info.value) == (
            "jail w1 was not removed cleanly: nsjail: jail w1 still has 2 processes"
        )

    def test_invalid_name_runs_no_command(self, jails: LinuxJails, runner: FakeRunner) -> None:
        with pytest.raises(InvalidName):
            resolve(jails.remove("../w1"))
        assert runner.calls == []


class ListTests:
    def test_parses_every_jail(self, jails: LinuxJails, runner: FakeRunner) -> None:
        dead = {
            **STATE_W1,
            "name": "w2",
            "pid": 5,
            "root": "/jails/w2",
            "hostname": "w2",
            "alive": False,
        }
        out = json.dumps([{**STATE_W1, "alive": True}, dead]) + "\n"
        runner.expect(*TOOL, "list", "--state-dir", STATE, stdout=out)
        assert resolve(jails.list()) == [
            INFO_W1,
            JailInfo("w2", 5, "/jails/w2", "w2", {"pidns": "4026532871", "alive": "false"}),
        ]
        runner.assert_all_commands_ran()

    def test_no_jails(self, jails: LinuxJails, runner: FakeRunner) -> None:
        runner.expect(*TOOL, "list", "--state-dir", STATE, stdout="[]\n")
        assert resolve(jails.list()) == []

    @pytest.mark.parametrize(
        ("out", "message"),
        [
            ("", "nsjail list: line 1: not JSON"),
            ("w1 41234 /jails/w1\n", "nsjail list: line 1: not JSON"),
            ('[{"name": "w1"', "nsjail list: line 1: not JSON"),
            ('{"name": "w1"}', "nsjail list: line 1: expected a JSON list"),
            ('["w1"]', "nsjail: line 1: expected a JSON object"),
            ('[{"name": "w1", "pid": 1}]', "missing or bad field"),
            (
                '[{"name": "w1", "pid": "x", "root": "/", "hostname": "h", "pidns": 1}]',
                "missing or bad field",
            ),
        ],
    )
    def test_garbage_is_a_parse_error(
        self, jails: LinuxJails, runner: FakeRunner, out: str, message: str
    ) -> None:
        runner.expect(*TOOL, "list", "--state-dir", STATE, stdout=out)
        with pytest.raises(ParseError, match=message):
            resolve(jails.list())

    def test_failed_list_raises_command_failed(self, jails: LinuxJails, runner: FakeRunner) -> None:
        runner.expect(*TOOL, "list", "--state-dir", STATE, rc=1, stderr="nsjail: permission denied")
        with pytest.raises(CommandFailed, match="permission denied"):
            resolve(jails.list())


class LinuxJailsTests:
    def test_capabilities_are_only_nested_jails(self, jails: LinuxJails) -> None:
        assert jails.capabilities == frozenset({CAP_NESTED})

    def test_python_dirs_are_absolute_and_not_covered_by_other_mounts(self) -> None:
        dirs = python_dirs()
        assert dirs == tuple(sorted(dirs))
        assert all(d.startswith("/") for d in dirs)
        for d in dirs:
            assert not any(d.startswith(c + "/") for c in (*SYSTEM_DIRS, *dirs))

    def test_default_extra_ro_is_python_dirs(self, runner: FakeRunner) -> None:
        assert LinuxJails(runner, STATE).extra_ro == python_dirs()
