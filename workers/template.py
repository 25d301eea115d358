"""Worker templates: the generations `@gN` of `<root>/templates/worker`, the `jailfarm:current`
pointer new workers are cloned from, and building, listing, promoting, rolling back and pruning
them on every jail host.

The state parser, the planners, the secret rules and the FreeBSD command plan are pure;
`clear_tree`, `remove_secrets` and the `async` functions are the shell (the Linux dev host's
template is written with file operations on the dataset's mountpoint, FreeBSD's with commands).

Rules: a build snapshots the next generation and makes it current only when there is no usable
current generation; later generations go live with `promote`, after testing (`jailfarm smoke
--template DS@gN`), because every mistake in a template spreads to every clone (jails spec
c.67). A generation that is current or has live clones is never destroyed (gotcha 22).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

from jailfarm.cmd import Cmd
from jailfarm.errors import CommandFailed, FarmError, ParseError, UnsafeOperation
from jailfarm.host import thinroot
from jailfarm.host.platform import host_platforms
from jailfarm.host.zfs import MISSING, get_cmd, parse_get
from jailfarm.host.zfsfuse import NOT_RUNNING
from jailfarm.names import DATASET, snapshot_name
from jailfarm.workers.layout import CURRENT, generation_number, generation_tag, templates_dataset

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from jailfarm.config import FarmConfig
    from jailfarm.host.platform import HostPlatform
    from jailfarm.host.zfs import Zfs
    from jailfarm.runner import Runner

    Say = Callable[[str], None]

log = Logger()

ACTIONS = ("build", "list", "promote", "rollback")
STATE_PROPERTIES = ("type", "origin", "creation", CURRENT)
# zfs destroy's answer when a snapshot gained a clone after we looked (destroy_cmd never uses -R).
DEPENDENT_CLONES = "has dependent clones"
BUILD_HINT = "run `jailfarm template build`"
PROMOTE_HINT = "run `jailfarm template promote [GEN]`"


class TemplateError(FarmError):
    """A template operation cannot proceed: nothing built yet, unknown generation, nothing to
    roll back to, pool missing. The message says what to run."""


# ---- state (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """One template generation: snapshot `<template>@gN`, its creation time (epoch seconds)
    and the datasets cloned from it."""

    number: int
    snapshot: str
    created: int
    clones: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return generation_tag(self.number)


@dataclass(frozen=True)
class TemplateState:
    """The template dataset of one jail host: whether it exists, the generations (oldest
    first) and the `jailfarm:current` tag (None if unset; it may name a vanished snapshot)."""

    dataset: str
    exists: bool = False
    current: str | None = None
    generations: tuple[Generation, ...] = ()

    def find(self, tag: str) -> Generation | None:
        return next((g for g in self.generations if g.tag == tag), None)

    @property
    def live(self) -> Generation | None:
        """The current generation if the pointer names one that exists."""
        return self.find(self.current) if self.current else None

    @property
    def next_tag(self) -> str:
        # Past the pointer too, so a tag the pointer still names is never reused.
        numbers = [g.number for g in self.generations]
        numbers.append(generation_number(self.current or "") or 0)
        return generation_tag(max(numbers) + 1)


def parse_state(dataset: str, rows: Mapping[str, Mapping[str, str]]) -> TemplateState:
    """Build the state from `zfs get -H -p -o name,property,value` rows of STATE_PROPERTIES,
    read recursively from the farm root (so clones below `<root>/jails` are seen) or at depth 1
    from the template (no clones). Snapshots not named `gN` are not generations. Snapshots
    inherit `jailfarm:current`, so only the dataset's own row counts."""
    DATASET.check(dataset)
    if dataset not in rows:
        return TemplateState(dataset)
    clones: dict[str, list[str]] = {}
    for name, props in rows.items():
        origin = props.get("origin", "-")
        if origin not in ("-", ""):
            clones.setdefault(origin, []).append(name)
    generations = []
    for name, props in rows.items():
        base, at, tag = name.partition("@")
        number = generation_number(tag) if at and base == dataset else None
        if number is not None:
            created = _created(name, props)
            generations.append(
                Generation(
                    number, name, created, tuple(sorted(clones[name])) if name in clones else ()
                )
            )
    current = rows[dataset].get(CURRENT, "-")
    return TemplateState(
        dataset,
        exists=True,
        current=None if current in ("-", "") else current,
        generations=tuple(sorted(generations, key=lambda g: g.number)),
    )


