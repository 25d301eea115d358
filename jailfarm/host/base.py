"""What a host platform offers the core: jail specs, jail info and the `Jails` base class (pure).

The orchestration core never asks which OS it is on. It describes a jail with a `JailSpec`
and hands it to the platform's `Jails` implementation (FreeBSD jail(8), or Linux namespaces
on the development host). Features one platform lacks are named in `capabilities`, never faked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from jailfarm.names import HOSTNAME, JAIL

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jailfarm.cmd import Cmd, Result
    from jailfarm.runner import Runner

# The unprivileged user every worker template has and buildbot-worker runs as (jails spec
# j.154); the same uid on every platform, so files written from the host get it right.
WORKER_USER = "buildbot"
WORKER_UID = 1001

# Capability names a platform may report.
CAP_ZFS_JAILED = "zfs.jailed"  # the `jailed` property and `zfs jail` delegation
CAP_RCTL = "rctl"  # per-jail resource limits
CAP_VNET = "vnet"  # a private network stack per jail
CAP_NESTED = "nested"  # a jail can create child jails (poudriere's build jails)


@dataclass(frozen=True)
class Mount:
    """A directory of the host shown inside the jail (nullfs on FreeBSD, bind on Linux)."""

    host_path: str
    jail_path: str
    read_only: bool = True


Profile = Literal["worker", "service"]


@dataclass(frozen=True)
class JailSpec:
    """Everything needed to start one jail.

    `profile="worker"` is the poudriere-capable profile (child jails, mounts inside the jail);
    `"service"` is the restricted profile for the master and nginx jails. `children_max` is the
    number of child jails the worker may create; poudriere needs 2 x (builders + 1) per build.
    Empty `ip4` means the jail shares the host's addresses (FreeBSD `ip4=inherit`).
    """

    name: str
    path: str
    hostname: str
    profile: Profile = "service"
    children_max: int = 0
    ip4: tuple[str, ...] = ()
    ip6: tuple[str, ...] = ()
    private_network: bool = False
    mounts: tuple[Mount, ...] = ()
    delegated_datasets: tuple[str, ...] = ()
    devfs_ruleset: int = 4
    rctl: tuple[str, ...] = ()  # "resource:action=amount", e.g. "vmemoryuse:deny=8g"
    stop_timeout: int = 30

    def __post_init__(self) -> None:
        JAIL.check(self.name)
        HOSTNAME.check(self.hostname)
        if not self.path.startswith("/"):
            raise ValueError(f"jail {self.name}: path {self.path!r} must be absolute")
        if self.children_max < 0:
            raise ValueError(f"jail {self.name}: children_max must be >= 0")
        if self.profile == "service" and self.children_max:
            raise ValueError(f"jail {self.name}: a service jail may not have child jails")


@dataclass(frozen=True)
class JailInfo:
    """A running jail as the platform reports it. `jid` is the FreeBSD JID, or on Linux the
    host PID of the jail's init process."""

    name: str
    jid: int
    path: str
    hostname: str
    extra: Mapping[str, str] = field(default_factory=dict)


class Jails(ABC):
    """Jail operations of one host platform. Methods may raise `JailError` or `CommandFailed`;
    `remove` is idempotent and verifies the jail is gone. `exec` is the same everywhere: the
    platform's `exec_cmd` (jexec, or nsenter) run through the runner."""

    runner: Runner
    capabilities: frozenset[str]

    @abstractmethod
    async def start(self, spec: JailSpec) -> JailInfo: ...

    @abstractmethod
    async def remove(self, name: str, timeout: float | None = None) -> None: ...

    @abstractmethod
    async def unmount_below(self, path: str) -> list[str]:
        """Unmount everything mounted below `path` on the host, deepest first (what a removed
        jail left: its devfs, nullfs, a build jail's tmpfs...); returns what was unmounted."""

    @abstractmethod
    async def list(self) -> list[JailInfo]: ...

    @abstractmethod
    def exec_cmd(
        self,
        name: str,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Cmd: ...

    async def exec(
        self,
        name: str,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run a command in a running jail; the Result comes back whatever its exit code."""
        result: Result = await self.runner.run(self.exec_cmd(name, argv, user, env, timeout, stdin))
        return result
