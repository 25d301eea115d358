"""The poudriere build steps `PoudriereBulk` and `PoudriereTestport` (adapter).

A step renders its arguments and runs the argv from poudriere.commands on the worker. While the
command runs, poudriere's progress lines keep the step summary current. Afterwards the step reads
the build's `.poudriere.*` files and takes the result from status.judge, not from the exit code
(poudriere.md §6, §8). Cancelling sends SIGTERM, waits, then runs `poudriere jail -k` (§7).
The helpers above the steps are pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

from buildbot import config
from buildbot.process import buildstep, logobserver
from buildbot.process import results as _results
from buildbot.process.properties import Interpolate
from buildbot.steps.master import MasterShellCommand
from twisted.logger import Logger

from jailfarm.cmd import Cmd, program
from jailfarm.errors import ParseError
from jailfarm.poudriere.commands import (
    DEFAULT_TREE,
    BuildOptions,
    Poudriere,
    Target,
    build_dir,
    bulk_cmd,
    jail_kill_cmd,
    testport_cmd,
)
from jailfarm.poudriere.commands import buildname as make_buildname
from jailfarm.poudriere.status import (
    OUTCOMES,
    STATS,
    BulkResult,
    Policy,
    PortResult,
    Verdict,
    judge,
    parse_build_files,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

OnPortFailure = Literal["failure", "warnings"]

# buildbot's result codes, typed.
SUCCESS: int = _results.SUCCESS
WARNINGS: int = _results.WARNINGS
FAILURE: int = _results.FAILURE
CANCELLED: int = _results.CANCELLED

# --- pure helpers -------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# job_msg_status (common.sh): "[<elapsed>] [<builder>] [<job elapsed>] <title padded to 10>
# <originspec> | <pkgname>[: <msg>]", e.g. `[00:12:34] [01] [00:01:05] Finished www/nginx |
# nginx-1.26.2_1,3: Success` (poudriere.md §6.7). The bracketed prefixes vary, so skip them.
_JOB = re.compile(
    r"(?:\[[^\]]*\]\s+)*(?P<title>Finished|Crashed|Skipping)\s+"
    r"(?P<spec>\S+) \| (?P<pkgname>\S+?)(?:: (?P<msg>.*))?"
)
# parallel_build (common.sh): "Building 40 packages using up to 8 builders".
_TOTAL = re.compile(
    r"(?:\[[^\]]*\]\s+)*Building (?P<n>[0-9]+) packages using up to [0-9]+ builders"
)


@dataclass
class Progress:
    """Counts read from a bulk's stdout, for the live summary only. poudriere.md §6.7 calls
    these lines human output, so the step's result never depends on them; an unknown line is
    ignored. Results are kept per package because a crashed builder can report one twice."""

    total: int | None = None
    results: dict[str, str] = field(default_factory=dict)

    def feed(self, line: str) -> bool:
        """Take one stdout line; True if the counts changed."""
        line = _ANSI.sub("", line).strip()
        if m := _TOTAL.fullmatch(line):
            self.total = int(m["n"])
            return True
        m = _JOB.fullmatch(line)
        if m is None:
            return False
        msg = m["msg"] or ""
        if m["title"] == "Skipping":
            kind = "skipped"
        elif m["title"] == "Crashed" or msg.startswith("Failed"):
            kind = "failed"
        elif msg == "Success":
            kind = "built"
        elif msg == "Nothing to do":
            kind = "inspected"
        else:
            return False
        self.results[m["pkgname"]] = kind
        return True

    def count(self, kind: str) -> int:
        return sum(1 for k in self.results.values() if k == kind)

    def summary(self, label: str) -> str:
        if self.total is None and not self.results:
            return f"{label}: starting"
        built = str(self.count("built"))
        if self.total is not None:
            built += f"/{self.total}"
        failed, skipped = self.count("failed"), self.count("skipped")
        return f"{label}: {built} built, {failed} failed, {skipped} skipped"


# What parse_build_files reads (poudriere.md §4.2); builder, snap_* and journal files are left out.
STATE_FILES: tuple[str, ...] = tuple(
    f".poudriere.{name}"
    for name in (
        "status",
        "buildname",
        "mastername",
        "jailname",
        "ptname",
        "setname",
        "started",
        "ended",
        *(f"stats_{s}" for s in STATS),
        *(f"ports.{k}" for k in (*OUTCOMES, "queued")),
    )
)
_RS = "\x1e"  # ASCII record separator: never in a name, number, phase or make(1) reason
# Prints each file that exists as RS name LF, its bytes unchanged, RS LF, so a last line
# without its newline (a torn `badd` append, §6) stays visible to the parser. A missing build
# directory exits 3.
_READ_SCRIPT = (
    'cd "$1" || exit 3; shift; '
    "for f do "
    '[ -e "$f" ] || continue; '
    "printf '\\036%s\\n' \"$f\"; "
    'cat "$f" || exit 4; '
    "printf '\\036\\n'; "
    "done"
)
_RECORD = re.compile(f"{_RS}([^\n{_RS}]+)\n([^{_RS}]*){_RS}\n")


def read_state_cmd(directory: str) -> Cmd:
    """One `sh -c` that prints every state file of a build directory, framed (see
    split_state_files). `directory` comes from commands.build_dir, so it is validated."""
    return Cmd(("sh", "-c", _READ_SCRIPT, "sh", directory, *STATE_FILES))


def split_state_files(text: str, source: str = "state files") -> dict[str, str]:
    """{file name: content} from read_state_cmd's output; ParseError on any other shape."""
    files: dict[str, str] = {}
    at = 0
    while at < len(text):
        m = _RECORD.match(text, at)
        if m is None:
            line_no = text.count("\n", 0, at) + 1
            raise ParseError(source, line_no, text[at : at + 80], "expected a framed file")
        files[m[1]] = m[2]
        at = m.end()
    return files


