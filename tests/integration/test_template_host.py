"""Worker templates on a real zfs-fuse pool: build, promote, rollback, prune with live clones,
secrets gone from the snapshot, and the refusals that keep a rebuild inside the template."""

from __future__ import annotations

import subprocess
from pathlib import Path

from jailfarm.config import FarmConfig, parse_farm
from jailfarm.errors import UnsafeOperation
from jailfarm.host.platform import make_platform
from jailfarm.workers.layout import CURRENT, templates_dataset
from jailfarm.workers.template import (
    build_template,
    current_snapshot,
    list_templates,
    prune_templates,
    read_state,
    template_command,
)
from tests.integration.host import PoolTestCase
from tests.support import deferred_test

SECRETS = (
    "etc/ssh/ssh_host_ed25519_key",
    "root/.ssh/known_hosts",
    "home/buildbot/worker/buildbot.tac",
    "usr/local/etc/pki/repo.key",
)


class TemplateHostTests(PoolTestCase):
    @deferred_test
    async def setUp(self) -> None:
        await super().setUp()
        self.cfg = self.config()
        self.platform = make_platform(self.cfg, self.runner)
        self.said: list[str] = []
        self.tpl = templates_dataset(self.cfg)
        self.tpl_dir = Path(self.mountpoint) / "farm" / "templates" / "worker"
        await self.zfs.create(f"{self.root}/jails")

    def config(self, pool: str | None = None, keep: int = 1) -> FarmConfig:
        pool = pool or self.pool
        return parse_farm(
            {
                "farm": {"platform": "linux-dev", "state_dir": str(self.work)},
                "zfs": {
                    "pool": pool,
                    "root": f"{pool}/farm",
                    "mountpoint": self.mountpoint,
                    "pool_file": str(self.image),
                },
                "template": {"keep": keep},
                "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
                "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
            }
        )

    async def command(self, action: str, tag: str | None = None) -> int:
        return await template_command(self.cfg, self.runner, action, tag, self.said.append)

    async def current(self) -> str:
        rows = await self.zfs.get([self.tpl], [CURRENT])
        return rows[self.tpl][CURRENT]

    async def look_inside(self, snapshot: str, name: str) -> Path:
        """Clone `snapshot` (zfs-fuse has no .zfs/snapshot directory) and return its root."""
        await self.zfs.clone(snapshot, f"{self.root}/jails/{name}", {"jailfarm:owner": "test"})
        return Path(self.mountpoint) / "farm" / "jails" / name

    def plant(self, root: Path) -> None:
        for rel in SECRETS:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("secret\n")

    @deferred_test
    async def test_build_twice_promote_rollback_and_prune_spare_clones(self) -> None:
        assert await self.command("build") == 0
        assert await self.current() == "g1"
        assert await current_snapshot(self.zfs, self.cfg) == f"{self.tpl}@g1"
        # The template is read-only between builds (jails spec c.67).
        with self.assertRaises(OSError):
            (self.tpl_dir / "etc" / "motd").write_text("x")

        assert await self.command("build") == 0
        assert await self.current() == "g1", "a rebuild is not promoted by itself"
        self.assertIn(
            "local: g2 is not current; test it, then `jailfarm template promote g2`", self.said
        )
        assert await self.command("promote") == 0
        assert await self.current() == "g2"
        self.assertIn("local: current: g1 -> g2", self.said)

        # A worker still runs on g1: with keep = 1, neither g1 (clone) nor g2 (current) goes.
        await self.zfs.clone(f"{self.tpl}@g1", f"{self.root}/jails/jfw1", {"jailfarm:owner": "t"})
        assert await prune_templates(self.zfs, self.cfg, 1, self.said.append) == []
        assert await self.command("build") == 0  # g3, pruned to keep = 1 on the way
        state = await read_state(self.zfs, self.cfg)
        assert [g.tag for g in state.generations] == ["g1", "g2", "g3"]
        assert state.generations[0].clones == (f"{self.root}/jails/jfw1",)
        lines = await list_templates(self.zfs, self.cfg)
        assert [line.split()[0] for line in lines] == ["g3", "g2", "g1"]
        assert lines[1].endswith("current  0 clones") and lines[2].endswith("-        1 clone")

        assert await self.command("rollback") == 0
        assert await self.current() == "g1"
        self.assertIn("local: current: g2 -> g1", self.said)
        assert await self.command("rollback") == 1
        self.assertIn("nothing to roll back to: g1 is the oldest", self.said[-1])

        # Once the clone is gone and the pointer moved on, g1 may go; g2 still has no reason.
        await self.zfs.destroy(f"{self.root}/jails/jfw1", attempts=8)
        assert await self.command("promote", "g3") == 0
        pruned = await prune_templates(self.zfs, self.cfg, 1, self.said.append)
        assert pruned == [f"{self.tpl}@g1", f"{self.tpl}@g2"]
        assert [g.tag for g in (await read_state(self.zfs, self.cfg)).generations] == ["g3"]

    @deferred_test
    async def test_secrets_never_reach_the_snapshot(self) -> None:
        assert await self.command("build") == 0
        # Planted in the tree before the next build (readonly lifted as an operator would).
        await self.zfs.set(self.tpl, "readonly", "off")
        self.plant(self.tpl_dir)

        def customize(root: Path) -> None:
            self.plant(root)  # and once more by a site step, after the tree was cleared
            (root / "etc" / "motd").write_text("welcome\n")

        snap = await build_template(
            self.platform, self.cfg, self.said.append, promote=True, customize=customize
        )
        assert snap == f"{self.tpl}@g2"
        self.assertIn("removed 4 secret file(s): " + ", ".join(sorted(SECRETS)), self.said)
        inside = await self.look_inside(snap, "check")
        for rel in SECRETS:
            assert not (inside / rel).exists(), rel
        assert (inside / "etc" / "motd").read_text() == "welcome\n"
        passwd = (inside / "etc" / "passwd").read_text()
        assert "buildbot:x:1001:1001:" in passwd
        # The clone is writable although the template is read-only (its parent is jails/).
        (inside / "tmp" / "w").write_text("ok")

    @deferred_test
    async def test_rebuild_refuses_while_something_is_mounted_inside(self) -> None:
        assert await self.command("build") == 0
        await self.zfs.set(self.tpl, "readonly", "off")
        target = self.tpl_dir / "tmp"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
        try:
            (target / "precious").write_text("keep me")
            with self.assertRaises(UnsafeOperation) as ctx:
                await build_template(self.platform, self.cfg, self.said.append)
            self.assertIn(f"{target} is mounted inside it", str(ctx.exception))
            assert (target / "precious").read_text() == "keep me"
            assert (self.tpl_dir / "etc" / "passwd").exists()
        finally:
            subprocess.run(["umount", str(target)], check=True)
        assert [g.tag for g in (await read_state(self.zfs, self.cfg)).generations] == ["g1"]

    @deferred_test
    async def test_missing_pool_says_to_run_up(self) -> None:
        self.cfg = self.config(pool=f"jfmissing{self.tag}")
        assert await self.command("list") == 1
        assert self.said == [
            f"local: error: pool jfmissing{self.tag} not imported: run `jailfarm up`"
        ]
