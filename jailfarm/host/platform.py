"""Choosing the host platform, once, where objects are wired together (shell wiring).

`make_platform` reads `farm.platform` and returns the same operations for both platforms:
`zfs` (one argv for FreeBSD and zfs-fuse) and `jails` (jail(8) or namespace jails). Nothing
below this point asks which OS it runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jailfarm.host.zfs import Zfs
from jailfarm.runner import SshRunner

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig
    from jailfarm.host.base import Jails
    from jailfarm.runner import Runner


@dataclass(frozen=True)
class HostPlatform:
    name: str
    zfs: Zfs
    jails: Jails
    run_dir: str

    @property
    def capabilities(self) -> frozenset[str]:
        return self.jails.capabilities


def host_runner(cfg: FarmConfig, host_name: str, local: Runner) -> Runner:
    """The runner for one jail host of the farm: `local` itself, or ssh through it."""
    for host in cfg.jail_hosts:
        if host.name == host_name:
            if host.ssh is None:
                return local
            return SshRunner(local, host.ssh, user=host.ssh_user, port=host.ssh_port)
    raise KeyError(f"no jail host named {host_name!r} in the farm config")


def host_platforms(cfg: FarmConfig, local: Runner, clock: Any = None) -> dict[str, HostPlatform]:
    """One `HostPlatform` per jail host, keyed by the host's name."""
    return {
        h.name: make_platform(cfg, host_runner(cfg, h.name, local), clock) for h in cfg.jail_hosts
    }


def make_platform(cfg: FarmConfig, runner: Runner, clock: Any = None) -> HostPlatform:
    run_dir = os.path.join(cfg.state_dir, "run")
    zfs = Zfs(runner, cfg.zfs.root, clock=clock)
    jails: Jails
    if cfg.platform == "freebsd":
        from jailfarm.host.freebsd import FreeBsdJails

        jails = FreeBsdJails(runner, conf_dir=os.path.join(run_dir, "jails"), prefix=cfg.prefix)
    else:
        from jailfarm.host.linux import LinuxJails

        jails = LinuxJails(runner, state_dir=os.path.join(run_dir, "jails"))
    return HostPlatform(cfg.platform, zfs, jails, run_dir)
