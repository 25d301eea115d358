"""The farm's web UI in a real browser (issue #7): headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) against a whole farm (tests/integration/farm.py: a real
zfs-fuse pool, Buildbot master, worker jails and nginx), through nginx at /buildbot/ as ops
use it. Ops sign in, force a bulk and watch it run live (the UI's websocket through nginx),
read its per-port results on the farm's dashboard, open a failed port's log and see the port
fixed by the next bulk; a viewer sees the worker jails alive but is refused forcing and
rolling back; ops roll a repository back from the dashboard. Every stage leaves a screenshot
in test-artifacts/browser/. One farm per class, several checks per test: a farm takes ~15 s.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from jailfarm.cmd import Cmd
from jailfarm.poudriere.generations import generations
from jailfarm.runner import LocalRunner
from tests.browser.conftest import CHROMEDRIVER, CHROMIUM
from tests.integration.farm import ROOT
from tests.integration.test_web_auth import PASSWORDS, REPO, USERS_TOML, _Web
from tests.support import deferred_test

if TYPE_CHECKING:
    from collections.abc import Callable

ARTIFACTS = ROOT / "test-artifacts" / "browser"
FAILING = "bulk-141amd64-default-failing"
# A set whose make.conf makes devel/jf-flaky fail in its build phase (misc/jf-meta depends on it).
FAILING_SET = '[[sets]]\nname = "failing"\nmake_conf = { "JF_FAIL" = "yes" }\n'
# The bulk step's row on a build page of Buildbot's UI, and its summary.
STEP_SUMMARY = """
const rows = Array.from(document.querySelectorAll("li.bb-build-summary-step-line"));
const row = rows.find(r => (r.firstElementChild || r).textContent.includes(arguments[0]));
const details = row && row.querySelector(".bb-build-summary-step-details");
return details ? details.textContent : null;
"""
# The rows of a bulk's ports table on the dashboard: origin, result, phase, reason, log link.
PORT_ROWS = """
const card = document.querySelector('article.jf-bulk[data-builder="' + arguments[0] + '"]');
return card ? Array.from(card.querySelectorAll("tr.jf-port")).map(tr => [
    tr.dataset.origin, tr.dataset.result, tr.cells[3].textContent.trim(),
    tr.cells[4].textContent.trim(),
    tr.querySelector("a.jf-port-log") ? tr.querySelector("a.jf-port-log").href : null]) : null;
"""
POST_ROLLBACK = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {method: "POST", credentials: "same-origin",
                     headers: {"Content-Type": "application/json"}, body: '{"to": 1}'})
    .then(r => r.text().then(t => done([r.status, t])));
"""


