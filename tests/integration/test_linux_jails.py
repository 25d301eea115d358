"""Namespace jails on real zfs-fuse clones: start, exec, nesting, teardown leaves nothing.

Each cleanliness claim is checked directly on the host (/proc, mountinfo, `zfs list`), not
taken from the code under test.
"""

from __future__ import annotations

import os
import sys

from jailfarm.errors import JailError
from jailfarm.host.base import JailSpec, Mount
from jailfarm.host.linux import python_dirs
from tests.integration.host import PoolTestCase, mounts_below, ns_members
from tests.support import deferred_test

PY = sys.executable


class LinuxJailTests(PoolTestCase):
    async def start(self, name: str, **kw: object) -> tuple[str, int]:
        path = await self.clone(name)
        info = await self.jails.start(
            JailSpec(
                name=name,
                path=path,
                hostname=f"{name}.test",
                profile="worker",
                children_max=4,
                **kw,
            )
        )  # type: ignore[arg-type]
        return path, int(info.extra["pidns"])

    @deferred_test
    async def test_jail_runs_commands_in_its_own_namespaces(self) -> None:
        path, inode = await self.start("w1")
        r = (
            await self.jails.exec(
                "w1", ["sh", "-c", "hostname; echo $$; id -u; tr '\\0' ' ' < /proc/1/cmdline"]
            )
        ).check()
        hostname, pid, uid, init = r.out.splitlines()
        self.assertEqual(hostname, "w1.test")
        self.assertNotEqual(hostname, os.uname().nodename)
        self.assertLess(int(pid), 100)  # a fresh pid namespace, not the host's
        self.assertEqual(uid, "0")
        self.assertIn("jailfarm.host.nsjail _init", init)
        # Host system directories are read-only; the jail's own tree is the clone.
        r = await self.jails.exec("w1", ["touch", "/usr/jailfarm-test"])
        self.assertNotEqual(r.rc, 0)
        self.assertIn("Read-only file system", r.err)
        (await self.jails.exec("w1", ["sh", "-c", "echo hello > /root/note"])).check()
        with open(f"{path}/root/note") as f:
            self.assertEqual(f.read(), "hello\n")
        # The project's Python environment runs inside, read-only.
        r = await self.jails.exec("w1", [PY, "-c", "import jailfarm, sys; print(sys.prefix)"])
        self.assertEqual(r.check().out.strip(), sys.prefix)
        # A clean login environment, like jexec -l: the master's variables do not leak in.
        os.environ["JAILFARM_LEAK_TEST"] = "x"
        try:
            r = (await self.jails.exec("w1", ["env"], env={"GREETING": "hi there"})).check()
        finally:
            del os.environ["JAILFARM_LEAK_TEST"]
        self.assertIn("GREETING=hi there", r.out)
        self.assertNotIn("JAILFARM_LEAK_TEST", r.out)
        self.assertEqual(len(ns_members(inode)), 1)  # only the init is left

    @deferred_test
    async def test_exec_as_unprivileged_user(self) -> None:
        await self.start("w1")
        r = await self.jails.exec("w1", ["sh", "-c", "id -un; echo $HOME"], user="buildbot")
        self.assertEqual(r.check().out.split(), ["buildbot", "/home/buildbot"])
        r = await self.jails.exec("w1", ["true"], user="nosuchuser")
        self.assertNotEqual(r.rc, 0)
        self.assertIn("no user 'nosuchuser'", r.err)

    @deferred_test
    async def test_nested_jail_and_teardown_leave_nothing_behind(self) -> None:
        path, inode = await self.start("w1")
        # Inside the worker jail, start a child jail as poudriere would start its build jails.
        script = (
            "set -e; mkdir -p /child/etc /child/tmp; cp /etc/passwd /etc/group /child/etc/; "
            f"{PY} -m jailfarm.host.nsjail start --name b01 --root /child --hostname b01.child "
            "--state-dir /var/run/jf --system-dir /usr --system-dir /bin --system-dir /lib "
            "--system-dir /lib64 "
            + " ".join(f"--bind-ro {d}" for d in python_dirs())
            + f" >/dev/null; {PY} -m jailfarm.host.nsjail exec --name b01 --state-dir "
            "/var/run/jf -- sh -c 'hostname; echo $$; mount -t tmpfs tmpfs /tmp && echo mounted'"
        )
        r = (await self.jails.exec("w1", ["sh", "-c", script])).check()
        self.assertEqual(r.out.split(), ["b01.child", "2", "mounted"])
        nested = [p for p in ns_members(inode)]
        self.assertGreaterEqual(len(nested), 2)  # the worker's init and the child's unshare
        await self.jails.remove("w1", timeout=2)
        # No process of the jail (or of the nested one) survives; its mounts were only ever
        # in its own mount namespace; the clone can be destroyed and nothing of ours is left.
        self.assertEqual(ns_members(inode), [])
        self.assertEqual(await self.jails.list(), [])
        self.assertEqual(mounts_below(f"{path}/usr") + mounts_below(f"{path}/proc"), [])
        await self.zfs.destroy(f"{self.root}/w1")
        names = {d.name for d in await self.zfs.list(self.root)}
        self.assertEqual(names, {self.root, f"{self.root}/tpl", f"{self.root}/tpl@1"})
        self.assertEqual(mounts_below(path), [])

    @deferred_test
    async def test_two_jails_at_once_are_distinct(self) -> None:
        _, ns1 = await self.start("w1")
        _, ns2 = await self.start("w2")
        self.assertNotEqual(ns1, ns2)
        listed = {j.name: j for j in await self.jails.list()}
        self.assertEqual(set(listed), {"w1", "w2"})
        h1 = (await self.jails.exec("w1", ["hostname"])).check().out.strip()
        h2 = (await self.jails.exec("w2", ["hostname"])).check().out.strip()
        self.assertEqual((h1, h2), ("w1.test", "w2.test"))
        for name in ("w1", "w2"):
            await self.jails.remove(name)
        self.assertEqual(ns_members(ns1) + ns_members(ns2), [])
        self.assertEqual(await self.jails.list(), [])

    @deferred_test
    async def test_remove_escalates_when_processes_ignore_sigterm(self) -> None:
        _, inode = await self.start("w1", stop_timeout=1)
        # A process that ignores SIGTERM, started in the background inside the jail.
        (await self.jails.exec("w1", ["sh", "-c", "trap '' TERM; sleep 300 >/dev/null 2>&1 &"]))
        self.assertGreaterEqual(len(ns_members(inode)), 2)
        await self.jails.remove("w1", timeout=0.5)
        self.assertEqual(ns_members(inode), [])
        await self.jails.remove("w1")  # removing again is fine

    @deferred_test
    async def test_read_write_mount_and_bad_root(self) -> None:
        shared = self.work / "shared"
        shared.mkdir()
        path = await self.clone("w1")
        await self.jails.start(
            JailSpec(
                name="w1",
                path=path,
                hostname="w1.test",
                mounts=(Mount(str(shared), "/data", read_only=False),),
            )
        )
        (await self.jails.exec("w1", ["sh", "-c", "echo out > /data/f"])).check()
        self.assertEqual((shared / "f").read_text(), "out\n")
        with self.assertRaises(JailError) as ctx:
            await self.jails.start(JailSpec(name="w2", path=f"{path}-missing", hostname="w2.test"))
        self.assertIn("is not a directory", str(ctx.exception))
        with self.assertRaises(JailError) as ctx:
            await self.jails.start(JailSpec(name="w1", path=path, hostname="w1.test"))
        self.assertIn("already exists", str(ctx.exception))


class JailMountIsolationTests(PoolTestCase):
    @deferred_test
    async def test_a_running_jail_does_not_hold_another_jails_clone(self) -> None:
        # Jail a2 starts while a1's clone is mounted; without pivot_root, a2's copy of the mount
        # table kept a1's clone busy until a2 exited.
        path1 = await self.clone("a1")
        await self.jails.start(JailSpec(name="a1", path=path1, hostname="a1.test"))
        path2 = await self.clone("a2")
        await self.jails.start(JailSpec(name="a2", path=path2, hostname="a2.test"))
        r = (await self.jails.exec("a2", ["sh", "-c", "cat /proc/mounts"])).check()
        self.assertNotIn(path1, r.out)
        self.assertNotIn(path2, r.out)  # its own root shows as /, nothing of the host's paths
        await self.jails.remove("a1")
        await self.zfs.destroy(f"{self.root}/a1", attempts=4)
        self.assertFalse(await self.zfs.exists(f"{self.root}/a1"))
        self.assertEqual((await self.jails.exec("a2", ["hostname"])).check().out.strip(), "a2.test")
