"""What a worker jail is made of: lease, jail spec, buildbot.tac, commands (pure).

The worker runs as the unprivileged `buildbot` user (uid 1001 in every template, jails spec
j.154) from `/home/buildbot/worker`; its buildbot.tac holds the per-instance random password,
so it is written from stdin (never an argv), mode 0600, in a 0700 directory.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from jailfarm.cmd import Cmd, Secret, program
from jailfarm.host.base import WORKER_UID, JailSpec, Mount
from jailfarm.poudriere.conf import WORKER_ETC, worker_data
from jailfarm.workers import layout

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig

WORKER_DIR = "/home/buildbot/worker"

_TAC = """\
# Written by jailfarm for one worker jail; removed with the jail.
import os

from buildbot_worker.bot import Worker
from twisted.application import service
from twisted.python.log import FileLogObserver, ILogObserver
from twisted.python.logfile import LogFile

basedir = {basedir!r}
# Tools the farm's steps run by name (poudriere on the dev host) come first on the PATH.
for tools in {tool_dirs!r}:
    os.environ["PATH"] = tools + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
# buildbot-worker's isWorkerDir() looks for exactly this line.
application = service.Application('buildbot-worker')
logfile = LogFile.fromFullPath(os.path.join(basedir, "twistd.log"), rotateLength=10000000,
                               maxRotatedFiles=3)
application.setComponent(ILogObserver, FileLogObserver(logfile).emit)
s = Worker({host!r}, {port!r}, {name!r}, {password!r}, basedir, 600, umask=0o022,
           maxdelay=30, allow_shutdown="signal", maxRetries=None, protocol="pb")
s.setServiceParent(application)
"""


def lease(cfg: FarmConfig, name: str, host: str, buildid: int | None, now: float) -> dict[str, str]:
    """The lease properties a worker clone carries (ARCHITECTURE.md "Leases")."""
    return {
        layout.OWNER: cfg.name,
        layout.BUILD: str(buildid) if buildid is not None else "none",
        layout.EXPIRES: str(int(now) + cfg.workers.lease),
        layout.WORKER: name,
        layout.HOST: host,
    }


def below_reserve(cfg: FarmConfig, host: str, available: int) -> str:
    mib = 1 << 20
    return (
        f"space guard: pool {cfg.zfs.pool} on jail host {host} has {available // mib} MiB "
        f"available, below the reserve of {cfg.zfs.reserve // mib} MiB (zfs.reserve); no clone "
        "was made. Free space in the pool (clones grow) or lower the reserve; the build is "
        "retried."
    )


def worker_tac(
    master_host: str, port: int, name: str, password: str, tool_dirs: tuple[str, ...] = ()
) -> Secret:
    """The worker's buildbot.tac; the whole text is a `Secret` since it holds the password.
    `tool_dirs` go first on the worker's PATH (and so on its build steps')."""
    plain = password.reveal() if isinstance(password, Secret) else password
    return Secret(
        _TAC.format(
            basedir=WORKER_DIR,
            host=master_host,
            port=port,
            name=name,
            password=plain,
            tool_dirs=tool_dirs,
        )
    )


def tool_dirs(platform: str) -> tuple[str, ...]:
    """On the dev host, the venv's bin (bind-mounted read-only into every jail), where
    install.sh puts `poudriere` (our builder); FreeBSD workers use the pkg-installed tools."""
    if platform == "freebsd":
        return ()
    return (os.path.dirname(sys.executable),)


def write_worker_files(root: str, tac: Secret) -> list[Cmd]:
    """Commands, run on the jail host, that put buildbot.tac into the clone at `root`."""
    directory = f"{root}{WORKER_DIR}"
    tac_path = f"{directory}/buildbot.tac"
    ids = str(WORKER_UID)
    return [
        Cmd(("install", "-d", "-o", ids, "-g", ids, "-m", "0700", directory)),
        # dd writes stdin to the file and prints nothing (status=none), so the password is
        # neither in an argv nor in captured output.
        Cmd(("dd", f"of={tac_path}", "status=none"), stdin=tac.reveal().encode()),
        Cmd(("chmod", "0600", tac_path)),
        Cmd(("chown", f"{ids}:{ids}", tac_path)),
    ]


def packages_inside(platform: str) -> str:
    """Where the jail host's packages dataset appears in a worker jail: poudriere's
    `${POUDRIERE_DATA}/packages` (poudriere.md §4.3)."""
    return f"{worker_data(platform)}/packages"


def packages_dirs(platform: str, root: str, host_path: str) -> list[Cmd]:
    """Before the jail starts: the mount point in the clone. On the dev host the builder runs
    as the worker user, so it owns poudriere's directories and the packages dataset."""
    inside = f"{root}{packages_inside(platform)}"
    if platform != "linux-dev":  # poudriere runs as root
        return [Cmd(("install", "-d", "-m", "0755", inside))]
    ids = str(WORKER_UID)
    dirs = (f"{root}{WORKER_ETC}", f"{root}{worker_data(platform)}", inside)
    return [
        Cmd(("chown", f"{ids}:{ids}", host_path)),
        Cmd(("install", "-d", "-o", ids, "-g", ids, "-m", "0755", *dirs)),
    ]


def jail_spec(
    cfg: FarmConfig, name: str, root: str, packages: str | None = None, platform: str = ""
) -> JailSpec:
    """The worker jail: poudriere-capable profile with room for its build jails; with
    `packages`, the jail host's packages dataset mounted read-write at poudriere's place."""
    rctl: tuple[str, ...] = ()
    if cfg.workers.memory_limit:
        rctl = (f"vmemoryuse:deny={cfg.workers.memory_limit}",)
    return JailSpec(
        name=name,
        path=root,
        mounts=tree_mounts(cfg)
        + (
            (Mount(packages, packages_inside(platform or cfg.platform), read_only=False),)
            if packages
            else ()
        ),
        hostname=f"{name}.{cfg.name}",
        profile="worker",
        children_max=cfg.workers.children_max,
        private_network=cfg.workers.private_network,
        devfs_ruleset=cfg.workers.devfs_ruleset or 4,
        rctl=rctl,
    )


def local_tree_path(url: str) -> str | None:
    """The directory of a ports tree that lives on the jail host (a file:// URL or a path)."""
    if url.startswith("file://"):
        return url.removeprefix("file://")
    return url if url.startswith("/") else None


def tree_mounts(cfg: FarmConfig) -> tuple[Mount, ...]:
    """Ports trees on the jail host, shown read-only at the same path inside worker jails so
    the build's checkout step can clone them."""
    paths = sorted({p for t in cfg.trees if (p := local_tree_path(t.url))})
    return tuple(Mount(p, p, read_only=True) for p in paths)


def _worker_bin(platform: str) -> str:
    if platform == "freebsd":
        return "/usr/local/bin/buildbot-worker"  # py311-buildbot-worker
    # linux-dev: the project's venv is bind-mounted read-only at the same path in every jail.
    return program("buildbot-worker")


def start_worker_argv(platform: str) -> list[str]:
    """Start buildbot-worker in the background (twistd daemonizes; pidfile in WORKER_DIR)."""
    return [_worker_bin(platform), "start", "--quiet", WORKER_DIR]


def worker_alive_argv() -> list[str]:
    return ["sh", "-c", f'kill -0 "$(cat {WORKER_DIR}/twistd.pid)"']


def worker_log_argv() -> list[str]:
    return ["tail", "-n", "30", f"{WORKER_DIR}/twistd.log"]
