"""ZFS operations against a real zfs-fuse pool (same argv as FreeBSD; see jailfarm/host/zfs.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from jailfarm.errors import UnsafeOperation, ZfsError
from jailfarm.host.zfs import Zfs
from tests.integration.host import PoolTestCase
from tests.support import deferred_test


class ZfsHostTests(PoolTestCase):
    @deferred_test
    async def test_clone_carries_lease_properties(self) -> None:
        path = await self.clone("w1", **{"jailfarm:build": "42", "jailfarm:expires": "1900000000"})
        info = await self.zfs.info(f"{self.root}/w1")
        assert info is not None
        self.assertEqual(info.origin, f"{self.root}/tpl@1")
        self.assertEqual(info.type, "filesystem")
        self.assertTrue(info.mounted)
        self.assertEqual(info.mountpoint, path)
        self.assertEqual(
            dict(info.user),
            {"jailfarm:owner": "test", "jailfarm:build": "42", "jailfarm:expires": "1900000000"},
        )
        self.assertTrue((Path(path) / "etc" / "passwd").exists())

    @deferred_test
    async def test_list_finds_datasets_snapshots_and_user_properties(self) -> None:
        await self.clone("w1", **{"jailfarm:build": "7"})
        found = {d.name: d for d in await self.zfs.list(self.root, ["jailfarm:build"])}
        self.assertEqual(
            set(found), {self.root, f"{self.root}/tpl", f"{self.root}/tpl@1", f"{self.root}/w1"}
        )
        self.assertEqual(found[f"{self.root}/tpl@1"].type, "snapshot")
        self.assertEqual(found[f"{self.root}/w1"].user, {"jailfarm:build": "7"})
        self.assertEqual(found[f"{self.root}/tpl"].user, {})
        self.assertEqual(await self.zfs.list(f"{self.root}/nope"), [])

    @deferred_test
    async def test_space_accounting_sees_a_clone_grow(self) -> None:
        path = await self.clone("w1")
        before = await self.zfs.info(f"{self.root}/w1")
        assert before is not None
        with open(Path(path) / "blob", "wb") as f:
            f.write(os.urandom(8 << 20))
            os.fsync(f.fileno())
        subprocess.run(["sync"], check=True)
        after = await self.zfs.info(f"{self.root}/w1")
        assert after is not None
        self.assertGreater(after.used, before.used + (4 << 20))
        self.assertGreater(await self.zfs.available(self.pool), 0)

    @deferred_test
    async def test_destroy_retries_while_busy_then_succeeds(self) -> None:
        path = await self.clone("w1")
        # A process whose cwd is inside the clone keeps it busy for a moment.
        holder = subprocess.Popen(["sleep", "0.6"], cwd=path)
        try:
            await self.zfs.destroy(f"{self.root}/w1", attempts=8, delay=0.1)
        finally:
            holder.wait()
        self.assertFalse(await self.zfs.exists(f"{self.root}/w1"))

    @deferred_test
    async def test_destroy_gives_up_with_a_clear_error(self) -> None:
        path = await self.clone("w1")
        holder = subprocess.Popen(["sleep", "60"], cwd=path)
        try:
            with self.assertRaises(ZfsError) as ctx:
                await self.zfs.destroy(f"{self.root}/w1", attempts=3, delay=0.05)
            self.assertIn(
                f"cannot destroy {self.root}/w1: still busy after 3 attempts", str(ctx.exception)
            )
        finally:
            holder.kill()
            holder.wait()
        await self.zfs.destroy(f"{self.root}/w1")
        self.assertFalse(await self.zfs.exists(f"{self.root}/w1"))

    @deferred_test
    async def test_destroy_of_missing_dataset_is_done_and_outside_root_is_refused(self) -> None:
        await self.zfs.destroy(f"{self.root}/never-made")
        with self.assertRaises(UnsafeOperation):
            await Zfs(self.runner, self.root).destroy(f"{self.pool}/other")
        self.assertTrue(await self.zfs.exists(self.root))


class ZfsFuseRenameRaceTests(PoolTestCase):
    """zfs-fuse answers ENOENT to a lookup that races a rename over the file (measured: about
    a third of reads while another thread replaces it). The dev builder's state files live on
    worker clones, so its reader must look again (devbuild_layout._read_settled)."""

    def test_build_dir_reads_survive_concurrent_atomic_replaces(self) -> None:
        import threading
        import time as _time

        from jailfarm.poudriere.devbuild_layout import BuildDir, write_atomic

        directory = Path(self.mountpoint) / "farm"
        build = BuildDir(directory)
        write_atomic(directory / ".poudriere.status.01", "idle:\n")
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                write_atomic(directory / ".poudriere.status.01", "build:devel/libjf:\n")

        thread = threading.Thread(target=writer)
        thread.start()
        seen = set()
        try:
            deadline = _time.monotonic() + 1.0
            while _time.monotonic() < deadline:
                seen.add(build.read()[".poudriere.status.01"])
        finally:
            stop.set()
            thread.join()
        self.assertLessEqual(seen, {"idle:\n", "build:devel/libjf:\n"})
        self.assertIn("build:devel/libjf:\n", seen)