def _created(name: str, props: Mapping[str, str]) -> int:
    value = props.get("creation", "-")
    if not value.isdigit():
        raise ParseError("zfs get", 0, f"{name}\tcreation\t{value}", "expected epoch seconds")
    return int(value)


# ---- planners (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class PointerMove:
    """Moving `jailfarm:current` on `dataset` from `old` to `new` (no-op when equal)."""

    dataset: str
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def describe(self) -> str:
        if not self.changed:
            return f"{self.new} is already current"
        return f"current: {self.old or 'none'} -> {self.new}"


def _need_generations(state: TemplateState) -> None:
    if not state.generations:
        raise TemplateError(f"no worker template built yet ({state.dataset}): {BUILD_HINT}")


def _known(state: TemplateState) -> str:
    return ", ".join(g.tag for g in state.generations)


def plan_promote(state: TemplateState, tag: str | None = None) -> PointerMove:
    """Point `current` at generation `tag` ("gN" or "N"), or at the newest when None."""
    _need_generations(state)
    if tag is None:
        target = state.generations[-1]
    else:
        number = generation_number(tag) or generation_number(f"g{tag}")
        found = state.find(generation_tag(number)) if number else None
        if found is None:
            raise TemplateError(
                f"unknown template generation {tag!r}; {state.dataset} has {_known(state)}"
            )
        target = found
    return PointerMove(state.dataset, state.current, target.tag)


def plan_rollback(state: TemplateState) -> PointerMove:
    """Point `current` at the newest generation older than the current one."""
    _need_generations(state)
    live = state.live
    if live is None:
        what = f"{state.current}, which no longer exists" if state.current else "nothing"
        raise TemplateError(
            f"cannot roll back: current points to {what} ({state.dataset}); {PROMOTE_HINT}"
        )
    older = [g for g in state.generations if g.number < live.number]
    if not older:
        raise TemplateError(
            f"nothing to roll back to: {live.tag} is the oldest generation of {state.dataset}"
        )
    return PointerMove(state.dataset, state.current, older[-1].tag)


