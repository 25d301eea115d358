"""The web server's sign-in, roles and the farm's JSON API (master/www.py, master/wwwapi.py):
password checks against PBKDF2 hashes, which role may do what through Buildbot's own Authz on
its fake master, the www dict sent to browsers, farm.toml's refusal of plaintext passwords,
and the API's routes, answers, 403s and CSRF checks on repositories published in tmp dirs."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.www import WwwTestMixin
from buildbot.www.authz.authz import Forbidden
from buildbot.www.config import (
    get_www_frontend_config_dict,
    serialize_www_frontend_config_dict_to_json,
)
from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.trial import unittest
from twisted.web.resource import Resource

from jailfarm import configschema as cs
from jailfarm.cmd import program
from jailfarm.config import ConfigError, WebUser, hash_password, load_farm, parse_farm
from jailfarm.master.www import (
    _NO_SUCH_USER,
    FarmAuth,
    FarmAuthz,
    FarmUserInfo,
    farm_authz,
    roles_of,
    www_config,
)
from jailfarm.master.wwwapi import (
    ApiError,
    FarmApiResource,
    bulk_summary,
    bulks,
    generation_number,
    origin_allowed,
    route,
)
from jailfarm.poudriere.generations import publish, rollback
from jailfarm.poudriere.pkgsign import KeyFileSigner
from jailfarm.runner import FakeRunner
from tests.support import deferred_test, resolve, rsa_key_pem
from tests.unit.test_config import farm
from tests.unit.test_generations import add

ROOT = Path(__file__).resolve().parents[2]
FARM_TOML = "/etc/jailfarm/farm.toml"
ITER = cs.PBKDF2_MIN_ITERATIONS  # the cheapest hash farm.toml accepts
PASSWORDS = {"vera": "vera-pw", "otto": "otto-pw", "ada": "ada-pw"}
USERS = (
    WebUser("vera", hash_password("vera-pw", salt="veraSALT", iterations=ITER), "viewer"),
    WebUser("otto", hash_password("otto-pw", salt="ottoSALT", iterations=ITER), "ops"),
    WebUser("ada", hash_password("ada-pw", salt="adaSALT", iterations=ITER), "admin"),
)
ANONYMOUS: dict[str, Any] = {"anonymous": True}


def config(auth: str = "users", root: str = "/srv/repo") -> Any:
    cfg = load_farm(ROOT / "examples" / "farm.toml")
    web = dataclasses.replace(cfg.web, auth=auth, users=USERS if auth == "users" else ())
    publish_cfg = dataclasses.replace(cfg.publish, root=root)
    return dataclasses.replace(cfg, web=web, publish=publish_cfg)


def user(name: str, **extra: Any) -> dict[str, Any]:
    return {"username": name, **extra}


class FakeWww:
    """The part of Buildbot's WWWService that mounting the API uses: the base app's resource
    (the site root)."""

    def __init__(self) -> None:
        self.root = Resource()
        self.apps = self

    def get(self, name: str) -> Any:
        assert name == "base"
        return self

    @property
    def resource(self) -> Resource:
        return self.root


# --- sign-in -------------------------------------------------------------------------------


class FarmAuthTests(TestReactorMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.setup_test_reactor()
        self.auth = FarmAuth(USERS)

    def test_the_right_password_signs_in(self) -> None:
        assert self.auth.check_credentials(b"otto", b"otto-pw")

    def test_a_wrong_password_is_refused(self) -> None:
        assert not self.auth.check_credentials(b"otto", b"vera-pw")
        assert not self.auth.check_credentials(b"otto", b"")

    def test_an_unknown_user_is_refused_even_with_a_known_password(self) -> None:
        assert not self.auth.check_credentials(b"mallory", b"otto-pw")
        assert not self.auth.check_credentials(b"OTTO", b"otto-pw")

    def test_an_unknown_user_costs_a_real_pbkdf2_check(self) -> None:
        # The stand-in hash is well formed, so verify_password hashes for it (as slow as a
        # wrong password): the answer's timing does not tell which names exist.
        assert cs.password_hash(_NO_SUCH_USER) == _NO_SUCH_USER
        assert f"${cs.PBKDF2_ITERATIONS}$" in _NO_SUCH_USER

    def test_bytes_that_are_not_utf8_are_refused(self) -> None:
        assert not self.auth.check_credentials(b"\xff", b"otto-pw")
        assert not self.auth.check_credentials(b"otto", b"\xff")

    @deferred_test
    async def test_sign_in_through_twisted_cred_gives_the_user_name(self) -> None:
        assert await self.auth.requestAvatarId(UsernamePassword(b"ada", b"ada-pw")) == b"ada"
        with pytest.raises(UnauthorizedLogin):
            await self.auth.requestAvatarId(UsernamePassword(b"ada", b"otto-pw"))

    @deferred_test
    async def test_user_info_shows_the_role_and_the_roles_below_as_groups(self) -> None:
        info = await FarmUserInfo(USERS).getUserInfo("otto")
        assert info == {"email": "otto", "full_name": "otto", "groups": ["viewer", "ops"]}
        assert (await FarmUserInfo(USERS).getUserInfo("nobody"))["groups"] == []

    def test_no_hash_reaches_the_auth_config_sent_to_browsers(self) -> None:
        assert self.auth.getConfigDict() == {"name": "FarmAuth"}


def test_roles_nest() -> None:
    assert roles_of("viewer") == ["viewer"]
    assert roles_of("ops") == ["viewer", "ops"]
    assert roles_of("admin") == ["viewer", "ops", "admin"]


# --- roles -> allowed actions --------------------------------------------------------------

ACTIONS = {
    "force": (("forceschedulers", "force-bulk"), "force"),
    "stop build": (("builds", "1"), "stop"),
    "rebuild": (("builds", "1"), "rebuild"),
    "cancel request": (("buildrequests", "1"), "cancel"),
    "stop request": (("buildrequests", "1"), "stop"),
    "rollback": (("jailfarm", "repos", "main", "rollback"), "rollback"),
    "pause worker": (("workers", "1"), "pause"),
    "enable scheduler": (("schedulers", "1"), "enable"),
}
OPS_ACTIONS = {"force", "stop build", "rebuild", "cancel request", "stop request", "rollback"}


class AuthzTests(TestReactorMixin, unittest.TestCase):
    """Buildbot's Authz with the farm's rules, on Buildbot's fake master (real data API)."""

    @deferred_test
    async def setUp(self) -> None:
        self.setup_test_reactor()
        self.master = await fakemaster.make_master(self, wantData=True, wantDb=True)
        self.master.www = FakeWww()

    async def allowed(self, authz: FarmAuthz, who: dict[str, Any]) -> set[str]:
        authz.setMaster(self.master)
        out = set()
        for name, (ep, action) in ACTIONS.items():
            try:
                await authz.assertUserAllowed(ep, action, {}, who)
                out.add(name)
            except Forbidden:
                pass
        return out

    @deferred_test
    async def test_anonymous_and_viewers_may_change_nothing(self) -> None:
        authz = farm_authz(config(), FARM_TOML)
        assert await self.allowed(authz, ANONYMOUS) == set()
        assert await self.allowed(authz, user("vera")) == set()

    @deferred_test
    async def test_ops_force_stop_rebuild_cancel_and_roll_back(self) -> None:
        assert await self.allowed(farm_authz(config(), FARM_TOML), user("otto")) == OPS_ACTIONS

    @deferred_test
    async def test_admins_may_do_everything(self) -> None:
        assert await self.allowed(farm_authz(config(), FARM_TOML), user("ada")) == set(ACTIONS)

    @deferred_test
    async def test_roles_come_from_the_current_users_not_the_session(self) -> None:
        # A session cookie made before the user was removed or demoted still says "admin".
        stale = user("gone", groups=["viewer", "ops", "admin"])
        assert await self.allowed(farm_authz(config(), FARM_TOML), stale) == set()

    @deferred_test
    async def test_everyone_may_read(self) -> None:
        authz = farm_authz(config(), FARM_TOML)
        authz.setMaster(self.master)
        for ep in (("builds",), ("jailfarm", "repos"), ("workers", "1")):
            await authz.assertUserAllowed(ep, "get", {}, ANONYMOUS)

    @deferred_test
    async def test_without_auth_everyone_may_do_everything(self) -> None:
        authz = farm_authz(config(auth="none"), FARM_TOML)
        assert await self.allowed(authz, ANONYMOUS) == set(ACTIONS)

    @deferred_test
    async def test_a_forbidden_action_names_the_role_it_needs(self) -> None:
        authz = farm_authz(config(), FARM_TOML)
        authz.setMaster(self.master)
        with pytest.raises(Forbidden) as info:
            await authz.assertUserAllowed(("workers", "1"), "pause", {}, user("otto"))
        assert b"admin" in info.value.message


