"""The farm's dashboard in Buildbot's web UI (adapter, with a pure core): a Flask app that the
`wsgi_dashboards` plugin serves at `plugins/wsgi_dashboards/jailfarm/` and the UI lists as
"Farm" (buildbot-4.3.md section 5). For each bulk builder (ABI, ports tree, set) the latest
finished bulk with every port's result, reason and log link, and what failed anew or was fixed
since the bulk before; the running builds and the worker jails alive on each jail host with
their leases; the repository generations with their diff and, for ops and admins, a rollback
button (a POST to the farm's API, wwwapi.py); bulks charted per build and per day.

The UI fetches index.html and inserts it into its page, where <script> elements never run: the
page's script (auto-refresh, rollback) is started by an image's onload (dashboard.js).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

from buildbot.data.resultspec import Filter
from buildbot.interfaces import IConfigured
from flask import Flask, Response, render_template, request
from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from zope.interface import implementer

from jailfarm.errors import FarmError, ParseError
from jailfarm.host.platform import host_platforms
from jailfarm.master.steps import PoudriereBulk
from jailfarm.master.wwwapi import (
    PORT_RESULTS,
    BulkRecord,
    build_properties,
    bulk_builds,
    read_diff,
    read_repo,
    read_repos,
    user_rights,
)
from jailfarm.runner import LocalRunner
from jailfarm.workers.layout import BUILD, EXPIRES, WORKER
from jailfarm.workers.reaper import gather

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping, Sequence

    from jailfarm.config import FarmConfig
    from jailfarm.workers.reapplan import Survey

__all__ = [
    "DashboardApp",
    "HostSurvey",
    "JailRow",
    "PortRow",
    "bar_chart",
    "dashboard_app",
    "dashboard_plugin",
    "drive",
    "duration",
    "jail_rows",
    "parse_ports_table",
    "per_day",
    "port_rows",
    "session_user",
]

T = TypeVar("T")
NAME = "jailfarm"  # the plugin's dashboard name: its URL segment and the UI's route
PORT_ORDER = ("failed", "skipped", "ignored", "pending", "built", "inspected", "fetched")
_HEADER = ("ORIGIN", "PACKAGE", "RESULT", "PHASE", "REASON")
_NO_LISTS = "(no port lists were written)"
CHART_DAYS = 14
CHART_BUILDS = 30  # bulks in the duration chart, and at most this many per builder and day range
SHOWN_PORTS = 500  # rows of one bulk's table; a whole-tree bulk has tens of thousands
SURVEY_TIMEOUT = 15  # seconds a jail host may take to list its jails and clones
_COOKIES = ("TWISTED_SESSION", "TWISTED_SECURE_SESSION")  # buildbot www/auth.build_cookie_name
_TEMPLATES = Path(__file__).resolve().parent / "dashboard_templates"
_UNSEEN = object()


# --- pure: what the page shows -----------------------------------------------------------


@dataclass(frozen=True)
class PortRow:
    """One package of a bulk: `origin` is the originspec (origin@flavor), `new` a failure that
    the bulk before did not have, `fixed` a port that failed in the bulk before."""

    origin: str
    pkgname: str
    result: str
    phase: str = ""
    reason: str = ""
    log_url: str | None = None
    new: bool = False
    fixed: bool = False


def parse_ports_table(text: str, source: str = "ports log") -> list[PortRow]:
    """The rows of a bulk step's "ports" log (steps.ports_table): a header whose labels mark
    where each column starts, one row per package with cells padded to those columns (the
    reason, last, may hold spaces), and maybe a closing "(no port lists were written)".
    ParseError on any other shape."""
    lines = text.splitlines()
    header = lines[0] if lines else ""
    if header.split() != list(_HEADER):
        raise ParseError(source, 1, header, "expected the header " + " ".join(_HEADER))
    starts = [header.index(label) for label in _HEADER]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if line == _NO_LISTS and number == len(lines):
            break
        cells = [line[a:b] for a, b in zip(starts, [*starts[1:], None], strict=True)]
        fixed, reason = [c.strip() for c in cells[:4]], cells[4].strip()
        padded = all(len(line) <= s or line[s - 1] == " " for s in starts[1:])
        if not padded or any(" " in c for c in fixed) or fixed[2] not in PORT_ORDER:
            raise ParseError(source, number, line, "not a row of the ports table")
        if not fixed[0] or not fixed[1]:
            raise ParseError(source, number, line, "a row without origin or package")
        rows.append(PortRow(fixed[0], fixed[1], fixed[2], fixed[3], reason))
    return rows


def port_rows(
    table: Sequence[PortRow], ports: Mapping[str, Sequence[str]], urls: Mapping[str, str]
) -> list[PortRow]:
    """Every port of a bulk, failures first: the rows of its ports table, or when there is
    none (the step ended before poudriere reported) its property lists, without reasons.
    `ports` is wwwapi.bulk_summary's answer; `urls` the step's links by name, where the bulk
    step names a failed port's log "<originspec> log"."""
    rows = list(table) or [
        PortRow(origin, "", kind) for kind in PORT_RESULTS for origin in ports.get(kind, ())
    ]
    new, fixed = set(ports.get("new_failures", ())), set(ports.get("fixed", ()))
    out = [
        replace(
            r,
            log_url=urls.get(f"{r.origin} log"),
            new=r.result == "failed" and r.origin in new,
            fixed=r.origin in fixed,
        )
        for r in rows
    ]
    return sorted(out, key=lambda r: (_rank(r.result), r.origin))