def originspec(port: PortResult) -> str:
    return port.origin + (f"@{port.flavor}" if port.flavor else "")


_TABLE_ORDER = ("failed", "skipped", "ignored", "pending", "built", "inspected", "fetched")


def _reason(port: PortResult) -> str:
    if port.result == "failed":
        # A crashed builder leaves errortype == phase and no elapsed time (status.py); an
        # ordinary failure has its time, and its errortype may well be the phase's name.
        crashed = port.errortype == port.phase and port.elapsed is None
        return "builder crashed" if crashed else port.errortype
    if port.result == "skipped":
        return f"depends on {port.skipped_because}"
    return port.reason


def ports_table(result: BulkResult) -> str:
    """Every package of the build, one per row, failures first: ORIGIN, PACKAGE, RESULT,
    PHASE, REASON, padded to fixed widths (the reason is last and not padded)."""
    ports = sorted(result.ports or (), key=lambda p: (_TABLE_ORDER.index(p.result), originspec(p)))
    rows = [("ORIGIN", "PACKAGE", "RESULT", "PHASE", "REASON")]
    rows += [(originspec(p), p.pkgname, p.result, p.phase, _reason(p)) for p in ports]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[4]]).rstrip()
        for row in rows
    ]
    if result.ports is None:
        lines.append("(no port lists were written)")
    return "\n".join(lines) + "\n"


def result_counts(result: BulkResult, label: str) -> str:
    counts = ", ".join(f"{result.count(k)} {k}" for k in ("built", "failed", "skipped", "ignored"))
    return f"{label}: {counts}"


def port_log_url(base: str, mastername: str, build: str, pkgname: str = "") -> str:
    """The URL of `logs/bulk/<M>/<B>/logs/<pkgname>.log` (§4.2; `base` serves `logs/bulk`),
    or of the build's web page without a pkgname. '+' and ',' are percent-encoded (§4.1)."""
    url = f"{base.rstrip('/')}/{quote(mastername, safe='')}/{quote(build, safe='')}/"
    return url + (f"logs/{quote(pkgname, safe='')}.log" if pkgname else "")


# --- buildbot adapters ----------------------------------------------------------------------


class _ProgressObserver(logobserver.LogLineObserver):  # type: ignore[misc]  # buildbot is untyped
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.port_progress = progress

    def outLineReceived(self, line: str) -> None:
        # updateSummary is debounced (1 s), so a flood of lines costs one update a second.
        if self.port_progress.feed(line):
            self.step.updateSummary()


