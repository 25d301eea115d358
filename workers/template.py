"""Worker templates on every jail host: reading the state, building, listing, promoting,
rolling back and pruning generations, and `jailfarm template` (shell). The Linux dev host's
template is written with file operations on the dataset's mountpoint, FreeBSD's with commands.

Rule: a build snapshots the next generation and makes it current only when there is no usable
current generation; later generations go live with `promote`, after testing (`jailfarm smoke
--template DS@gN`), because every mistake in a template spreads to every clone (jails spec
c.67).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

from jailfarm.cmd import Cmd
from jailfarm.errors import CommandFailed, FarmError, UnsafeOperation
from jailfarm.host import thinroot
from jailfarm.host.platform import host_platforms
from jailfarm.host.zfs import MISSING, get_cmd, parse_get
from jailfarm.host.zfsfuse import NOT_RUNNING
from jailfarm.names import snapshot_name
from jailfarm.poudriere.conf import render_poudriere_conf, worker_conf
from jailfarm.workers.errors import TemplateError
from jailfarm.workers.layout import CURRENT, templates_dataset
from jailfarm.workers.templatefill import (
    check_mountpoint,
    is_secret,
    parse_uname,
    plan_freebsd_cleanup,
    plan_freebsd_fill,
    secret_clean_cmd,
)
from jailfarm.workers.templateplan import (
    STATE_PROPERTIES,
    PointerMove,
    TemplateState,
    current_generation,
    format_state,
    parse_state,
    plan_promote,
    plan_prune,
    plan_rollback,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from jailfarm.config import FarmConfig
    from jailfarm.host.platform import HostPlatform
    from jailfarm.host.zfs import Zfs
    from jailfarm.runner import Runner

    Say = Callable[[str], None]

log = Logger()

ACTIONS = ("build", "list", "promote", "rollback")
# zfs destroy's answer when a snapshot gained a clone after we looked (destroy_cmd never uses -R).
DEPENDENT_CLONES = "has dependent clones"


# ---- the Linux dev host's tree --------------------------------------------------------------


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


# ---- operations -----------------------------------------------------------------------------


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
    return current_generation(await read_state(zfs, cfg, clones=False)).snapshot


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
        render_poudriere_conf(worker_conf(cfg)),
        [(j.name, j.version, j.poudriere_arch) for j in cfg.poudriere_jails],
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
