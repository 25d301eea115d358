"""Parsers for poudriere's machine-readable build state, and the verdict on a bulk (pure).

Reads a build directory's `.poudriere.*` files, its `.data.json`, `status -H` rows and
`poudriere version` (poudriere.md §0, §1.5, §4.2, §6). Every parser raises ParseError on input
of another shape and never returns partial data. `judge` decides a bulk's outcome from these,
never from its exit code, which is (failed + skipped) mod 256 (§1.3, §8).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from typing import TYPE_CHECKING, Literal

from jailfarm.errors import InvalidName, ParseError
from jailfarm.names import ORIGIN

if TYPE_CHECKING:
    from collections.abc import Mapping

Result = Literal["built", "failed", "skipped", "ignored", "inspected", "fetched", "pending"]
OUTCOMES: tuple[Result, ...] = ("built", "failed", "skipped", "ignored", "inspected", "fetched")
STATS = ("queued", "tobuild", "built", "failed", "skipped", "ignored", "inspected", "fetched")
MASTER = (3, 4, 99)  # master's configure version; 3.4.x releases are below it (§0)

_VERSION = re.compile(r"poudriere-git-([0-9]+)\.([0-9]+)\.([0-9]+)[-.0-9A-Za-z]*")
# A failed testport ends `stopped:failed/<phase>:...` (or `failed/depends`).
_STATUS = re.compile(r"(stopped:)?([A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_-]*)?):(.*)")
_ORIGINSPEC = re.compile(r"([^@~\s]+)(?:@([A-Za-z0-9_-]+))?(?:~([A-Za-z0-9_-]+))?")
_PKGNAME = re.compile(r"[A-Za-z0-9][^\s/\"\\:]*-[^\s/\"\\:]+")
_PHASE = re.compile(r"[A-Za-z0-9_?/.-]+")
_NUMBER = re.compile(r"[0-9]+")
_TIME = re.compile(r"(?:([0-9]+)D:)?([0-9]+):([0-9]{2}):([0-9]{2})")


@dataclass(frozen=True)
class PoudriereVersion:
    """`poudriere version`; `is_master` picks master over 3.4.x behaviour where they differ."""

    raw: str
    release: tuple[int, int, int]

    @property
    def is_master(self) -> bool:
        return self.release >= MASTER


def parse_version(text: str) -> PoudriereVersion:
    """Parse `poudriere-git-<version>` (`3.4.8`, `3.4.8-2-g2e891d4a`, `3.4.99`) by its
    leading X.Y.Z (§0). Versions before 3.4.0 are refused: the spec covers 3.4.x and master."""
    line = _one_line(text, "poudriere version")
    m = _VERSION.fullmatch(line)
    if not m:
        raise ParseError("poudriere version", 1, line, "expected poudriere-git-X.Y.Z...")
    release = (int(m[1]), int(m[2]), int(m[3]))
    if release < (3, 4, 0):
        raise ParseError("poudriere version", 1, line, "poudriere before 3.4.0 is unsupported")
    return PoudriereVersion(line, release)


@dataclass(frozen=True)
class BuildStatus:
    """A `.poudriere.status` value: `parallel_build:` while running, `stopped:done:` after a
    normal end, `stopped:crashed:err:<msg>` or `stopped:SIG<NAME>:` after an abnormal one."""

    raw: str

    @property
    def finished(self) -> bool:
        return self.raw.startswith("stopped:")

    @property
    def phase(self) -> str:
        return self.raw.removeprefix("stopped:").partition(":")[0]

    @property
    def detail(self) -> str:
        return self.raw.removeprefix("stopped:").partition(":")[2]

    @property
    def done(self) -> bool:
        return self.finished and self.phase == "done"


def parse_status(text: str, source: str = ".poudriere.status") -> BuildStatus:
    line = _one_line(text, source)
    if not _STATUS.fullmatch(line):
        raise ParseError(source, 1, line, "expected [stopped:]<phase>:[detail]")
    return BuildStatus(line)


@dataclass(frozen=True)
class PortResult:
    """One package of a build. `phase`/`errortype` are set for failures (a crashed builder has
    errortype == phase and no elapsed time), `reason` for ignored/inspected ones,
    `skipped_because` (the pkgname that failed or was skipped) for skipped ones."""

    origin: str
    pkgname: str
    result: Result
    flavor: str | None = None
    phase: str = ""
    errortype: str = ""
    reason: str = ""
    skipped_because: str = ""
    elapsed: int | None = None


@dataclass(frozen=True)
class Stats:
    """The `stats_*` counters; None where poudriere has not written one (§6)."""

    queued: int | None = None
    tobuild: int | None = None
    built: int | None = None
    failed: int | None = None
    skipped: int | None = None
    ignored: int | None = None
    inspected: int | None = None
    fetched: int | None = None


@dataclass(frozen=True)
class BuildNames:
    """The `.poudriere.{buildname,mastername,jailname,ptname,setname}` files ("" if absent)."""

    buildname: str = ""
    mastername: str = ""
    jailname: str = ""
    ptname: str = ""
    setname: str = ""


@dataclass(frozen=True)
class BulkResult:
    """A build as its files describe it. `ports` is None when the source has no port lists
    (the mini JSON); ports queued without a result yet are `pending`."""

    status: BuildStatus
    names: BuildNames = field(default_factory=BuildNames)
    started: int | None = None
    ended: int | None = None
    stats: Stats = field(default_factory=Stats)
    ports: tuple[PortResult, ...] | None = None

    def by_result(self, result: Result) -> tuple[PortResult, ...]:
        return tuple(p for p in self.ports or () if p.result == result)

    def count(self, result: Result) -> int:
        """The larger of the counter and the list length: either may lag the other (§6)."""
        counted: int | None = getattr(self.stats, result, None)
        return max(counted or 0, len(self.by_result(result)))


def parse_port_list(kind: Result, text: str, source: str) -> tuple[PortResult, ...]:
    """Parse `.poudriere.ports.<kind>` (formats in §4.2); `skipped` is de-duplicated by
    pkgname (§6), `queued` gives `pending` entries. Every line must be complete."""
    if text and not text.endswith("\n"):
        raise ParseError(source, text.count("\n") + 1, text.rpartition("\n")[2], "incomplete")
    ports: dict[str, PortResult] = {}
    for no, line in enumerate(text.splitlines(), 1):
        port = _port_line(kind, line.split(" "), _Where(source, no, line))
        if port.pkgname in ports and kind not in ("skipped", "pending"):
            raise ParseError(source, no, line, f"{port.pkgname} is listed twice")
        ports.setdefault(port.pkgname, port)
    return tuple(ports.values())


def _port_line(kind: Result, f: list[str], at: _Where) -> PortResult:
    origin, flavor = at.originspec(f[0])
    if kind in ("ignored", "inspected", "pending") and len(f) > 3:
        f = [*f[:2], " ".join(f[2:])]
    wanted = {"built": (3,), "failed": (4, 5), "skipped": (3,), "fetched": (2,)}
    if len(f) not in wanted.get(kind, (3,) if kind != "pending" else (2, 3)):
        raise at.error(f"wrong number of fields for ports.{kind}")
    pkgname = at.pkgname(f[1])
    port = PortResult(origin, pkgname, kind, flavor)
    if kind == "built":
        return _replace(port, elapsed=at.number(f[2]))
    if kind == "failed":
        # A crashed builder writes "<phase> <phase>" and no time; an empty errortype
        # (DETERMINE_BUILD_FAILURE_REASON=no) leaves two spaces before the time (§4.2).
        elapsed = at.number(f[4]) if len(f) == 5 else None
        if (len(f) == 4 and f[3] != f[2]) or not _PHASE.fullmatch(f[2]):
            raise at.error("expected <phase> <errortype> <elapsed> or <phase> <phase>")
        return _replace(port, phase=f[2], errortype=f[3], elapsed=elapsed)
    if kind == "skipped":
        return _replace(port, skipped_because=at.pkgname(f[2]))
    if kind in ("fetched", "pending"):
        return port  # a queued line's third field (rdep or ignore reason) is not kept
    if not f[2].strip():
        raise at.error("no reason given")
    return _replace(port, reason=f[2])


def parse_stat(text: str, source: str) -> int:
    """A `.poudriere.stats_*` counter: one non-negative integer."""
    return _Where(source, 1, text.strip()).number(_one_line(text, source))


def parse_build_files(files: Mapping[str, str], where: str = "") -> BulkResult:
    """A BulkResult from a build directory's files, as {file name: content} (§4.2, §6).
    `.poudriere.status` is required; a missing list or counter means none written yet."""

    def src(name: str) -> str:
        return f"{where}/{name}" if where else name

    if ".poudriere.status" not in files:
        raise ParseError(src(".poudriere.status"), 0, "", "missing: the build has not started")
    found = {n[11:]: (t, src(n)) for n, t in files.items() if n.startswith(".poudriere.")}
    stats = {k: parse_stat(*found[f"stats_{k}"]) for k in STATS if f"stats_{k}" in found}
    lists = {k: parse_port_list(k, *found[f"ports.{k}"]) for k in OUTCOMES if f"ports.{k}" in found}
    if "ports.queued" in found:
        lists["pending"] = parse_port_list("pending", *found["ports.queued"])
    names = {k: _one_line(*found[k]) if k in found else "" for k in _NAMES}
    started, ended = (_opt_number(*found.get(k, ("", k))) for k in ("started", "ended"))
    status = parse_status(*found["status"])
    ports = _merge(lists, src(".poudriere.ports.*"))
    return BulkResult(status, BuildNames(**names), started, ended, Stats(**stats), ports)


def parse_data_json(text: str, source: str = ".data.json") -> BulkResult:
    """A BulkResult from a build's `.data.json` or `.data.mini.json` (§4.2). Every value is a
    string; the known json.awk quirks (failed entries without errortype or from a crashed
    builder, queued reasons carried over) are undone; unknown keys are ignored."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        line = text.splitlines()[e.lineno - 1] if text.strip() else text
        raise ParseError(source, e.lineno, line[:200], f"not JSON ({e.msg})") from None
    j = _Json(source)
    top = j.obj(data, "top level")
    if "buildname" not in top:
        index = "builds" in top or "masternames" in top
        raise j.error("top level", "an index, not a build" if index else "no buildname")
    ports = None
    if "ports" in top:
        lists = {k: j.ports(k, top) for k in (*OUTCOMES, "pending")}
        ports = _merge({k: v for k, v in lists.items() if v}, f"{source}: ports")
    started, ended = (j.number(top, k) for k in ("started", "ended"))
    status = parse_status(j.text(top, "status", required=True), f"{source}: status")
    stats = Stats(**{k: j.number(j.obj(top.get("stats", {}), "stats"), k) for k in STATS})
    names = {k: j.text(top, k) for k in _NAMES}
    return BulkResult(status, BuildNames(**names), started, ended, stats, ports)


