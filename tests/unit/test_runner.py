"""The command seam: `LocalRunner` on real `sh` processes, `SshRunner` argv and quoting,
`RecordingRunner` and `FakeRunner`."""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from jailfarm.cmd import Cmd, Result, Secret
from jailfarm.errors import CommandFailed, InvalidName
from jailfarm.runner import BASE_ENV, FakeRunner, LocalRunner, RecordingRunner, SshRunner
from tests.support import deferred_test

if TYPE_CHECKING:
    from twisted.internet import defer

    pass


def result_of(d: defer.Deferred[Result]) -> Result:
    """The result of an already-fired Deferred (the fake runners answer synchronously)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    result: Result = box[0]
    return result


def sh(script: str, *args: str | Secret, **kwargs: Any) -> Cmd:
    return Cmd(("sh", "-c", script, "sh", *args), **kwargs)


class LocalRunnerTests(unittest.TestCase):
    """Real processes: the only ones in the unit tests."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.runner = LocalRunner()
        # An instance attribute shadows the class Logger: this runner logs only to us.
        self.runner.log = Logger(observer=self.events.append)

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level]

    @deferred_test
    async def test_returns_rc_stdout_and_stderr(self) -> None:
        result = await self.runner.run(sh("printf 'out\\n'; printf 'err\\n' >&2; exit 3"))
        assert result.rc == 3
        assert result.stdout == b"out\n"
        assert result.stderr == b"err\n"
        assert not result.timed_out
        assert not result.ok

    @deferred_test
    async def test_success_is_ok_and_logs_no_warning(self) -> None:
        result = await self.runner.run(sh("printf ok"))
        assert result.ok
        assert result.out == "ok"
        assert self.logged(LogLevel.warn) == []

    @deferred_test
    async def test_delivers_stdin_bytes_and_then_eof(self) -> None:
        data = b"line one\n\x00\xff binary\n"
        result = await self.runner.run(Cmd(("cat",), stdin=data))
        assert result.stdout == data

    @deferred_test
    async def test_stdin_is_closed_when_there_is_none(self) -> None:
        # `cat` would wait forever if stdin were left open.
        result = await self.runner.run(Cmd(("cat",), timeout=10))
        assert result.ok
        assert result.stdout == b""

    @deferred_test
    async def test_cmd_env_is_visible_to_the_process(self) -> None:
        result = await self.runner.run(sh('printf %s "$JF_VAR"', env={"JF_VAR": "two words"}))
        assert result.out == "two words"

    @deferred_test
    async def test_cmd_env_overrides_the_base_env(self) -> None:
        result = await self.runner.run(sh('printf %s "$LANG"', env={"LANG": "C"}))
        assert result.out == "C"

    @deferred_test
    async def test_process_starts_from_the_base_env(self) -> None:
        result = await self.runner.run(sh('printf "%s|%s|%s" "$PATH" "$LANG" "$HOME"'))
        assert result.out == f"{BASE_ENV['PATH']}|{BASE_ENV['LANG']}|{BASE_ENV['HOME']}"

    @deferred_test
    async def test_masters_own_environment_is_not_inherited(self) -> None:
        mp = pytest.MonkeyPatch()
        self.addCleanup(mp.undo)
        mp.setenv("JAILFARM_MASTER_ONLY", "leaked")
        result = await self.runner.run(sh('printf %s "${JAILFARM_MASTER_ONLY-unset}"; env'))
        assert result.out.startswith("unset")
        assert "leaked" not in result.out

    @deferred_test
    async def test_custom_base_env_replaces_the_default(self) -> None:
        runner = LocalRunner(base_env={"PATH": "/usr/bin:/bin", "ONLY": "1"})
        result = await runner.run(sh('printf "%s|%s" "$ONLY" "${LANG-unset}"'))
        assert result.out == "1|unset"

    @deferred_test
    async def test_timeout_kills_the_process_and_marks_it_timed_out(self) -> None:
        cmd = Cmd(("sleep", "5"), timeout=0.5)
        started = time.monotonic()
        result = await self.runner.run(cmd)
        assert time.monotonic() - started < 4
        assert result.timed_out
        assert not result.ok
        with pytest.raises(CommandFailed, match=r"sleep 5 timed out after 0\.5s") as info:
            result.check()
        assert info.value.timed_out
        assert any("timed_out=True" in line for line in self.logged(LogLevel.warn))

    @deferred_test
    async def test_killed_by_a_signal_reads_as_rc_minus_one_not_timeout(self) -> None:
        result = await self.runner.run(sh("kill -TERM $$"))
        assert result.rc == -1
        assert not result.timed_out

    @deferred_test
    async def test_missing_executable_is_rc_127_not_an_exception(self) -> None:
        result = await self.runner.run(Cmd(("jailfarm-no-such-tool", "x")))
        assert result.rc == 127
        assert "jailfarm-no-such-tool" in result.err
        with pytest.raises(CommandFailed, match="exited 127"):
            result.check()

    @deferred_test
    async def test_secret_reaches_the_process_but_not_the_logs(self) -> None:
        cmd = sh(
            'printf "%s|%s" "$1" "$TOKEN"; exit 4',
            Secret("hunter2"),
            env={"TOKEN": Secret("t0k3n")},
        )
        result = await self.runner.run(cmd)
        assert result.rc == 4
        assert result.out == "hunter2|t0k3n"
        debug = self.logged(LogLevel.debug)
        assert len(debug) == 1
        assert "hunter2" not in debug[0]
        assert "TOKEN=***" in debug[0]
        warnings = self.logged(LogLevel.warn)
        assert len(warnings) == 1
        assert "rc=4" in warnings[0]
        assert "hunter2" not in warnings[0]
        assert "t0k3n" not in warnings[0]
        assert "TOKEN=*** sh -c" in warnings[0]
        assert "sh ***" in warnings[0]
        with pytest.raises(CommandFailed) as info:
            result.check()
        assert "hunter2" not in str(info.value)
        assert "t0k3n" not in str(info.value)
        assert "sh ***" in str(info.value)

    @deferred_test
    async def test_each_command_logged_once_at_debug(self) -> None:
        await self.runner.run(sh("exit 0"))
        await self.runner.run(sh("exit 1"))
        assert self.logged(LogLevel.debug) == ["run sh -c 'exit 0' sh", "run sh -c 'exit 1' sh"]
        assert len(self.logged(LogLevel.warn)) == 1


