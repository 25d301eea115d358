"""Pushes to a real git repository of the demo tree, end to end (issue: commit-triggered builds).

Three levels, cheapest first: the planner as a worker runs it (planner.py and plancli.py
copied into a directory and run with python -I, git and bmake for real); a real Buildbot master
whose workers never connect, so what pushes, web hooks, `buildbot sendchange` and the rebuild
form *schedule* can be read without building; and a whole farm (FarmTestCase) with two ABI
jails, where pushes build exactly the planned ports in worker jails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor, task
from twisted.trial import unittest

from jailfarm.cmd import Cmd
from jailfarm.master.changes import sign
from jailfarm.runner import LocalRunner
from tests.integration import farm
from tests.integration.farm import FarmTestCase, free_port
from tests.support import deferred_test

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "ports"
BIN = Path(sys.executable).parent
GIT = ("git", "-c", "user.name=jailfarm-test", "-c", "user.email=test@jailfarm.invalid")
SECRET = "push-secret-0123456789"
LIBJF_PLAN = ["devel/libjf", "misc/jf-cowsay", "misc/jf-hello", "misc/jf-meta"]
BULKS = ["bulk-141amd64-pushed", "bulk-150amd64-pushed"]


class DemoRepo:
    """A bare repository made from examples/ports, and a clone to commit and push from."""

    def __init__(self, top: Path, branch: str = "main") -> None:
        self.bare, self.work, self.branch = top / "ports.git", top / "work", branch
        shutil.copytree(DEMO, self.work, ignore=shutil.ignore_patterns("work", "distfiles"))
        self.git("init", "-q", f"--initial-branch={branch}")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "The demo ports tree")
        subprocess.run(
            ["git", "init", "-q", "--bare", f"--initial-branch={branch}", str(self.bare)],
            check=True,
        )
        self.git("push", "-q", str(self.bare), f"HEAD:refs/heads/{branch}")

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, *args: str) -> str:
        r = subprocess.run(
            [*GIT, "-C", str(self.work), *args], capture_output=True, text=True, check=True
        )
        return r.stdout.strip()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def commit(self, message: str, push: bool = False) -> tuple[str, str]:
        """Commit everything (an empty commit if nothing changed); (before, after)."""
        before = self.head()
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        if push:
            self.git("push", "-q", str(self.bare), f"HEAD:refs/heads/{self.branch}")
        return before, self.head()

    def edit(self, path: str, old: str, new: str) -> None:
        f = self.work / path
        text = f.read_text()
        assert old in text, (path, old)
        f.write_text(text.replace(old, new, 1))

    def bump(self, origin: str) -> None:
        self.edit(f"{origin}/Makefile", "CATEGORIES=", "PORTREVISION=\t9\nCATEGORIES=")

    def touch_mk(self) -> None:
        self.edit("Mk/bsd.port.mk", "\n", "\n# touched by a test\n")

    def delete_docs(self) -> None:
        """Remove textproc/jf-docs as a ports committer would: the port, its SUBDIR line and
        the dependency of the one port that used it."""
        shutil.rmtree(self.work / "textproc" / "jf-docs")
        self.edit("textproc/Makefile", "    SUBDIR += jf-docs\n", "")
        self.edit(
            "misc/jf-meta/Makefile",
            "jf-wc:textproc/jf-wc \\\n\t\t${LOCALBASE}/share/doc/jf-docs/README:textproc/jf-docs",
            "jf-wc:textproc/jf-wc",
        )


# --- the planner as the worker runs it ------------------------------------------------------


class PlannerOnAWorkerTests:
    """plancli.py and planner.py alone in a directory, run by `python -I` with a clean
    environment (as on a FreeBSD worker without jailfarm), over a real clone."""

    def setup_method(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="jf-plan-"))
        self.repo = DemoRepo(self.top)
        tool = self.top / "planner"
        tool.mkdir()
        for src in (ROOT / "poudriere" / "planner.py", ROOT / "jailfarm" / "plancli.py"):
            shutil.copy(src, tool)
        self.index = self.top / "index.json"

    def teardown_method(self) -> None:
        shutil.rmtree(self.top, ignore_errors=True)

    def plan(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-I", str(self.top / "planner" / "plancli.py")]
        argv += ["--tree", str(self.repo.work), "--make", "bmake", *args]
        env = {"PATH": os.environ["PATH"], "HOME": str(self.top)}
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    def plan_json(self, before: str, after: str) -> dict[str, Any]:
        r = self.plan("--from", before, "--to", after, "--index", str(self.index), "--json")
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def test_pushes_plan_exactly_what_they_change(self) -> None:
        repo = self.repo
        repo.bump("devel/libjf")
        one = self.plan_json(*repo.commit("devel/libjf: bump"))
        assert one["bulk"] == {"all": False, "origins": LIBJF_PLAN}
        assert one["headline"] == "this push rebuilds 4 ports (1 changed, 3 dependents)"
        assert one["index"]["source"] == "built" and one["index"]["queried"] == 9

        repo.touch_mk()
        mk = self.plan_json(*repo.commit("Mk: a comment"))
        assert mk["bulk"] == {"all": True, "origins": []}
        assert mk["headline"] == "this push rebuilds every port (Mk/bsd.port.mk changed)"

        repo.delete_docs()
        gone = self.plan_json(*repo.commit("textproc/jf-docs: remove"))
        assert gone["plan"]["deleted"] == ["textproc/jf-docs"]
        assert gone["bulk"]["origins"] == ["misc/jf-meta"]
        # The cached index was older than the Mk change: it is built anew, not patched.
        assert gone["index"]["source"] == "built"

        repo.bump("textproc/jf-wc")
        wc = self.plan_json(*repo.commit("textproc/jf-wc: bump"))
        assert wc["bulk"]["origins"] == ["misc/jf-meta", "textproc/jf-wc"]
        assert wc["index"]["source"].startswith("updated from ")
        assert wc["index"]["queried"] == 1  # one make -V, not one per port

        empty = self.plan_json(*repo.commit("nothing"))
        assert empty["bulk"] == {"all": False, "origins": []}
        assert empty["headline"] == "this push rebuilds nothing"

    def test_text_output_and_a_range_of_several_commits(self) -> None:
        repo = self.repo
        first = repo.head()
        repo.bump("devel/jf-buildtool")
        repo.commit("one")
        repo.bump("textproc/jf-docs")
        repo.commit("two")
        r = self.plan("--from", first)  # --to defaults to HEAD
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(
            "this push rebuilds 4 ports (2 changed, 2 dependents): devel/jf-buildtool misc/jf-meta"
        )
        assert "  textproc/jf-wc  depends on devel/jf-buildtool\n" in r.stdout

    def test_a_range_not_checked_out_is_planned_in_a_worktree(self) -> None:
        repo = self.repo
        repo.bump("devel/libjf")
        before, after = repo.commit("bump")
        repo.git("checkout", "-q", before)
        r = self.plan("--from", before, "--to", after, "--json")
        assert json.loads(r.stdout)["bulk"]["origins"] == LIBJF_PLAN
        assert repo.git("worktree", "list").count("\n") == 0  # the temporary one is gone

    def test_bad_revisions_are_refused_with_a_clear_message(self) -> None:
        for rev, message in (
            ("nosuchbranch", "unknown --from revision 'nosuchbranch'"),
            ("0" * 40, "unknown --from revision"),
            ("main;rm -rf /", "malformed revision 'main;rm -rf /'"),
            ("$(id)", "malformed revision"),
            ("--output=/tmp/x", "malformed revision"),
        ):
            r = self.plan(f"--from={rev}")
            assert r.returncode == 2, (rev, r.stdout, r.stderr)
            assert message in r.stderr, (rev, r.stderr)
            assert r.stdout == ""
        r = self.plan("--origins", "misc/nope")
        assert r.returncode == 2 and "no port misc/nope" in r.stderr

    def test_origins_plan_their_dependents(self) -> None:
        r = self.plan("--origins", "misc/jf-hello", "--json")
        out = json.loads(r.stdout)
        assert out["bulk"]["origins"] == ["misc/jf-cowsay", "misc/jf-hello", "misc/jf-meta"]


# --- a master that schedules but never builds -----------------------------------------------

LIGHT_FARM = """
[farm]
name = "push"
platform = "linux-dev"
prefix = "jp"
state_dir = "{top}/state"

