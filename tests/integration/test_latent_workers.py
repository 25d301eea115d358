"""Jail latent workers through a real Buildbot master on the dev host (issue: latent workers).

Every claim is checked on the host itself: `zfs get` for clones and leases, /proc for the
jails' namespaces, the master's REST API for build results and the reasons it shows.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor, task

from jailfarm.cmd import Cmd
from jailfarm.provision.devhost import UpState
from jailfarm.runner import LocalRunner
from jailfarm.workers import layout
from tests.integration.farm import ROOT, FarmTestCase
from tests.integration.host import mounts_below, ns_members
from tests.support import deferred_test

RETRY = 5


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class _Helpers(FarmTestCase):
    async def clones(self) -> dict[str, dict[str, str]]:
        top = layout.jails_dataset(self.cfg)
        found = await self.host.platform.zfs.list(top, layout.LEASE_PROPERTIES, depth=1)
        return {
            d.name.rsplit("/", 1)[1]: dict(d.user)
            for d in found
            if d.name != top and d.type == "filesystem"
        }

    async def jails(self) -> dict[str, Any]:
        return {j.name: j for j in await self.host.platform.jails.list()}

    async def first_build(self, request: int) -> dict[str, Any]:
        async def done() -> Any:
            builds = (await self.get(f"buildrequests/{request}/builds"))["builds"]
            return builds[0] if builds and builds[0]["complete"] else None

        return dict(await self.until(f"build of request {request}", done, 120))

    async def cancel(self, request: int) -> None:
        await self.host.rpc(f"buildrequests/{request}", "cancel")

    async def preparation_log(self, buildid: int) -> str:
        steps = (await self.get(f"builds/{buildid}/steps"))["steps"]
        prep = next(s for s in steps if s["name"] == "worker_preparation")
        text = []
        for log in (await self.get(f"steps/{prep['stepid']}/logs"))["logs"]:
            text.append(await self.host.raw_log(log["logid"]))
        return "\n".join(text)

    async def fetch(self, url: str) -> str:
        response = await treq.get(url, persistent=False)
        body = await response.text()
        self.assertEqual(response.code, 200, f"{url}: {body[:300]}")
        return str(body)

    async def verify(self, url: str) -> str:
        """`jailfarm repo verify URL --pubkey` as a consumer would run it: its output."""
        key = Path(self.cfg.signing.key_file or "").with_suffix(".pub")
        argv = [str(ROOT / ".venv/bin/jailfarm"), "repo", "verify", url, "--pubkey", str(key)]
        result = await LocalRunner().run(Cmd(tuple(argv), timeout=120))
        self.assertTrue(result.ok, result.out + result.err)
        return str(result.out)

    async def nothing_left(self) -> None:
        async def empty() -> bool:
            return not await self.clones() and not await self.jails()

        await self.until("teardown of every worker jail", empty, 30)
        jails_mnt = f"{self.mountpoint}/demo/jails"

        async def unmounted() -> bool:
            return not [m for m in mounts_below(jails_mnt) if m != jails_mnt]

        await self.until(f"no mounts below {jails_mnt}", unmounted, 10)


class LatentWorkerTests(_Helpers):
    @deferred_test
    async def test_two_builds_at_once_get_two_jails_and_leave_nothing(self) -> None:
        requests = [
            await self.host.force("hold", "test", "force-hold", {"hold": "20"}) for _ in range(2)
        ]

        async def both_running() -> Any:
            jails, clones = await self.jails(), await self.clones()
            return (jails, clones) if len(jails) == 2 and len(clones) == 2 else None

        jails, clones = await self.until("two worker jails", both_running, 90)
        self.assertEqual(set(jails), set(clones))
        self.assertEqual(set(jails), {"jfw1", "jfw2"})
        inodes = {int(j.extra["pidns"]) for j in jails.values()}
        self.assertEqual(len(inodes), 2)  # two distinct pid namespaces
        for lease in clones.values():
            self.assertEqual(lease[layout.OWNER], "demo")
            self.assertGreater(int(lease[layout.EXPIRES]), time.time())
        builds = [await self.first_build(r) for r in requests]
        self.assertEqual([b["results"] for b in builds], [0, 0])
        self.assertEqual(
            {str(b["buildid"]) for b in builds}, {lease[layout.BUILD] for lease in clones.values()}
        )
        await self.nothing_left()
        for inode in inodes:
            self.assertEqual(ns_members(inode), [])

    @deferred_test
    async def test_master_killed_mid_build_orphans_are_reaped_and_build_not_lost(self) -> None:
        request = await self.host.force("hold", "test", "force-hold", {"hold": "300"})

        async def building() -> Any:
            builds = (await self.get(f"buildrequests/{request}/builds"))["builds"]
            if not builds:
                return None
            steps = (await self.get(f"builds/{builds[0]['buildid']}/steps"))["steps"]
            return any(s["name"] == "hold" and s["started_at"] for s in steps)

        await self.until("the build to run in its jail", building, 90)
        ((orphan, lease),) = (await self.clones()).items()
        pid = self.host._master_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await self.until("the master to die", self._master_dead, 10)
        self.assertIn(orphan, await self.jails())  # left behind by the dead master
        await self.host._master(UpState.load(self.host.state_path))  # restart

        async def orphan_gone() -> bool:
            lease_now = (await self.clones()).get(orphan, {})
            return lease_now.get(layout.BUILD) != lease[layout.BUILD]

        await self.until("the orphaned jail of the killed build to go", orphan_gone, 90)
        old = (await self.get(f"builds/{lease[layout.BUILD]}"))["builds"][0]
        request_now = (await self.get(f"buildrequests/{request}"))["buildrequests"][0]
        # Never lost silently: the interrupted build is marked, and its request retried.
        self.assertTrue(old["complete"])
        self.assertEqual(old["results"], RETRY)
        builds = (await self.get(f"buildrequests/{request}/builds"))["builds"]
        self.assertTrue(len(builds) >= 2 or request_now["complete"], (builds, request_now))
        await self.cancel(request)
        for build in builds:
            if not build["complete"]:
                await self.host.rpc(f"builds/{build['buildid']}", "stop")
        await self.nothing_left()

    async def _master_dead(self) -> bool:
        return self.host._master_pid() is None


class WorkerThatNeverAttachesTests(_Helpers):
    master_host = "127.0.0.2"  # the master listens on 127.0.0.1 only: the worker cannot attach
    attach_timeout = 6

    @deferred_test
    async def test_torn_down_within_the_timeout_and_the_reason_is_shown(self) -> None:
        t = time.monotonic()
        request = await self.host.force("jail-check", "test")
        await self.until("a worker jail", self.clones, 60)
        build = await self.first_build(request)
        elapsed = time.monotonic() - t
        await self.cancel(request)
        self.assertEqual(build["results"], RETRY)
        self.assertLess(elapsed, self.attach_timeout + 30)
        log = await self.preparation_log(build["buildid"])
        self.assertIn("did not attach within workers.attach_timeout (6 s) to 127.0.0.2:", log)
        self.assertIn("twistd.log ends:", log)
        await self.nothing_left()


class PoolBelowReserveTests(_Helpers):
    reserve = "1000M"  # the 1G test pool has about 980 MiB available

    @deferred_test
    async def test_no_clone_and_a_clear_error_naming_pool_and_figures(self) -> None:
        request = await self.host.force("jail-check", "test")
        build = await self.first_build(request)
        await self.cancel(request)
        self.assertEqual(build["results"], RETRY)
        log = await self.preparation_log(build["buildid"])
        self.assertIn(f"space guard: pool {self.cfg.zfs.pool} on jail host local has", log)
        self.assertIn("below the reserve of 1000 MiB", log)
        self.assertEqual(await self.clones(), {})


class PoudriereBulkTests(_Helpers):
    @deferred_test
    async def test_a_bulk_of_the_demo_tree_in_a_worker_jail(self) -> None:
        request = await self.host.force("bulk-141amd64-default", "test", "force-bulk")
        build = await self.first_build(request)
        buildid = build["buildid"]
        steps = {s["name"]: s for s in (await self.get(f"builds/{buildid}/steps"))["steps"]}
        logs = {}
        for name in ("poudriere-bulk", "check-packages"):
            for log in (await self.get(f"steps/{steps[name]['stepid']}/logs"))["logs"]:
                logs[(name, log["name"])] = await self.host.raw_log(log["logid"])
        self.assertEqual(build["results"], 0, logs.get(("check-packages", "stdio")))
        self.assertEqual(
            steps["poudriere-bulk"]["state_string"],
            "bulk 141amd64-default-default: 8 built, 0 failed, 0 skipped, 1 ignored",
        )
        props = (await self.get(f"builds/{buildid}?property=*"))["builds"][0]["properties"]
        built = props["poudriere_built"][0]
        self.assertEqual(
            sorted(built),
            [
                "devel/jf-buildtool",
                "devel/jf-flaky",
                "devel/libjf",
                "misc/jf-cowsay",
                "misc/jf-hello",
                "misc/jf-meta",
                "textproc/jf-docs",
                "textproc/jf-wc",
            ],
        )
        self.assertEqual(props["poudriere_ignored"][0], ["misc/jf-broken"])
        self.assertEqual(props["poudriere_failed"][0], [])
        table = logs[("poudriere-bulk", "ports")]
        self.assertIn("misc/jf-hello", table)
        self.assertIn("is for testing IGNORE", table)
        check = logs[("check-packages", "stdio")]
        self.assertIn("8 valid packages", check)
        self.assertRegex(check, r"jf-hello 1\.0_1 \d+ files deps=libjf")
        # Published on the master as generation 1, served by nginx, verified as pkg would.
        self.assertEqual(steps["publish"]["results"], 0)
        self.assertEqual(
            steps["publish"]["state_string"],
            "141amd64-default-default: published g1: 8 packages",
        )
        repo = "141amd64-default-default"
        url = f"http://localhost:{self.nginx_port}/packages/{repo}/"
        self.assertIn("8 packages", await self.verify(url))
        buildname = props["poudriere_buildname"][0]
        data = f"http://localhost:{self.nginx_port}/data/{repo}/{buildname}/.data.json"
        self.assertEqual(json.loads(await self.fetch(data))["buildname"], buildname)
        await self.nothing_left()

        # A new worker jail sees the packages of the first (the jail host's packages dataset):
        # poudriere finds them up to date and builds nothing.
        request = await self.host.force("bulk-141amd64-default", "test", "force-bulk")
        again = await self.first_build(request)
        self.assertEqual(again["results"], 0)
        props = (await self.get(f"builds/{again['buildid']}?property=*"))["builds"][0]
        self.assertEqual(props["properties"]["poudriere_built"][0], [])
        await self.nothing_left()


class PoudriereBulkWithAFailingPortTests(_Helpers):
    # A second set whose make.conf makes devel/jf-flaky fail in its build phase; misc/jf-meta
    # run-depends on it.
    extra_toml = """