def plan_prune(state: TemplateState, keep: int) -> tuple[str, ...]:
    """Snapshots to destroy, oldest first: every generation except the newest `keep`, the
    current one and any with live clones (a clone depends on its origin; jails spec c.65)."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    newest = {g.number for g in state.generations[-keep:]} if keep else set()
    return tuple(
        g.snapshot
        for g in state.generations
        if g.number not in newest and g.tag != state.current and not g.clones
    )


def format_state(state: TemplateState) -> list[str]:
    """`list` lines, newest first: `g3  2026-11-23 23:40 UTC  current  2 clones`."""
    if not state.generations:
        return [f"no worker template built yet ({state.dataset}): {BUILD_HINT}"]
    lines = []
    for g in reversed(state.generations):
        when = datetime.fromtimestamp(g.created, UTC).strftime("%Y-%m-%d %H:%M UTC")
        mark = "current" if g.tag == state.current else "-"
        count = f"{len(g.clones)} clone{'' if len(g.clones) == 1 else 's'}"
        lines.append(f"{g.tag:<5} {when}  {mark:<7}  {count}")
    if state.current is None:
        lines.append(f"no current generation: {PROMOTE_HINT}")
    elif state.live is None:
        lines.append(f"current points to {state.current}, which no longer exists: {PROMOTE_HINT}")
    return lines


# ---- secrets (pure rules) -------------------------------------------------------------------

# What must not reach a clone (jails spec c.68, gotcha 23; ARCHITECTURE "Secrets"): SSH host
# keys, known_hosts and client keys, the worker's buildbot.tac (it holds the worker password),
# password files and any `*.key` (a signing key). Paths are relative to the template root;
# `*` also matches '/', in fnmatch and in find(1)'s -path alike.
SECRET_PATHS = (
    "etc/ssh/*key*",
    "root/.ssh/known_hosts",
    "root/.ssh/id_*",
    "home/*/.ssh/known_hosts",
    "home/*/.ssh/id_*",
)
SECRET_NAMES = ("buildbot.tac", "*.key", "*.password")


def is_secret(relpath: str) -> bool:
    """Whether a file at `relpath` (relative to a template root) must be removed."""
    name = posixpath.basename(relpath)
    return any(fnmatch.fnmatchcase(relpath, p) for p in SECRET_PATHS) or any(
        fnmatch.fnmatchcase(name, n) for n in SECRET_NAMES
    )


_MOUNTPOINT = re.compile(r"(/[A-Za-z0-9_.:-]+)+")


def check_mountpoint(mountpoint: str | None, root_mountpoint: str | None) -> str:
    """The template's mountpoint, if it is a plain absolute path strictly below the farm
    root's mountpoint; anything else would let a clean step empty a host directory."""
    ok = (
        mountpoint is not None
        and root_mountpoint is not None
        and _MOUNTPOINT.fullmatch(mountpoint) is not None
        and posixpath.normpath(mountpoint) == mountpoint
        and mountpoint.startswith(root_mountpoint.rstrip("/") + "/")
    )
    if not ok or mountpoint is None:
        raise UnsafeOperation(
            f"refusing to write the template at mountpoint {mountpoint!r}: expected a plain "
            f"path below the farm root's mountpoint {root_mountpoint!r}"
        )
    return mountpoint


def secret_clean_cmd(mountpoint: str) -> Cmd:
    """find(1) that prints and deletes every secret below `mountpoint`, on one filesystem
    (`-x`), never a directory, never following symlinks (find's default -P)."""
    expr: list[str] = []
    for p in SECRET_PATHS:
        expr += ["-o", "-path", f"{mountpoint}/{p}"]
    for n in SECRET_NAMES:
        expr += ["-o", "-name", n]
    return Cmd(
        ("find", "-x", mountpoint, "(", *expr[1:], ")", "!", "-type", "d", "-print", "-delete")
    )


# ---- the FreeBSD build plan (pure) ----------------------------------------------------------

MIRROR = "https://download.FreeBSD.org"
_RELEASE = re.compile(
    r"([0-9]+\.[0-9]+-(RELEASE|STABLE|CURRENT|PRERELEASE|ALPHA[0-9]+|BETA[0-9]+|"
    r"RC[0-9]+))(-p[0-9]+)?"
)
_MACHINE = re.compile(r"[a-z0-9_]{1,16}")


def parse_uname(text: str) -> tuple[str, str]:
    """`uname -m -p` on FreeBSD: hw.machine and hw.machine_arch, e.g. ('arm64', 'aarch64')."""
    words = text.split()
    if len(words) != 2 or not all(_MACHINE.fullmatch(w) for w in words):
        raise ParseError("uname -m -p", 1, text.strip(), "expected MACHINE MACHINE_ARCH")
    return words[0], words[1]


def base_url(release: str, machine: str, machine_arch: str) -> str:
    """base.txz of `release` on the FreeBSD mirror. A patch level (-pN) is not a directory
    there: its base is X.Y-RELEASE. STABLE/CURRENT/PRERELEASE builds live in snapshots/."""
    m = _RELEASE.fullmatch(release)
    if m is None or not _MACHINE.fullmatch(machine) or not _MACHINE.fullmatch(machine_arch):
        raise ValueError(f"cannot name base.txz for {release!r} on {machine}/{machine_arch}")
    tree = "snapshots" if m.group(2) in ("STABLE", "CURRENT", "PRERELEASE") else "releases"
    return f"{MIRROR}/{tree}/{machine}/{machine_arch}/{m.group(1)}/base.txz"


