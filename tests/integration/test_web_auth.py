"""Sign-in, roles and secrets through a real farm (issue #7 part 1): a real Buildbot master with
farm.toml users viewer, ops and admin, reached through the farm's nginx at /buildbot/ as a
browser would. Anonymous visitors and viewers get 403 for force, stop, cancel and rollback; ops
may do those; no secret (a worker jail's password, the signing key, the session secret, the
users' hashes) appears in any answer of /api/v2, the UI's configuration or the farm's API."""

from __future__ import annotations

import ast
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor, task

from jailfarm import configschema as cs
from jailfarm.config import hash_password
from jailfarm.poudriere.generations import generations, publish
from jailfarm.poudriere.pkgsign import KeyFileSigner
from jailfarm.workers.workerplan import WORKER_DIR
from tests.integration.farm import FarmTestCase
from tests.support import deferred_test
from tests.unit.test_generations import add

PASSWORDS = {"vera": "vera-Pw-4711", "otto": "otto-Pw-0815", "ada": "ada-Pw-1234"}
ROLES = {"vera": "viewer", "otto": "ops", "ada": "admin"}
# The cheapest hashes farm.toml accepts: every sign-in costs one PBKDF2 check.
HASHES = {
    name: hash_password(pw, salt=f"{name}salt", iterations=cs.PBKDF2_MIN_ITERATIONS)
    for name, pw in PASSWORDS.items()
}
USERS_TOML = "\n".join(
    f'[[web.users]]\nname = "{name}"\npassword_hash = "{HASHES[name]}"\nrole = "{role}"\n'
    for name, role in ROLES.items()
)
REPO = "141amd64-default"
SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|private", re.IGNORECASE)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class _Web(FarmTestCase):
    extra_toml = USERS_TOML

    @property
    def base(self) -> str:
        """The UI's URL through nginx, as in web.url."""
        return f"http://localhost:{self.nginx_port}/buildbot/"

    async def login(self, name: str, password: str | None = None) -> str:
        """Sign in as a browser does (basic auth on /auth/login); the session cookie."""
        response = await treq.get(
            self.base + "auth/login",
            auth=(name, password or PASSWORDS[name]),
            allow_redirects=False,
            persistent=False,
            timeout=30,
        )
        await response.content()
        self.assertEqual(response.code, 302, f"sign-in of {name}")
        # The anonymous session is set first, then the signed-in one: the last one counts.
        cookies = [
            header.decode().split(";")[0]
            for header in response.headers.getRawHeaders(b"set-cookie", [])
            if header.startswith(b"TWISTED_SESSION=")
        ]
        self.assertTrue(cookies, f"no session cookie for {name}")
        return cookies[-1]

    async def call(
        self, method: str, path: str, cookie: str | None = None, body: Any = None
    ) -> tuple[int, bytes]:
        headers = {"Cookie": [cookie]} if cookie else {}
        response = await treq.request(
            method,
            self.base + path,
            json=body,
            headers=headers,
            persistent=False,
            timeout=60,
        )
        return response.code, await response.content()

    async def rpc(
        self, path: str, method: str, cookie: str | None = None, **params: Any
    ) -> tuple[int, Any]:
        body = {"jsonrpc": "2.0", "method": method, "id": 1, "params": params}
        code, content = await self.call("POST", "api/v2/" + path, cookie, body)
        return code, json.loads(content)

    async def get_json(self, path: str, cookie: str | None = None) -> Any:
        code, content = await self.call("GET", path, cookie)
        self.assertEqual(code, 200, f"GET {path}: {content[:300]!r}")
        return json.loads(content)

    async def force_hold(self, cookie: str, seconds: int) -> int:
        code, answer = await self.rpc(
            "forceschedulers/force-hold",
            "force",
            cookie,
            builderNames=["hold"],
            reason="web auth test",
            hold=str(seconds),
        )
        self.assertEqual(code, 200, answer)
        return int(next(iter(answer["result"][1].values())))

    async def build_of(self, request: int, complete: bool = False) -> dict[str, Any]:
        async def found() -> Any:
            builds = (await self.get_json(f"api/v2/buildrequests/{request}/builds"))["builds"]
            return builds[0] if builds and (builds[0]["complete"] or not complete) else None

        return dict(await self.until(f"the build of request {request}", found))

    async def publish_generations(self, versions: tuple[str, ...]) -> None:
        """Publish generations of REPO into publish.root, signed with the farm's key."""
        assert self.cfg.signing.key_file
        signer = KeyFileSigner(Path(self.cfg.signing.key_file))
        src = self.work / "packages" / REPO / ".latest"
        for version in versions:
            add(src, "jf-hello", version)
            add(src, "jf-world", "2.0")
            await publish(Path(self.cfg.publish.root), REPO, src, signer, self.cfg.publish.keep, {})