class SshQuotingTests(unittest.TestCase):
    """The remote words of `SshRunner.wrap`, handed to a real `sh -c` the way sshd hands them
    to the login shell, come back as exactly the argv and env asked for."""

    @deferred_test
    async def test_real_shell_parses_remote_words_back(self) -> None:
        tricky = [
            "",
            " ",
            "a b",
            "it's",
            '"q"',
            "$HOME",
            "`id`",
            "$(id)",
            "a;b",
            "x|y",
            "*",
            "~",
            "-rf",
            "--",
            "new\nline",
            "tab\there",
            "back\\slash",
            "\u2603",
            "#comment",
            "!bang",
            "{a,b}",
            "a=b",
        ]
        script = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['JF_X']]))"
        ssh = SshRunner(RecordingRunner(), "build1")
        wrapped = ssh.wrap(
            Cmd((sys.executable, "-c", script, *tricky), env={"JF_X": "a b'c $HOME"})
        )
        remote = wrapped.revealed_argv()[wrapped.argv.index("root@build1") + 1 :]
        result = (await LocalRunner().run(Cmd(("sh", "-c", " ".join(remote))))).check()
        assert json.loads(result.out) == [tricky, "a b'c $HOME"]


def remote_words(wrapped: Cmd, target: str) -> list[str]:
    argv = wrapped.revealed_argv()
    return argv[argv.index(target) + 1 :]


argv_text = st.text(st.characters(blacklist_characters="\0"))