# --- the www dict -------------------------------------------------------------------------


class _Config:
    buildbotURL = "http://localhost:8080/buildbot/"
    title = titleURL = "jailfarm demo"
    multiMaster = False


class _Master:
    config = _Config()


class WwwConfigTests:
    def test_without_auth_there_is_no_sign_in_and_no_rule(self) -> None:
        www = www_config(config(auth="none"), FARM_TOML)
        assert "auth" not in www
        assert isinstance(www["authz"], FarmAuthz) and www["authz"].allowRules == []
        assert www["port"] == "tcp:8010:interface=127.0.0.1"

    def test_with_users_sign_in_is_the_farms(self) -> None:
        www = www_config(config(), FARM_TOML)
        assert isinstance(www["auth"], FarmAuth)
        assert len(www["authz"].allowRules) == 6

    def test_an_ipv6_bind_is_escaped_for_twisted(self) -> None:
        cfg = config()
        cfg = dataclasses.replace(cfg, web=dataclasses.replace(cfg.web, bind="::1"))
        assert www_config(cfg, FARM_TOML)["port"] == "tcp:8010:interface=\\:\\:1"

    def test_change_hooks_are_merged(self) -> None:
        checker = FilePasswordDB("/etc/jailfarm/changehook.passwd")
        hooks = {"change_hook_dialects": {"base": {}}, "change_hook_auth": [checker]}
        www = www_config(config(), FARM_TOML, hooks)
        assert www["change_hook_dialects"] == {"base": {}}
        assert www["change_hook_auth"] == [checker]
        text = serialize_www_frontend_config_dict_to_json(
            get_www_frontend_config_dict(_Master(), www)
        )
        assert "changehook.passwd" not in text and "change_hook_dialects" not in text

    def test_hooks_cannot_replace_auth(self) -> None:
        with pytest.raises(ValueError, match="may only set"):
            www_config(config(), FARM_TOML, {"auth": None})

    def test_a_hook_checker_that_browsers_would_see_is_refused(self) -> None:
        memory = InMemoryUsernamePasswordDatabaseDontUse(hook=b"s3cret")
        with pytest.raises(ValueError, match="not a FilePasswordDB"):
            www_config(config(), FARM_TOML, {"change_hook_auth": [memory]})

    def test_what_browsers_get_holds_no_hash_and_no_path(self) -> None:
        www = www_config(config(), FARM_TOML)
        text = serialize_www_frontend_config_dict_to_json(
            get_www_frontend_config_dict(_Master(), www)
        )
        for u in USERS:
            salt, digest = u.password_hash.split("$")[2:]
            assert salt not in text and digest not in text
        assert "pbkdf2" not in text and FARM_TOML not in text and "/srv/repo" not in text
        assert json.loads(text)["auth"] == {"name": "FarmAuth"}