[[sets]]
name = "failing"
make_conf = { "JF_FAIL" = "yes" }
"""

    @deferred_test
    async def test_a_failing_port_skips_its_dependents_and_the_step_reports_it(self) -> None:
        request = await self.host.force("bulk-141amd64-default-failing", "test", "force-bulk")
        build = await self.first_build(request)
        buildid = build["buildid"]
        steps = {s["name"]: s for s in (await self.get(f"builds/{buildid}/steps"))["steps"]}
        logs = {}
        for name in ("poudriere-bulk", "check-packages"):
            for log in (await self.get(f"steps/{steps[name]['stepid']}/logs"))["logs"]:
                logs[(name, log["name"])] = await self.host.raw_log(log["logid"])
        # on_port_failure = "failure" (the default): a failed port fails the step and the build.
        self.assertEqual(build["results"], 2, logs)
        self.assertEqual(steps["poudriere-bulk"]["results"], 2)
        self.assertEqual(
            steps["poudriere-bulk"]["state_string"],
            "bulk 141amd64-default-failing: 6 built, 1 failed, 1 skipped, 1 ignored (failure)",
        )
        props = (await self.get(f"builds/{buildid}?property=*"))["builds"][0]["properties"]
        self.assertEqual(
            sorted(props["poudriere_built"][0]),
            [
                "devel/jf-buildtool",
                "devel/libjf",
                "misc/jf-cowsay",
                "misc/jf-hello",
                "textproc/jf-docs",
                "textproc/jf-wc",
            ],
        )
        self.assertEqual(props["poudriere_failed"][0], ["devel/jf-flaky"])
        self.assertEqual(props["poudriere_skipped"][0], ["misc/jf-meta"])
        self.assertEqual(props["poudriere_ignored"][0], ["misc/jf-broken"])
        # The ports table: ORIGIN PACKAGE RESULT PHASE REASON, one row per package.
        rows = {r.split()[0]: r for r in logs[("poudriere-bulk", "ports")].splitlines()}
        self.assertEqual(
            rows["devel/jf-flaky"].split()[:4],
            ["devel/jf-flaky", "jf-flaky-0.9", "failed", "build"],
        )
        self.assertEqual(
            rows["misc/jf-meta"].split()[:3], ["misc/jf-meta", "jf-meta-1.0", "skipped"]
        )
        self.assertIn("depends on jf-flaky-0.9", rows["misc/jf-meta"])
        # The bulk step does not halt the build: the rest were packaged, the failed and the
        # skipped port were not.
        check = logs[("check-packages", "stdio")]
        self.assertIn("6 valid packages", check)
        self.assertNotRegex(check, r"(?m)^jf-(flaky|meta) ")
        # A bulk that failed by policy publishes nothing; its logs are served all the same, and
        # the step links the failed port's log.
        self.assertEqual(steps["publish"]["results"], 3)  # SKIPPED
        self.assertFalse((Path(self.cfg.publish.root) / "141amd64-default-failing").exists())
        urls = {u["name"]: u["url"] for u in steps["poudriere-bulk"]["urls"]}
        failed_log = next(u for name, u in urls.items() if "jf-flaky" in name)
        self.assertIn("build failure", await self.fetch(failed_log))
        await self.nothing_left()


class CancelledBulkTests(_Helpers):
    # A set whose make.conf makes devel/jf-flaky's build phase take two minutes.
    extra_toml = """
