"""Benchmark: request-to-attached and teardown latency of jail latent workers (not a test).

A whole farm is brought up on this machine (its own pool, free loopback ports) with two
builders that run the same trivial step: one on the jail latent workers, one on a plain,
always-attached local buildbot-worker (the baseline, measured in the same run). For each of
`--builds` forced builds it measures, on one clock:
  attach   = force request sent -> the step starts running on the worker (the step prints the
             time); for a jail this includes clone + jail + buildbot-worker start + attach
  teardown = build complete (polled every 10 ms) -> the worker's clone is gone (jail removed,
             clone destroyed)
and prints p50/p95 with the ratio jail/plain. Target on the dev host: p50 attach < 2 s,
p50 teardown < 1 s.

Run as root after `bash install.sh`:  .venv/bin/python bench/worker_latency.py [--builds 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from jailfarm.cmd import Cmd
from jailfarm.config import load_farm
from jailfarm.provision.devhost import DevHost
from jailfarm.runner import LocalRunner
from jailfarm.workers import layout

ROOT = Path(__file__).resolve().parents[1]
PLAIN_PASSWORD = secrets.token_hex(12)
MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker
from jailfarm.master.config import master_config

here = os.path.dirname(os.path.abspath(__file__))
c = BuildmasterConfig = master_config(os.path.join(here, "farm.toml"))
jail_names = [w.name for w in c["workers"]]
c["workers"].append(worker.Worker("plain", {password!r}, max_builds=1))
for name, workers in (("trivial-jail", jail_names), ("trivial-plain", ["plain"])):
    f = util.BuildFactory()
    f.addStep(steps.ShellCommand(name="trivial", logEnviron=False,
                                 command=["python3", "-c", "import time; print(time.time())"]))
    c["builders"].append(util.BuilderConfig(name=name, workernames=workers, factory=f))
c["schedulers"].append(schedulers.ForceScheduler(name="force-trivial",
                                                 builderNames=["trivial-jail", "trivial-plain"]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def sleep(clock: Any, seconds: float) -> None:
    await task.deferLater(clock, seconds, lambda: None)


class Bench:
    def __init__(self, reactor: Any, work: Path) -> None:
        tag = secrets.token_hex(3)
        self.reactor, self.work, self.mnt = reactor, work, f"/tmp/jfl{tag}"
        text = (ROOT / "examples" / "farm.toml").read_text()
        for old, new in (
            ('pool = "jailfarm"', f'pool = "jfl{tag}"'),
            ('root = "jailfarm/demo"', f'root = "jfl{tag}/demo"'),
            ("/var/lib/jailfarm", str(work / "state")),
            ('mountpoint = "/jf"', f'mountpoint = "{self.mnt}"'),
            ('pool_size = "4G"', 'pool_size = "2G"'),
            ("pb_port = 9989", f"pb_port = {free_port()}"),
            ("port = 8010", f"port = {free_port()}"),
        ):
            text = text.replace(old, new)
        (work / "farm.toml").write_text(text)
        self.cfg = load_farm(work / "farm.toml")
        self.runner = LocalRunner()
        self.host = DevHost(
            self.cfg,
            str(work / "farm.toml"),
            self.runner,
            lambda line: print(f"  {line}", flush=True),
            reactor,
            MASTER_CFG.format(password=PLAIN_PASSWORD),
        )
        self.plain_dir = work / "plain-worker"
        self.worker_bin = os.path.join(os.path.dirname(sys.executable), "buildbot-worker")

    async def start(self) -> None:
        await self.host.up(first_build=False)
        (
            await self.runner.run(
                Cmd(
                    (
                        self.worker_bin,
                        "create-worker",
                        "--quiet",
                        str(self.plain_dir),
                        f"127.0.0.1:{self.cfg.workers.pb_port}",
                        "plain",
                        PLAIN_PASSWORD,
                    )
                )
            )
        ).check()
        (
            await self.runner.run(Cmd((self.worker_bin, "start", str(self.plain_dir)), timeout=60))
        ).check()
        while not any(
            w["name"] == "plain" and w["connected_to"]
            for w in (await self.host._get("workers"))["workers"]
        ):
            await sleep(self.reactor, 0.1)

    async def stop(self) -> None:
        await self.runner.run(Cmd((self.worker_bin, "stop", str(self.plain_dir)), timeout=60))
        await self.host.down()
        shutil.rmtree(self.mnt, ignore_errors=True)

    async def one(self, builder: str) -> tuple[float, float]:
        t0 = time.time()
        request = await self.host.force(builder, "bench", "force-trivial")
        while True:  # poll finely: teardown is timed from the moment the build is complete
            builds = (await self.host._get(f"buildrequests/{request}/builds"))["builds"]
            if builds and builds[0]["complete"]:
                break
            await sleep(self.reactor, 0.01)
        seen_complete, build = time.time(), builds[0]
        if build["results"] != 0:
            raise SystemExit(f"{builder} build {build['buildid']} failed: {build}")
        steps = (await self.host._get(f"builds/{build['buildid']}/steps"))["steps"]
        step = next(s for s in steps if s["name"] == "trivial")
        logs = (await self.host._get(f"steps/{step['stepid']}/logs"))["logs"]
        text = await self.host.raw_log(logs[0]["logid"])
        started = next(
            float(line) for line in text.splitlines() if line.replace(".", "", 1).isdigit()
        )
        teardown = 0.0
        if builder == "trivial-jail":
            jails = layout.jails_dataset(self.cfg)
            while [
                d
                for d in await self.host.platform.zfs.list(jails, depth=1)
                if d.name != jails and d.type == "filesystem"
            ]:
                await sleep(self.reactor, 0.02)
            teardown = time.time() - seen_complete
        return started - t0, teardown


async def main(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="jfbench-"))
    os.chmod(work, 0o755)
    bench = Bench(reactor, work)
    print("bringing a farm up on this machine:")
    await bench.start()
    try:
        results: dict[str, list[tuple[float, float]]] = {}
        for builder in ("trivial-plain", "trivial-jail"):
            await bench.one(builder)  # warm-up, not counted
            results[builder] = [await bench.one(builder) for _ in range(args.builds)]
        print(f"\n{args.builds} builds of a trivial step each (seconds, p50 / p95):")
        plain_attach = [a for a, _ in results["trivial-plain"]]
        jail_attach = [a for a, _ in results["trivial-jail"]]
        teardown = [t for _, t in results["trivial-jail"]]
        for label, values in (
            ("plain worker: request -> step running", plain_attach),
            ("jail worker:  request -> step running", jail_attach),
            ("jail worker:  build done -> jail and clone gone", teardown),
        ):
            print(f"  {label:<48} {statistics.median(values):6.2f} / {pct(values, 0.95):6.2f}")
        ratio = statistics.median(jail_attach) / statistics.median(plain_attach)
        extra = statistics.median(jail_attach) - statistics.median(plain_attach)
        print(
            f"ratio jail/plain, p50 request -> running: {ratio:.1f}x "
            f"(+{extra:.2f} s for clone, jail and worker attach)"
        )
        attach_ok = statistics.median(jail_attach) < 2
        teardown_ok = statistics.median(teardown) < 1
        print(
            f"targets: p50 attach < 2 s: {'met' if attach_ok else 'MISSED'}; "
            f"p50 teardown < 1 s: {'met' if teardown_ok else 'MISSED'}"
        )
    finally:
        await bench.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=20)
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/worker_latency.py: run as root")
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
