"""The error hierarchy shared by every jailfarm package (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jailfarm.cmd import Cmd


class FarmError(Exception):
    """Root of every error jailfarm raises on purpose."""


class CommandFailed(FarmError):
    """A command exited non-zero (or timed out); carries the masked argv and stderr tail."""

    def __init__(self, cmd: Cmd, rc: int, stderr: str, timed_out: bool = False) -> None:
        self.cmd = cmd
        self.rc = rc
        self.stderr_tail = cmd.mask(stderr)[-2000:]
        self.timed_out = timed_out
        what = f"timed out after {cmd.timeout}s" if timed_out else f"exited {rc}"
        tail = self.stderr_tail.strip()
        super().__init__(f"{cmd} {what}" + (f": {tail}" if tail else ""))


class ParseError(FarmError, ValueError):
    """Scripted output of a tool did not have the shape we expect."""

    def __init__(self, tool: str, line_no: int, line: str, why: str) -> None:
        self.tool, self.line_no, self.line = tool, line_no, line
        super().__init__(f"{tool}: line {line_no}: {why}: {line!r}")


class UnsafeOperation(FarmError):
    """A destructive operation targeted something outside the farm's own root."""


class InvalidName(FarmError, ValueError):
    """A name (jail, dataset, origin, branch, ...) failed its pattern or length budget."""


class ConfigError(FarmError, ValueError):
    """farm.toml is invalid; `problems` lists every error found, each self-explanatory."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} error(s):\n{lines}")


class JailError(FarmError):
    """A jail could not be created, entered or removed."""


class ZfsError(FarmError):
    """A ZFS operation failed in a way the caller should see (busy after retries, no space)."""