def _rank(result: str) -> int:
    return PORT_ORDER.index(result) if result in PORT_ORDER else len(PORT_ORDER)


@dataclass(frozen=True)
class HostSurvey:
    """A jail host as the reaper's `gather` saw it, or why it could not be surveyed."""

    host: str
    survey: Survey | None = None
    error: str = ""


@dataclass(frozen=True)
class JailRow:
    """A worker clone below `<root>/jails` or a running jail of a jail host. The age is
    derived from the lease: a clone's `jailfarm:expires` is set once, when it is made, to
    then + workers.lease (workerplan.lease)."""

    host: str
    name: str
    worker: str = ""
    build: str = ""
    running: bool = False
    clone: bool = True
    lease_left: float | None = None
    age: float | None = None
    written_mib: int | None = None


def jail_rows(host: str, survey: Survey, now: float, lease: int) -> list[JailRow]:
    """One row per clone (running or not), then one per running jail without a clone."""
    running = {j.name for j in survey.jails}
    rows = []
    for d in survey.datasets:
        if d.type != "filesystem":
            continue
        name = d.name.rsplit("/", 1)[1]
        expires = _number(d.user.get(EXPIRES))
        rows.append(
            JailRow(
                host,
                name,
                d.user.get(WORKER, ""),
                d.user.get(BUILD, ""),
                name in running,
                lease_left=None if expires is None else expires - now,
                age=None if expires is None else max(0.0, now - (expires - lease)),
                written_mib=d.used // (1 << 20),
            )
        )
    cloned = {r.name for r in rows}
    rows += [JailRow(host, j.name, running=True, clone=False) for j in survey.jails]
    return [r for r in rows if r.clone or r.name not in cloned]


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def duration(seconds: float | None) -> str:
    """A short human duration: 42 s, 5 min 3 s, 3 h 2 min, 2 d 4 h."""
    if seconds is None:
        return "?"
    s = round(abs(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if s >= size:
            return f"{s // size} {unit} {s % size // subsize} {sub}"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


@dataclass(frozen=True)
class BuildFacts:
    """A finished bulk as the charts count it (epoch seconds, UTC)."""

    label: str
    started: float
    ended: float
    built: int
    failed: int
    ok: bool


@dataclass(frozen=True)
class Day:
    day: str
    bulks: int = 0
    built: int = 0
    failed: int = 0


def per_day(facts: Sequence[BuildFacts], days: int, now: float) -> list[Day]:
    """The last `days` UTC days up to today, oldest first, with the bulks that ended on
    each, the packages they built and the ports that failed."""
    today = datetime.fromtimestamp(now, UTC).date().toordinal()
    keys = [datetime.fromordinal(today - i).date().isoformat() for i in range(days - 1, -1, -1)]
    out = {k: Day(k) for k in keys}
    for f in facts:
        key = datetime.fromtimestamp(f.ended, UTC).date().isoformat()
        if key in out:
            d = out[key]
            out[key] = Day(key, d.bulks + 1, d.built + f.built, d.failed + f.failed)
    return list(out.values())


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    title: str
    css: str


@dataclass(frozen=True)
class Chart:
    """An SVG bar chart: bars in a `width` x `height` plot area, `top` the value at its top."""

    title: str
    bars: tuple[Bar, ...]
    top: str
    width: int = 320
    height: int = 120


def bar_chart(
    title: str,
    points: Sequence[tuple[str, float, str, str]],
    top_label: Callable[[float], str] = lambda top: f"{top:g}",
    slots: int = 0,
    width: int = 320,
    height: int = 120,
) -> Chart:
    """Bars for (label, value, tooltip, css class) points, scaled to the largest value, in
    `slots` equal slots (at least one per point), the last point in the last slot."""
    top = max((v for _, v, _, _ in points), default=0.0) or 1.0
    step = width / max(slots, len(points), 1)
    first = max(slots, len(points)) - len(points)
    bars = tuple(
        Bar(
            x=round((first + i) * step + step * 0.1, 1),
            y=round(height - value / top * height, 1),
            width=round(step * 0.8, 1),
            height=round(value / top * height, 1),
            label=label,
            title=tip,
            css=css,
        )
        for i, (label, value, tip, css) in enumerate(points)
    )
    return Chart(title, bars, top_label(top), width, height)


def session_user(site: Any, cookie_header: str) -> dict[str, Any]:
    """The user info of the Buildbot session whose cookie the browser sent (Buildbot's
    sessions are JWTs signed with the site's secret, www/service.py BuildbotSession); an
    anonymous user without one, or with an expired or forged one."""
    try:
        cookies = SimpleCookie(cookie_header)
    except CookieError:
        cookies = SimpleCookie()
    for name in _COOKIES:
        if name in cookies and site is not None:
            try:
                info: dict[str, Any] = site.getSession(cookies[name].value).user_info
                return info
            except KeyError:  # buildbot's answer for a bad or expired token
                continue
    return {"anonymous": True}


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine whose awaits all finish at once: wwwapi's readers over the
    plugin's `dataGet`, which blocks the WSGI thread instead of suspending."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("the coroutine waited for something that had not happened yet")


# --- the reads: Buildbot's data, the publish root, the jail hosts ------------------------


class FarmReader:
    """Everything one page shows. It runs in the WSGI thread: Buildbot's data comes through
    the plugin's `dataGet` (which waits for the reactor), the generations are read from the
    publish root right here, and the user's rights and the jail hosts' survey run on the
    reactor through `call` (tests pass one that resolves at once). `survey` defaults to
    the reaper's `gather` on each jail host."""

    log = Logger()

    def __init__(
        self,
        cfg: FarmConfig,
        app: DashboardApp,
        call: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any] | None = None,
        survey: Callable[[], Coroutine[Any, Any, list[HostSurvey]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.app, self.clock = cfg, app, clock
        self._call, self._survey = call, survey
        self.base = urlsplit(cfg.web.url).path or "/"
        self.targets = _targets(cfg)
        self.facts, self.tables = _Memo(4096), _Memo(64)

    @property
    def api(self) -> Any:
        return self.app.buildbot_api

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if self._call is not None:
            result: T = self._call(fn)
            return result
        reactor = self.api.master.reactor
        result = blockingCallFromThread(  # type: ignore[no-untyped-call]
            reactor, lambda: defer.ensureDeferred(fn())
        )
        return result

    async def get(self, path: tuple[Any, ...], **kwargs: Any) -> Any:
        return self.api.dataGet(path, **kwargs)

    def page(self, cookie_header: str) -> dict[str, Any]:
        now = self.clock()
        master = self.api.master
        user = session_user(getattr(master.www, "site", None), cookie_header)
        rights = self.call(lambda: user_rights(master.www.authz, user))
        builders = {b["builderid"]: b["name"] for b in self.api.dataGet(("builders",))}
        records = drive(bulk_builds(self.get, ran_bulk=True))
        return {
            "now": now,
            "updated": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "base": self.base,
            "src": f"{self.base}plugins/wsgi_dashboards/{NAME}/index.html",
            "farm": self.cfg.name,
            "rights": rights,
            "running": self.running(builders, now),
            "hosts": self.jails(now),
            "bulks": [self.card(r) for r in records],
            "repos": self.repos(),
            "charts": self.charts(records, now),
            "duration": duration,
            "chart_days": CHART_DAYS,
        }

    def running(self, builders: Mapping[int, str], now: float) -> list[dict[str, Any]]:
        workers = {w["workerid"]: w["name"] for w in self.api.dataGet(("workers",))}
        builds = self.api.dataGet(("builds",), filters=[Filter("complete", "eq", [False])])
        return [
            {
                "builder": builders.get(b["builderid"], "?"),
                "link": self.build_link(b),
                "number": b["number"],
                "buildid": b["buildid"],
                "state": b["state_string"],
                "worker": workers.get(b["workerid"], ""),
                "age": now - _epoch(b["started_at"]),
            }
            for b in sorted(builds, key=lambda b: b["buildid"])
        ]

    def build_link(self, build: Mapping[str, Any]) -> str:
        return f"{self.base}#/builders/{build['builderid']}/builds/{build['number']}"

    def card(self, record: BulkRecord) -> dict[str, Any]:
        name = record.builder["name"]
        card: dict[str, Any] = {
            "builder": name,
            "target": self.targets.get(name, name),
            "build": None,
            "new_failures": [],
            "fixed": [],
        }
        latest = record.latest
        if latest is None:
            return card
        urls, table, error = self.bulk_step(latest["buildid"])
        summary = record.ports
        rows = port_rows(table, summary, urls)
        started, ended = _epoch(latest["started_at"]), _epoch(latest["complete_at"])
        card.update(
            build=latest,
            link=self.build_link(latest),
            previous=record.previous,
            previous_link=record.previous and self.build_link(record.previous),
            took=ended - started,
            ended=ended,
            logs=urls.get("poudriere build"),
            counts={k: sum(1 for r in rows if r.result == k) for k in PORT_ORDER},
            rows=[r for r in rows if r.result != "built"][:SHOWN_PORTS],
            built=[r for r in rows if r.result == "built"][:SHOWN_PORTS],
            new_failures=summary["new_failures"],
            fixed=summary["fixed"],
            error=error,
        )
        return card

    def bulk_step(self, buildid: int) -> tuple[dict[str, str], list[PortRow], str]:
        """The bulk step's links by name and its ports table (empty with the reason when
        the build has none: it ended before the bulk, or the log is not a table)."""
        steps = self.api.dataGet(("builds", buildid, "steps"))
        step = next((s for s in steps if s["name"] == PoudriereBulk.name), None)
        if step is None:
            return {}, [], "the build ended before its bulk step"
        urls = {u["name"]: u["url"] for u in step.get("urls") or ()}
        logs = self.api.dataGet(("steps", step["stepid"], "logs"))
        log = next((lg for lg in logs if lg["name"] == "ports"), None)
        if log is None:
            return urls, [], ""
        table: tuple[list[PortRow], str] | None = self.tables.get(log["logid"], None)
        if table is None:
            table = self.tables.put(log["logid"], self.ports_log(buildid, log))
        return urls, *table

    def ports_log(self, buildid: int, log: Mapping[str, Any]) -> tuple[list[PortRow], str]:
        """The rows of a bulk step's ports log, or none and why they could not be read."""
        content = self.api.dataGet(("logs", log["logid"], "contents"))
        text = (content or {}).get("content", "")
        if log.get("type") == "s":  # a stdio-type log: each line starts with its stream
            text = "\n".join(line[1:] for line in text.splitlines())
        try:
            return parse_ports_table(text, f"build {buildid} ports log"), ""
        except FarmError as e:
            self.log.warn("dashboard: {e}", e=str(e))
            return [], str(e)

    def jails(self, now: float) -> list[dict[str, Any]]:
        hosts = self.call(self._survey or self._survey_hosts)
        return [
            {
                "host": h.host,
                "error": h.error,
                "jails": jail_rows(h.host, h.survey, now, self.cfg.workers.lease)
                if h.survey
                else [],
            }
            for h in hosts
        ]

    async def _survey_hosts(self) -> list[HostSurvey]:
        reactor = self.api.master.reactor
        out = []
        for host, platform in host_platforms(self.cfg, LocalRunner(reactor), reactor).items():
            d = defer.ensureDeferred(gather(platform, self.cfg))
            d.addTimeout(SURVEY_TIMEOUT, reactor)
            try:
                out.append(HostSurvey(host, await d))
            except FarmError as e:
                out.append(HostSurvey(host, error=str(e)))
            except defer.TimeoutError:
                out.append(HostSurvey(host, error=f"no answer within {SURVEY_TIMEOUT} s"))
        return out

    def repos(self) -> list[dict[str, Any]]:
        root = Path(self.cfg.publish.root)
        out = []
        for repo in read_repos(root):
            try:
                gens = read_repo(root, repo["name"])
                diff = _diff(root, repo["name"], repo["current"], repo["generations"])
            except FarmError as e:  # a publish removed a generation while we read
                out.append({**repo, "error": str(e), "generations": []})
                continue
            api = f"{self.base}jailfarm/api/repos/{quote(repo['name'], safe='')}"
            out.append({**repo, "generations": gens[::-1], "diff": diff, "api": api})
        return out

    def charts(self, records: Sequence[BulkRecord], now: float) -> list[Chart]:
        facts = []
        since = now - CHART_DAYS * 86400
        for r in records:
            builds = self.api.dataGet(
                ("builders", r.builder["builderid"], "builds"),
                order=["-number"],
                limit=CHART_BUILDS * CHART_DAYS,
            )
            for b in builds:
                if not b["complete"] or b["complete_at"] is None:
                    continue
                if _epoch(b["complete_at"]) < since:
                    break
                fact = self.facts.get(b["buildid"], _UNSEEN)
                if fact is _UNSEEN:  # a finished build never changes: read it once
                    fact = self.facts.put(b["buildid"], self.build_facts(r.builder["name"], b))
                if isinstance(fact, BuildFacts):
                    facts.append(fact)
        return _charts(facts, now)

    def build_facts(self, builder: str, build: Mapping[str, Any]) -> BuildFacts | None:
        """What the charts count of a finished build; None if it ran no bulk."""
        props = drive(build_properties(self.get, build["buildid"]))
        if "poudriere_buildname" not in props:
            return None
        return BuildFacts(
            f"{builder} #{build['number']}",
            _epoch(build["started_at"]),
            _epoch(build["complete_at"]),
            len(props.get("poudriere_built") or ()),
            len(props.get("poudriere_failed") or ()),
            build["results"] in (0, 1),
        )


class _Memo:
    """A bounded memo of what finished builds and complete logs show (they never change);
    shared by the WSGI threads, where a race only costs a second read."""

    def __init__(self, size: int) -> None:
        self.size, self.items = size, dict[int, Any]()

    def get(self, key: int, default: Any) -> Any:
        return self.items.get(key, default)

    def put(self, key: int, value: T) -> T:
        if len(self.items) >= self.size:
            self.items.clear()
        self.items[key] = value
        return value


def _diff(root: Path, repo: str, current: int | None, kept: Sequence[int]) -> Any:
    """What current changed: against the generation before it or, when it is the oldest
    kept (after a rollback), against the newest one (what the rollback undid); None when
    there is nothing to compare."""
    others = [n for n in kept if n != current]
    if current is None or not others:
        return None
    older = [n for n in others if n < current]
    return read_diff(root, repo, older[-1] if older else others[-1], current)


def _charts(facts: Sequence[BuildFacts], now: float) -> list[Chart]:
    last = sorted(facts, key=lambda f: f.ended)[-CHART_BUILDS:]
    days = per_day(facts, CHART_DAYS, now)
    took = [
        (
            "",
            f.ended - f.started,
            f"{f.label}: {duration(f.ended - f.started)}, {f.built} built, {f.failed} failed",
            "jf-ok" if f.ok else "jf-bad",
        )
        for f in last
    ]
    built = [
        (d.day[8:], d.built, f"{d.day}: {d.built} built in {d.bulks} bulks", "jf-ok") for d in days
    ]
    failed = [(d.day[8:], d.failed, f"{d.day}: {d.failed} failed", "jf-bad") for d in days]
    return [
        bar_chart(f"Bulk duration, last {len(last)} bulks", took, duration, CHART_BUILDS),
        bar_chart("Packages built per day (UTC)", built),
        bar_chart("Port failures per day (UTC)", failed),
    ]


def _epoch(value: Any) -> float:
    # The data API gives timezone-aware datetimes.
    return float(value.timestamp()) if isinstance(value, datetime) else float(value or 0)


def _targets(cfg: FarmConfig) -> dict[str, str]:
    """What each bulk builder builds, by builder name: ABI, poudriere jail, tree and set."""
    # Imported here: master/config.py imports www.py, which imports this module.
    from jailfarm.master.config import bulk_builder_name

    return {
        bulk_builder_name(j, t, s): f"{j.abi} ({j.name}) · tree {t.name} · set {s.name}"
        for j in cfg.poudriere_jails
        for t in cfg.trees
        for s in cfg.sets
    }


# --- the Flask app and the plugin entry ----------------------------------------------------


@implementer(IConfigured)
class DashboardApp(Flask):
    """The dashboard's WSGI app. `buildbot_api` is set by the wsgi_dashboards plugin
    (WSGIDashboardsApplication: `dataGet` and `master`). Buildbot sends the www config to
    browsers; IConfigured makes the app show there as its name only."""

    buildbot_api: Any  # buildbot is untyped

    def getConfigDict(self) -> dict[str, str]:
        return {"name": f"{NAME} dashboard"}


def dashboard_app(
    cfg: FarmConfig,
    call: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any] | None = None,
    survey: Callable[[], Coroutine[Any, Any, list[HostSurvey]]] | None = None,
    clock: Callable[[], float] = time.time,
) -> DashboardApp:
    """The app for the farm `cfg`: GET index.html is the dashboard (an HTML fragment)."""
    app = DashboardApp(__name__, template_folder=str(_TEMPLATES), static_folder=None)
    reader = FarmReader(cfg, app, call, survey, clock)

    @app.get("/index.html")
    def index() -> Response:
        page = reader.page(request.headers.get("Cookie", ""))
        html = render_template("dashboard.html", **page)
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store"})

    return app


def dashboard_plugin(cfg: FarmConfig) -> list[dict[str, Any]]:
    """The `wsgi_dashboards` plugin's configuration: the farm's dashboard, first in the
    UI's menu."""
    return [
        {"name": NAME, "caption": "Farm", "app": dashboard_app(cfg), "order": 1, "icon": "industry"}
    ]