def plan_freebsd_fill(
    mountpoint: str,
    release: str,
    machine: str,
    machine_arch: str,
    packages: Iterable[str],
    cache_dir: str,
) -> list[Cmd]:
    """Commands that turn the (mounted, writable) template dataset into a fresh worker tree.

    The arch is the jail host's own (`uname -m -p`), not a poudriere jail's: the worker jail
    runs natively on the host kernel, and poudriere cross-builds other arches inside it.
    """
    m = _RELEASE.fullmatch(release)
    if m is None or not _MOUNTPOINT.fullmatch(mountpoint) or not _MOUNTPOINT.fullmatch(cache_dir):
        raise ValueError(f"bad release {release!r}, mountpoint or cache dir {cache_dir!r}")
    tarball = f"{cache_dir}/{m.group(1)}-{machine_arch}-base.txz"
    pkg_env = {"ASSUME_ALWAYS_YES": "yes"}
    pkgs = tuple(packages)
    user, home = thinroot.WORKER_USER, f"/home/{thinroot.WORKER_USER}"
    pkg_steps = [
        # pkg -c runs the host's pkg chrooted into the tree, which needs /dev/null there (f.117,
        # pkg issue #1763); -c rather than -r/--rootdir, so package scripts run as in the jail.
        Cmd(("mount", "-t", "devfs", "devfs", f"{mountpoint}/dev")),
        Cmd(("pkg", "-c", mountpoint, "install", "-y", *pkgs), env=pkg_env, timeout=3600),
        Cmd(("pkg", "-c", mountpoint, "clean", "-a", "-y"), env=pkg_env),
        Cmd(("umount", f"{mountpoint}/dev")),
    ]
    # fmt: off
    return [
        # Install media kept apart from the jail, in a release-named file (a.1 #4).
        Cmd(("mkdir", "-p", cache_dir)),
        # fetch(1) -m: mirror mode, no download when the cached file matches the remote one.
        Cmd(("fetch", "-m", "-o", tarball, base_url(release, machine, machine_arch)),
            timeout=3600),
        # Rebuild, never upgrade (c.64, c.70): empty the tree first. base.txz sets schg on
        # some files (gotcha 52); -x keeps both on this filesystem, and find skips .zfs.
        Cmd(("chflags", "-R", "-x", "noschg,nosunlnk", mountpoint)),
        Cmd(("find", "-x", mountpoint, "-mindepth", "1", "-maxdepth", "1", "!", "-name", ".zfs",
             "-exec", "rm", "-rf", "-x", "{}", "+")),
        Cmd(("tar", "-xpf", tarball, "-C", mountpoint), timeout=1800),
        # A new jail has no resolver, no timezone and no fstab (a.1 #5, gotcha 35, 48).
        Cmd(("cp", "/etc/resolv.conf", f"{mountpoint}/etc/resolv.conf")),
        Cmd(("cp", "/etc/localtime", f"{mountpoint}/etc/localtime")),
        Cmd(("touch", f"{mountpoint}/etc/fstab")),
        *(pkg_steps if pkgs else []),
        # The unprivileged worker user with the Linux dev host's uid (f.116, item 7); no
        # password login for it or for root: the host enters a jail with jexec (c.68).
        Cmd(("pw", "-R", mountpoint, "useradd", "-n", user, "-u", str(thinroot.WORKER_UID),
             "-c", "buildbot worker", "-d", home, "-m", "-s", "/bin/sh", "-w", "no")),
        Cmd(("pw", "-R", mountpoint, "usermod", "-n", "root", "-w", "no")),
        # No mail, no cron (no periodic storms across many workers, gotcha 45), syslog not
        # listening on the network, /tmp cleared at start.
        Cmd(("sysrc", "-R", mountpoint, "sendmail_enable=NONE", "cron_enable=NO",
             "syslogd_flags=-ss", "clear_tmp_enable=YES")),
        # Last, after everything that could add one (c.68, gotcha 23).
        secret_clean_cmd(mountpoint),
    ]
    # fmt: on