@dataclass(frozen=True)
class StatusRow:
    """One `status -H -l` row (§1.5). `status` has `stopped:` stripped, so a row cannot tell a
    running build from a stopped one. Counters status.sh could not read (`?`) are None, and
    so is `inspected` on 3.4.x; `elapsed` is in seconds, `location` the log directory."""

    set_name: str
    tree: str
    jail: str
    build: str
    status: str
    counts: Stats
    remaining: int | None
    elapsed: int
    location: str


_COUNTERS_MASTER = ("queued", "inspected", "ignored", "built", "failed", "skipped", "fetched")
_COUNTERS_34 = ("queued", "built", "failed", "skipped", "ignored", "fetched")


def parse_status_rows(text: str, version: PoudriereVersion) -> tuple[StatusRow, ...]:
    """Parse `poudriere status -H -l`; the counter columns differ between 3.4.x and master."""
    counters = _COUNTERS_MASTER if version.is_master else _COUNTERS_34
    rows = []
    for no, line in enumerate(text.splitlines(), 1):
        at, f = _Where("poudriere status -H", no, line), line.split("\t")
        if len(f) != len(counters) + 8:
            raise at.error(f"expected {len(counters) + 8} tab-separated columns")
        counts = Stats(**{k: at.counter(v) for k, v in zip(counters, f[5:-3], strict=True)})
        name = "" if f[0] == "-" else f[0]
        duration = at.duration(f[-2])
        row = (name, f[1], f[2], f[3], f[4], counts, at.counter(f[-3]), duration, f[-1])
        rows.append(StatusRow(*row))
    return tuple(rows)


