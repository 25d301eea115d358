"""The farm's dashboard (master/dashboard.py): the ports table read back as steps.ports_table
writes it, the rows, jails, days and charts it shows, Buildbot session cookies, and the Flask
app over a fake `buildbot_api` (the wsgi_dashboards plugin's `dataGet` and `master`), with
Buildbot's real session site, the farm's real authz and generations published in a tmp dir."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from buildbot.data.exceptions import InvalidPathError
from buildbot.data.resultspec import Filter
from buildbot.www.config import (
    get_www_frontend_config_dict,
    serialize_www_frontend_config_dict_to_json,
)
from buildbot.www.service import BuildbotSession, BuildbotSite
from twisted.web.resource import Resource

from jailfarm.errors import ParseError
from jailfarm.host.base import JailInfo
from jailfarm.host.zfs import Dataset
from jailfarm.master.dashboard import (
    DashboardApp,
    HostSurvey,
    JailRow,
    PortRow,
    bar_chart,
    dashboard_app,
    drive,
    duration,
    jail_rows,
    parse_ports_table,
    per_day,
    port_rows,
    session_user,
)
from jailfarm.master.steps import ports_table
from jailfarm.master.www import farm_authz, www_config
from jailfarm.poudriere.generations import publish, rollback
from jailfarm.poudriere.pkgsign import KeyFileSigner
from jailfarm.poudriere.status import BuildStatus, BulkResult, PortResult
from jailfarm.workers.reapplan import Survey
from tests.support import resolve
from tests.unit.test_generations import add
from tests.unit.test_www import FARM_TOML, FakeWww, config, pem

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
PORTS = (
    PortResult("devel/d-w", "d-w-1.0", "failed", phase="build", errortype="build", elapsed=2),
    PortResult("misc/crash", "crash-2.0", "failed", phase="stage", errortype="stage"),
    PortResult("misc/meta", "meta-1.0", "skipped", skipped_because="d-w-1.0"),
    PortResult("misc/broken", "broken-0.1", "ignored", reason="is for testing IGNORE"),
    PortResult("lang/py", "py311-x-1.0", "built", flavor="py311", elapsed=3),
    PortResult("a/x", "x-1.0", "built", elapsed=4),
    PortResult("b/y", "y-1.0", "built", elapsed=5),
)


def table(ports: tuple[PortResult, ...] | None = PORTS) -> str:
    return ports_table(BulkResult(BuildStatus("stopped:done:"), ports=ports))


# --- the ports table ----------------------------------------------------------------------


class PortsTableTests:
    def test_reads_back_what_the_bulk_step_writes(self) -> None:
        rows = {r.origin: r for r in parse_ports_table(table())}
        assert rows["devel/d-w"] == PortRow("devel/d-w", "d-w-1.0", "failed", "build", "build")
        # A crashed builder (errortype == phase, no elapsed time) says so.
        assert rows["misc/crash"].reason == "builder crashed"
        assert rows["misc/meta"] == PortRow(
            "misc/meta", "meta-1.0", "skipped", "", "depends on d-w-1.0"
        )
        assert rows["misc/broken"].reason == "is for testing IGNORE"
        assert rows["lang/py@py311"].pkgname == "py311-x-1.0"
        assert len(rows) == len(PORTS)

    def test_a_bulk_without_port_lists_has_no_rows(self) -> None:
        assert parse_ports_table(table(None)) == []
        assert parse_ports_table(table(())) == []

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "ORIGIN  PACKAGE  RESULT\n",
            "some stdio output\n",
            "ORIGIN  PACKAGE  RESULT  PHASE  REASON\na/x  x-1.0  exploded\n",
            "ORIGIN  PACKAGE  RESULT  PHASE  REASON\na/x   x 1  built\n",
            "ORIGIN  PACKAGE  RESULT  PHASE  REASON\n        x-1.0    built\n",
            "ORIGIN  PACKAGE  RESULT  PHASE  REASON\n(no port lists were written)\na/x\n",
        ],
    )
    def test_anything_else_is_a_parse_error(self, text: str) -> None:
        with pytest.raises(ParseError):
            parse_ports_table(text)


class PortRowsTests:
    def test_failures_first_with_log_links_and_what_changed(self) -> None:
        summary = {"new_failures": ["devel/d-w"], "fixed": ["b/y"]}
        urls = {"devel/d-w log": "http://h/data/m/b/logs/d-w-1.0.log", "poudriere build": "x"}
        rows = port_rows(parse_ports_table(table()), summary, urls)
        assert [r.result for r in rows] == [
            "failed",
            "failed",
            "skipped",
            "ignored",
            "built",
            "built",
            "built",
        ]
        first = rows[0]
        assert (first.origin, first.new, first.log_url) == (
            "devel/d-w",
            True,
            "http://h/data/m/b/logs/d-w-1.0.log",
        )
        assert not rows[1].new and rows[1].log_url is None
        assert [r.origin for r in rows if r.fixed] == ["b/y"]

    def test_without_a_table_the_properties_lists_show_without_reasons(self) -> None:
        summary = {"built": ["a/x"], "failed": ["c/z"], "skipped": [], "ignored": ["q/q"]}
        rows = port_rows([], summary, {})
        assert [(r.origin, r.result, r.reason) for r in rows] == [
            ("c/z", "failed", ""),
            ("q/q", "ignored", ""),
            ("a/x", "built", ""),
        ]


# --- jails, days, charts, durations ----------------------------------------------------------


def dataset(
    name: str, kind: str = "filesystem", used: int = 0, user: dict[str, str] | None = None
) -> Dataset:
    return Dataset(name, kind, used, 0, 0, None, None, True, user or {})


class JailRowsTests:
    def test_clones_with_their_lease_and_jails_without_a_clone(self) -> None:
        survey = Survey(
            datasets=(
                dataset(
                    "p/demo/jails/jfw1",
                    used=5 << 20,
                    user={
                        "jailfarm:worker": "jfw1",
                        "jailfarm:build": "12",
                        "jailfarm:expires": str(int(NOW) + 3000),
                    },
                ),
                dataset("p/demo/jails/jfw2", user={"jailfarm:expires": str(int(NOW) - 60)}),
                dataset("p/demo/jails/jfw1@snap", kind="snapshot"),
            ),
            jails=(
                JailInfo("jfw1", 100, "/jf/jails/jfw1", "jfw1"),
                JailInfo("jfw9", 101, "/elsewhere", "jfw9"),
            ),
            mountpoint="/jf/jails",
        )
        rows = jail_rows("local", survey, NOW, lease=3600)
        assert rows == [
            JailRow("local", "jfw1", "jfw1", "12", True, True, 3000.0, 600.0, 5),
            JailRow("local", "jfw2", "", "", False, True, -60.0, 3660.0, 0),
            JailRow("local", "jfw9", running=True, clone=False),
        ]


class ChartTests:
    def test_durations_read_as_people_say_them(self) -> None:
        assert [duration(s) for s in (0, 42, 303, 3 * 3600 + 150, 2 * 86400 + 4 * 3600)] == [
            "0 s",
            "42 s",
            "5 min 3 s",
            "3 h 2 min",
            "2 d 4 h",
        ]
        assert duration(None) == "?"

    def test_days_count_bulks_packages_and_failures_by_their_end(self) -> None:
        from jailfarm.master.dashboard import BuildFacts

        facts = [
            BuildFacts("a #1", NOW - 90000, NOW - 86400, 5, 1, False),  # yesterday
            BuildFacts("a #2", NOW - 600, NOW - 60, 3, 0, True),
            BuildFacts("b #1", NOW - 600, NOW - 30, 2, 2, False),
            BuildFacts("old", NOW - 99 * 86400, NOW - 98 * 86400, 9, 9, True),
        ]
        days = per_day(facts, 3, NOW)
        assert [(d.day, d.bulks, d.built, d.failed) for d in days] == [
            ("2027-01-13", 0, 0, 0),
            ("2027-01-14", 1, 5, 1),
            ("2027-01-15", 2, 5, 2),
        ]

    def test_bars_scale_to_the_largest_value(self) -> None:
        chart = bar_chart("t", [("1", 2.0, "a", "x"), ("2", 8.0, "b", "y")], width=100, height=80)
        low, high = chart.bars
        assert (high.height, high.y, low.height, low.y) == (80.0, 0.0, 20.0, 60.0)
        assert (low.x, low.width, high.x) == (5.0, 40.0, 55.0)
        assert chart.top == "8"
        empty = bar_chart("t", [("1", 0.0, "", "")])
        assert empty.bars[0].height == 0.0

    def test_few_bars_sit_in_the_last_of_their_slots(self) -> None:
        chart = bar_chart("t", [("", 90.0, "", "")], duration, slots=10, width=100)
        (bar,) = chart.bars
        assert (bar.x, bar.width, chart.top) == (91.0, 8.0, "1 min 30 s")


# --- sessions and the coroutine driver ---------------------------------------------------------


def site() -> BuildbotSite:
    root = Resource()  # type: ignore[no-untyped-call]
    s = BuildbotSite(root, logPath=None, rotateLength=0, maxRotatedFiles=0)
    s.setSessionSecret("the-session-secret")
    return s


def token(the_site: BuildbotSite, **user_info: Any) -> str:
    session = BuildbotSession(the_site)
    session.user_info = user_info
    return str(session.uid)


def cookie(the_site: BuildbotSite, **user_info: Any) -> str:
    return f"other=1; TWISTED_SESSION={token(the_site, **user_info)}"


class SessionTests:
    def test_the_signed_in_user_of_the_session_cookie(self) -> None:
        s = site()
        assert session_user(s, cookie(s, username="otto")) == {"username": "otto"}

    def test_no_forged_or_missing_session_is_anyone(self) -> None:
        s, other = site(), site()
        other.setSessionSecret("another-secret")
        for header in ("", "TWISTED_SESSION=garbage", cookie(other, username="otto"), '"; ='):
            assert session_user(s, header) == {"anonymous": True}

    def test_drive_refuses_a_coroutine_that_really_waits(self) -> None:
        from twisted.internet import defer

        async def waits() -> None:
            await defer.Deferred()

        with pytest.raises(RuntimeError, match="had not happened yet"):
            drive(waits())


# --- the app over a fake buildbot_api ----------------------------------------------------------


def when(seconds_ago: float) -> datetime:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC)


class FakeData:
    """Buildbot's data connector as authz matchers use it: it knows no farm endpoint."""

    def getEndpoint(self, path: Any) -> Any:
        raise InvalidPathError(f"no endpoint {path}")