# --- farm.toml ----------------------------------------------------------------------------


def users_farm(**user_keys: object) -> dict[str, object]:
    return farm(web={"users": [{"name": "ops", **user_keys}]})


class PasswordConfigTests:
    def test_a_plaintext_password_key_is_refused_without_echoing_it(self) -> None:
        ok_hash = USERS[1].password_hash
        with pytest.raises(ConfigError) as info:
            parse_farm(users_farm(password="hunter2-plain", password_hash=ok_hash))
        message = str(info.value)
        assert "web.users[0].password: a plaintext password (not shown) is refused" in message
        assert "password_hash" in message and "hunter2-plain" not in message

    def test_a_plaintext_password_as_the_hash_is_refused_without_echoing_it(self) -> None:
        with pytest.raises(ConfigError) as info:
            parse_farm(users_farm(password_hash="hunter2-plain"))
        message = str(info.value)
        assert "plaintext password, which is refused" in message
        assert "hunter2-plain" not in message

    def test_listing_users_turns_sign_in_on(self) -> None:
        web = parse_farm(users_farm(password_hash=USERS[1].password_hash, role="ops")).web
        assert web.auth == "users" and web.users[0].role == "ops"

    def test_the_example_farm_has_no_sign_in(self) -> None:
        assert load_farm(ROOT / "examples" / "farm.toml").web.auth == "none"