@dataclass(frozen=True)
class _Plan:
    target: Target
    poudriere: Poudriere
    buildname: str
    cmd: Cmd


class _PoudriereStep(buildstep.ShellMixin, buildstep.BuildStep):  # type: ignore[misc]
    """What PoudriereBulk and PoudriereTestport share: render, run, read the state files,
    judge, report. Subclasses give the command, the verdict and the label."""

    log = Logger()
    kind: ClassVar[str] = ""
    # buildbot gathers `renderables` over the class hierarchy: subclasses list only theirs.
    renderables: ClassVar[Sequence[str]] = ("jail", "tree", "set_name", "builders", "buildname")
    # poudriere can be silent for hours while one big port builds; its own NOHANG_TIME and
    # MAX_EXECUTION_TIME are the limits (§7), so no output timeout here.
    timeout = None
    logEnviron = False
    # Cancel = SIGTERM (to the process group: buildbot-worker signals the group), then SIGKILL
    # after this many seconds: tearing down many builders takes a while (§7).
    sigtermTime = 900
    max_failure_urls = 50

    def __init__(
        self,
        *,
        jail: Any,  # str or a renderable: buildbot's Renderable types are untyped
        etcdir: str,
        data_dir: str,
        tree: Any = DEFAULT_TREE,
        set_name: Any = None,
        builders: Any = None,
        poudriere: str = "poudriere",
        privilege: Sequence[str] = (),
        log_url: str | None = None,
        on_port_failure: OnPortFailure = "failure",
        policy: Policy | None = None,
        buildname: Any = None,
        buildname_prefix: str = "jf",
        read_timeout: int = 600,
        **kwargs: Any,
    ) -> None:
        kwargs = self.setupShellMixin(kwargs, prohibitArgs=["command"])
        super().__init__(**kwargs)
        if on_port_failure not in ("failure", "warnings"):
            config.error(f"{self.kind}: on_port_failure must be 'failure' or 'warnings'")
        try:
            Poudriere(etcdir, poudriere, privilege=tuple(privilege))  # validates them
            make_buildname(buildname_prefix, 0)  # validates the prefix
            build_dir(data_dir, Target("j"), "b")  # validates data_dir
        except ValueError as e:
            config.error(f"{self.kind}: {e}")
        self.jail, self.tree, self.set_name = jail, tree, set_name
        self.builders, self.buildname = builders, buildname
        self.etcdir, self.data_dir, self.poudriere = etcdir, data_dir, poudriere
        self.privilege = tuple(privilege)
        self.log_url, self.on_port_failure = log_url, on_port_failure
        self.policy, self.buildname_prefix = policy or Policy(), buildname_prefix
        self.read_timeout = read_timeout
        self.port_progress = Progress()
        self.label = self.kind
        self.addLogObserver("stdio", _ProgressObserver(self.port_progress))

    # Subclass hooks.
    def make_cmd(self, p: Poudriere, target: Target, options: BuildOptions) -> Cmd:
        raise NotImplementedError

    def decide(self, result: BulkResult, rc: int | None) -> Verdict:
        raise NotImplementedError

    def getCurrentSummary(self) -> dict[str, str]:
        return {"step": self.port_progress.summary(self.label)}

    def _plan(self) -> _Plan:
        target = Target(self.jail, self.tree or DEFAULT_TREE, self.set_name or None)
        p = Poudriere(self.etcdir, self.poudriere, privilege=self.privilege)
        name = self.buildname or make_buildname(self.buildname_prefix, int(self.build.number))
        builders = int(self.builders) if self.builders is not None else None
        options = BuildOptions(name, builders=builders)
        return _Plan(target, p, options.buildname, self.make_cmd(p, target, options))

    async def run(self) -> int:
        try:
            plan = self._plan()
        except ValueError as e:  # InvalidName too: bad arguments or build properties
            return await self._finish(FAILURE, f"{self.kind}: invalid arguments: {e}", str(e))
        self.label = f"{self.kind} {plan.target.mastername}"
        self.setProperty("poudriere_buildname", plan.buildname, self.__class__.__name__)
        if self.log_url:
            url = port_log_url(self.log_url, plan.target.mastername, plan.buildname)
            await self.addURL("poudriere build", url)
        self.updateSummary()
        cmd = await self.makeRemoteShellCommand(command=list(plan.cmd.argv))
        await self.runCommand(cmd)
        if self.stopped:
            await self._recover(plan, "the build was cancelled")
            self.descriptionDone = [f"{self.label}: cancelled"]
            return CANCELLED
        return await self._conclude(plan, cmd.rc)

    async def _conclude(self, plan: _Plan, rc: int | None) -> int:
        directory = build_dir(self.data_dir, plan.target, plan.buildname)
        read = await self.makeRemoteShellCommand(
            command=list(read_state_cmd(directory).argv),
            collectStdout=True,
            collectStderr=True,
            stdioLogName=None,  # a `-a` build's lists are megabytes; the table is the record
            timeout=self.read_timeout,
        )
        await self.runCommand(read)
        if self.stopped:
            self.descriptionDone = [f"{self.label}: cancelled"]
            return CANCELLED
        if read.rc != 0:
            why = f"cannot read {directory} (rc {read.rc}): {read.stderr.strip()[-500:]}"
            if read.rc == 3:
                why = f"no build directory {directory}: poudriere exited {rc} before the build"
            return await self._finish(FAILURE, f"{self.label}: {why.split(':')[0]}", why)
        try:
            result = parse_build_files(split_state_files(read.stdout, directory), directory)
        except ParseError as e:
            return await self._finish(FAILURE, f"{self.label}: unreadable build state", str(e))
        verdict = self.decide(result, rc)
        await self._report(plan, result)
        if verdict.outcome == "error":
            if not result.status.finished:
                # No `stopped:` after poudriere exited: it was hard-killed, so its jails and
                # mounts are still there (§7).
                await self._recover(plan, verdict.why[0])
            return await self._finish(FAILURE, f"{self.label}: {verdict.why[0]}", verdict.why)
        summary = result_counts(result, self.label)
        if verdict.outcome == "failure":
            results = FAILURE if self.on_port_failure == "failure" else WARNINGS
            return await self._finish(results, summary, verdict.why, log="policy")
        self.descriptionDone = [summary]
        return SUCCESS

    async def _report(self, plan: _Plan, result: BulkResult) -> None:
        source = self.__class__.__name__
        await self.addCompleteLog("ports", ports_table(result))
        for kind in ("built", "failed", "skipped", "ignored"):
            specs = [originspec(p) for p in result.by_result(kind)]
            self.setProperty(f"poudriere_{kind}", specs, source)
        if not self.log_url:
            return
        for port in result.by_result("failed")[: self.max_failure_urls]:
            url = port_log_url(self.log_url, plan.target.mastername, plan.buildname, port.pkgname)
            await self.addURL(f"{originspec(port)} log", url)

    async def _finish(
        self, results: int, summary: str, why: str | Sequence[str], log: str = "error"
    ) -> int:
        lines = [why] if isinstance(why, str) else list(why)
        await self.addCompleteLog(log, "\n".join(lines) + "\n")
        self.descriptionDone = [summary]
        return results

    async def _recover(self, plan: _Plan, why: str) -> None:
        """`poudriere jail -k` for this MASTERNAME, so no jail or mount is left (§7). It runs
        even when the step is stopped, which runCommand refuses, hence the direct run. The
        step assumes it is the only user of the MASTERNAME on this worker (a buildbot lock
        per MASTERNAME), since `jail -k` would also stop a bulk someone else started."""
        builders = int(self.builders) if self.builders is not None else None
        kill = jail_kill_cmd(plan.poudriere, plan.target, builders)
        self.log.warn(
            "{mastername}: {why}; running {cmd}",
            mastername=plan.target.mastername,
            why=why,
            cmd=str(kill),
        )
        cmd = await self.makeRemoteShellCommand(
            command=list(kill.argv), stdioLogName="recovery", sigtermTime=None
        )
        cmd.worker = self.worker
        await cmd.run(self, self.remote, self.build.builder.name)


