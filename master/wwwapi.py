"""The farm's JSON API beside Buildbot's REST API (adapter), at `/jailfarm/api/` of Buildbot's
web server (`/buildbot/jailfarm/api/` through nginx), for the dashboard and for scripts:

    GET  whoami                        the session's user, roles and whether it may roll back
    GET  repos                         repositories: current generation, kept generations
    GET  repos/<repo>                  its generations, oldest first
    GET  repos/<repo>/diff?from=&to=   packages added, removed, up/downgraded, rebuilt
                                       (default: from the generation before `to`, to current)
    POST repos/<repo>/rollback         {"to": N or "gN" or null}: point current there (null:
                                       the generation before current); ops and admins
    GET  bulks                         the latest bulk of each bulk builder, with its per-port
                                       results and what changed against the bulk before

Answers are JSON; errors are `{"error": message}` with 400, 403, 404, 405, 409, 415 or 500.
Authorization is Buildbot's authz (`master.www.assertUserAllowed`, rules in www.py) on the
path ("jailfarm", *segments) with the action "get" or "rollback". POSTs are CSRF-safe as
Buildbot's own are (www/rest.py): they need `Content-Type: application/json`, which no HTML
form can send cross-site, and a browser's Origin must be the farm's web.url origin.

Reading generations happens in a thread (catalogues can be large); a rollback runs
`jailfarm repo rollback` as a process, since it waits on the repository lock a publish holds.
The dashboard (dashboard.py) shows the same answers: it reads through `bulk_builds`,
`user_rights`, `read_repos`, `read_repo` and `read_diff` here.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from buildbot.www.authz.authz import Forbidden
from buildbot.www.resource import Resource
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import resource as twresource
from twisted.web.error import Error

from jailfarm.cmd import Cmd, program
from jailfarm.errors import InvalidName
from jailfarm.poudriere.generations import (
    REPO,
    GenerationError,
    diff,
    generations,
    repositories,
)
from jailfarm.runner import LocalRunner

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from jailfarm.poudriere.generations import Change, Generation, RepoDiff
    from jailfarm.runner import Runner

__all__ = [
    "API_SEGMENT",
    "ApiError",
    "BulkRecord",
    "FarmApiResource",
    "Route",
    "build_properties",
    "bulk_builds",
    "bulk_summary",
    "bulks",
    "diff_json",
    "generation_json",
    "mount_api",
    "origin_allowed",
    "read_diff",
    "read_repo",
    "read_repos",
    "route",
    "user_rights",
]

T = TypeVar("T")
# The first path segment of the farm's endpoints, in URLs and as Buildbot's authz sees them.
API_SEGMENT = "jailfarm"
_GEN = re.compile(r"g?([1-9][0-9]*)")
_MAX_BODY = 4096
ROLLBACK_TIMEOUT = 600  # a rollback waits for a publish in progress to release the lock
PORT_RESULTS = ("built", "failed", "skipped", "ignored")


class ApiError(Error):
    """An answer other than 200: the status and the message of `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message.encode())


# --- pure: routes and answers ------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What a request asks for: `action` is "whoami", "repos", "repo", "diff", "rollback" or
    "bulks"; `authz_action` is what Buildbot's authz is asked about ("get" or "rollback")."""

    action: str
    repo: str | None = None

    @property
    def authz_action(self) -> str:
        return "rollback" if self.action == "rollback" else "get"

    @property
    def control(self) -> bool:
        return self.authz_action != "get"


def route(method: str, path: Sequence[str]) -> Route:
    """The route of `method` on `path` (the segments after /jailfarm/api/; a trailing slash
    is tolerated). Raises ApiError 404 for an unknown path, 405 for a wrong method and 400
    for a malformed repository name."""
    parts = list(path[:-1] if path and path[-1] == "" else path)
    methods = {"whoami": "GET", "repos": "GET", "repo": "GET", "diff": "GET", "bulks": "GET"}
    methods["rollback"] = "POST"
    found: Route | None = None
    if parts in (["whoami"], ["repos"], ["bulks"]):
        found = Route(parts[0])
    elif len(parts) in (2, 3) and parts[0] == "repos":
        action = "repo" if len(parts) == 2 else parts[2]
        if action in ("repo", "diff", "rollback"):
            try:
                found = Route(action, REPO.check(parts[1]))
            except InvalidName as e:
                raise ApiError(400, str(e)) from None
    if found is None:
        raise ApiError(404, f"no such endpoint: /{'/'.join(parts)}")
    wanted = methods[found.action]
    if method not in (wanted, "HEAD" if wanted == "GET" else wanted):
        raise ApiError(405, f"{method} is not allowed here; use {wanted}")
    return found


def generation_number(value: object, what: str) -> int | None:
    """`N`, `"N"` or `"gN"` as a generation number; None for None or ""."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _GEN.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise ApiError(400, f"{what}: {value!r} is not a generation; expected N or gN")
    return int(m[1])


def generation_json(g: Generation) -> dict[str, Any]:
    """A generation as the API shows it; never its path on the master."""
    return {
        "number": g.number,
        "name": g.name,
        "created": g.created,
        "packages": g.packages,
        "info": dict(g.info),
        "current": g.current,
        "previous": g.previous,
    }


def _changes(changes: Sequence[Change]) -> list[dict[str, str | None]]:
    return [{"name": c.name, "old": c.old, "new": c.new} for c in changes]


def diff_json(repo: str, d: RepoDiff) -> dict[str, Any]:
    return {
        "repo": repo,
        "from": d.a,
        "to": d.b,
        "added": _changes(d.added),
        "removed": _changes(d.removed),
        "upgraded": _changes(d.upgraded),
        "downgraded": _changes(d.downgraded),
        "rebuilt": _changes(d.rebuilt),
        "unchanged": d.unchanged,
    }


def _ports(props: Mapping[str, Any], kind: str) -> list[str]:
    value = props.get(f"poudriere_{kind}")
    return sorted(str(v) for v in value) if isinstance(value, list) else []


def bulk_summary(
    latest: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> dict[str, list[str]]:
    """Per-port results of a bulk from its build properties (`poudriere_built`, ...: lists of
    origins, as PoudriereBulk sets them), plus `new_failures` (failed now, not in the bulk
    before) and `fixed` (failed before, built now). Without a bulk before, nothing is new or
    fixed: a first bulk has no history to compare with."""
    out = {kind: _ports(latest, kind) for kind in PORT_RESULTS}
    failed_before = set(_ports(previous, "failed")) if previous is not None else None
    if failed_before is None:
        out["new_failures"], out["fixed"] = [], []
    else:
        out["new_failures"] = [p for p in out["failed"] if p not in failed_before]
        out["fixed"] = sorted(failed_before & set(out["built"]))
    return out


def origin_allowed(origin: str, buildbot_url: str, allowed: Sequence[str] | None) -> bool:
    """Buildbot's CORS rule (www/rest.py): the Origin must match one of `allowed_origins`
    (fnmatch patterns) or, by default, the origin of buildbotURL."""
    url = urlsplit(buildbot_url)
    patterns = allowed if allowed is not None else [f"{url.scheme}://{url.netloc}"]
    return any(fnmatch.fnmatch(origin.lower(), p.lower()) for p in patterns)


# --- shell: reading generations (in a thread) ----------------------------------------------


def _in_thread(fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    d: defer.Deferred[T] = threads.deferToThread(fn, *args)  # type: ignore[no-untyped-call]
    return d


def read_repos(root: Path) -> list[dict[str, Any]]:
    """`GET repos`: every repository under the publish root with its generation numbers."""
    out = []
    for name in repositories(root):
        gens = generations(root, name)
        current = next((g.number for g in gens if g.current), None)
        out.append({"name": name, "current": current, "generations": [g.number for g in gens]})
    return out


def read_repo(root: Path, repo: str) -> list[dict[str, Any]]:
    """`GET repos/<repo>`: its generations, oldest first; GenerationError for an unknown one."""
    return [generation_json(g) for g in generations(root, repo)]


def read_diff(root: Path, repo: str, a: int | None, b: int | None) -> dict[str, Any]:
    """`GET repos/<repo>/diff`: `b` defaults to current, `a` to the generation before `b`;
    GenerationError when there is nothing to compare."""
    gens = generations(root, repo)
    if b is None:
        b = next((g.number for g in gens if g.current), None)
        if b is None:
            raise GenerationError(f"{repo} has no current generation")
    if a is None:
        older = [g.number for g in gens if g.number < b]
        if not older:
            raise GenerationError(f"g{b} is the oldest kept generation of {repo}: no diff")
        a = older[-1]
    return diff_json(repo, diff(root, repo, a, b))


# --- adapter: the twisted.web resource and its mount ---------------------------------------


class FarmApiResource(Resource):  # type: ignore[misc]  # buildbot is untyped
    """`/jailfarm/api/...` (see the module docstring). Requests are twisted.web Requests,
    which are untyped, hence `Any`."""

    isLeaf = True
    log = Logger()

    def __init__(
        self, master: Any, farm_toml: str, publish_root: str, runner: Runner | None = None
    ) -> None:
        super().__init__(master)
        self.farm_toml, self.root = farm_toml, Path(publish_root)
        self.runner: Runner = runner or LocalRunner(master.reactor)

    def render(self, request: Any) -> int:
        def error(message: bytes, errcode: int = 400) -> None:
            request.setResponseCode(errcode)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"error": message.decode("utf-8", "replace")}).encode())
            request.finish()

        def answer(r: Any) -> defer.Deferred[bytes]:
            return defer.ensureDeferred(self._answer(r))

        return int(self.asyncRenderHelper(request, answer, error))

    async def _answer(self, request: Any) -> bytes:
        method = (request.method or b"").decode()
        path = [p.decode("utf-8", "replace") for p in request.postpath or []]
        r = route(method, path)
        options: dict[str, Any] = {"repo": r.repo} if r.repo else {}
        if r.control:
            self._check_csrf(request)
            options.update(self._body(request))
        ep = (API_SEGMENT, *(p for p in path if p))
        await self.master.www.assertUserAllowed(request, ep, r.authz_action, options)
        answer = await self._dispatch(r, request, options)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(answer, sort_keys=True).encode()

    def _check_csrf(self, request: Any) -> None:
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            raise ApiError(415, "use Content-Type: application/json")
        origin = request.getHeader(b"origin")
        www = self.master.config.www
        if origin and not origin_allowed(
            origin.decode("latin-1"), self.master.config.buildbotURL, www.get("allowed_origins")
        ):
            raise ApiError(403, "cross-origin request refused")

    @staticmethod
    def _body(request: Any) -> dict[str, Any]:
        raw = request.content.read(_MAX_BODY + 1) if request.content else b""
        if len(raw) > _MAX_BODY:
            raise ApiError(400, f"request body over {_MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise ApiError(400, f"request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    async def _dispatch(self, r: Route, request: Any, options: dict[str, Any]) -> Any:
        root = self.root
        try:
            if r.action == "whoami":
                return await self._whoami(request)
            if r.action == "bulks":
                return {"bulks": await bulks(self.master)}
            if r.action == "repos":
                return {"repos": await _in_thread(read_repos, root)}
            assert r.repo is not None
            if r.action == "repo":
                gens = await _in_thread(read_repo, root, r.repo)
                return {"repo": r.repo, "generations": gens}
            if r.action == "diff":
                args = request.args or {}
                a, b = (generation_number(_arg(args, k), k) for k in ("from", "to"))
                return await _in_thread(read_diff, root, r.repo, a, b)
            return await self._rollback(request, r.repo, options.get("to"))
        except (GenerationError, InvalidName) as e:
            raise ApiError(404, str(e)) from None

    async def _whoami(self, request: Any) -> dict[str, Any]:
        user = self.master.www.getUserInfos(request)
        return await user_rights(self.master.www.authz, user)

    async def _rollback(self, request: Any, repo: str, to: object) -> dict[str, Any]:
        number = generation_number(to, "to")
        await _in_thread(read_repo, self.root, repo)  # an unknown repository is a 404
        argv = [program("jailfarm"), "repo", "rollback", "-c", self.farm_toml, repo]
        if number is not None:
            argv.append(f"g{number}")
        result = await self.runner.run(Cmd(tuple(argv), timeout=ROLLBACK_TIMEOUT))
        if not result.ok:
            why = (result.err or result.out).strip().removeprefix("jailfarm repo rollback: ")
            status = 409 if result.rc == 1 else 500
            raise ApiError(504 if result.timed_out else status, why or f"rc {result.rc}")
        gens = await _in_thread(read_repo, self.root, repo)
        current = next((g for g in gens if g["current"]), None)
        user = self.master.www.getUserInfos(request)
        self.log.info(
            "repository {repo} rolled back to g{to} by {user}",
            repo=repo,
            to=current and current["number"],
            user=user.get("username", "anonymous"),
        )
        return {"repo": repo, "current": current, "generations": gens}


def _arg(args: Mapping[bytes, list[bytes]], key: str) -> str | None:
    values = args.get(key.encode())
    return values[0].decode("utf-8", "replace") if values else None


async def user_rights(authz: Any, user: Mapping[str, Any]) -> dict[str, Any]:
    """`GET whoami` for the session's user info (Buildbot's `getUserInfos`): the name (None
    when anonymous), the roles Buildbot's `authz` gives it and whether it may roll back."""
    roles = sorted(authz.getRolesFromUser(user)) if authz is not None else []
    may_rollback = True
    if authz is not None:
        try:
            ep = (API_SEGMENT, "repos", "*", "rollback")
            await authz.assertUserAllowed(ep, "rollback", {}, user)
        except Forbidden:
            may_rollback = False
    name = None if user.get("anonymous") else user.get("username")
    return {"user": name, "roles": roles, "may_rollback": may_rollback}


@dataclass(frozen=True)
class BulkRecord:
    """A bulk builder (the data API's builder dict) and its two latest finished builds (the
    data API's build dicts) with their properties; `latest` is None if it never finished."""

    builder: Mapping[str, Any]
    latest: Mapping[str, Any] | None = None
    latest_props: Mapping[str, Any] = field(default_factory=dict)
    previous: Mapping[str, Any] | None = None
    previous_props: Mapping[str, Any] | None = None

    @property
    def ports(self) -> dict[str, list[str]]:
        return bulk_summary(self.latest_props, self.previous_props)


async def bulk_builds(
    get: Callable[..., Awaitable[Any]], ran_bulk: bool = False
) -> list[BulkRecord]:
    """The latest finished build of each bulk builder (named bulk-...) and the finished build
    before it, among its last 10 builds, read through `get`: Buildbot's `master.data.get(path,
    filters=, order=, limit=)`, or the dashboard's awaitable wrapper of the WSGI plugin's
    `dataGet`. With `ran_bulk`, only builds that ran poudriere count (they have a
    `poudriere_buildname`): a push that changed no port ends its build before the bulk."""
    out = []
    for builder in await get(("builders",)):
        if not builder["name"].startswith("bulk-"):
            continue
        builds = await get(
            ("builders", builder["builderid"], "builds"),
            filters=[],
            order=["-number"],
            limit=10,
        )
        done: list[tuple[Any, dict[str, Any]]] = []
        for build in (b for b in builds if b["complete"]):
            props = await build_properties(get, build["buildid"])
            if not ran_bulk or "poudriere_buildname" in props:
                done.append((build, props))
            if len(done) == 2:
                break
        if len(done) == 2:
            out.append(BulkRecord(builder, *done[0], *done[1]))
        elif done:
            out.append(BulkRecord(builder, *done[0]))
        else:
            out.append(BulkRecord(builder))
    return out


async def bulks(master: Any) -> list[dict[str, Any]]:
    """`GET bulks`: the latest finished build of each bulk builder, with its per-port
    results and what changed against the finished build before it (`bulk_summary`)."""
    out: list[dict[str, Any]] = []
    for record in await bulk_builds(master.data.get):
        latest = record.latest
        if latest is None:
            out.append({"builder": record.builder["name"], "build": None})
            continue
        out.append(
            {
                "builder": record.builder["name"],
                "build": {
                    "buildid": latest["buildid"],
                    "number": latest["number"],
                    "results": latest["results"],
                    "state_string": latest["state_string"],
                    "complete_at": _epoch(latest.get("complete_at")),
                },
                "ports": record.ports,
            }
        )
    return out


async def build_properties(get: Callable[..., Awaitable[Any]], buildid: int) -> dict[str, Any]:
    """A build's properties as {name: value}; the data API answers {name: (value, source)}."""
    found = await get(("builds", buildid, "properties"))
    return {name: value for name, (value, _source) in (found or {}).items()}


def _epoch(value: Any) -> float | None:
    # The data API gives datetimes; JSON wants the epoch, as Buildbot's REST API shows it.
    return float(value.timestamp()) if value is not None else None


def mount_api(
    master: Any, farm_toml: str, publish_root: str, runner: Runner | None = None
) -> FarmApiResource:
    """Serve the API at /jailfarm/api/ of the master's web server, replacing what an earlier
    configuration mounted. Buildbot's site root is the base www app's resource, which
    outlives reconfigs (www/service.py setupSite mounts /api, /auth and /ws there the same
    way). `runner` is for tests; by default a LocalRunner on the master's reactor."""
    api = FarmApiResource(master, farm_toml, publish_root, runner)
    top = twresource.Resource()  # type: ignore[no-untyped-call]
    top.putChild(b"api", api)
    master.www.apps.get("base").resource.putChild(API_SEGMENT.encode(), top)
    return api
