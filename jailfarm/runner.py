"""The command seam: `Runner` and its implementations (shell).

`LocalRunner` is the only code in jailfarm that starts processes (through buildbot's
non-blocking `RunProcess` on the Twisted reactor). `SshRunner` runs the same `Cmd` on a remote
jail host by prefixing an `ssh` argv; the remote argv is quoted for the remote shell, because
ssh(1) always hands its command to one. `RecordingRunner` is a dry run, `FakeRunner` a scripted
runner for unit tests of the core. Every command is logged once at debug with secrets masked,
and every failure once at warning.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from buildbot.util.runprocess import RunProcess
from twisted.internet import defer
from twisted.logger import Logger

from jailfarm.cmd import Cmd, Result, Secret, env_words
from jailfarm.errors import InvalidName
from jailfarm.names import HOSTNAME, USER

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# The base environment every local command starts from; a Cmd's env adds to it. The master's
# own environment (tokens, agent sockets) is deliberately not inherited.
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
}


class Runner(Protocol):
    """Runs a `Cmd` and fires with its `Result` (never raises for a non-zero exit)."""

    def run(self, cmd: Cmd) -> defer.Deferred[Result]: ...


class _Process(RunProcess):  # type: ignore[misc]  # buildbot is untyped
    """RunProcess with our fixed base environment instead of the master's."""

    def __init__(self, base_env: Mapping[str, str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._base_env = base_env

    def get_os_env(self) -> dict[str, str]:
        return dict(self._base_env)


class LocalRunner:
    """Runs commands on this host without blocking the reactor."""

    log = Logger()

    def __init__(self, reactor: Any = None, base_env: Mapping[str, str] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self._base_env = dict(BASE_ENV if base_env is None else base_env)

    @defer.inlineCallbacks
    def run(self, cmd: Cmd) -> Any:
        self.log.debug("run {cmd}", cmd=str(cmd))
        proc = _Process(
            self._base_env,
            self._reactor,
            cmd.revealed_argv(),
            env=cmd.revealed_env(),
            io_timeout=None,
            runtime_timeout=cmd.timeout,
            sigterm_timeout=5,
            initial_stdin=cmd.stdin,
        )
        try:
            rc, out, err = yield proc.start()
        except OSError as e:  # argv[0] missing or not executable
            result = Result(cmd, 127, b"", str(e).encode())
        else:
            result = Result(cmd, rc, out, err, timed_out=bool(proc.killed))
        if not result.ok:
            self.log.warn(
                "command failed rc={rc} timed_out={t}: {cmd}: {err}",
                rc=result.rc,
                t=result.timed_out,
                cmd=str(cmd),
                err=cmd.mask(result.err)[-500:],
            )
        return result


def _remote_word(word: str) -> str:
    quoted = shlex.quote(word.reveal() if isinstance(word, Secret) else word)
    return Secret(quoted) if isinstance(word, Secret) else quoted


class SshRunner:
    """Runs commands on a remote jail host over ssh(1), through a local runner.

    ssh joins its arguments into one string for the remote login shell, so each remote word is
    quoted with `shlex.quote` here; the remote environment is passed with `env NAME=value`.
    Secrets stay `Secret` after quoting, so the ssh argv still logs masked.
    """

    def __init__(
        self,
        local: Runner,
        host: str,
        user: str = "root",
        port: int = 22,
        identity_file: str | None = None,
        known_hosts: str | None = None,
    ) -> None:
        HOSTNAME.check(host)
        USER.check(user)
        if not 0 < port < 65536:
            raise InvalidName(f"ssh port {port} is out of range 1-65535")
        self.local, self.host, self.user, self.port = local, host, user, port
        opts = ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-p", str(port)]
        if identity_file:
            opts += ["-i", identity_file]
        if known_hosts:
            opts += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        self._opts = tuple(opts)

    def wrap(self, cmd: Cmd) -> Cmd:
        """The local ssh `Cmd` that runs `cmd` remotely."""
        remote = ["env", *env_words(cmd.env)] if cmd.env else []
        remote = [_remote_word(w) for w in (*remote, *cmd.argv)]
        argv = ("ssh", *self._opts, "--", f"{self.user}@{self.host}", *remote)
        return Cmd(argv, stdin=cmd.stdin, timeout=cmd.timeout)

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        wrapped = self.wrap(cmd)
        d = self.local.run(wrapped)
        # Report the result against the command the caller asked for.
        d.addCallback(lambda r: Result(cmd, r.rc, r.stdout, r.stderr, r.timed_out))
        return d


@dataclass
class RecordingRunner:
    """Dry run: records every command and answers success with empty output."""

    calls: list[Cmd] = field(default_factory=list)

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        self.calls.append(cmd)
        return defer.succeed(Result(cmd, 0))


@dataclass
class _Expect:
    argv: tuple[str, ...]
    rc: int
    stdout: bytes
    stderr: bytes
    check: Callable[[Cmd], None] | None


class FakeRunner:
    """Scripted runner for unit tests: ordered expectations, explicit failures.

    `expect(argv, rc=0, stdout=..., stderr=...)` queues the answer for the next command, which
    must have exactly that argv; `assert_all_commands_ran()` checks nothing is left over.
    `calls` records every command received.
    """

    def __init__(self) -> None:
        self.calls: list[Cmd] = []
        self._queue: list[_Expect] = []

    def expect(
        self,
        *argv: str,
        rc: int = 0,
        stdout: str | bytes = b"",
        stderr: str | bytes = b"",
        check: Callable[[Cmd], None] | None = None,
    ) -> FakeRunner:
        out = stdout.encode() if isinstance(stdout, str) else stdout
        err = stderr.encode() if isinstance(stderr, str) else stderr
        self._queue.append(_Expect(tuple(argv), rc, out, err, check))
        return self

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        self.calls.append(cmd)
        if not self._queue:
            raise AssertionError(f"unexpected command: {cmd}")
        exp = self._queue.pop(0)
        if tuple(cmd.revealed_argv()) != exp.argv:
            raise AssertionError(f"expected {shlex.join(exp.argv)}\n     got {cmd}")
        if exp.check is not None:
            exp.check(cmd)
        return defer.succeed(Result(cmd, exp.rc, exp.stdout, exp.stderr))

    def assert_all_commands_ran(self) -> None:
        if self._queue:
            left = "\n".join(shlex.join(e.argv) for e in self._queue)
            raise AssertionError(f"expected commands did not run:\n{left}")