@dataclass(frozen=True)
class Policy:
    """How many failed/skipped ports a bulk may have and still pass; whether ignored ports
    (IGNORE/BROKEN in the tree) count against it."""

    max_failed: int = 0
    max_skipped: int = 0
    fail_on_ignored: bool = False


@dataclass(frozen=True)
class Verdict:
    """`success`; `failure` (ports failed, by policy); or `error` (poudriere itself did not
    finish normally: crash, signal, hard kill; §7). `why` explains, one line each."""

    outcome: Literal["success", "failure", "error"]
    why: tuple[str, ...]


def judge(
    result: BulkResult, policy: Policy | None = None, exit_code: int | None = None
) -> Verdict:
    """Decide a finished bulk from its final status, counters and port lists (§6.5, §8).
    `exit_code` (negative: killed by that signal) is only cross-checked: bulk exits with
    (failed + skipped) mod 256, so any other value means poudriere itself failed (§1.3)."""
    policy = policy or Policy()
    status = result.status
    if not status.finished:
        why = f"bulk did not finish (status {status.raw!r}): hard-killed? run `jail -k` (§7)"
        return Verdict("error", (why,))
    if not status.done:
        return Verdict("error", (f"bulk stopped abnormally: {status.raw}",))
    n = {r: result.count(r) for r in (*OUTCOMES, "pending")}
    queued = result.stats.queued
    remaining = max(n["pending"], (queued or 0) - sum(n[r] for r in OUTCOMES))
    errors = [f"{remaining} queued port(s) have no result"] if remaining > 0 else []
    wrapped = (n["failed"] + n["skipped"]) % 256
    if exit_code is not None and exit_code != wrapped:
        errors.append(f"exit code {exit_code}, expected {wrapped} (failed+skipped mod 256)")
    if errors:
        return Verdict("error", tuple(errors))
    limits: dict[Result, int] = {"failed": policy.max_failed, "skipped": policy.max_skipped}
    if policy.fail_on_ignored:
        limits["ignored"] = 0
    failures = tuple(w for kind, most in limits.items() if (w := _fails(result, kind, most)))
    if failures:
        return Verdict("failure", failures)
    return Verdict("success", (", ".join(f"{n[r]} {r}" for r in OUTCOMES),))


