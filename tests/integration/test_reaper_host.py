"""The reaper on a real zfs-fuse pool with real namespace jails: exactly the farm's expired,
finished or unknown leftovers go; busy workers, other farms' and unowned clones stay; a dry
run changes nothing. What is left is checked on the host (`zfs list`, /proc), not taken from
the code under test."""

from __future__ import annotations

import re
import time

from jailfarm.cmd import Cmd
from jailfarm.config import load_farm
from jailfarm.host.base import JailSpec
from jailfarm.host.linux import LinuxJails
from jailfarm.host.platform import make_platform
from jailfarm.workers.reaper import gather, reap, reap_command
from jailfarm.workers.reapplan import FINISHED, RUNNING, plan_for
from tests.integration.host import PoolTestCase, mounts_below, ns_members
from tests.support import deferred_test

FARM_TOML = """\
[farm]
platform = "linux-dev"
name = "alpha"
prefix = "jf"
state_dir = "{state}"
[zfs]
pool = "{pool}"
root = "{root}"
[[poudriere.jails]]
name = "141amd64"
version = "14.1-RELEASE"
[[trees]]
name = "default"
url = "https://git.FreeBSD.org/ports.git"
"""


class ReaperHostTests(PoolTestCase):
    @deferred_test
    async def setUp(self) -> None:
        await super().setUp()
        state = self.work / "state"
        toml = self.work / "farm.toml"
        toml.write_text(FARM_TOML.format(state=state, pool=self.pool, root=self.root))
        self.cfg = load_farm(toml)
        # The farm's own platform objects; tearDown removes whatever jails are left in them.
        self.platform = make_platform(self.cfg, self.runner)
        assert isinstance(self.platform.jails, LinuxJails)
        self.jails = self.platform.jails
        await self.zfs.create(f"{self.root}/jails")
        self.now = int(time.time())
        self.inodes: dict[str, int] = {}

    async def worker(self, name: str, jailed: bool, **lease: str) -> None:
        """A clone `<root>/jails/<name>` with these lease properties, and its jail if asked."""
        await self.zfs.clone(f"{self.root}/tpl@1", f"{self.root}/jails/{name}", lease)
        if jailed:
            path = f"{self.mountpoint}/farm/jails/{name}"
            spec = JailSpec(name=name, path=path, hostname=f"{name}.test", profile="worker")
            info = await self.jails.start(spec)
            self.inodes[name] = int(info.extra["pidns"])

    def lease(self, owner: str, build: str, expires_in: int) -> dict[str, str]:
        expires = str(self.now + expires_in)
        return {"jailfarm:owner": owner, "jailfarm:build": build, "jailfarm:expires": expires}

    async def make_workers(self) -> None:
        # Order matters on this host: a namespace jail keeps a reference to every clone
        # mounted when it started (nsjail chroots into its own namespace copy of the host's
        # mounts), and zfs-fuse then calls that clone busy until the jail is gone. So each
        # clone the tests destroy is made after the jails that outlive its destruction.
        await self.worker("jfw3", True, **self.lease("beta", "17", -30))  # another farm's
        await self.worker("jfw2", True, **self.lease("alpha", "42", 3600))  # ours, busy
        await self.worker("jfw1", True, **self.lease("alpha", "17", -30))  # ours, expired
        await self.worker("jfw4", False, **self.lease("alpha", "17", -30))  # ours, no jail
        await self.worker("jfw5", False)  # unowned

    async def clones(self) -> set[str]:
        """Clone names as `zfs list` itself reports them."""
        cmd = Cmd(("zfs", "list", "-H", "-o", "name", "-r", f"{self.root}/jails"))
        out = (await self.runner.run(cmd)).check().out
        return {line.rsplit("/", 1)[1] for line in out.split() if line != f"{self.root}/jails"}

    def said(self, lines: list[str]) -> list[str]:
        """`lines` with the lease age (which depends on how long the test took) as N."""
        ages = [int(a) for a in re.findall(r"expired (\d+) s ago", " ".join(lines))]
        assert all(a >= 30 for a in ages), ages
        return [re.sub(r"expired \d+ s ago", "expired N s ago", line) for line in lines]

    def alive(self) -> set[str]:
        """Jails with a live process in their pid namespace, seen in /proc."""
        return {name for name, inode in self.inodes.items() if ns_members(inode)}

    @deferred_test
    async def test_sweep_removes_exactly_the_farms_leftovers(self) -> None:
        await self.make_workers()
        survey = await gather(self.platform, self.cfg)
        assert survey.mountpoint == f"{self.mountpoint}/farm/jails"
        # The master knows build 42 (finished, but its worker jfw2 is busy); 17 is unknown.
        states = {"42": FINISHED}
        actions = plan_for(self.cfg, survey, time.time(), states, frozenset({"jfw2"}))
        lines: list[str] = []
        report = await reap(self.platform, actions, lines.append)
        assert report.ok, report.failed
        assert await self.clones() == {"jfw2", "jfw3", "jfw5"}
        assert self.alive() == {"jfw2", "jfw3"}
        assert {j.name for j in await self.jails.list()} == {"jfw2", "jfw3"}
        assert mounts_below(f"{self.mountpoint}/farm/jails/jfw1") == []
        root = f"{self.root}/jails"
        assert self.said(lines) == [
            "removed jail jfw1: lease expired N s ago",
            f"destroyed clone {root}/jfw1: lease expired N s ago",
            f"destroyed clone {root}/jfw4: lease expired N s ago",
            f"{root}/jfw5: unowned, left alone",
        ]
        # A second sweep, the master now saying build 42 still runs, finds nothing to do.
        survey = await gather(self.platform, self.cfg)
        actions = plan_for(self.cfg, survey, time.time(), {"42": RUNNING})
        assert [a.kind for a in actions] == ["leave"]

    @deferred_test
    async def test_reap_command_dry_run_changes_nothing_then_reaps(self) -> None:
        await self.make_workers()
        lines: list[str] = []
        rc = await reap_command(self.cfg, self.runner, True, False, lines.append)
        assert rc == 0
        root = f"{self.root}/jails"
        assert self.said(lines) == [
            "would remove jail jfw1: lease expired N s ago",
            f"would destroy clone {root}/jfw1: lease expired N s ago",
            f"would destroy clone {root}/jfw4: lease expired N s ago",
            f"{root}/jfw5: unowned, left alone",
            "reap (dry run): 3 action(s) would run, 0 failed, 1 left alone",
        ]
        assert await self.clones() == {"jfw1", "jfw2", "jfw3", "jfw4", "jfw5"}
        assert self.alive() == {"jfw1", "jfw2", "jfw3"}
        lines.clear()
        # Without a master only expired leases go: jfw2 (lease valid) stays though not busy.
        assert await reap_command(self.cfg, self.runner, False, False, lines.append) == 0, (
            "\n".join(lines)
        )
        assert lines[-1] == "reap: 3 action(s) done, 0 failed, 1 left alone"
        assert await self.clones() == {"jfw2", "jfw3", "jfw5"}
        assert self.alive() == {"jfw2", "jfw3"}
        # --all takes the rest of ours, still nothing of beta's and nothing unowned.
        assert await reap_command(self.cfg, self.runner, False, True, lines.append) == 0
        assert await self.clones() == {"jfw3", "jfw5"}
        assert self.alive() == {"jfw3"}
