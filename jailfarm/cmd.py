"""Commands as data: `Cmd`, `Result` and `Secret` (pure).

Nothing in jailfarm builds a shell string from input; every process is described by a `Cmd`
and handed to a `Runner` (see runner.py). Secrets inside an argv or env print as `***`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from jailfarm.errors import CommandFailed
from jailfarm.names import ENV_KEY

if TYPE_CHECKING:
    from collections.abc import Mapping


class Secret(str):
    """A string that never shows itself in str()/repr(); the real value is `reveal()`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def reveal(self) -> str:
        return str.__str__(self)


def _mask(value: str) -> str:
    return "***" if isinstance(value, Secret) else value


def _quote(word: str) -> str:
    # Display only (logs); never used to build a command line for a shell.
    if word == "***" or (word and all(c.isalnum() or c in "@%+=:,./_-" for c in word)):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class Cmd:
    """One process to run: argv (argv[0] found on PATH), optional stdin bytes, an environment
    that *replaces* the runner's base environment for the keys it names, and a timeout in
    seconds (None: no limit)."""

    argv: tuple[str, ...]
    stdin: bytes | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.argv, str)
            or not self.argv
            or not all(isinstance(a, str) for a in self.argv)
        ):
            raise TypeError(f"Cmd.argv must be a non-empty tuple of str, got {self.argv!r}")
        if any("\0" in a for a in self.argv):
            raise ValueError("Cmd.argv may not contain NUL bytes")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"Cmd.timeout must be positive or None, got {self.timeout!r}")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def __str__(self) -> str:
        env = " ".join(f"{k}={_quote(_mask(v))}" for k, v in sorted(self.env.items()))
        argv = " ".join(_quote(_mask(a)) for a in self.argv)
        return f"{env} {argv}" if env else argv

    def __repr__(self) -> str:
        return f"Cmd({self})"

    def mask(self, text: str) -> str:
        """`text` (a command's output) with every secret of this command replaced by ***."""
        for value in (*self.argv, *self.env.values()):
            if isinstance(value, Secret):
                plain = value.reveal()
                # A KEY=secret word: mask the bare secret too.
                for hidden in (plain, plain.partition("=")[2]):
                    if hidden:
                        text = text.replace(hidden, "***")
        return text

    def revealed_argv(self) -> list[str]:
        """The argv as the process must see it (secrets unmasked); for runners only."""
        return [a.reveal() if isinstance(a, Secret) else a for a in self.argv]

    def revealed_env(self) -> dict[str, str]:
        return {k: (v.reveal() if isinstance(v, Secret) else v) for k, v in self.env.items()}


@dataclass(frozen=True)
class Result:
    """What a finished command left: exit code, output, and whether the runner killed it."""

    cmd: Cmd
    rc: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def check(self) -> Result:
        """Return self if the command succeeded, else raise `CommandFailed`."""
        if not self.ok:
            # Some tools (buildbot's own commands among them) report errors on stdout.
            raise CommandFailed(self.cmd, self.rc, self.err or self.out, self.timed_out)
        return self


def env_words(env: Mapping[str, str], prefix: str = "") -> list[str]:
    """`PREFIXKEY=value` words for passing an environment through an argv (`env K=V`,
    `--env=K=V`), sorted, keys validated; a `Secret` value stays a `Secret` word."""
    words: list[str] = []
    for key, value in sorted(env.items()):
        word = f"{prefix}{ENV_KEY.check(key)}={_reveal(value)}"
        words.append(Secret(word) if isinstance(value, Secret) else word)
    return words


def _reveal(value: str) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def program(name: str) -> str:
    """A console script installed next to this Python (jailfarm's venv): `jailfarm`,
    `buildbot`, `buildbot-worker`."""
    return os.path.join(os.path.dirname(sys.executable), name)