# --- the API: pure parts ------------------------------------------------------------------


class RouteTests:
    @pytest.mark.parametrize(
        ("method", "path", "action", "repo"),
        [
            ("GET", ["whoami"], "whoami", None),
            ("GET", ["repos"], "repos", None),
            ("GET", ["repos", ""], "repos", None),
            ("HEAD", ["repos"], "repos", None),
            ("GET", ["bulks"], "bulks", None),
            ("GET", ["repos", "141amd64-default"], "repo", "141amd64-default"),
            ("GET", ["repos", "main", "diff"], "diff", "main"),
            ("POST", ["repos", "main", "rollback"], "rollback", "main"),
        ],
    )
    def test_routes(self, method: str, path: list[str], action: str, repo: str | None) -> None:
        r = route(method, path)
        assert (r.action, r.repo) == (action, repo)
        assert r.control == (action == "rollback")

    @pytest.mark.parametrize(
        ("method", "path", "status"),
        [
            ("GET", [], 404),
            ("GET", ["repos", "main", "rollback", "x"], 404),
            ("GET", ["repos", "main", "delete"], 404),
            ("GET", ["repos", "main", "rollback"], 405),
            ("POST", ["repos", "main", "diff"], 405),
            ("DELETE", ["repos"], 405),
            ("GET", ["repos", ".."], 400),
            ("GET", ["repos", "-rf"], 400),
        ],
    )
    def test_refusals(self, method: str, path: list[str], status: int) -> None:
        with pytest.raises(ApiError) as info:
            route(method, path)
        assert int(info.value.status) == status

    def test_generation_numbers(self) -> None:
        assert [generation_number(v, "to") for v in (None, "", 3, "3", "g12")] == [
            None,
            None,
            3,
            3,
            12,
        ]
        for bad in (0, -1, True, "g0", "x", 1.5, "g1/.."):
            with pytest.raises(ApiError):
                generation_number(bad, "to")

    def test_origins_as_buildbot_checks_them(self) -> None:
        url = "http://localhost:8080/buildbot/"
        assert origin_allowed("http://localhost:8080", url, None)
        assert origin_allowed("HTTP://LOCALHOST:8080", url, None)
        assert not origin_allowed("http://evil.example", url, None)
        assert not origin_allowed("http://localhost:8081", url, None)
        assert origin_allowed("https://ci.example.org", url, ["https://*.example.org"])


class BulkSummaryTests:
    def test_new_failures_and_fixed_ports_against_the_bulk_before(self) -> None:
        before = {"poudriere_built": ["a/x"], "poudriere_failed": ["b/y", "c/z"]}
        now = {
            "poudriere_built": ["b/y", "a/x"],
            "poudriere_failed": ["c/z", "d/w"],
            "poudriere_skipped": ["e/v"],
            "poudriere_ignored": [],
        }
        assert bulk_summary(now, before) == {
            "built": ["a/x", "b/y"],
            "failed": ["c/z", "d/w"],
            "skipped": ["e/v"],
            "ignored": [],
            "new_failures": ["d/w"],
            "fixed": ["b/y"],
        }

    def test_a_first_bulk_has_nothing_new_or_fixed(self) -> None:
        summary = bulk_summary({"poudriere_failed": ["c/z"]}, None)
        assert summary["failed"] == ["c/z"]
        assert summary["new_failures"] == summary["fixed"] == []
        assert summary["built"] == []  # a bulk that stopped before poudriere reported


# --- the API resource on Buildbot's fake master ------------------------------------------


@functools.cache
def pem() -> bytes:
    return rsa_key_pem()