class ControlTests(_Web):
    @deferred_test
    async def test_sign_in_needs_the_right_password(self) -> None:
        for name, password in (("otto", "vera-Pw-4711"), ("mallory", "otto-Pw-0815")):
            response = await treq.get(
                self.base + "auth/login", auth=(name, password), persistent=False, timeout=30
            )
            await response.content()
            self.assertEqual(response.code, 401, name)
        cookie = await self.login("otto")
        config = await self.get_json("config", cookie)
        self.assertEqual(config["user"]["username"], "otto")
        self.assertEqual(config["user"]["groups"], ["viewer", "ops"])
        self.assertEqual((await self.get_json("config"))["user"], {"anonymous": True})

    @deferred_test
    async def test_only_ops_and_admins_force_stop_cancel_and_roll_back(self) -> None:
        vera, otto, ada = [await self.login(n) for n in ("vera", "otto", "ada")]
        for who in (None, vera):
            code, answer = await self.rpc(
                "forceschedulers/force-hold", "force", who, builderNames=["hold"], hold="1"
            )
            self.assertEqual(code, 403, answer)
            self.assertIn("you need to have role 'ops'", answer["error"]["message"])
        request = await self.force_hold(otto, 300)
        build = await self.build_of(request)
        for who in (None, vera):
            for path, method in (
                (f"builds/{build['buildid']}", "stop"),
                (f"buildrequests/{request}", "cancel"),
                (f"builds/{build['buildid']}", "rebuild"),
            ):
                code, answer = await self.rpc(path, method, who)
                self.assertEqual(code, 403, (path, method, who, answer))
        workerid = (await self.get_json("api/v2/workers"))["workers"][0]["workerid"]
        code, answer = await self.rpc(f"workers/{workerid}", "pause", otto)
        self.assertEqual(code, 403, answer)  # everything else is for admins
        self.assertIn("'admin'", answer["error"]["message"])
        code, answer = await self.rpc(f"builds/{build['buildid']}", "stop", otto)
        self.assertEqual(code, 200, answer)
        stopped = await self.build_of(request, complete=True)
        self.assertEqual(stopped["results"], 6, stopped)  # CANCELLED, stopped by ops

        await self.publish_generations(("1.0", "1.1"))
        path = f"jailfarm/api/repos/{REPO}/rollback"
        for who in (None, vera):
            headers = {"Cookie": [who]} if who else {}
            response = await treq.post(
                self.base + path, json={"to": 1}, headers=headers, persistent=False
            )
            self.assertEqual(response.code, 403, await response.content())
        code, content = await self.call("POST", path, otto, {"to": 1})
        self.assertEqual(code, 200, content)
        self.assertEqual(json.loads(content)["current"]["number"], 1)
        root = Path(self.cfg.publish.root)
        self.assertEqual([g.number for g in generations(root, REPO) if g.current], [1])
        self.assertEqual((await self.get_json("jailfarm/api/whoami", ada))["may_rollback"], True)
        code, content = await self.call("POST", path, ada, {})  # to the one before: none
        self.assertEqual(code, 409, content)
        code, content = await self.call("POST", path, ada, {"to": "g2"})
        self.assertEqual(code, 200, content)
        self.assertIn(f"repository {REPO} rolled back to g1 by otto", self.master_log())


