"""Jails on the Linux development host: namespace jails driven through `nsjail` (shell adapter).

Each operation is one `Cmd` running `python -m jailfarm.host.nsjail ...` (this platform's
jail(8)) through the runner, so remote hosts and dry runs work as they do on FreeBSD. The
host's system directories and the Python environment jailfarm runs from are bind-mounted
read-only into every jail, so `buildbot-worker` and our own tools run inside.
FreeBSD features without a counterpart here (rctl limits, `zfs jail` delegation, vnet) are
reported absent in `capabilities` and skipped with a warning, never pretended.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

from jailfarm.cmd import Cmd, Result, env_words
from jailfarm.errors import InvalidName, JailError, ParseError
from jailfarm.host.base import CAP_NESTED, JailInfo, Jails, JailSpec
from jailfarm.names import JAIL, USER

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jailfarm.runner import Runner

SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc/alternatives")


def python_dirs() -> tuple[str, ...]:
    """Directories the jailed Python needs, bound at the same paths: the interpreter's prefix,
    the venv and, for an editable install, jailfarm's package directories. The package
    directories are bound one by one rather than the whole checkout, so the checkout's own
    mode (often 0700) does not lock the jail's unprivileged worker user out of the venv."""
    import jailfarm.master
    import jailfarm.poudriere
    import jailfarm.provision
    import jailfarm.workers

    dirs = {sys.prefix, sys.base_prefix}
    for package in (
        jailfarm,
        jailfarm.master,
        jailfarm.workers,
        jailfarm.poudriere,
        jailfarm.provision,
    ):
        dirs.update(str(Path(p).resolve()) for p in package.__path__)
    covered = (*SYSTEM_DIRS, *dirs)
    return tuple(sorted(d for d in dirs if not any(d.startswith(c + "/") for c in covered)))


class LinuxJails(Jails):
    """`Jails` for the Linux development host (see module docstring)."""

    log = Logger()
    capabilities = frozenset({CAP_NESTED})

    def __init__(
        self,
        runner: Runner,
        state_dir: str,
        python: str = sys.executable,
        system_dirs: Sequence[str] = SYSTEM_DIRS,
        extra_ro: Sequence[str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.runner = runner
        self.state_dir = state_dir
        self.python = python
        self.system_dirs = tuple(system_dirs)
        self.extra_ro = tuple(python_dirs() if extra_ro is None else extra_ro)
        self.start_timeout = start_timeout

    def _tool(self, *args: str, timeout: float | None = None, stdin: bytes | None = None) -> Cmd:
        return Cmd((self.python, "-m", "jailfarm.host.nsjail", *args), stdin=stdin, timeout=timeout)

    def start_cmd(self, spec: JailSpec) -> Cmd:
        args = [
            "start",
            "--name",
            spec.name,
            "--root",
            spec.path,
            "--hostname",
            spec.hostname,
            "--state-dir",
            self.state_dir,
            "--timeout",
            str(self.start_timeout),
            "--grace",
            str(spec.stop_timeout),
        ]
        for d in self.system_dirs:
            args += ["--system-dir", d]
        for d in self.extra_ro:
            args += ["--bind-ro", d]
        for m in spec.mounts:
            if ":" in m.host_path or ":" in m.jail_path or not m.host_path.startswith("/"):
                raise JailError(
                    f"jail {spec.name}: mount {m.host_path} -> {m.jail_path}: the host path must "
                    "be absolute and neither path may contain ':'"
                )
            args += ["--bind-ro" if m.read_only else "--bind-rw", f"{m.host_path}:{m.jail_path}"]
        if spec.private_network:
            args.append("--private-network")
        return self._tool(*args, timeout=self.start_timeout + 5)

    async def start(self, spec: JailSpec) -> JailInfo:
        for what, present in (
            ("rctl limits", spec.rctl),
            ("zfs jail delegation", spec.delegated_datasets),
            ("fixed addresses", spec.ip4 + spec.ip6),
        ):
            if present:
                self.log.warn(
                    "jail {name}: {what} requested but the linux-dev host has no "
                    "counterpart; not applied",
                    name=spec.name,
                    what=what,
                )
        result: Result = await self.runner.run(self.start_cmd(spec))
        if not result.ok:
            raise JailError(f"jail {spec.name} did not start: {result.err.strip()}")
        return _info(_json(result.out, "nsjail start"))

    def exec_cmd(
        self,
        name: str,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Cmd:
        """Like `jexec -l [-U user] NAME argv`: a clean login environment plus `env`."""
        args = ["exec", "--name", JAIL.check(name), "--state-dir", self.state_dir]
        if user is not None:
            args += ["--user", USER.check(user)]
        try:
            args += env_words(env or {}, prefix="--env=")
        except InvalidName as e:
            raise JailError(str(e)) from None
        if not argv:
            raise JailError("exec needs a command")
        return self._tool(*args, "--", *argv, timeout=timeout, stdin=stdin)

    async def unmount_below(self, path: str) -> list[str]:
        # A namespace jail mounts only inside its own mount namespace, which dies with it, so
        # the host has nothing to sweep (checked by the integration tests via mountinfo).
        return []

    async def remove(self, name: str, timeout: float | None = None) -> None:
        """`jail -r`, escalating to `jail -R` after `timeout`; raises if anything is left."""
        grace = 10.0 if timeout is None else timeout
        cmd = self._tool(
            "stop",
            "--name",
            JAIL.check(name),
            "--state-dir",
            self.state_dir,
            "--timeout",
            str(grace),
            timeout=grace + 15,
        )
        result: Result = await self.runner.run(cmd)
        if not result.ok:
            raise JailError(f"jail {name} was not removed cleanly: {result.err.strip()}")

    async def list(self) -> list[JailInfo]:
        result: Result = await self.runner.run(self._tool("list", "--state-dir", self.state_dir))
        data = _json(result.check().out, "nsjail list")
        if not isinstance(data, list):
            raise ParseError("nsjail list", 1, result.out[:200], "expected a JSON list")
        return [_info(item) for item in data]


def _json(text: str, tool: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(tool, e.lineno, text[:200], f"not JSON ({e.msg})") from None


def _info(data: object) -> JailInfo:
    if not isinstance(data, dict):
        raise ParseError("nsjail", 1, repr(data)[:200], "expected a JSON object")
    try:
        return JailInfo(
            name=str(data["name"]),
            jid=int(data["pid"]),
            path=str(data["root"]),
            hostname=str(data["hostname"]),
            extra={"pidns": str(data["pidns"]), "alive": str(data.get("alive", True)).lower()},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ParseError("nsjail", 1, repr(data)[:200], f"missing or bad field: {e}") from None