class ApiResourceTests(TestReactorMixin, WwwTestMixin, unittest.TestCase):
    URL = "http://localhost:8080/buildbot/"

    @deferred_test
    async def setUp(self) -> None:
        self.setup_test_reactor()
        work = Path(tempfile.mkdtemp(prefix="jf-www-"))
        self.addCleanup(shutil.rmtree, work, True)
        self.root = work / "repo"
        key = work / "keys" / "repo.key"
        key.parent.mkdir(parents=True)
        key.write_bytes(pem())
        src = work / "packages" / ".latest"
        for version in ("1.0", "1.1"):
            add(src, "hello", version)
            add(src, "world", "2.0")
            resolve(publish(self.root, "main", src, KeyFileSigner(key), 3, {"build": version}))
        cfg = config(root=str(self.root))
        authz = farm_authz(cfg, FARM_TOML)
        await self.make_master(url=self.URL, authz=authz)
        www = self.master.www
        www.authz = authz
        www.assertUserAllowed = lambda request, ep, action, options: authz.assertUserAllowed(
            ep, action, options, www.getUserInfos(request)
        )
        self.runner = FakeRunner()
        self.api = FarmApiResource(self.master, FARM_TOML, str(self.root), self.runner)

    async def call(
        self,
        path: str,
        who: dict[str, Any] = ANONYMOUS,
        method: bytes = b"GET",
        body: Any = None,
        content_type: bytes | None = None,
        origin: bytes | None = None,
    ) -> tuple[int, Any]:
        self.master.session.user_info = who
        if method == b"POST" and content_type is None:
            content_type = b"application/json"
        content = json.dumps(body if body is not None else {}).encode()
        written = await self.render_resource(
            self.api,
            path.encode(),
            method=method,
            content=content,
            content_type=content_type,
            origin=origin,
        )
        return int(self.request.responseCode), json.loads(written)

    def rollback_to(self, number: int) -> None:
        argv = [program("jailfarm"), "repo", "rollback", "-c", FARM_TOML, "main", f"g{number}"]
        # What the process does: the real rollback, under the repository lock.
        self.runner.expect(*argv, check=lambda cmd: rollback(self.root, "main", number) and None)

    def test_the_api_is_mounted_beside_buildbots(self) -> None:
        mounted = self.master.www.apps.get.return_value.resource.putChild.call_args
        assert mounted.args[0] == b"jailfarm"
        assert isinstance(mounted.args[1].children[b"api"], FarmApiResource)

    @deferred_test
    async def test_repositories_and_their_current_generation(self) -> None:
        code, answer = await self.call("/repos")
        assert code == 200
        assert answer == {"repos": [{"name": "main", "current": 2, "generations": [1, 2]}]}

    @deferred_test
    async def test_generations_without_paths_on_the_master(self) -> None:
        code, answer = await self.call("/repos/main")
        assert code == 200
        g1, g2 = answer["generations"]
        assert (g1["name"], g1["current"], g2["current"], g2["previous"]) == ("g1", False, True, 1)
        assert g2["info"] == {"build": "1.1"} and g2["packages"] == 2
        assert str(self.root) not in json.dumps(answer)

    @deferred_test
    async def test_diff_defaults_to_the_generation_before_current(self) -> None:
        code, answer = await self.call("/repos/main/diff")
        assert code == 200
        assert (answer["from"], answer["to"], answer["unchanged"]) == (1, 2, 1)
        assert answer["upgraded"] == [{"name": "hello", "old": "1.0", "new": "1.1"}]
        _, back = await self.call("/repos/main/diff?from=g2&to=1")
        assert back["downgraded"] == [{"name": "hello", "old": "1.1", "new": "1.0"}]

    @deferred_test
    async def test_unknown_repositories_and_generations_are_404(self) -> None:
        assert (await self.call("/repos/nope"))[0] == 404
        code, answer = await self.call("/repos/main/diff?from=7")
        assert code == 404 and "unknown generation g7" in answer["error"]

    @deferred_test
    async def test_anonymous_and_viewers_cannot_roll_back(self) -> None:
        for who in (ANONYMOUS, user("vera")):
            code, answer = await self.call("/repos/main/rollback", who, b"POST", {"to": 1})
            assert code == 403 and "ops" in answer["error"]
        assert self.runner.calls == []

    @deferred_test
    async def test_ops_roll_back(self) -> None:
        self.rollback_to(1)
        code, answer = await self.call("/repos/main/rollback", user("otto"), b"POST", {"to": 1})
        assert code == 200
        assert answer["current"]["number"] == 1 and answer["repo"] == "main"
        self.runner.assert_all_commands_ran()
        _, repos = await self.call("/repos")
        assert repos["repos"][0]["current"] == 1

    @deferred_test
    async def test_rolling_back_an_unknown_repository_is_404(self) -> None:
        code, answer = await self.call("/repos/nope/rollback", user("otto"), b"POST", {"to": 1})
        assert code == 404 and "no repository 'nope'" in answer["error"]
        assert self.runner.calls == []

    @deferred_test
    async def test_a_failed_rollback_says_why(self) -> None:
        argv = [program("jailfarm"), "repo", "rollback", "-c", FARM_TOML, "main"]
        why = "nothing to roll back to: g1 is the oldest kept generation of main"
        self.runner.expect(*argv, rc=1, stderr=f"jailfarm repo rollback: {why}\n")
        code, answer = await self.call("/repos/main/rollback", user("ada"), b"POST", {"to": None})
        assert (code, answer) == (409, {"error": why})

    @deferred_test
    async def test_a_post_must_be_json_as_buildbots_own(self) -> None:
        for kind in (b"text/plain", b"application/x-www-form-urlencoded"):
            code, _ = await self.call("/repos/main/rollback", user("otto"), b"POST", {}, kind)
            assert code == 415
        code, answer = await self.call(
            "/repos/main/rollback", user("otto"), b"POST", ["to", 1], b"application/json"
        )
        assert code == 400 and "JSON object" in answer["error"]
        assert self.runner.calls == []

    @deferred_test
    async def test_a_cross_site_post_is_refused(self) -> None:
        code, answer = await self.call(
            "/repos/main/rollback", user("otto"), b"POST", {"to": 1}, origin=b"http://evil.test"
        )
        assert (code, answer) == (403, {"error": "cross-origin request refused"})
        self.rollback_to(1)
        code, _ = await self.call(
            "/repos/main/rollback",
            user("otto"),
            b"POST",
            {"to": 1},
            origin=b"http://localhost:8080",
        )
        assert code == 200

    @deferred_test
    async def test_whoami(self) -> None:
        assert (await self.call("/whoami"))[1] == {
            "user": None,
            "roles": [],
            "may_rollback": False,
        }
        assert (await self.call("/whoami", user("otto")))[1] == {
            "user": "otto",
            "roles": ["ops", "viewer"],
            "may_rollback": True,
        }

    @deferred_test
    async def test_wrong_methods_are_405(self) -> None:
        assert (await self.call("/repos/main/rollback"))[0] == 405
        assert (await self.call("/repos", user("ada"), b"POST"))[0] == 405