[[sets]]
name = "slow"
make_conf = { "JF_SLEEP" = "120" }
"""

    @deferred_test
    async def test_stopping_a_bulk_stops_poudriere_cleanly_and_the_next_bulk_completes(
        self,
    ) -> None:
        request = await self.host.force("bulk-141amd64-default-slow", "test", "force-bulk")

        async def building_slowly() -> Any:
            builds = (await self.get(f"buildrequests/{request}/builds"))["builds"]
            if not builds:
                return None
            steps = (await self.get(f"builds/{builds[0]['buildid']}/steps"))["steps"]
            bulk = next((s for s in steps if s["name"] == "poudriere-bulk"), None)
            # Everything but jf-flaky and its dependent jf-meta builds quickly.
            if bulk and " 6/" in bulk["state_string"]:
                return builds[0]
            return None

        running = await self.until("the bulk to reach the slow port", building_slowly, 120)
        t = time.monotonic()
        await self.host.rpc(f"builds/{running['buildid']}", "stop", reason="test cancels")
        build = await self.first_build(request)
        self.assertLess(time.monotonic() - t, 60)  # not the 120 s of the slow build
        self.assertEqual(build["results"], 6)  # CANCELLED
        steps = {
            s["name"]: s for s in (await self.get(f"builds/{build['buildid']}/steps"))["steps"]
        }
        logs = {
            log["name"]: log
            for log in (await self.get(f"steps/{steps['poudriere-bulk']['stepid']}/logs"))["logs"]
        }
        # After poudriere stopped, the step ran `poudriere jail -k` for this MASTERNAME.
        self.assertIn("recovery", logs)
        recovery = await self.host.raw_log(logs["recovery"]["logid"])
        self.assertIn("jail -k -j 141amd64 -p default -z slow", recovery)
        await self.nothing_left()
        # The next bulk (a fresh jail) completes.
        again = await self.host.force("bulk-141amd64-default", "test", "force-bulk")
        self.assertEqual((await self.first_build(again))["results"], 0)
        await self.nothing_left()