class SshRunnerTests:
    def test_wrap_builds_the_ssh_argv(self) -> None:
        ssh = SshRunner(RecordingRunner(), "build1.example.org")
        wrapped = ssh.wrap(Cmd(("zfs", "list", "pool/a b")))
        # BatchMode: never prompt on the master; `--` ends ssh's options before user@host.
        # fmt: off
        assert wrapped.argv == (
            "ssh", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-p", "22",
            "--", "root@build1.example.org", "zfs", "list", "'pool/a b'",
        )
        # fmt: on

    def test_wrap_adds_identity_known_hosts_user_and_port(self) -> None:
        ssh = SshRunner(
            RecordingRunner(),
            "10.0.0.7",
            user="farm",
            port=2222,
            identity_file="/etc/jailfarm/id_ed25519",
            known_hosts="/etc/jailfarm/known_hosts",
        )
        # fmt: off
        assert ssh.wrap(Cmd(("true",))).argv == (
            "ssh", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-p", "2222",
            "-i", "/etc/jailfarm/id_ed25519", "-o", "UserKnownHostsFile=/etc/jailfarm/known_hosts",
            "-o", "StrictHostKeyChecking=yes", "--", "farm@10.0.0.7", "true",
        )
        # fmt: on

    def test_wrap_carries_stdin_and_timeout_and_no_local_env(self) -> None:
        wrapped = SshRunner(RecordingRunner(), "h").wrap(
            Cmd(("cat",), stdin=b"data", env={"A": "1"}, timeout=7.5)
        )
        assert wrapped.stdin == b"data"
        assert wrapped.timeout == 7.5
        assert dict(wrapped.env) == {}

    def test_env_is_passed_with_env_name_value(self) -> None:
        wrapped = SshRunner(RecordingRunner(), "h").wrap(
            Cmd(("make", "all"), env={"B": "two words", "A": "1"})
        )
        assert remote_words(wrapped, "root@h") == ["env", "A=1", "'B=two words'", "make", "all"]

    @given(st.lists(argv_text, min_size=1))
    def test_remote_shell_parses_back_the_exact_argv(self, argv: list[str]) -> None:
        wrapped = SshRunner(RecordingRunner(), "h").wrap(Cmd(tuple(argv)))
        assert shlex.split(" ".join(remote_words(wrapped, "root@h"))) == argv

    @given(
        st.lists(argv_text, min_size=1),
        st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]*", fullmatch=True), argv_text),
    )
    def test_remote_shell_parses_back_env_and_argv(
        self, argv: list[str], env: dict[str, str]
    ) -> None:
        wrapped = SshRunner(RecordingRunner(), "h").wrap(Cmd(tuple(argv), env=env))
        expected = (["env", *(f"{k}={v}" for k, v in sorted(env.items()))] if env else []) + argv
        assert shlex.split(" ".join(remote_words(wrapped, "root@h"))) == expected

    def test_secrets_stay_masked_in_str_but_are_revealed_for_the_process(self) -> None:
        wrapped = SshRunner(RecordingRunner(), "h").wrap(
            Cmd(("login", Secret("hunter 2")), env={"TOKEN": Secret("t0k3n")})
        )
        assert "hunter" not in str(wrapped)
        assert "t0k3n" not in str(wrapped)
        assert str(wrapped).endswith("-- root@h env *** login ***")
        assert remote_words(wrapped, "root@h") == ["env", "TOKEN=t0k3n", "login", "'hunter 2'"]

    @pytest.mark.parametrize(
        "host", ["", "-oProxyCommand=sh", "Build1", "a b", "a;b", "h_1", "a..b", "-h", "h."]
    )
    def test_invalid_host_is_rejected(self, host: str) -> None:
        with pytest.raises(InvalidName):
            SshRunner(RecordingRunner(), host)

    @pytest.mark.parametrize("user", ["", "-l", "Root", "a b", "a;b", "0day", "u@h"])
    def test_invalid_user_is_rejected(self, user: str) -> None:
        with pytest.raises(InvalidName):
            SshRunner(RecordingRunner(), "h", user=user)

    @pytest.mark.parametrize("port", [0, -1, 65536])
    def test_port_out_of_range_is_rejected(self, port: int) -> None:
        with pytest.raises(InvalidName, match="1-65535"):
            SshRunner(RecordingRunner(), "h", port=port)

    @pytest.mark.parametrize("port", [1, 65535])
    def test_port_at_the_range_ends_is_accepted(self, port: int) -> None:
        wrapped = SshRunner(RecordingRunner(), "h", port=port).wrap(Cmd(("true",)))
        assert wrapped.argv[wrapped.argv.index("-p") + 1] == str(port)

    def test_run_reports_the_result_against_the_callers_cmd(self) -> None:
        ssh = SshRunner(FakeRunner(), "h")
        cmd = Cmd(("zfs", "get", "type", "pool"), timeout=3)
        fake = FakeRunner().expect(*ssh.wrap(cmd).revealed_argv(), rc=2, stdout="o", stderr="e")
        ssh.local = fake
        result = result_of(ssh.run(cmd))
        assert result == Result(cmd, 2, b"o", b"e", False)
        assert fake.calls[0].argv[0] == "ssh"
        assert fake.calls[0].timeout == 3
        fake.assert_all_commands_ran()