[zfs]
pool = "jfpushnever"
root = "jfpushnever/farm"

[[poudriere.jails]]
name = "141amd64"
version = "14.1-RELEASE"

[[poudriere.jails]]
name = "150amd64"
version = "15.0-RELEASE"

[[trees]]
name = "default"
url = "{url}"
poll_interval = 1
stable_timer = 0
nightly = ""

[[trees]]
name = "hooked"
url = "https://github.com/example/ports.git"
hook_secret_file = "{top}/hook.secret"
stable_timer = 0

[workers]
pb_port = {pb}

[web]
port = {web}
url = "http://localhost:{web}/"

[nginx]
port = {nginx}
"""

LIGHT_CFG = """
import os
from buildbot.plugins import worker
from jailfarm.config import load_farm
from jailfarm.master.changes import www_hooks
from jailfarm.master.config import master_config
from jailfarm.master.www import www_config

here = os.path.dirname(os.path.abspath(__file__))
path = os.path.join(here, "farm.toml")
cfg = load_farm(path)
c = BuildmasterConfig = master_config(path)
# Workers that never connect: build requests stay pending, and nothing touches ZFS.
c["workers"] = [worker.Worker(w.name, "never-used") for w in c["workers"]]
c["services"] = []
c["www"] = www_config(cfg, path, hooks=www_hooks(cfg))
"""


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class LightMasterTests(unittest.TestCase):
    timeout = 120

    @deferred_test
    async def setUp(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="jf-push-"))
        self.repo = DemoRepo(self.top)
        secret = self.top / "hook.secret"
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
        self.pb, self.web = free_port(), free_port()
        text = LIGHT_FARM.format(
            top=self.top, url=self.repo.url, pb=self.pb, web=self.web, nginx=free_port()
        )
        self.basedir = self.top / "master"
        runner = LocalRunner()
        create = Cmd((str(BIN / "buildbot"), "create-master", "-q", str(self.basedir)))
        (await runner.run(create)).check()
        (self.basedir / "farm.toml").write_text(text)
        (self.basedir / "master.cfg").write_text(LIGHT_CFG)
        start = await runner.run(Cmd((str(BIN / "buildbot"), "start", str(self.basedir))))
        log = self.basedir / "twistd.log"
        assert start.ok, start.out + (log.read_text() if log.exists() else "")
        self.api = f"http://127.0.0.1:{self.web}/api/v2"
        await self.until("the GitPoller's first poll", self._polled)

    @deferred_test
    async def tearDown(self) -> None:
        try:
            await LocalRunner().run(Cmd((str(BIN / "buildbot"), "stop", str(self.basedir))))
        finally:
            shutil.rmtree(self.top, ignore_errors=True)

    async def _polled(self) -> bool:
        return (self.basedir / "gitpoller-default").is_dir()

    async def until(self, what: str, check: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await check()
            if value:
                return value
            await sleep(0.25)
        log = (self.basedir / "twistd.log").read_text(errors="replace")[-3000:]
        self.fail(f"timed out waiting for {what}\n{log}")

    async def get(self, path: str) -> Any:
        response = await treq.get(f"{self.api}/{path}", persistent=False)
        return await response.json()

    async def requests(self) -> list[tuple[str, dict[str, Any]]]:
        """(builder name, properties) of every build request, oldest first."""
        builders = {b["builderid"]: b["name"] for b in (await self.get("builders"))["builders"]}
        out = []
        for r in (await self.get("buildrequests?order=buildrequestid"))["buildrequests"]:
            props = (await self.get(f"buildsets/{r['buildsetid']}/properties"))["properties"]
            out.append((builders[r["builderid"]], {k: v[0] for k, v in props[0].items()}))
        return out

    async def hook(
        self, kind: str, payload: Any, secret: str = SECRET, query: str = ""
    ) -> tuple[int, str]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": ["application/json"]}
        if kind == "github":
            headers["X-GitHub-Event"] = ["push"]
        name = {"github": "X-Hub-Signature-256", "gitea": "X-Gitea-Signature"}.get(
            kind, "X-Jailfarm-Signature"
        )
        headers[name] = ["sha256=" + sign(secret, body)]
        url = f"http://127.0.0.1:{self.web}/change_hook/{kind}{query}"
        response = await treq.post(url, body, headers=headers, persistent=False)
        return response.code, (await response.text()).strip()

    async def sendchange(self, *args: str) -> tuple[int, str]:
        argv = (
            str(BIN / "buildbot"),
            "sendchange",
            "--master",
            f"127.0.0.1:{self.pb}",
            "-W",
            "dev",
        )
        result = await LocalRunner().run(Cmd((*argv, *args), timeout=60))
        return result.rc, result.out + result.err

    def github_payload(self, before: str, after: str, files: list[str]) -> dict[str, Any]:
        return {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "repository": {"clone_url": "https://github.com/example/ports.git"},
            "commits": [
                {"id": after, "message": "m", "added": [], "removed": [], "modified": files}
            ],
        }

    @deferred_test
    async def test_pushes_reach_one_build_per_abi(self) -> None:
        # A push the GitPoller finds: one bulk request per ABI jail, one testport per ABI.
        self.repo.bump("devel/libjf")
        self.repo.commit("devel/libjf: bump", push=True)

        async def four() -> Any:
            found = await self.requests()
            return found if len(found) == 4 else None

        found = await self.until("the polled push's build requests", four)
        assert sorted(name for name, _ in found) == [
            "bulk-141amd64-default",
            "bulk-150amd64-default",
            "testport-141amd64-default",
            "testport-150amd64-default",
        ]
        # A signed web hook for the other tree, and `buildbot sendchange` for it.
        a, b = "a" * 40, "b" * 40
        code, text = await self.hook("github", self.github_payload(a, b, ["Mk/bsd.port.mk"]))
        # 200: buildbot writes its answer before it sets 202 (www/change_hook.py).
        assert (code, text) == (200, "1 change found")
        rc, out = await self.sendchange(
            "--auth",
            f"push-hooked:{SECRET}",
            "--branch",
            "main",
            "--revision",
            "c" * 40,
            "--property",
            f"rebuild_from:{b}",
            "misc/jf-hello/Makefile",
        )
        assert rc == 0, out

        async def ten() -> Any:
            found = await self.requests()
            return found if len(found) == 10 else None

        hooked = sorted(name for name, _ in (await self.until("the hooked requests", ten))[4:])
        # The Mk change builds no testport (it changed no port); the sendchange one does.
        assert hooked == [
            "bulk-141amd64-hooked",
            "bulk-141amd64-hooked",
            "bulk-150amd64-hooked",
            "bulk-150amd64-hooked",
            "testport-141amd64-hooked",
            "testport-150amd64-hooked",
        ]
        changes_ = sorted((await self.get("changes"))["changes"], key=lambda c: c["changeid"])
        assert [c["project"] for c in changes_] == ["default", "hooked", "hooked"]
        assert changes_[2]["properties"]["rebuild_from"][0] == b
        # The rebuild form: every ABI of one tree and set, the origins with dependents.
        answer = await self.force(rebuild_tree="default", rebuild_origins="devel/libjf")
        assert "result" in answer, answer
        bsid, by_builder = answer["result"]
        assert len(by_builder) == 2
        props = (await self.get(f"buildsets/{bsid}/properties"))["properties"][0]
        assert props["rebuild_origins"][0] == ["devel/libjf"]

    async def force(self, **params: Any) -> dict[str, Any]:
        body = {
            "jsonrpc": "2.0",
            "method": "force",
            "id": 1,
            "params": {"reason": "test", "rebuild_jail": "all", "rebuild_set": "default", **params},
        }
        url = f"{self.api}/forceschedulers/rebuild"
        response = await treq.post(url, json=body, persistent=False)
        return dict(await response.json())

    @deferred_test
    async def test_bad_input_is_refused_and_schedules_nothing(self) -> None:
        a, b = "a" * 40, "b" * 40
        good = self.github_payload(a, b, ["devel/libjf/Makefile"])
        cases = [
            ("github", good, "not-the-secret", "", 403, "wrong signature for ports tree hooked"),
            (
                "jailfarm",
                {"tree": "nope", "branch": "main", "after": b},
                SECRET,
                "",
                404,
                "no ports tree 'nope' in farm.toml",
            ),
            (
                "gitea",
                {**good, "repository": {"clone_url": "https://x.example/y.git"}},
                SECRET,
                "",
                404,
                "which is no configured ports tree",
            ),
            (
                "jailfarm",
                {"tree": "default", "branch": "main", "after": b},
                SECRET,
                "",
                403,
                "ports tree default has no hook_secret_file",
            ),
            (
                "github",
                {**good, "ref": "refs/heads/main;reboot"},
                SECRET,
                "",
                400,
                "invalid branch name 'main;reboot'",
            ),
            ("github", {**good, "after": "HEAD~1"}, SECRET, "", 400, "malformed revision"),
            ("github", {**good, "ref": "main"}, SECRET, "", 400, "malformed ref"),
        ]
        for kind, payload, secret, query, code, message in cases:
            got = await self.hook(kind, payload, secret, query)
            assert got[0] == code and message in got[1], (kind, payload, got)
        rc, out = await self.sendchange(
            "--auth",
            f"push-hooked:{SECRET}",
            "--branch",
            "main$(reboot)",
            "--revision",
            b,
        )
        assert rc != 0 and "invalid branch name" in out, out
        rc, out = await self.sendchange(
            "--auth", "push-hooked:wrong", "--branch", "main", "--revision", b
        )
        assert rc != 0, out
        for params, message in (
            ({"rebuild_tree": "default", "rebuild_origins": "misc/jf-hello;id"}, "invalid port"),
            ({"rebuild_tree": "default"}, "give origins"),
            ({"rebuild_tree": "nope", "rebuild_full": True}, "nope"),
        ):
            answer = await self.force(**params)
            assert "error" in answer and message in json.dumps(answer["error"]), answer
        await sleep(2)  # the scheduler's treeStableTimer is 0: anything would be there now
        assert (await self.get("changes"))["changes"] == []
        assert await self.requests() == []


# --- a whole farm: pushes build in worker jails ---------------------------------------------

HOOKS_CFG = """
from jailfarm.config import load_farm as _load
from jailfarm.master.changes import www_hooks as _hooks
from jailfarm.master.www import www_config as _www
_cfg = _load(os.path.join(here, "farm.toml"))
c["www"] = _www(_cfg, os.path.join(here, "farm.toml"), hooks=_hooks(_cfg))
"""


class PushBuildTests(FarmTestCase):
    timeout = 600

    @deferred_test
    async def setUp(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="jf-pushes-"))
        self.repo = DemoRepo(self.top)
        secret = self.top / "hook.secret"
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
        self.extra_toml = f"""
