"""A whole farm on the dev host for one test: pool, template, a real Buildbot master with jail
latent workers on free loopback ports (test helper). `down` removes it all afterwards."""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from jailfarm.config import load_farm
from jailfarm.provision.devhost import DevHost
from jailfarm.runner import LocalRunner
from tests.support import deferred_test

ROOT = Path(__file__).resolve().parents[2]

# The packaged configuration plus a builder whose one step runs `sleep <hold>` in the jail,
# so tests can look at jails while builds run.
TEST_MASTER_CFG = """
import os
import sys
from buildbot.plugins import schedulers, steps, util
from jailfarm.master.config import master_config
from jailfarm.workers.latent import JailLatentWorker

here = os.path.dirname(os.path.abspath(__file__))
c = BuildmasterConfig = master_config(os.path.join(here, "farm.toml"))
MASTER_HOST = {master_host!r}
if MASTER_HOST:
    c["workers"] = [JailLatentWorker(w.name, farm_toml=os.path.join(here, "farm.toml"),
                                     host="local", master_host=MASTER_HOST)
                    for w in c["workers"]]
f = util.BuildFactory()
f.addStep(steps.ShellCommand(name="hold", logEnviron=False,
                             command=["sh", "-c",
                                      util.Interpolate("hostname; sleep %(prop:hold:-0)s")]))
names = [w.name for w in c["workers"]]
c["builders"].append(util.BuilderConfig(name="hold", workernames=names, factory=f))
c["schedulers"].append(schedulers.ForceScheduler(
    name="force-hold", builderNames=["hold"],
    properties=[util.StringParameter(name="hold", default="0")]))
# After the bulk: check every package of the builder's new repository with jailfarm's pkg
# reader, inside the worker jail (the packages go with the jail). A bulk builder is named
# bulk-<jail>-<tree>[-<set>] (no name has a "-"); the set left out is "default".
for b in c["builders"]:
    if b.name.startswith("bulk-"):
        mastername = "-".join((b.name.split("-")[1:] + ["default"])[:3])
        b.factory.addStep(steps.ShellCommand(
            name="check-packages", logEnviron=False, haltOnFailure=True,
            command=[sys.executable, "-c", {check!r},
                     "/home/buildbot/poudriere/data/packages/" + mastername]))
"""


CHECK_PACKAGES = """\
import glob, pathlib, sys
from jailfarm.poudriere.pkgfile import read_package
paths = sorted(glob.glob(sys.argv[1] + "/.latest/All/*.pkg"))
for path in paths:
    manifest, files = read_package(pathlib.Path(path))
    deps = ",".join(sorted(manifest.get("deps", {})))
    print(manifest["name"], manifest["version"], len(files), "files", "deps=" + deps)
print(len(paths), "valid packages")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FarmTestCase(unittest.TestCase):
    timeout = 300
    master_host = ""  # "" = the normal wiring; a class may point workers elsewhere
    attach_timeout = 60
    reserve = "64M"
    extra_toml = ""  # TOML appended to the test farm's farm.toml (e.g. more [[sets]])

    @deferred_test
    async def setUp(self) -> None:
        tag = secrets.token_hex(3)
        self.nginx_port = free_port()
        self.work = Path(tempfile.mkdtemp(prefix=f"jff{tag}-"))
        self.work.chmod(0o755)  # nginx's workers (www-data) serve the repository from it
        self.mountpoint = f"/tmp/jff{tag}"
        text = (ROOT / "examples" / "farm.toml").read_text()
        for old, new in (
            ('pool = "jailfarm"', f'pool = "jff{tag}"'),
            ('root = "jailfarm/demo"', f'root = "jff{tag}/demo"'),
            ("/var/lib/jailfarm", str(self.work / "state")),
            ('mountpoint = "/jf"', f'mountpoint = "{self.mountpoint}"'),
            ('pool_size = "4G"', 'pool_size = "1G"'),
            ('reserve = "512M"', f'reserve = "{self.reserve}"'),
            ("pb_port = 9989", f"pb_port = {free_port()}"),
            ("port = 8010", f"port = {free_port()}"),
            ("port = 8080", f"port = {self.nginx_port}"),
            ("localhost:8080/buildbot/", f"localhost:{self.nginx_port}/buildbot/"),
            ("attach_timeout = 120", f"attach_timeout = {self.attach_timeout}"),
        ):
            assert old in text, old
            text = text.replace(old, new)
        if self.extra_toml:
            text = text.rstrip("\n") + "\n\n" + self.extra_toml.strip("\n") + "\n"
        self.farm_toml = self.work / "farm.toml"
        self.farm_toml.write_text(text)
        self.cfg = load_farm(self.farm_toml)
        self.lines: list[str] = []
        self.host = DevHost(
            self.cfg,
            str(self.farm_toml),
            LocalRunner(),
            self.lines.append,
            master_cfg=TEST_MASTER_CFG.format(master_host=self.master_host, check=CHECK_PACKAGES),
        )
        await self.host.up(first_build=False)

    @deferred_test
    async def tearDown(self) -> None:
        try:
            await self.host.down()
            # `down` removes everything `up` made: nothing of the farm is left in its state dir.
            left = sorted(str(p) for p in Path(self.cfg.state_dir).rglob("*"))
            self.assertEqual(left, [])
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
            shutil.rmtree(self.mountpoint, ignore_errors=True)

    async def get(self, path: str) -> Any:
        return await self.host._get(path)

    async def until(self, what: str, check: Any, timeout: float = 120) -> Any:
        """Poll `check` until it returns something true, and return that; fail the test after
        `timeout` seconds, with the end of the master's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await check()
            if value:
                return value
            await task.deferLater(reactor, 0.3, lambda: None)
        self.fail(f"timed out after {timeout}s waiting for {what}\n{self.master_log()[-4000:]}")

    def master_log(self) -> str:
        log = Path(self.cfg.state_dir) / "master" / "twistd.log"
        return log.read_text(errors="replace") if log.exists() else ""