class RecordingRunnerTests:
    def test_records_every_command_and_answers_success(self) -> None:
        runner = RecordingRunner()
        first, second = Cmd(("zfs", "destroy", "p/a")), Cmd(("rm", "-r", "/x"))
        results = [result_of(runner.run(first)), result_of(runner.run(second))]
        assert runner.calls == [first, second]
        assert results == [Result(first, 0), Result(second, 0)]
        assert all(r.ok and r.stdout == b"" for r in results)


class FakeRunnerTests:
    def test_answers_expectations_in_order(self) -> None:
        runner = FakeRunner()
        runner.expect("zfs", "get", rc=0, stdout="a\tb\tc\n").expect("zfs", "x", rc=1, stderr="no")
        first = result_of(runner.run(Cmd(("zfs", "get"))))
        second = result_of(runner.run(Cmd(("zfs", "x"))))
        assert (first.rc, first.stdout) == (0, b"a\tb\tc\n")
        assert (second.rc, second.stderr) == (1, b"no")
        assert [c.argv for c in runner.calls] == [("zfs", "get"), ("zfs", "x")]
        runner.assert_all_commands_ran()

    def test_unexpected_command_raises_assertion_error(self) -> None:
        runner = FakeRunner()
        with pytest.raises(AssertionError, match="unexpected command: zfs destroy p/a"):
            runner.run(Cmd(("zfs", "destroy", "p/a")))
        assert len(runner.calls) == 1

    def test_different_argv_raises_assertion_error_naming_both(self) -> None:
        runner = FakeRunner().expect("zfs", "destroy", "p/a")
        with pytest.raises(
            AssertionError, match=r"expected zfs destroy p/a\n.*got zfs destroy p/b"
        ):
            runner.run(Cmd(("zfs", "destroy", "p/b")))

    def test_leftover_expectations_fail_assert_all_commands_ran(self) -> None:
        runner = FakeRunner().expect("true").expect("zfs", "destroy", "p/a b")
        result_of(runner.run(Cmd(("true",))))
        with pytest.raises(AssertionError, match="did not run:\nzfs destroy 'p/a b'"):
            runner.assert_all_commands_ran()

    def test_matches_on_the_revealed_argv(self) -> None:
        runner = FakeRunner().expect("login", "hunter2")
        assert result_of(runner.run(Cmd(("login", Secret("hunter2"))))).ok

    def test_check_callback_sees_the_command(self) -> None:
        seen: list[Cmd] = []
        runner = FakeRunner().expect("cat", check=seen.append)
        cmd = Cmd(("cat",), stdin=b"in")
        result_of(runner.run(cmd))
        assert seen == [cmd]

    def test_check_callback_failure_propagates(self) -> None:
        def no_stdin(cmd: Cmd) -> None:
            assert cmd.stdin is None, "stdin given"

        runner = FakeRunner().expect("cat", check=no_stdin)
        with pytest.raises(AssertionError, match="stdin given"):
            runner.run(Cmd(("cat",), stdin=b"x"))