class SecretTests(_Web):
    async def worker_password(self) -> str:
        """The password of the worker jail running now, from its buildbot.tac."""

        async def running() -> Any:
            return await self.host.platform.jails.list()

        (jail, *_) = await self.until("a worker jail", running)
        tac = Path(jail.path + WORKER_DIR) / "buildbot.tac"
        text = await self.until("the worker's buildbot.tac", lambda: _read(tac))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Worker":
                password = node.args[3]
                assert isinstance(password, ast.Constant)
                return str(password.value)
        self.fail(f"no Worker(...) in {tac}")

    def secrets(self) -> dict[str, str]:
        """What must never be shown, by what it is."""
        key = self.cfg.signing.key_file
        assert key
        found = {"signing key path": key, "database url": self.cfg.database.url.reveal()}
        pem = Path(key).read_text().splitlines()
        found.update({f"signing key line {i}": line for i, line in enumerate(pem[1:-1])})
        db = sqlite3.connect(Path(self.cfg.state_dir) / "master" / "state.sqlite")
        try:
            (secret,) = db.execute(
                "SELECT value_json FROM object_state WHERE name = 'session_secret'"
            ).fetchone()
        finally:
            db.close()
        found["session secret"] = json.loads(secret)
        for name, encoded in HASHES.items():
            salt, digest = encoded.split("$")[2:]
            found[f"{name}'s hash"] = digest
            found[f"{name}'s salt"] = salt
            found[f"{name}'s password"] = PASSWORDS[name]
        return found

    async def answers(self, cookie: str | None) -> dict[str, bytes]:
        """Every answer a visitor gets: each /api/v2 collection, each build's properties,
        steps and logs, the UI page and its configuration, the farm's API."""
        out: dict[str, bytes] = {}

        async def get(path: str) -> Any:
            code, content = await self.call("GET", path, cookie)
            self.assertEqual(code, 200, f"GET {path}: {content[:300]!r}")
            out[path] = content
            return json.loads(content) if path != "" else None

        for path in ("", "config", "jailfarm/api/whoami", "jailfarm/api/repos"):
            await get(path)
        await get(f"jailfarm/api/repos/{REPO}")
        await get(f"jailfarm/api/repos/{REPO}/diff")
        await get("jailfarm/api/bulks")
        for collection in (
            "builders",
            "builds",
            "buildrequests",
            "buildsets",
            "changes",
            "changesources",
            "forceschedulers",
            "masters",
            "schedulers",
            "sourcestamps",
            "workers",
        ):
            await get(f"api/v2/{collection}")
        for build in (await get("api/v2/builds"))["builds"]:
            buildid = build["buildid"]
            await get(f"api/v2/builds/{buildid}?property=*")
            await get(f"api/v2/builds/{buildid}/properties")
            for step in (await get(f"api/v2/builds/{buildid}/steps"))["steps"]:
                for log in (await get(f"api/v2/steps/{step['stepid']}/logs"))["logs"]:
                    await get(f"api/v2/logs/{log['logid']}/contents")
                    code, raw = await self.call("GET", f"api/v2/logs/{log['logid']}/raw", cookie)
                    self.assertEqual(code, 200)
                    out[f"logs/{log['logid']}/raw"] = raw
        for buildset in (await get("api/v2/buildsets"))["buildsets"]:
            await get(f"api/v2/buildsets/{buildset['bsid']}/properties")
        return out

    @deferred_test
    async def test_no_secret_in_any_answer(self) -> None:
        ada = await self.login("ada")
        request = await self.force_hold(ada, 5)
        worker_password = await self.worker_password()
        self.assertGreaterEqual(len(worker_password), 16)
        await self.build_of(request, complete=True)
        code, answer = await self.rpc(
            "forceschedulers/force", "force", ada, builderNames=["jail-check"]
        )
        self.assertEqual(code, 200, answer)
        check = await self.build_of(int(next(iter(answer["result"][1].values()))), True)
        self.assertEqual(check["results"], 0, check)
        await self.publish_generations(("1.0", "1.1"))
        secrets = {"worker password": worker_password, **self.secrets()}
        for who, cookie in (("anonymous", None), ("ada", ada)):
            answers = await self.answers(cookie)
            self.assertGreater(len(answers), 30)
            for path, content in answers.items():
                text = content.decode("utf-8", "replace")
                for what, secret in secrets.items():
                    self.assertNotIn(secret, text, f"{what} in GET {path} as {who}")
                if path.startswith(("api/", "config", "jailfarm/")):
                    for key, value in _string_fields(json.loads(content)):
                        self.assertFalse(
                            SECRET_KEY.search(key) and value,
                            f"{key}={value!r} in GET {path} as {who}",
                        )


async def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the tac is written right after the clone is made
        return None


def _string_fields(data: Any, key: str = "") -> list[tuple[str, str]]:
    """(key, value) of every string value in `data`, nested keys joined with '.'."""
    if isinstance(data, dict):
        return [f for k, v in data.items() for f in _string_fields(v, f"{key}.{k}")]
    if isinstance(data, list):
        return [f for v in data for f in _string_fields(v, key)]
    return [(key, data)] if isinstance(data, str) else []