class FakeMaster:
    """The master's parts the app reaches: the www service (its session site and authz,
    and the base app the authz mounts the farm's API on) and the data connector."""

    def __init__(self, the_site: Any, authz: Any) -> None:
        self.reactor = None
        self.data = FakeData()
        self.www = FakeWww()
        self.www.site, self.www.authz = the_site, authz  # type: ignore[attr-defined]
        authz.setMaster(self)


class FakeBuildbotApi:
    """The wsgi_dashboards plugin as the app sees it: `dataGet(path, **kwargs)` over a dict
    of answers (filters applied as the data API does) and `master`."""

    def __init__(self, answers: dict[tuple[Any, ...], Any], the_site: Any, authz: Any) -> None:
        self.answers = answers
        self.master = FakeMaster(the_site, authz)

    def dataGet(self, path: tuple[Any, ...], **kwargs: Any) -> Any:
        found = self.answers.get(tuple(path), [])
        for f in kwargs.get("filters") or ():
            assert isinstance(f, Filter)
            found = list(f.apply(found))
        return found


def build(buildid: int, number: int, builderid: int, results: int | None, **more: Any) -> Any:
    ago = more.pop("ago", 600)
    return {
        "buildid": buildid,
        "number": number,
        "builderid": builderid,
        "workerid": 1,
        "results": results,
        "complete": results is not None,
        "started_at": when(ago + 300),
        "complete_at": when(ago) if results is not None else None,
        "state_string": more.pop("state", "build successful" if results == 0 else "failed"),
        **more,
    }


