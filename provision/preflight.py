"""`jailfarm doctor`: host preflight, one line per requirement with how to fix it.

Pure judges (`judge_linux`, `judge_freebsd`) turn gathered facts into `Check`s; the gatherers
are the only part that looks at the host (through the runner, `shutil.which` and statvfs).
FreeBSD facts follow the spec: kernel modules must be loaded on the host because a jailed
poudriere cannot kldload them (poudriere.md 3.1; jails spec gotcha 19); rctl needs
`kern.racct.enable=1` at boot (jails spec e.103).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from jailfarm.cmd import Cmd, Result
from jailfarm.runner import BASE_ENV

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jailfarm.config import FarmConfig
    from jailfarm.runner import Runner

Status = Literal["ok", "fail", "info"]

FREEBSD_MODULES = ("tmpfs", "nullfs", "procfs", "fdescfs", "linprocfs")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok  ", "fail": "FAIL", "info": "info"}[self.status]
        text = f"[{mark}] {self.name}: {self.detail}"
        return f"{text}\n         fix: {self.fix}" if self.fix and self.status == "fail" else text


def _found(name: str, path: str | None, fix: str) -> Check:
    if path:
        return Check(name, "ok", f"found at {path}")
    return Check(name, "fail", "missing", fix)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


@dataclass(frozen=True)
class LinuxFacts:
    is_root: bool
    binaries: Mapping[str, str | None]
    dev_fuse: bool
    namespaces_ok: bool
    namespaces_error: str
    daemon_answers: bool
    pool_present: bool
    pool_available: int | None
    state_free: int
    buildbot_version: str | None


def judge_linux(cfg: FarmConfig, f: LinuxFacts) -> list[Check]:
    apt = "apt-get install -y {}  (or run `bash install.sh`)"
    checks = [
        Check(
            "root",
            "ok" if f.is_root else "fail",
            "running as root" if f.is_root else "not root",
            "run jailfarm as root: namespaces, mounts and zfs-fuse need it",
        ),
        _found("zfs-fuse", f.binaries.get("zfs-fuse"), apt.format("zfs-fuse")),
        Check(
            "/dev/fuse",
            "ok" if f.dev_fuse else "fail",
            "present" if f.dev_fuse else "missing",
            "load the fuse module: modprobe fuse",
        ),
    ]
    if f.daemon_answers:
        checks.append(Check("zfs-fuse daemon", "ok", "answers on /run/zfs/zfs_socket"))
    else:
        checks.append(
            Check(
                "zfs-fuse daemon",
                "info",
                "not running; `jailfarm up` and `jailfarm smoke` start it",
            )
        )
    checks.append(_pool_check(cfg, f.daemon_answers, f.pool_present, f.pool_available))
    for tool in ("unshare", "nsenter", "setpriv"):
        checks.append(_found(tool, f.binaries.get(tool), apt.format("util-linux")))
    checks.append(
        Check(
            "namespaces",
            "ok" if f.namespaces_ok else "fail",
            "pid, mount, uts and ipc namespaces can be created"
            if f.namespaces_ok
            else f"cannot create namespaces: {f.namespaces_error}",
            "run as root on a kernel that allows namespaces (not in a restricted container)",
        )
    )
    checks.append(_found("nginx", f.binaries.get("nginx"), apt.format("nginx")))
    checks.append(_found("bmake", f.binaries.get("bmake"), apt.format("bmake")))
    # The dev host's bulk builder compiles and patches the demo ports.
    checks.append(_found("cc", f.binaries.get("cc"), apt.format("gcc libc6-dev")))
    checks.append(_found("patch", f.binaries.get("patch"), apt.format("patch")))
    checks.append(_found("git", f.binaries.get("git"), apt.format("git")))
    checks.append(
        Check(
            "buildbot",
            "ok" if f.buildbot_version == "4.3.0" else "fail",
            f"buildbot {f.buildbot_version or 'not installed'} in {sys.prefix}",
            "bash install.sh (installs the pinned set from constraints.txt)",
        )
    )
    need = (cfg.zfs.pool_size or 0) if not f.pool_present else 0
    checks.append(
        Check(
            "free space",
            "ok" if f.state_free >= need else "fail",
            f"{_gib(f.state_free)} free under {cfg.state_dir}"
            + (f"; the pool file may grow to {_gib(need)}" if need else ""),
            f"free space under {cfg.state_dir} or lower zfs.pool_size",
        )
    )
    return checks


def _pool_check(cfg: FarmConfig, answers: bool, present: bool, available: int | None) -> Check:
    pool = cfg.zfs.pool
    if not answers:
        return Check(f"pool {pool}", "info", "unknown until the ZFS daemon runs")
    if not present:
        if cfg.platform == "linux-dev" and cfg.zfs.pool_file:
            return Check(
                f"pool {pool}",
                "info",
                f"not imported; `jailfarm up` creates it in {cfg.zfs.pool_file}",
            )
        return Check(
            f"pool {pool}",
            "fail",
            "not found",
            "create the pool or set zfs.pool to an existing one (zpool list)",
        )
    if available is not None and available < cfg.zfs.reserve:
        return Check(
            f"pool {pool}",
            "fail",
            f"{_gib(available)} available, below the reserve of {_gib(cfg.zfs.reserve)}",
            "free space in the pool or lower zfs.reserve (clones grow: keep ~20% free)",
        )
    shown = f"{_gib(available)} available" if available is not None else "present"
    return Check(f"pool {pool}", "ok", f"{shown} (reserve {_gib(cfg.zfs.reserve)})")


@dataclass(frozen=True)
class FreeBsdFacts:
    is_root: bool
    jailed: str | None  # sysctl security.jail.jailed
    modules: Mapping[str, bool]
    racct: str | None  # sysctl kern.racct.enable
    binaries: Mapping[str, str | None]
    pool_present: bool
    pool_available: int | None
    daemon_answers: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)


def judge_freebsd(cfg: FarmConfig, f: FreeBsdFacts) -> list[Check]:
    checks = [
        Check(
            "root",
            "ok" if f.is_root else "fail",
            "running as root" if f.is_root else "not root",
            "run jailfarm as root (jail(8), zfs(8), poudriere need it)",
        ),
        Check(
            "jail host",
            "ok" if f.jailed == "0" else "fail",
            "not inside a jail" if f.jailed == "0" else f"security.jail.jailed={f.jailed}",
            "run jailfarm's host side on the host, not inside a jail",
        ),
        _found("zfs", f.binaries.get("zfs"), "ZFS is part of FreeBSD base: check PATH"),
        _pool_check(cfg, f.daemon_answers, f.pool_present, f.pool_available),
    ]
    for mod in FREEBSD_MODULES:
        loaded = f.modules.get(mod, False)
        checks.append(
            Check(
                f"kernel module {mod}",
                "ok" if loaded else "fail",
                "loaded" if loaded else "not loaded (a jailed poudriere cannot load it itself)",
                f"kldload {mod} && sysrc kld_list+={mod}",
            )
        )
    checks.append(
        Check(
            "racct",
            "ok" if f.racct == "1" else "fail",
            "kern.racct.enable=1" if f.racct == "1" else f"kern.racct.enable={f.racct or '?'}",
            "echo kern.racct.enable=1 >> /boot/loader.conf and reboot (rctl limits for workers)",
        )
    )
    for tool, fix in (
        ("jail", "part of FreeBSD base"),
        ("jexec", "part of FreeBSD base"),
        ("nginx", "pkg install nginx"),
        ("git", "pkg install git-lite"),
        ("make", "part of FreeBSD base (bmake)"),
    ):
        checks.append(_found(tool, f.binaries.get(tool), fix))
    return checks


# ---------------------------------------------------------------- gathering (shell)


async def _ok(runner: Runner, *argv: str) -> Result:
    result: Result = await runner.run(Cmd(argv, timeout=30))
    return result


async def _pool_facts(runner: Runner, cfg: FarmConfig) -> tuple[bool, bool, int | None]:
    answers = (await _ok(runner, "zpool", "list", "-H", "-o", "name")).ok
    if not answers:
        return False, False, None
    got = await _ok(runner, "zfs", "get", "-H", "-p", "-o", "value", "available", cfg.zfs.pool)
    if not got.ok:
        return True, False, None
    try:
        return True, True, int(got.out.strip())
    except ValueError:
        return True, True, None


def _which(names: tuple[str, ...]) -> dict[str, str | None]:
    return {n: shutil.which(n, path=BASE_ENV["PATH"]) for n in names}


async def gather_linux(runner: Runner, cfg: FarmConfig) -> LinuxFacts:
    names = (
        "zfs-fuse",
        "zfs",
        "zpool",
        "unshare",
        "nsenter",
        "setpriv",
        "nginx",
        "bmake",
        "cc",
        "patch",
        "git",
    )
    ns = await _ok(runner, "unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "true")
    answers, present, available = await _pool_facts(runner, cfg)
    try:
        import buildbot

        version: str | None = buildbot.version
    except ImportError:
        version = None
    probe = cfg.state_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    return LinuxFacts(
        is_root=os.geteuid() == 0,
        binaries=_which(names),
        dev_fuse=os.path.exists("/dev/fuse"),
        namespaces_ok=ns.ok,
        namespaces_error=ns.err.strip(),
        daemon_answers=answers,
        pool_present=present,
        pool_available=available,
        state_free=shutil.disk_usage(probe).free,
        buildbot_version=version,
    )


async def gather_freebsd(runner: Runner, cfg: FarmConfig) -> FreeBsdFacts:
    async def sysctl(name: str) -> str | None:
        r = await _ok(runner, "sysctl", "-n", name)
        return r.out.strip() if r.ok else None

    modules = {m: (await _ok(runner, "kldstat", "-q", "-m", m)).ok for m in FREEBSD_MODULES}
    _, present, available = await _pool_facts(runner, cfg)
    names = ("zfs", "jail", "jexec", "nginx", "git", "make")
    return FreeBsdFacts(
        is_root=os.geteuid() == 0,
        jailed=await sysctl("security.jail.jailed"),
        modules=modules,
        racct=await sysctl("kern.racct.enable"),
        binaries=_which(names),
        pool_present=present,
        pool_available=available,
    )


async def doctor(runner: Runner, cfg: FarmConfig) -> list[Check]:
    if cfg.platform == "freebsd":
        return judge_freebsd(cfg, await gather_freebsd(runner, cfg))
    return judge_linux(cfg, await gather_linux(runner, cfg))