def _fails(result: BulkResult, kind: Result, allowed: int) -> str:
    count = result.count(kind)
    if count <= allowed:
        return ""
    ports = result.by_result(kind)[:5]
    names = ", ".join(
        p.pkgname + (f" ({p.phase}: {p.errortype})" if p.phase else "") for p in ports
    )
    more = f", and {count - len(ports)} more" if count > len(ports) else ""
    return f"{count} port(s) {kind} (at most {allowed} allowed): {names}{more}"


_NAMES = ("buildname", "mastername", "jailname", "ptname", "setname")


def _merge(lists: Mapping[Result, tuple[PortResult, ...]], source: str) -> tuple[PortResult, ...]:
    """One result per package: outcomes must not overlap; queued ones without one are pending."""
    seen: dict[str, PortResult] = {}
    for kind in OUTCOMES:
        for port in lists.get(kind, ()):
            if port.pkgname in seen:
                other = seen[port.pkgname].result
                raise ParseError(source, 0, port.pkgname, f"both {other} and {kind}")
            seen[port.pkgname] = port
    pending = tuple(p for p in lists.get("pending", ()) if p.pkgname not in seen)
    return (*seen.values(), *pending)


@dataclass(frozen=True)
class _Where:
    source: str
    line_no: int
    line: str

    def error(self, why: str) -> ParseError:
        return ParseError(self.source, self.line_no, self.line[:200], why)

    def number(self, value: str) -> int:
        if not _NUMBER.fullmatch(value):
            raise self.error(f"{value!r} is not a non-negative integer")
        return int(value)

    def counter(self, value: str) -> int | None:
        # status.sh prints '?' for a counter it cannot read (`${nbqueued:-?}`); REMAIN is
        # computed and goes negative when the counters disagree.
        if value == "?":
            return None
        return -self.number(value[1:]) if value[:1] == "-" else self.number(value)

    def duration(self, value: str) -> int:
        m = _TIME.fullmatch(value)
        if m is None:
            raise self.error(f"{value!r} is not [ND:]HH:MM:SS")
        return int(m[1] or 0) * 86400 + int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4])

    def originspec(self, spec: str) -> tuple[str, str | None]:
        m = _ORIGINSPEC.fullmatch(spec)
        try:
            origin = ORIGIN.check(m[1] if m else spec)
        except InvalidName as e:
            raise self.error(str(e)) from None
        if m is None:
            raise self.error(f"{spec!r} is not origin[@flavor][~subpackage]")
        return origin, m[2]

    def pkgname(self, value: str) -> str:
        if not _PKGNAME.fullmatch(value):
            raise self.error(f"{value!r} is not a package name-version")
        return value