def plan_freebsd_cleanup(mountpoint: str) -> list[Cmd]:
    """After a failed fill: the devfs mounted for pkg must not stay (run, answers ignored)."""
    return [Cmd(("umount", "-f", f"{mountpoint}/dev"))]


# ---- the Linux dev host's tree (shell) ------------------------------------------------------


def _mounts_below(path: str) -> list[str]:
    """Mount points strictly below `path` in this process's mount namespace."""
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split()[4]) for line in f]
    return sorted(p for p in points if p.startswith(path.rstrip("/") + "/"))


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (proc(5)).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def clear_tree(root: Path) -> None:
    """Empty a template mountpoint for a rebuild. Refuses (`UnsafeOperation`) unless `root` is
    an absolute, symlink-free mount point with nothing mounted below it; never follows a
    symlink (shutil.rmtree does not, and unlinks links themselves); leaves `.zfs` alone."""
    path = os.fspath(root)
    if not os.path.isabs(path) or os.path.realpath(path) != path or path == "/":
        raise UnsafeOperation(f"refusing to empty {path!r}: not a canonical absolute path")
    if not os.path.ismount(path):
        raise UnsafeOperation(f"refusing to empty {path}: it is not a mount point")
    nested = _mounts_below(path)
    if nested:
        raise UnsafeOperation(f"refusing to empty {path}: {nested[0]} is mounted inside it")
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name == ".zfs":
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def remove_secrets(root: Path) -> list[str]:
    """Delete every file or symlink below `root` that `is_secret`; return their relative paths.
    os.walk does not descend into symlinked directories."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".zfs"]
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in (*filenames, *links):
            rel = posixpath.normpath(posixpath.join(rel_dir, name))
            if is_secret(rel):
                os.unlink(os.path.join(dirpath, name))
                removed.append(rel)
    return sorted(removed)


def _fill_linux(root: Path, say: Say, customize: Callable[[Path], None] | None) -> None:
    # The thin root is the whole template: the host's /usr, /bin, /lib... are bind-mounted
    # read-only when a jail starts (linux-dev-host.md).
    try:
        clear_tree(root)
        thinroot.populate(root)
        if customize is not None:
            customize(root)
        removed = remove_secrets(root)
    except OSError as e:
        raise TemplateError(f"writing the template at {root} failed: {e}") from e
    if removed:
        say(f"removed {len(removed)} secret file(s): {', '.join(removed)}")


# ---- operations (shell) ---------------------------------------------------------------------


async def read_state(zfs: Zfs, cfg: FarmConfig, clones: bool = True) -> TemplateState:
    """The template state of the host `zfs` talks to; with `clones`, one recursive read of the
    farm root (clones live below `<root>/jails`), else only the template and its snapshots."""
    dataset = templates_dataset(cfg)
    if clones:
        cmd = get_cmd([cfg.zfs.root], STATE_PROPERTIES, recursive=True)
    else:
        cmd = get_cmd([dataset], STATE_PROPERTIES, depth=1)
    result = await zfs.runner.run(cmd)
    if not result.ok and MISSING in result.err:
        return TemplateState(dataset)
    return parse_state(dataset, parse_get(result.check().out))


async def current_snapshot(zfs: Zfs, cfg: FarmConfig) -> str:
    """`<template>@<current tag>`, the snapshot new workers are cloned from. Raises
    `TemplateError` saying to build or promote when there is none, or it no longer exists."""
    state = await read_state(zfs, cfg, clones=False)
    _need_generations(state)
    live = state.live
    if live is None:
        what = f"points to {state.current}, which no longer exists" if state.current else "is unset"
        raise TemplateError(f"current worker template of {state.dataset} {what}: {PROMOTE_HINT}")
    return live.snapshot


async def list_templates(zfs: Zfs, cfg: FarmConfig) -> list[str]:
    """One line per generation, newest first (see `format_state`)."""
    return format_state(await read_state(zfs, cfg))


async def _move(zfs: Zfs, move: PointerMove, say: Say) -> PointerMove:
    if move.changed:
        await zfs.set(move.dataset, CURRENT, move.new)
        log.info("{ds}: current {old} -> {new}", ds=move.dataset, old=move.old, new=move.new)
    say(move.describe())
    return move


async def promote_template(zfs: Zfs, cfg: FarmConfig, tag: str | None, say: Say) -> PointerMove:
    """Make generation `tag` (None: the newest) current; says `current: old -> new`."""
    return await _move(zfs, plan_promote(await read_state(zfs, cfg, clones=False), tag), say)


async def rollback_template(zfs: Zfs, cfg: FarmConfig, say: Say) -> PointerMove:
    """Make the generation before the current one current again."""
    return await _move(zfs, plan_rollback(await read_state(zfs, cfg, clones=False)), say)


async def prune_templates(zfs: Zfs, cfg: FarmConfig, keep: int, say: Say) -> list[str]:
    """Destroy the generations `plan_prune` gives up; return the snapshots destroyed."""
    destroyed = []
    for snapshot in plan_prune(await read_state(zfs, cfg), keep):
        try:
            await zfs.destroy(snapshot)
        except CommandFailed as e:
            # Named race: a worker cloned this generation after the state was read. ZFS
            # refuses (no -R), the clone is safe, and the generation simply stays.
            if DEPENDENT_CLONES not in e.stderr_tail:
                raise
            say(f"kept {snapshot}: it was cloned while pruning")
            continue
        log.info("pruned {snapshot}", snapshot=snapshot)
        say(f"pruned {snapshot}")
        destroyed.append(snapshot)
    return destroyed


async def _mountpoint(zfs: Zfs, cfg: FarmConfig, dataset: str) -> str:
    info = await zfs.info(dataset, ())
    root = await zfs.info(cfg.zfs.root, ())
    if info is None or not info.mounted:
        raise TemplateError(f"{dataset} is not mounted; mount it with `zfs mount {dataset}`")
    return check_mountpoint(info.mountpoint, root.mountpoint if root else None)


async def _fill_freebsd(platform: HostPlatform, cfg: FarmConfig, mountpoint: str, say: Say) -> None:
    if cfg.template.release is None:
        raise TemplateError(
            "template.release is not set in farm.toml; a FreeBSD template "
            "needs a release such as '14.1-RELEASE'"
        )
    runner = platform.zfs.runner
    arch = (await runner.run(Cmd(("uname", "-m", "-p")))).check().out
    plan = plan_freebsd_fill(
        mountpoint,
        cfg.template.release,
        *parse_uname(arch),
        cfg.template.packages,
        f"{cfg.state_dir}/cache/dist",
    )
    clean = secret_clean_cmd(mountpoint)
    try:
        for cmd in plan:
            say(f"run: {cmd}")
            result = (await runner.run(cmd)).check()
            if cmd == clean and result.out.strip():
                say(f"removed secret files: {' '.join(result.out.split())}")
    except Exception:
        for cmd in plan_freebsd_cleanup(mountpoint):
            await runner.run(cmd)  # best effort; the failure above is what the caller sees
        raise


async def build_template(
    platform: HostPlatform,
    cfg: FarmConfig,
    say: Say,
    promote: bool | None = None,
    customize: Callable[[Path], None] | None = None,
) -> str:
    """Build the next generation on one jail host and return its snapshot name.

    Creates the template dataset if missing, fills it (linux-dev: a fresh thin root written
    locally, so only for a local host; FreeBSD: `plan_freebsd_fill` through the host's
    runner), removes secrets, sets it read-only (c.67; clones do not inherit it, their parent
    is `<root>/jails`) and snapshots `@g<N+1>`. `promote` None makes the new generation
    current only when there is no usable current one; True/False force it. `customize`
    (linux-dev) adds site files before the secret clean-up. Then prunes to
    `template.keep`.
    """
    zfs, dataset = platform.zfs, templates_dataset(cfg)
    state = await read_state(zfs, cfg, clones=False)
    if not state.exists:
        await zfs.create(dataset, parents=True)
        say(f"created {dataset}")
    mountpoint = await _mountpoint(zfs, cfg, dataset)
    await zfs.set(dataset, "readonly", "off")
    if platform.name == "freebsd":
        await _fill_freebsd(platform, cfg, mountpoint, say)
    else:
        _fill_linux(Path(mountpoint), say, customize)
    await zfs.set(dataset, "readonly", "on")
    snapshot = snapshot_name(dataset, state.next_tag)
    await zfs.snapshot(snapshot)
    log.info("built {snapshot}", snapshot=snapshot)
    say(f"built {snapshot}")
    if promote or (promote is None and state.live is None):
        await _move(zfs, PointerMove(dataset, state.current, state.next_tag), say)
    else:
        say(
            f"{state.next_tag} is not current; test it, then `jailfarm template promote "
            f"{state.next_tag}`"
        )
    await prune_templates(zfs, cfg, cfg.template.keep, say)
    return snapshot


async def require_pool(runner: Runner, cfg: FarmConfig) -> None:
    """Fail with what to run when the farm's pool is not imported (or zfs-fuse is down)."""
    result = await runner.run(Cmd(("zpool", "list", "-H", "-o", "name", cfg.zfs.pool)))
    if result.ok:
        return
    if cfg.platform == "linux-dev":
        down = " (the zfs-fuse daemon is not running)" if NOT_RUNNING in result.err else ""
        raise TemplateError(f"pool {cfg.zfs.pool} not imported{down}: run `jailfarm up`")
    raise TemplateError(f"pool {cfg.zfs.pool} not imported: `zpool import {cfg.zfs.pool}`")