def answers() -> dict[tuple[Any, ...], Any]:
    ports = [p for p in PORTS if p.origin != "misc/crash"]
    b1 = build(1, 1, 1, 2, ago=86400 * 2)
    b2 = build(2, 2, 1, 2, ago=600, state="failed bulk 141amd64-default-default")
    b3 = build(3, 3, 1, None, state="bulk 141amd64-default-default: 2/9 built")
    other = build(4, 7, 2, None, state="hold")
    prop = "PoudriereBulk"
    return {
        ("builders",): [
            {"builderid": 1, "name": "bulk-141amd64-default"},
            {"builderid": 2, "name": "hold"},
            {"builderid": 3, "name": "bulk-never"},
        ],
        ("workers",): [{"workerid": 1, "name": "jfw1"}],
        ("builds",): [b1, b2, b3, other],
        ("builders", 1, "builds"): [b3, b2, b1],
        ("builders", 3, "builds"): [],
        ("builds", 1, "properties"): {
            "poudriere_buildname": ("jf-1", prop),
            "poudriere_built": (["a/x"], prop),
            "poudriere_failed": (["b/y"], prop),
        },
        ("builds", 2, "properties"): {
            "poudriere_buildname": ("jf-2", prop),
            "poudriere_built": (["a/x", "b/y", "lang/py@py311"], prop),
            "poudriere_failed": (["devel/d-w"], prop),
            "poudriere_skipped": (["misc/meta"], prop),
            "poudriere_ignored": (["misc/broken"], prop),
        },
        ("builds", 2, "steps"): [
            {"stepid": 20, "name": "ports-tree", "urls": []},
            {
                "stepid": 21,
                "name": "poudriere-bulk",
                "urls": [
                    {"name": "poudriere build", "url": "http://h/data/m/jf-2/"},
                    {"name": "devel/d-w log", "url": "http://h/data/m/jf-2/logs/d-w-1.0.log"},
                ],
            },
        ],
        ("steps", 21, "logs"): [
            {"logid": 5, "name": "stdio", "type": "s"},
            {"logid": 6, "name": "ports", "type": "t"},
        ],
        ("logs", 6, "contents"): {"logid": 6, "firstline": 0, "content": table(tuple(ports))},
    }