class BulksTests(TestReactorMixin, unittest.TestCase):
    """`GET bulks` on Buildbot's fake master: its real data API over an in-memory database."""

    @deferred_test
    async def setUp(self) -> None:
        self.setup_test_reactor()
        self.master = await fakemaster.make_master(self, wantData=True, wantDb=True)

    def bulk(self, number: int, complete: bool, **ports: list[str]) -> list[Any]:
        done = {"results": 2 if ports.get("failed") else 0, "complete_at": 1_700_000_000 + number}
        rows: list[Any] = [
            fakedb.BuildRequest(id=number, buildsetid=1, builderid=1),
            fakedb.Build(
                id=number,
                number=number,
                buildrequestid=number,
                builderid=1,
                workerid=1,
                masterid=1,
                **(done if complete else {}),
            ),
        ]
        for kind, origins in ports.items():
            name = f"poudriere_{kind}"  # fakedb stores the value as JSON, as the master does
            rows.append(fakedb.BuildProperty(buildid=number, name=name, value=origins))
        return rows

    @deferred_test
    async def test_the_latest_finished_bulk_against_the_one_before(self) -> None:
        await self.master.db.insert_test_data(
            [
                fakedb.Master(id=1),
                fakedb.Worker(id=1, name="jfw1"),
                fakedb.Builder(id=1, name="bulk-141amd64-default"),
                fakedb.Builder(id=2, name="hold"),
                fakedb.Builder(id=3, name="bulk-141amd64-other"),
                fakedb.Buildset(id=1),
                *self.bulk(1, True, built=["a/x"], failed=["b/y", "c/z"]),
                *self.bulk(2, True, built=["a/x", "b/y"], failed=["c/z", "d/w"]),
                *self.bulk(3, False, built=["a/x"]),  # still running
            ]
        )
        latest, never = await bulks(self.master)
        assert never == {"builder": "bulk-141amd64-other", "build": None}
        assert latest["builder"] == "bulk-141amd64-default"
        assert latest["build"] == {
            "buildid": 2,
            "number": 2,
            "results": 2,
            "state_string": "test",
            "complete_at": 1_700_000_002.0,
        }
        assert latest["ports"]["new_failures"] == ["d/w"]
        assert latest["ports"]["fixed"] == ["b/y"]