async def _one_host(
    cfg: FarmConfig, platform: HostPlatform, local: bool, action: str, tag: str | None, say: Say
) -> None:
    await require_pool(platform.zfs.runner, cfg)
    if action == "build":
        if platform.name != "freebsd" and not local:
            raise TemplateError("a linux-dev template is written locally; this host is remote")
        await build_template(platform, cfg, say)
    elif action == "list":
        for line in await list_templates(platform.zfs, cfg):
            say(line)
    elif action == "promote":
        await promote_template(platform.zfs, cfg, tag, say)
    else:
        await rollback_template(platform.zfs, cfg, say)


async def template_command(
    cfg: FarmConfig, runner: Runner, action: str, tag: str | None, say: Say
) -> int:
    """`jailfarm template build|list|promote [GEN]|rollback` on every jail host, each line
    prefixed with the host's name. A host that fails says why and the others still run.
    Returns 0, 1 if any host failed, 2 for bad usage."""
    if action not in ACTIONS or (tag is not None and action != "promote"):
        say(f"usage: jailfarm template {{{'|'.join(ACTIONS)}}} (GEN only with promote)")
        return 2
    local = {h.name: h.is_local for h in cfg.jail_hosts}
    failed = False
    for name, platform in host_platforms(cfg, runner).items():

        def host_say(line: str, name: str = name) -> None:
            say(f"{name}: {line}")

        try:
            await _one_host(cfg, platform, local[name], action, tag, host_say)
        except FarmError as e:
            host_say(f"error: {e}")
            failed = True
    return 1 if failed else 0