class Browser:
    """One headless Chromium with a profile of its own, signed in as one farm user (or
    anonymous), on the farm's UI through nginx. Calls block: the farm runs in other
    processes, so the test's reactor has nothing to do meanwhile."""

    def __init__(self, base: str, test: str, who: str) -> None:
        self.base, self.who, self.prefix = base, who, f"{test}-{who}"
        self.profile = tempfile.mkdtemp(prefix="jf-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",  # root on the CI machine
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.shots = 0
        self.driver.get(base)

    def quit(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(lambda _: check())
        except TimeoutException:
            self.shot(f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())}")
            raise AssertionError(
                f"{self.who}: timed out after {timeout} s waiting for {what}"
            ) from None

    def shot(self, what: str) -> Path:
        """A screenshot of the whole page (the window grows to its height)."""
        self.shots += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # Buildbot's UI scrolls an inner container, not the body: the tallest element.
        height = self.run(
            "return Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))"
        )
        self.driver.set_window_size(1400, max(1000, min(int(height) + 100, 6000)))
        path = ARTIFACTS / f"{self.prefix}-{self.shots:02d}-{what}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1400, 1000)
        return path

    def sign_in(self) -> None:
        """What a person does: open the user menu, choose Login and answer the browser's
        password prompt (HTTP basic auth, given here in the URL)."""
        self.wait("the user menu", lambda: self.driver.find_elements(By.ID, "bb-loginbar-dropdown"))
        self.driver.find_element(By.ID, "bb-loginbar-dropdown").click()
        login = self.wait(
            "the Login item",
            lambda: self.driver.find_elements(
                By.CSS_SELECTOR, "a.dropdown-item[href*='auth/login']"
            ),
        )[0].get_attribute("href")
        self.driver.get(login.replace("://", f"://{self.who}:{PASSWORDS[self.who]}@", 1))
        self.wait(f"{self.who} signed in", lambda: self.text("#bb-loginbar-dropdown") == self.who)

    def open(self, route: str) -> None:
        self.driver.get(f"{self.base}#/{route}")

    def url(self) -> str:
        return str(self.driver.current_url)

    def text(self, css: str) -> str | None:
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text.strip() if found else None

    def dashboard(self) -> str:
        """Open the farm's dashboard from the UI's menu; its text."""
        self.open("")
        self.wait("the Farm menu item", lambda: self.driver.find_elements(By.LINK_TEXT, "Farm"))
        self.driver.find_element(By.LINK_TEXT, "Farm").click()
        self.wait("the dashboard", lambda: self.text("#jf-dashboard h2"))
        # Its script runs (started by the boot image): auto-refresh and rollback work.
        self.wait("the dashboard's script", lambda: self.run("return !!window.jailfarmDashboard"))
        return self.text("#jf-dashboard") or ""

    def click(self, css: str, text: str | None = None) -> None:
        def found() -> Any:
            for element in self.driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed() and (text is None or element.text.strip() == text):
                    return element
            return None

        self.wait(f"{css} {text or ''}", found).click()

    def force(self, builder: str, scheduler: str) -> None:
        """On the builder's page, the scheduler's force button, then "Start build"."""
        self.open("builders")
        self.wait(builder, lambda: self.driver.find_elements(By.LINK_TEXT, builder))
        self.driver.find_element(By.LINK_TEXT, builder).click()
        self.click("button", scheduler)
        self.click(".modal-footer button", "Start build")

    def run(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)  # type: ignore[no-untyped-call]


class _BrowserFarm(_Web):
    timeout = 480

    def browser(self, who: str = "anonymous") -> Browser:
        b = Browser(self.base, self.id().rsplit(".", 2)[-2], who)
        self.addCleanup(b.quit)
        if who != "anonymous":
            b.sign_in()
        return b

    async def last_build(self, builder: str) -> dict[str, Any]:
        """The builder's latest build, once it has finished."""
        builders = (await self.get_json("api/v2/builders"))["builders"]
        builderid = next(b["builderid"] for b in builders if b["name"] == builder)

        async def finished() -> Any:
            path = f"api/v2/builders/{builderid}/builds?order=-number&limit=1"
            builds = (await self.get_json(path))["builds"]
            return builds[0] if builds and builds[0]["complete"] else None

        return dict(await self.until(f"the last build of {builder} to finish", finished))


class BulkDashboardTests(_BrowserFarm):
    extra_toml = USERS_TOML + FAILING_SET

    @deferred_test
    async def test_ops_watch_a_bulk_live_then_read_open_and_compare_its_ports(self) -> None:
        ops = self.browser("otto")
        ops.shot("signed-in")
        await self.watch_a_bulk_live(ops)
        flaky_log = self.read_the_failed_bulk(ops)
        # The failed port's log, from nginx's /data.
        ops.click(f'{self.card} tr[data-origin="devel/jf-flaky"] a.jf-port-log')
        ops.wait("the port's log", lambda: ops.driver.current_url == flaky_log)
        log = ops.text("body") or ""
        self.assertIn("build failure", log)
        self.assertIn("jf-flaky: failing in the build phase because JF_FAIL=yes", log)
        ops.shot("failed-port-log")
        await self.see_it_fixed(ops)

    card = f'article.jf-bulk[data-builder="{FAILING}"]'

    async def watch_a_bulk_live(self, ops: Browser) -> None:
        """Forced through the UI, the build page follows the bulk live (the UI's websocket
        through nginx): its step's summary changes on a page that is never reloaded."""
        ops.force(FAILING, "force-bulk")
        ops.wait("the build page", lambda: re.search(r"#/builders/\d+/builds/\d+$", ops.url()))
        ops.run("window.jfNeverReloaded = true")
        seen: list[str] = []

        def finished() -> bool:
            summary = ops.run(STEP_SUMMARY, "poudriere-bulk")
            if summary:
                summary = re.sub(r"^\s*\d+ s\s*", "", summary).strip()
                if not seen or seen[-1] != summary:
                    seen.append(summary)
                    if len(seen) == 1:
                        ops.shot("bulk-running")
            return bool(summary and "(failure)" in summary)

        ops.wait("the bulk to finish", finished, 120)
        final = "bulk 141amd64-default-failing: 6 built, 1 failed, 1 skipped, 1 ignored (failure)"
        self.assertEqual(seen[-1], final)
        self.assertGreaterEqual(len(seen), 2, seen)  # e.g. "...: starting", then the end
        self.assertTrue(ops.run("return window.jfNeverReloaded === true"))
        first = await self.last_build(FAILING)
        self.assertEqual(first["results"], 2, first)  # FAILURE: a port failed
        ops.shot("bulk-finished")

    def read_the_failed_bulk(self, ops: Browser) -> str:
        """The dashboard shows the bulk port by port, failures first; the failed port's log
        link (nginx's /data)."""
        text = ops.dashboard()
        self.assertIn("FreeBSD:14:amd64 (141amd64) · tree default · set failing", text)
        self.assertIn("6 built 1 failed 1 skipped 1 ignored", text)
        self.assertIn("the first bulk: nothing to compare with", text)
        rows = ops.run(PORT_ROWS, FAILING)
        self.assertEqual(
            [r[:4] for r in rows[:3]],
            [
                ["devel/jf-flaky", "failed", "build", "build"],
                ["misc/jf-meta", "skipped", "", "depends on jf-flaky-0.9"],
                ["misc/jf-broken", "ignored", "", "is for testing IGNORE"],
            ],
        )
        self.assertEqual(len([r for r in rows if r[1] == "built"]), 6)
        data = self.base.removesuffix("/buildbot/") + "/data/141amd64-default-failing/"
        self.assertRegex(rows[0][4], rf"^{re.escape(data)}[^/]+/logs/jf-flaky-0\.9\.log$")
        ops.shot("dashboard-failed-bulk")
        return str(rows[0][4])

    async def see_it_fixed(self, ops: Browser) -> None:
        """The set fixed (farm.toml, reconfig), the next bulk builds the port: the dashboard,
        left open, refreshes itself and shows the port fixed against the bulk before."""
        ops.dashboard()
        await self.fix_the_failing_set()
        otto = await self.login("otto")
        code, answer = await self.rpc(
            "forceschedulers/force-bulk", "force", otto, builderNames=[FAILING]
        )
        self.assertEqual(code, 200, answer)
        build = await self.build_of(int(next(iter(answer["result"][1].values()))), complete=True)
        self.assertEqual(build["results"], 0, build)
        ops.wait(
            "the dashboard to show the fixed port",
            lambda: "Fixed: devel/jf-flaky" in (ops.text(self.card) or ""),
            40,
        )
        card = ops.text(self.card) or ""
        self.assertIn("compared with #1", card)
        self.assertIn("No new failures.", card)
        # Only the two that did not build before; the rest were up to date.
        self.assertIn("2 built 0 failed 0 skipped 1 ignored", card)
        built = [r[0] for r in ops.run(PORT_ROWS, FAILING) if r[1] == "built"]
        self.assertEqual(built, ["devel/jf-flaky", "misc/jf-meta"])
        # The passing bulk published a first generation of its repository.
        self.assertIn("141amd64-default-failing current: g1", ops.text("#jf-repos") or "")
        ops.shot("dashboard-fixed")

    async def fix_the_failing_set(self) -> None:
        master = self.host.master_dir
        toml = master / "farm.toml"
        text = toml.read_text()
        self.assertIn('"JF_FAIL" = "yes"', text)
        toml.write_text(text.replace('"JF_FAIL" = "yes"', '"JF_FAIL" = "no"'))
        buildbot = str(Path(sys.executable).parent / "buildbot")
        result = await LocalRunner().run(Cmd((buildbot, "reconfig", str(master)), timeout=120))
        self.assertTrue(result.ok, result.out + result.err)


class RolesDashboardTests(_BrowserFarm):
    extra_toml = USERS_TOML

    @deferred_test
    async def test_viewers_see_jails_and_are_refused_ops_roll_back(self) -> None:
        await self.publish_generations(("1.0", "1.1"))
        otto = await self.login("otto")
        request = await self.force_hold(otto, 300)
        build = await self.build_of(request)

        async def jail() -> Any:
            return await self.host.platform.jails.list()

        (running, *_) = await self.until("the hold build's worker jail", jail)

        # A viewer: the worker jail alive right now, with its host, build, lease and age.
        vera = self.browser("vera")
        text = vera.dashboard()
        self.assertIn("Signed in as vera (viewer): read only.", text)
        row = vera.text(f'tr.jf-jail[data-jail="{running.name}"]') or ""
        self.assertRegex(row, rf"^local {running.name} \S+ hold #{build['number']} running ")
        # The lease left, the jail's age and what it wrote.
        self.assertRegex(row, r" \d+ min \d+ s left (\d+ min )?\d+ s \d+ MiB$")
        self.assertIn(f"hold #{build['number']}", vera.text("table.jf-running") or "")
        self.assertIn("1 build running", text)
        self.assertEqual(vera.driver.find_elements(By.CSS_SELECTOR, "button.jf-rollback"), [])
        vera.shot("dashboard-jails")
        # ... refused a rollback through the farm's API, and forcing a build in the UI.
        url = f"{self.base}jailfarm/api/repos/{REPO}/rollback"
        status, body = vera.driver.execute_async_script(POST_ROLLBACK, url)
        self.assertEqual((status, body), (403, '{"error": "you need to have role \'ops\'"}'))
        vera.force("hold", "force-hold")
        vera.wait(
            "the refusal",
            lambda: "you need to have role 'ops'" in (vera.text(".modal") or ""),
        )
        vera.shot("force-refused")
        code, answer = await self.rpc(f"builds/{build['buildid']}", "stop", otto)
        self.assertEqual(code, 200, answer)

        # Anonymous visitors read; they have no button either.
        anonymous = self.browser()
        self.assertIn("Not signed in: read only.", anonymous.dashboard())
        self.assertEqual(anonymous.driver.find_elements(By.CSS_SELECTOR, "button.jf-rollback"), [])

        # Ops: the generations, their diff, and the rollback button of the older one.
        ops = self.browser("otto")
        text = ops.dashboard()
        repo = f'article.jf-repo[data-repo="{REPO}"]'
        self.assertIn(f"{REPO} current: g2", text)
        ops.click(f"{repo} details.jf-diff summary")
        self.assertIn("g1 → g2: 0 added, 0 removed, 1 upgraded", ops.text(repo) or "")
        self.assertIn("jf-hello upgraded 1.0 1.1", ops.text(repo) or "")
        ops.shot("dashboard-before-rollback")
        ops.click(f"{repo} button.jf-rollback", "Roll back to g1")
        alert = ops.wait("the confirmation", lambda: _alert(ops))
        self.assertIn(f"Roll back to g1 of {REPO}?", alert.text)
        alert.accept()
        ops.wait(
            "the rollback",
            lambda: f"{REPO}: g1 is current now" in (ops.text("#jf-status") or ""),
        )
        ops.wait("g1 shown current", lambda: f"{REPO} current: g1" in (ops.text(repo) or ""))
        # What the rollback undid, and the way back.
        self.assertIn("g2 → g1: 0 added, 0 removed, 0 upgraded, 1 downgraded", ops.text(repo) or "")
        self.assertEqual(ops.text(f"{repo} button.jf-rollback"), "Roll forward to g2")
        root = Path(self.cfg.publish.root)
        self.assertEqual([g.number for g in generations(root, REPO) if g.current], [1])
        self.assertIn(f"repository {REPO} rolled back to g1 by otto", self.master_log())
        ops.shot("dashboard-rolled-back")
        await self.build_of(request, complete=True)


def _alert(browser: Browser) -> Any:
    try:
        return browser.driver.switch_to.alert
    except NoAlertPresentException:
        return None