class _Json:
    """Typed access to a `.data.json` document; every mistake is a ParseError at a path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, why: str, value: object = None) -> ParseError:
        # The real file is one line (§4.2), so the location is the JSON path.
        return ParseError(self.source, 1, f"{path} = {json.dumps(value)}", why)

    def obj(self, value: object, path: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(path, "expected an object", value)
        return value

    def array(self, obj: Mapping[str, object], key: str) -> list[object]:
        value = obj.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, "expected an array", value)
        return value

    def text(self, obj: Mapping[str, object], key: str, required: bool = False) -> str:
        value = obj.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise self.error(key, "expected a string (json.awk writes only strings)", value)
        return value

    def number(self, obj: Mapping[str, object], key: str) -> int | None:
        value = self.text(obj, key)
        return _Where(self.source, 1, f"{key} = {value!r}").number(value) if value else None

    def ports(self, kind: Result, top: Mapping[str, object]) -> tuple[PortResult, ...]:
        ports = self.obj(top["ports"], "ports")
        name = "queued" if kind == "pending" else kind
        lines = []
        for i, entry in enumerate(self.array(ports, name)):
            e = self.obj(entry, f"ports.{name}[{i}]")
            words = [self.text(e, k) for k in _JSON_FIELDS[kind]]
            flavor = self.text(e, "flavor")
            words[0] = f"{self.text(e, 'origin')}" + (f"@{flavor}" if flavor else "")
            lines.append(" ".join(_unquirk(kind, words)) + "\n")
        where = f"{self.source}: ports.{name}"
        return parse_port_list(kind, "".join(lines), where)


_JSON_FIELDS: dict[Result, tuple[str, ...]] = {
    "built": ("origin", "pkgname", "elapsed"),
    "failed": ("origin", "pkgname", "phase", "errortype", "elapsed"),
    "skipped": ("origin", "pkgname", "depends"),
    "ignored": ("origin", "pkgname", "reason"),
    "inspected": ("origin", "pkgname", "reason"),
    "fetched": ("origin", "pkgname"),
    "pending": ("origin", "pkgname"),  # queued's reason may be another entry's (quirk 1)
}


def _unquirk(kind: Result, words: list[str]) -> list[str]:
    """Turn a json.awk failed entry back into its ports.failed line (§4.2 quirks 2 and 3)."""
    if kind != "failed" or words[4]:
        return words
    if words[3] == words[2]:
        return words[:4]  # crashed builder: errortype = phase, no elapsed
    return [*words[:3], "", words[3]]  # no errortype: it took the elapsed value


def _one_line(text: str, source: str) -> str:
    """The single line of a file written by `bset` (an empty file, as `.setname`, is "")."""
    lines = text.splitlines()
    if len(lines) > 1:
        raise ParseError(source, 2, lines[1], "expected one line")
    return lines[0] if lines else ""


def _opt_number(text: str, source: str) -> int | None:
    line = _one_line(text, source)
    return _Where(source, 1, line).number(line) if line else None
