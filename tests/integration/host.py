"""A per-test file-backed zfs-fuse pool and the real host objects on it (test helper)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

from twisted.trial import unittest

from jailfarm.host import zfsfuse
from jailfarm.host.linux import LinuxJails
from jailfarm.host.thinroot import populate
from jailfarm.host.zfs import Zfs
from jailfarm.provision.nginx import NginxSite
from jailfarm.runner import LocalRunner
from tests.support import deferred_test


def ns_members(inode: int) -> list[int]:
    """Live host PIDs whose pid namespace is `inode` (checked directly in /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == inode:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def mounts_below(path: str) -> list[str]:
    """Mount points at or below `path` in this (the host's) mount namespace."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


class PoolTestCase(unittest.TestCase):
    """Each test gets pool `jft<hex>` on a sparse file, a template dataset with a thin root
    snapshotted as `@1`, and LinuxJails with a private state dir. Everything is destroyed
    afterwards even when the test fails."""

    timeout = 120

    @deferred_test
    async def setUp(self) -> None:
        self.runner = LocalRunner()
        self.tag = secrets.token_hex(3)
        self.pool = f"jft{self.tag}"
        self.work = Path(tempfile.mkdtemp(prefix=f"jft{self.tag}-"))
        self.mountpoint = f"/tmp/jft{self.tag}-mnt"
        self.image = self.work / "pool.img"
        await zfsfuse.ensure_pool(self.runner, self.pool, self.image, 512 << 20, self.mountpoint)
        self.root = f"{self.pool}/farm"
        self.zfs = Zfs(self.runner, self.root)
        await self.zfs.create(self.root)
        await self.zfs.create(f"{self.root}/tpl")
        populate(Path(self.mountpoint) / "farm" / "tpl")
        await self.zfs.snapshot(f"{self.root}/tpl@1")
        self.jails = LinuxJails(self.runner, str(self.work / "jails"))

    @deferred_test
    async def tearDown(self) -> None:
        for info in await self.jails.list():
            await self.jails.remove(info.name, timeout=1)
        await zfsfuse.destroy_pool(self.runner, self.pool, self.image)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.mountpoint, ignore_errors=True)

    async def clone(self, name: str, **props: str) -> str:
        target = f"{self.root}/{name}"
        await self.zfs.clone(f"{self.root}/tpl@1", target, {"jailfarm:owner": "test", **props})
        return f"{self.mountpoint}/farm/{name}"


def nginx_site(work: Path, publish_root: Path, logs_root: Path, port: int) -> NginxSite:
    """An nginx site for tests: everything under `work` (0755: nginx's workers run as
    www-data), Debian's nginx on 127.0.0.1:`port`, the index page instead of poudriere's."""
    prefix = work / "nginx"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        buildbot_port = int(s.getsockname()[1])
    return NginxSite(
        listen_address="127.0.0.1",
        port=port,
        publish_root=str(publish_root),
        logs_root=str(logs_root),
        html_root=f"{prefix}/html",
        static_index=True,
        buildbot_port=buildbot_port,
        prefix=str(prefix),
        pid_file=f"{prefix}/nginx.pid",
        temp_dir=f"{prefix}/tmp",
        error_log=f"{prefix}/logs/error.log",
        access_log=f"{prefix}/logs/access.log",
        mime_types="/etc/nginx/mime.types",
        user="www-data",
        worker_processes=2,
    )