class PoudriereBulk(_PoudriereStep):
    """`poudriere bulk` over `origins` (list or renderable), `list_files` (absolute paths on
    the worker) or every port (`all_ports`, a bool or renderable). Ports that fail beyond
    `policy` make the step FAILURE or WARNINGS (`on_port_failure`); poudriere errors make it
    FAILURE."""

    name = "poudriere-bulk"
    kind = "bulk"
    renderables = ("origins", "list_files", "all_ports")

    def __init__(
        self,
        *,
        origins: Any = (),
        list_files: Any = (),
        all_ports: Any = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Renderables are checked when rendered, by bulk_cmd (exactly one port source).
        if all_ports is True and (origins or list_files):
            config.error("bulk: all_ports cannot be combined with origins or list_files")
        self.origins, self.list_files, self.all_ports = origins, list_files, all_ports

    def make_cmd(self, p: Poudriere, target: Target, options: BuildOptions) -> Cmd:
        return bulk_cmd(
            p,
            target,
            options,
            origins=_strings(self.origins),
            list_files=_strings(self.list_files),
            all_ports=bool(self.all_ports),
        )

    def decide(self, result: BulkResult, rc: int | None) -> Verdict:
        # bulk exits (failed + skipped) mod 256; judge only cross-checks it (§1.3).
        return judge(result, self.policy, rc)


class PoudriereTestport(_PoudriereStep):
    """`poudriere testport` of one `origin` (or renderable). Exit 0 is success, 1 a failure
    of the port or of a dependency (§1.4); anything else is an error."""

    name = "poudriere-testport"
    kind = "testport"
    renderables = ("origin",)

    def __init__(self, *, origin: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.origin = origin

    def make_cmd(self, p: Poudriere, target: Target, options: BuildOptions) -> Cmd:
        return testport_cmd(p, target, options, str(self.origin))

    def decide(self, result: BulkResult, rc: int | None) -> Verdict:
        if rc == 0:
            return judge(result, self.policy)  # its exit code is not failed + skipped
        # A failed testport exits before `bset status done:`, so the status cannot tell.
        bad = [*result.by_result("failed"), *result.by_result("skipped")]
        if rc == 1 and bad:
            why = tuple(
                f"{p.pkgname} {p.result}" + (f" in {p.phase}" if p.phase else "") for p in bad
            )
            return Verdict("failure", why)
        return Verdict("error", (f"testport exited {rc} (status {result.status.raw!r})",))


def _strings(value: Any) -> tuple[str, ...]:
    """A rendered list argument: a list of strings, or one string meaning one item."""
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


# --- publishing ---------------------------------------------------------------------------


def bulk_passed(step: buildstep.BuildStep) -> bool:
    """Publish only what a passing bulk made: a bulk that failed by policy (or a failed
    upload) never replaces the served repository (ARCHITECTURE "Repository generations")."""
    return bool(step.build.results in (_results.SUCCESS, _results.WARNINGS))


class PublishRepository(MasterShellCommand):  # type: ignore[misc]  # buildbot is untyped
    """Publish the packages the bulk uploaded to the master as a new signed generation of the
    repository: `jailfarm repo publish` on the master, where the signing key (or the signing
    command) lives; it never enters a worker jail. Skipped when the bulk did not pass."""

    name = "publish"

    def __init__(self, *, farm_toml: str, repo: Any, source: Any, **kwargs: Any) -> None:
        command = [
            program("jailfarm"),
            "repo",
            "publish",
            "-c",
            farm_toml,
            repo,
            source,
            "--info",
            Interpolate("build=%(prop:buildername)s/%(prop:buildnumber)s"),
            "--info",
            Interpolate("revision=%(prop:got_revision:-unknown)s"),
        ]
        kwargs.setdefault("doStepIf", bulk_passed)
        kwargs.setdefault("haltOnFailure", True)
        super().__init__(command, logEnviron=False, **kwargs)
        self.published = ""
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._lines))

    def _lines(self) -> Generator[None, tuple[str, str], None]:
        while True:
            _, line = yield
            if m := _PUBLISHED.search(line):
                self.published = f"{m.group(1)}: published {m.group(2)}"

    def getResultSummary(self) -> dict[str, str]:
        if self.published and self.results == _results.SUCCESS:
            return {"step": self.published}
        summary: dict[str, str] = super().getResultSummary()
        return summary


# `jailfarm repo publish`'s line for the new generation.
_PUBLISHED = re.compile(r"^repo (\S+): published (g\d+: \d+ packages)")