JAILS = [
    HostSurvey(
        "local",
        Survey(
            (
                dataset(
                    "p/demo/jails/jfw1",
                    used=3 << 20,
                    user={
                        "jailfarm:worker": "jfw1",
                        "jailfarm:build": "3",
                        "jailfarm:expires": str(int(NOW) + 3500),
                    },
                ),
            ),
            (JailInfo("jfw1", 7, "/jf/jails/jfw1", "jfw1"),),
            "/jf/jails",
        ),
    ),
    HostSurvey("far", error="ssh: connect to host far port 22: Connection refused"),
]


class Elements(HTMLParser):
    """The start tags of a page with their attributes, and its text without tags."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag
            and all(a.get(k.rstrip("_").replace("_", "-")) == v for k, v in attrs.items())
        ]

    def words(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.text))


class DashboardAppTests:
    @pytest.fixture(autouse=True)
    def _farm(self) -> Any:
        work = Path(tempfile.mkdtemp(prefix="jf-dash-"))
        self.root = work / "repo"
        key = work / "repo.key"
        key.write_bytes(pem())
        src = work / "packages" / ".latest"
        for version in ("1.0", "1.1"):
            add(src, "hello", version)
            add(src, "world", "2.0")
            resolve(publish(self.root, "main", src, KeyFileSigner(key), 3, {"build": version}))
        self.cfg = config(root=str(self.root))
        self.site = site()
        self.api = FakeBuildbotApi(answers(), self.site, farm_authz(self.cfg, FARM_TOML))
        self.app = dashboard_app(self.cfg, self.resolve, self.survey, clock=lambda: NOW)
        self.app.buildbot_api = self.api
        yield
        shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def resolve(fn: Any) -> Any:
        return resolve(fn())

    async def survey(self) -> list[HostSurvey]:
        return JAILS

    def page(self, user: str | None = None) -> Elements:
        client = self.app.test_client()  # it sends its own cookies, never a Cookie header
        if user:
            client.set_cookie("TWISTED_SESSION", token(self.site, username=user))
        response = client.get("/index.html")
        assert response.status_code == 200, response.text
        assert response.headers["Cache-Control"] == "no-store"
        return Elements(response.text)

    def test_the_latest_bulk_with_every_port_and_what_changed(self) -> None:
        page = self.page()
        words = page.words()
        assert page.find("article", data_builder="bulk-141amd64-default")
        assert "FreeBSD:14:amd64 (141amd64) · tree default · set default" in words
        assert "Bulk #2 failed bulk 141amd64-default-default , finished 10 min 0 s ago" in words
        assert "took 5 min 0 s; compared with #1" in words
        ports = [(a["data-origin"], a["data-result"]) for _, a in page.tags if "data-origin" in a]
        assert ports == [
            ("devel/d-w", "failed"),
            ("misc/meta", "skipped"),
            ("misc/broken", "ignored"),
            ("a/x", "built"),
            ("b/y", "built"),
            ("lang/py@py311", "built"),
        ]
        assert "devel/d-w new d-w-1.0 failed build build log" in words
        assert "b/y fixed y-1.0 built" in words
        assert "New failures: devel/d-w" in words and "Fixed: b/y" in words
        assert "depends on d-w-1.0" in words and "is for testing IGNORE" in words
        assert page.find("a", class_="jf-port-log") == [
            {"class": "jf-port-log", "href": "http://h/data/m/jf-2/logs/d-w-1.0.log"}
        ]
        assert page.find("a", class_="jf-logs-link")[0]["href"] == "http://h/data/m/jf-2/"
        assert (
            page.find("a", class_="jf-build-link")[0]["href"] == "/buildbot/#/builders/1/builds/2"
        )
        assert "No finished bulk yet." in words  # bulk-never

    def test_what_runs_now_and_the_worker_jails(self) -> None:
        words = self.page().words()
        assert "bulk 141amd64-default-default: 2/9 built" in words
        assert "2 builds running" in words and "1 worker jails alive" in words
        assert (
            "local jfw1 jfw1 bulk-141amd64-default #3 running 58 min 20 s left 1 min 40 s" in words
        )
        assert "3 MiB" in words
        assert "Jail host far: cannot list its jails: ssh: connect to host far" in words

    def test_generations_diff_and_rollback_buttons_for_ops_only(self) -> None:
        for who in ("otto", "ada"):
            page = self.page(who)
            (button,) = page.find("button", class_="btn btn-sm btn-warning jf-rollback")
            assert button["data-url"] == "/buildbot/jailfarm/api/repos/main/rollback"
            assert (button["data-repo"], button["data-to"]) == ("main", "1")
            assert "may roll repositories back" in page.words()
        for reader in (None, "vera"):
            page = self.page(reader)
            assert page.find("button", class_="btn btn-sm btn-warning jf-rollback") == []
            assert "read only" in page.words()
        words = self.page("vera").words()
        assert "Signed in as vera (viewer)" in words
        assert "g1 → g2: 0 added, 0 removed, 1 upgraded" in words
        assert "hello upgraded 1.0 1.1" in words
        assert "g2 current" in words

    def test_after_a_rollback_what_it_undid_and_the_way_forward(self) -> None:
        rollback(self.root, "main", 1)
        page = self.page("otto")
        (button,) = page.find("button", class_="btn btn-sm btn-warning jf-rollback")
        assert button["data-to"] == "2"
        words = page.words()
        assert "Roll forward to g2" in words and "main current: g1" in words
        assert "g2 → g1: 0 added, 0 removed, 0 upgraded, 1 downgraded" in words
        assert "hello downgraded 1.1 1.0" in words

    def test_charts_of_bulk_time_and_per_day_counts(self) -> None:
        page = self.page()
        titles = [a["aria-label"] for a in page.find("svg", role="img")]
        assert titles == [
            "Bulk duration, last 2 bulks",
            "Packages built per day (UTC)",
            "Port failures per day (UTC)",
        ]
        bars = page.find("rect")
        assert len(bars) == 2 + 14 + 14
        words = page.words()
        assert "bulk-141amd64-default #2: 5 min 0 s, 3 built, 1 failed" in words
        assert "2027-01-15: 3 built in 1 bulks" in words
        assert "2027-01-13: 1 failed" in words

    def test_the_script_is_started_by_the_boot_image(self) -> None:
        response = self.app.test_client().get("/index.html")
        html = response.text
        (script,) = re.findall(
            r'<script type="text/plain" id="jf-dashboard-js">(.*?)</script>', html, re.S
        )
        assert "window.jailfarmDashboard" in script and "Content-Type" in script
        page = Elements(html)
        (boot,) = page.find("img", class_="jf-boot")
        assert "jf-dashboard-js" in boot["onload"] and boot["src"].startswith("data:image/gif")
        (root,) = page.find("div", id="jf-dashboard")
        assert root["data-src"] == "/buildbot/plugins/wsgi_dashboards/jailfarm/index.html"
        # Nothing is fetched from elsewhere: no external script, style sheet or image.
        assert not re.search(r"<(script|link|img)[^>]*\s(src|href)=\"(https?:)?//", html)
        assert "</script" not in script

    def test_an_empty_farm(self) -> None:
        self.api.answers = {("builders",): [{"builderid": 3, "name": "bulk-never"}]}
        shutil.rmtree(self.root)
        words = self.page().words()
        for text in (
            "No finished bulk yet.",
            "No build is running.",
            "Nothing published yet.",
            "0 builds running",
        ):
            assert text in words

    def test_a_build_that_ran_no_bulk_is_not_the_latest_bulk(self) -> None:
        # A push that changed no port: the plan ends the build before the bulk.
        nothing = build(5, 4, 1, 0, ago=60, state="nothing to build")
        self.api.answers[("builders", 1, "builds")].insert(0, nothing)
        self.api.answers[("builds", 5, "properties")] = {"plan_bulk_all": (False, "PlanPorts")}
        page = self.page()
        assert page.find("a", class_="jf-build-link")[0]["href"].endswith("/builds/2")
        assert "compared with #1" in page.words()
        assert len(page.find("rect")) == 2 + 14 + 14  # two bulks in the duration chart

    def test_a_ports_log_that_is_not_a_table_shows_the_property_lists(self) -> None:
        self.api.answers[("logs", 6, "contents")] = {"content": "garbage\n"}
        page = self.page()
        words = page.words()
        assert "build 2 ports log: line 1: expected the header" in words
        failed = [a for _, a in page.tags if a.get("data-result") == "failed"]
        assert [a["data-origin"] for a in failed] == ["devel/d-w"]


class PluginTests:
    def test_the_dashboard_is_a_www_plugin_and_shows_browsers_its_name_only(self) -> None:
        www = www_config(config(), FARM_TOML)
        (dashboard,) = www["plugins"]["wsgi_dashboards"]
        assert (dashboard["name"], dashboard["caption"], dashboard["icon"]) == (
            "jailfarm",
            "Farm",
            "industry",
        )
        assert isinstance(dashboard["app"], DashboardApp)
        master = type("M", (), {"config": dataclasses.make_dataclass("C", [])()})()
        master.config.buildbotURL = "http://localhost:8080/buildbot/"
        master.config.title = master.config.titleURL = "t"
        master.config.multiMaster = False
        sent = json.loads(
            serialize_www_frontend_config_dict_to_json(get_www_frontend_config_dict(master, www))
        )
        assert sent["plugins"]["wsgi_dashboards"] == [
            {
                "name": "jailfarm",
                "caption": "Farm",
                "app": {"name": "jailfarm dashboard"},
                "order": 1,
                "icon": "industry",
            }
        ]
