"""Buildbot's web server for a farm (adapter): the `c["www"]` entry built from farm.toml's
[web]: sign-in against the farm's PBKDF2 password hashes, roles from its users, and which role
may do what (buildbot-4.3.md section 5, "Authentication" and "Authorization").

Roles nest: a viewer reads, ops also force, stop, rebuild and cancel builds and roll
repositories back, an admin may do anything. Reading stays open to anonymous visitors (Buildbot
cannot restrict reads: its websocket and SSE have no authz); with auth = "users" an anonymous
visitor may change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildbot.www.auth import CustomAuth, UserInfoProviderBase
from buildbot.www.authz import Authz
from buildbot.www.authz.endpointmatchers import (
    AnyControlEndpointMatcher,
    EndpointMatcherBase,
    ForceBuildEndpointMatcher,
    Match,
    RebuildBuildEndpointMatcher,
    StopBuildEndpointMatcher,
)
from buildbot.www.authz.roles import RolesFromUsername
from twisted.cred.checkers import FilePasswordDB
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, threads
from twisted.logger import Logger

from jailfarm.config import ROLES, verify_password
from jailfarm.configschema import PBKDF2_ITERATIONS
from jailfarm.master.dashboard import dashboard_plugin
from jailfarm.master.wwwapi import API_SEGMENT, mount_api

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jailfarm.config import FarmConfig, WebUser

__all__ = [
    "ADMIN",
    "HOOK_KEYS",
    "OPS",
    "VIEWER",
    "FarmActionMatcher",
    "FarmAuth",
    "FarmAuthz",
    "FarmUserInfo",
    "farm_authz",
    "roles_of",
    "www_config",
]

VIEWER, OPS, ADMIN = ROLES
# What master/changes.py's www_hooks(cfg) may add to the www dict; nothing else may be replaced.
HOOK_KEYS = frozenset({"change_hook_dialects", "change_hook_auth"})
# Verified when the user name is unknown, so a wrong name costs as long as a wrong password
# (same iterations as hash_password's default) and never tells which names exist.
_NO_SUCH_USER = f"pbkdf2_sha256${PBKDF2_ITERATIONS}$jailfarm-no-such-user${'A' * 43}="


def roles_of(role: str) -> list[str]:
    """The Buildbot roles of a farm.toml role: the role and every role below it."""
    return list(ROLES[: ROLES.index(role) + 1])


class FarmUserInfo(UserInfoProviderBase):  # type: ignore[misc]  # buildbot is untyped
    """What the UI shows of a signed-in user: the name and, as groups, the roles. Authz does
    not trust these groups (they live in the session cookie for a week); it asks the farm's
    current users (`farm_authz`), so a demoted or removed user loses the rights at reconfig."""

    name = "jailfarm"

    def __init__(self, users: Sequence[WebUser]) -> None:
        self._roles = {u.name: roles_of(u.role) for u in users}

    def getUserInfo(self, username: str) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed(
            {"email": username, "full_name": username, "groups": self._roles.get(username, [])}
        )


class FarmAuth(CustomAuth):  # type: ignore[misc]  # buildbot is untyped
    """Sign-in (HTTP basic at /auth/login, then Buildbot's session cookie) against the
    PBKDF2 hashes of farm.toml's [[web.users]]; plaintext passwords are never configured.
    PBKDF2 is slow by design (~0.1 s per check), so the check runs in a thread, not on the
    reactor (hashlib releases the GIL while it hashes)."""

    log = Logger()

    def __init__(self, users: Sequence[WebUser]) -> None:
        self._hashes = {u.name: u.password_hash for u in users}
        super().__init__(userInfoProvider=FarmUserInfo(users))

    def check_credentials(self, username: bytes, password: bytes) -> bool:
        """Whether `password` is the password of `username`; constant-time, and as slow for
        an unknown name as for a known one."""
        try:
            name, plain = username.decode(), password.decode()
        except UnicodeDecodeError:
            return False
        encoded = self._hashes.get(name)
        matches = verify_password(plain, encoded or _NO_SUCH_USER)
        return matches and encoded is not None

    def requestAvatarId(self, cred: Any) -> defer.Deferred[bytes]:
        username: bytes = cred.username
        d: defer.Deferred[bool] = threads.deferToThread(  # type: ignore[no-untyped-call]
            self._thd_check, username, cred.password
        )

        def answer(ok: bool) -> bytes:
            if not ok:
                self.log.info("web sign-in refused for {user!r}", user=username)
                raise UnauthorizedLogin()
            return username

        return d.addCallback(answer)

    def _thd_check(self, username: bytes, password: bytes) -> bool:
        return self.check_credentials(username, password)


class CancelBuildRequestMatcher(EndpointMatcherBase):  # type: ignore[misc]  # buildbot is untyped
    """Cancelling a build request (`POST buildrequests/<id>` method cancel), which Buildbot
    has no matcher for."""

    def match_BuildRequestEndpoint_cancel(
        self, epobject: Any, epdict: Any, options: Any
    ) -> defer.Deferred[Match]:
        return defer.succeed(Match(self.master))


class FarmActionMatcher(EndpointMatcherBase):  # type: ignore[misc]  # buildbot is untyped
    """A control action of the farm's own API (wwwapi.py), e.g. "rollback", whose endpoint
    path starts with API_SEGMENT; Buildbot's data layer does not know these paths."""

    def __init__(self, action: str, **kwargs: Any) -> None:
        self.action = action
        super().__init__(**kwargs)

    def match(
        self, ep: Sequence[str], action: str = "get", options: Any = None
    ) -> defer.Deferred[Match | None]:
        if tuple(ep[:1]) == (API_SEGMENT,) and action == self.action:
            return defer.succeed(Match(self.master))
        return defer.succeed(None)


class FarmAuthz(Authz):  # type: ignore[misc]  # buildbot is untyped
    """Buildbot's Authz, which also serves the farm's own API (wwwapi.py) at /jailfarm/api/:
    the API's actions are authorized here, and `setMaster` is the hook Buildbot calls with the
    master at every (re)configuration of the web server (www/service.py), so the API follows
    reconfigs and needs neither a c['services'] entry nor an installed www plugin."""

    def __init__(self, farm_toml: str, publish_root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.farm_toml, self.publish_root = farm_toml, publish_root

    def setMaster(self, master: Any) -> None:
        super().setMaster(master)
        mount_api(master, self.farm_toml, self.publish_root)


def farm_authz(cfg: FarmConfig, farm_toml: str) -> FarmAuthz:
    """Who may do what. With auth = "none" everyone may do everything (Buildbot's default;
    farm.toml then only allows a loopback bind). Otherwise the first matching rule decides;
    control actions no rule names are for admins, so anonymous visitors and viewers change
    nothing. Roles come from the farm's current users, by the session's user name."""
    root = cfg.publish.root
    if cfg.web.auth != "users":
        return FarmAuthz(farm_toml, root)
    users = cfg.web.users
    by_role = {role: [u.name for u in users if u.role == role] for role in ROLES}
    return FarmAuthz(
        farm_toml,
        root,
        allowRules=[
            ForceBuildEndpointMatcher(role=OPS),
            StopBuildEndpointMatcher(role=OPS),
            RebuildBuildEndpointMatcher(role=OPS),
            CancelBuildRequestMatcher(role=OPS),
            FarmActionMatcher("rollback", role=OPS),
            AnyControlEndpointMatcher(role=ADMIN),
        ],
        roleMatchers=[
            RolesFromUsername(roles=roles_of(role), usernames=names)
            for role, names in by_role.items()
            if names
        ],
    )


def www_config(
    cfg: FarmConfig, farm_toml: str, hooks: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The `c["www"]` dict: where Buildbot's web server listens, its view plugins and the
    farm's dashboard, the farm's authorization (which mounts its API) and with web.auth =
    "users" sign-in. `farm_toml` is the farm file the API's rollback hands to `jailfarm
    repo`. `hooks` (master/changes.py's
    `www_hooks(cfg)`) adds `change_hook_dialects` / `change_hook_auth`; any other key is a
    ValueError, so a hook can never replace auth or authz. Everything here except
    `change_hook_dialects` is sent to browsers as the UI's configuration (buildbot/www/
    config.py), so nothing in it may carry a secret: the auth objects show only their name."""
    web = cfg.web
    # Twisted endpoint strings separate fields with ':'; an IPv6 address needs them escaped.
    interface = web.bind.replace(":", "\\:")
    www: dict[str, Any] = {
        "port": f"tcp:{web.port}:interface={interface}",
        "plugins": {
            "waterfall_view": {},
            "console_view": {},
            "grid_view": {},
            # The farm's dashboard (dashboard.py), "Farm" in the UI's menu.
            "wsgi_dashboards": dashboard_plugin(cfg),
        },
        "authz": farm_authz(cfg, farm_toml),
    }
    if web.auth == "users":
        www["auth"] = FarmAuth(web.users)
    extra = dict(hooks or {})
    if unknown := sorted(set(extra) - HOOK_KEYS):
        raise ValueError(f"www hooks may only set {sorted(HOOK_KEYS)}, not {unknown}")
    # Buildbot sends change_hook_auth to browsers too; a FilePasswordDB shows as {"type":
    # "file"} (buildbot/util/config.py), other checkers could show their contents. It is also
    # the one checker that works (buildbot-4.3.md section 4: "memory:" never authenticates).
    for checker in extra.get("change_hook_auth", []):
        if not isinstance(checker, FilePasswordDB):
            raise ValueError(
                f"change_hook_auth: {type(checker).__name__} is not a FilePasswordDB "
                '(strcred.makeChecker("file:/abs/path"))'
            )
    www.update(extra)
    return www
