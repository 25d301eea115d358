"""Benchmark: the worker-jail cycle, ZFS clone against a plain recursive copy (not a test).

One cycle = make the jail root + start the jail + `exec true` + remove the jail + drop the root.
The jail root is a `zfs clone` of the template snapshot, or, for the baseline measured in the
same run on the same pool, a `cp -a` of the template into a directory (what a thick jail
costs). The template is the dev host's thin root plus a userland-sized payload (a copy of the
host's Python standard library, thousands of small files) so the copy has realistic work to
do; a real FreeBSD base is several times larger, so the ratio here is a lower bound.

Run as root after `bash install.sh`:  .venv/bin/python bench/jail_cycle.py [--cycles 50]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from jailfarm.cmd import Cmd
from jailfarm.host import zfsfuse
from jailfarm.host.base import JailSpec
from jailfarm.host.linux import LinuxJails
from jailfarm.host.thinroot import populate
from jailfarm.host.zfs import Zfs
from jailfarm.runner import LocalRunner

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PHASES = ("root", "start", "exec", "remove", "drop")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def cycle(
    jails: LinuxJails,
    name: str,
    make_root: Callable[[], Awaitable[str]],
    drop_root: Callable[[], Awaitable[None]],
) -> dict[str, float]:
    times: dict[str, float] = {}
    t = time.perf_counter()
    path = await make_root()
    times["root"] = time.perf_counter() - t
    t = time.perf_counter()
    await jails.start(
        JailSpec(name=name, path=path, hostname=f"{name}.bench", profile="worker", children_max=6)
    )
    times["start"] = time.perf_counter() - t
    t = time.perf_counter()
    (await jails.exec(name, ["true"])).check()
    times["exec"] = time.perf_counter() - t
    t = time.perf_counter()
    await jails.remove(name, timeout=5)
    times["remove"] = time.perf_counter() - t
    t = time.perf_counter()
    await drop_root()
    times["drop"] = time.perf_counter() - t
    times["total"] = sum(times[p] for p in PHASES)
    return times


def report(label: str, runs: list[dict[str, float]]) -> dict[str, float]:
    summary = {}
    cells = []
    for phase in (*PHASES, "total"):
        values = [r[phase] * 1000 for r in runs]
        summary[phase] = statistics.median(values)
        cells.append(f"{phase} {summary[phase]:7.1f}/{pct(values, 0.95):7.1f}")
        summary[phase + "_p95"] = pct(values, 0.95)
    print(f"{label:>6} (ms p50/p95): " + "  ".join(cells))
    return summary


async def main(reactor: Any, args: argparse.Namespace) -> None:
    runner = LocalRunner()
    tag = secrets.token_hex(3)
    pool, work = f"jfb{tag}", Path(tempfile.mkdtemp(prefix="jfbench-"))
    mnt = f"/tmp/jfb{tag}"
    daemon = zfsfuse.ZfsFuse(runner, work / "zfs-fuse.pid")
    await daemon.ensure_running()
    try:
        await zfsfuse.ensure_pool(runner, pool, work / "pool.img", 4 << 30, mnt)
        root = f"{pool}/farm"
        zfs = Zfs(runner, root)
        await zfs.create(f"{root}/tpl", parents=True)
        tpl_dir = Path(mnt) / "farm" / "tpl"
        populate(tpl_dir)
        stdlib = sysconfig.get_paths()["stdlib"]
        shutil.copytree(
            stdlib,
            tpl_dir / "usr-payload",
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "site-packages"),
        )
        files = sum(len(f) for _, _, f in os.walk(tpl_dir))
        size = sum(p.stat().st_size for p in tpl_dir.rglob("*") if p.is_file())
        await zfs.snapshot(f"{root}/tpl@1")
        (await runner.run(Cmd(("zfs", "create", f"{root}/copies")))).check()
        jails = LinuxJails(runner, str(work / "jails"))
        print(
            f"template: {files} files, {size / 1e6:.0f} MB; {args.cycles} cycles each; "
            f"pool {pool} on zfs-fuse"
        )

        async def clone_root() -> str:
            await zfs.clone(f"{root}/tpl@1", f"{root}/c", {"jailfarm:owner": "bench"})
            return f"{mnt}/farm/c"

        async def drop_clone() -> None:
            await zfs.destroy(f"{root}/c")

        copy_dir = f"{mnt}/farm/copies/c"

        async def copy_root() -> str:
            (await runner.run(Cmd(("cp", "-a", str(tpl_dir), copy_dir)))).check()
            return copy_dir

        async def drop_copy() -> None:
            (await runner.run(Cmd(("rm", "-rf", "--one-file-system", copy_dir)))).check()

        clone_runs = [await cycle(jails, "bc", clone_root, drop_clone) for _ in range(args.cycles)]
        copy_runs = [await cycle(jails, "bp", copy_root, drop_copy) for _ in range(args.cycles)]
        clone = report("clone", clone_runs)
        copy = report("copy", copy_runs)
        print(
            f"ratio copy/clone, p50 total: {copy['total'] / clone['total']:.1f}x; "
            f"root only: {copy['root'] / clone['root']:.1f}x; "
            f"p95 total: {copy['total_p95'] / clone['total_p95']:.1f}x"
        )
    finally:
        await zfsfuse.destroy_pool(runner, pool, work / "pool.img")
        await daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(mnt, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/jail_cycle.py: run as root")
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