[[poudriere.jails]]
name = "150amd64"
version = "15.0-RELEASE"

[[trees]]
name = "pushed"
url = "{self.repo.url}"
hook_secret_file = "{secret}"
stable_timer = 0
nightly = ""
"""
        original = farm.TEST_MASTER_CFG
        farm.TEST_MASTER_CFG = original + HOOKS_CFG  # the lead merges www_hooks into c["www"]
        try:
            await FarmTestCase.setUp(self)
        finally:
            farm.TEST_MASTER_CFG = original

    @deferred_test
    async def tearDown(self) -> None:
        try:
            await FarmTestCase.tearDown(self)
        finally:
            shutil.rmtree(self.top, ignore_errors=True)

    async def until(self, what: str, check: Any, timeout: float = 180) -> Any:
        return await FarmTestCase.until(self, what, check, timeout)

    async def hook(self, kind: str, payload: dict[str, Any], query: str = "") -> None:
        body = json.dumps(payload).encode()
        header = {"github": "X-Hub-Signature-256", "gitea": "X-Gitea-Signature"}.get(
            kind, "X-Jailfarm-Signature"
        )
        headers = {"Content-Type": ["application/json"], header: ["sha256=" + sign(SECRET, body)]}
        url = f"http://127.0.0.1:{self.cfg.web.port}/change_hook/{kind}{query}"
        response = await treq.post(url, body, headers=headers, persistent=False)
        text = await response.text()
        assert response.code == 200 and text == "1 change found", (response.code, text)

    async def last_request(self) -> int:
        found = (await self.get("buildrequests?order=-buildrequestid&limit=1"))["buildrequests"]
        return int(found[0]["buildrequestid"]) if found else 0

    async def builds_after(self, mark: int, count: int) -> dict[str, dict[str, Any]]:
        """The finished builds of the `count` requests made after request `mark`, by
        builder name, each with its properties and steps."""
        names = {b["builderid"]: b["name"] for b in (await self.get("builders"))["builders"]}

        async def done() -> Any:
            found = (await self.get(f"buildrequests?buildrequestid__gt={mark}"))["buildrequests"]
            if len(found) < count or not all(r["complete"] for r in found):
                return None
            return found

        requests = await self.until(f"{count} builds after request {mark}", done)
        assert len(requests) == count, requests
        out = {}
        for r in requests:
            (build,) = (await self.get(f"buildrequests/{r['buildrequestid']}/builds"))["builds"]
            full = (await self.get(f"builds/{build['buildid']}?property=*"))["builds"][0]
            full["steps"] = {
                s["name"]: s for s in (await self.get(f"builds/{build['buildid']}/steps"))["steps"]
            }
            out[names[r["builderid"]]] = full
        return out

    async def step_log(self, step: dict[str, Any], name: str) -> str:
        for log in (await self.get(f"steps/{step['stepid']}/logs"))["logs"]:
            if log["name"] == name:
                return await self.host.raw_log(log["logid"])
        return ""

    def passed(self, build: dict[str, Any]) -> None:
        steps = {n: s["state_string"] for n, s in build["steps"].items()}
        log = self.master_log()
        at = log.find("Traceback")
        why = f"{build['state_string']}: {steps}\n{log[at : at + 3000] if at >= 0 else log[-3000:]}"
        assert build["results"] == 0, why

    def payload(self, before: str, after: str, files: list[str]) -> dict[str, Any]:
        return {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "repository": {"clone_url": self.repo.url},
            "commits": [
                {"id": after, "message": "m", "added": [], "removed": [], "modified": files}
            ],
        }

    def changed_files(self, before: str, after: str) -> list[str]:
        return self.repo.git("diff", "--name-only", before, after).splitlines()

    @deferred_test
    async def test_pushes_build_the_plan_on_every_abi(self) -> None:
        await self.full_first()
        await self.one_port_changes()
        await self.a_port_is_deleted()
        await self.mk_changes()
        await self.an_empty_push()

    async def full_first(self) -> None:
        # Every package first (the rebuild form, full), so that later builds show exactly
        # what each push rebuilds.
        mark = await self.last_request()
        answer = await self.host.rpc(
            "forceschedulers/rebuild",
            "force",
            reason="test",
            rebuild_jail="all",
            rebuild_tree="pushed",
            rebuild_set="default",
            rebuild_full=True,
        )
        assert "result" in answer, answer
        builds = await self.builds_after(mark, 2)
        for name in BULKS:
            self.passed(builds[name])
            assert len(builds[name]["properties"]["poudriere_built"][0]) == 8

    async def one_port_changes(self) -> None:
        # One port changes: it and its dependents, on both ABIs; a testport of it on both.
        self.repo.bump("devel/libjf")
        before, after = self.repo.commit("devel/libjf: bump", push=True)
        mark = await self.last_request()
        await self.hook("github", self.payload(before, after, self.changed_files(before, after)))
        builds = await self.builds_after(mark, 4)
        assert sorted(builds) == [*BULKS, "testport-141amd64-pushed", "testport-150amd64-pushed"]
        for name in BULKS:
            props = builds[name]["properties"]
            self.passed(builds[name])
            assert props["plan_ports"][0] == LIBJF_PLAN
            assert sorted(props["poudriere_built"][0]) == LIBJF_PLAN
            plan = builds[name]["steps"]["plan"]
            assert plan["state_string"] == "this push rebuilds 4 ports (1 changed, 3 dependents)"
            log = await self.step_log(plan, "plan")
            assert f"range: {before}..{after}" in log
        for jail in ("141amd64", "150amd64"):
            test = builds[f"testport-{jail}-pushed"]
            self.passed(test)
            assert test["steps"]["testport-devel_libjf"]["results"] == 0

    async def a_port_is_deleted(self) -> None:
        # A port is deleted (and its one user updated): it leaves the plan.
        self.repo.delete_docs()
        before, after = self.repo.commit("textproc/jf-docs: remove", push=True)
        mark = await self.last_request()
        generic = {
            "tree": "pushed",
            "branch": "main",
            "before": before,
            "after": after,
            "files": self.changed_files(before, after),
        }
        await self.hook("jailfarm", generic)
        builds = await self.builds_after(mark, 4)
        for name in BULKS:
            props = builds[name]["properties"]
            self.passed(builds[name])
            assert props["plan_ports"][0] == ["misc/jf-meta"]
            assert props["plan"][0]["deleted"] == ["textproc/jf-docs"]
            assert props["poudriere_built"][0] == ["misc/jf-meta"]
        # The index the previous push left on the master: the first bulk updates it from the
        # diff and gives it back, a bulk that starts after that finds it current.
        logs = [await self.step_log(builds[n]["steps"]["plan"], "plan") for n in BULKS]
        sources = sorted(line for log in logs for line in log.splitlines() if "index:" in line)
        assert sources[-1].startswith("index: updated from "), sources
        assert all(" built" not in line for line in sources), sources

    async def mk_changes(self) -> None:
        # Mk/ changes: every port, on both ABIs; no port changed, so no testport.
        self.repo.touch_mk()
        before, after = self.repo.commit("Mk: a comment", push=True)
        mark = await self.last_request()
        payload = self.payload(before, after, self.changed_files(before, after))
        await self.hook("gitea", payload, query="?tree=pushed")
        builds = await self.builds_after(mark, 2)
        for name in BULKS:
            self.passed(builds[name])
            assert builds[name]["properties"]["plan_full"][0] is True
            assert builds[name]["steps"]["plan"]["state_string"] == (
                "this push rebuilds every port (Mk/bsd.port.mk changed)"
            )
            assert "poudriere-bulk" in builds[name]["steps"]

    async def an_empty_push(self) -> None:
        # An empty push: a change, no build.
        before, after = self.repo.commit("nothing", push=True)
        mark = await self.last_request()
        await self.hook("github", self.payload(before, after, []))
        await sleep(3)  # treeStableTimer is 0: a build request would exist by now
        assert await self.last_request() == mark
