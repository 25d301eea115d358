"""`jailfarm provision plan | apply` on the real Linux dev host (issue #8 item 3): a fresh farm
(own pool, mountpoint, ports and state dir) is applied, applying again changes nothing, and
`down` leaves nothing: no pool, no processes it started, an empty state dir."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from twisted.trial import unittest

from jailfarm.config import load_farm
from jailfarm.host.zfsfuse import pid_alive
from jailfarm.provision.devhost import DevHost
from jailfarm.runner import LocalRunner
from tests.integration.farm import ROOT, free_port
from tests.support import deferred_test

JAILFARM = str(Path(sys.executable).parent / "jailfarm")


def farm_toml(work: Path, tag: str, mountpoint: str) -> str:
    """examples/farm.toml on its own pool, mountpoint, ports and state dir (as farm.py does)."""
    nginx_port = free_port()
    text = (ROOT / "examples" / "farm.toml").read_text()
    for old, new in (
        ('pool = "jailfarm"', f'pool = "jfp{tag}"'),
        ('root = "jailfarm/demo"', f'root = "jfp{tag}/demo"'),
        ("/var/lib/jailfarm", str(work / "state")),
        ('mountpoint = "/jf"', f'mountpoint = "{mountpoint}"'),
        ('pool_size = "4G"', 'pool_size = "1G"'),
        ("pb_port = 9989", f"pb_port = {free_port()}"),
        ("port = 8010", f"port = {free_port()}"),
        ("port = 8080", f"port = {nginx_port}"),
        ("localhost:8080/buildbot/", f"localhost:{nginx_port}/buildbot/"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


def provision(action: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JAILFARM, "provision", action, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def pool_listed(pool: str) -> bool:
    argv = ["zpool", "list", "-H", "-o", "name"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    return pool in out.stdout.split()


@pytest.mark.skipif(shutil.which("zfs-fuse") is None, reason="needs zfs-fuse (install.sh)")
class ProvisionApplyTests(unittest.TestCase):
    timeout = 600

    def setUp(self) -> None:
        tag = secrets.token_hex(3)
        self.work = Path(tempfile.mkdtemp(prefix=f"jfp{tag}-"))
        self.work.chmod(0o755)  # nginx's workers (www-data) serve the repository from it
        self.mountpoint = f"/tmp/jfp{tag}"
        self.config = self.work / "farm.toml"
        self.config.write_text(farm_toml(self.work, tag, self.mountpoint))
        self.cfg = load_farm(self.config)
        self.lines: list[str] = []
        self.addCleanup(shutil.rmtree, self.mountpoint, True)
        self.addCleanup(shutil.rmtree, self.work, True)

    def pids(self) -> dict[str, int | None]:
        found = {}
        state = Path(self.cfg.state_dir)
        for name, path in (
            ("master", state / "master" / "twistd.pid"),
            ("nginx", state / "nginx" / "nginx.pid"),
            ("zfs-fuse", state / "run" / "zfs-fuse.pid"),
        ):
            try:
                found[name] = int(path.read_text().strip())
            except (OSError, ValueError):
                found[name] = None
        return found

    @deferred_test
    async def test_apply_apply_again_down(self) -> None:
        host = DevHost(self.cfg, str(self.config), LocalRunner(), self.lines.append)
        try:
            plan = provision("plan", self.config)
            self.assertEqual(plan.returncode, 3, plan.stdout + plan.stderr)
            for step in ("datasets", "worker-template", "master", "nginx", "signing-key"):
                self.assertIn(f"] {step}", plan.stdout)

            first = provision("apply", self.config)
            self.assertEqual(first.returncode, 0, first.stdout + first.stderr)
            self.assertIn("a new plan is empty", first.stdout)
            self.assertTrue(pool_listed(self.cfg.zfs.pool))
            pids = self.pids()
            self.assertTrue(pid_alive(pids["master"] or 0), pids)
            self.assertTrue(pid_alive(pids["nginx"] or 0), pids)

            again = provision("apply", self.config)
            self.assertEqual(again.returncode, 0, again.stdout + again.stderr)
            self.assertIn("nothing to do", again.stdout)
            self.assertEqual(self.pids(), pids)  # nothing restarted
        finally:
            started = [p for p in self.pids().values() if p]
            await host.down()
        self.assertFalse(pool_listed(self.cfg.zfs.pool))
        self.assertEqual([p for p in started if pid_alive(p)], [])
        self.assertEqual(sorted(str(p) for p in Path(self.cfg.state_dir).rglob("*")), [])
        self.assertFalse(os.path.exists(self.mountpoint) and os.listdir(self.mountpoint))
