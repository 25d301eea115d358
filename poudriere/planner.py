"""The rebuild planner: from a pushed diff to the ports a bulk must build (pure, stdlib only).

A diff's paths name the ports it changed (`category/port/...`) or removed, `MOVED` names the
ports that moved, and a change under `Mk/`, `Templates/` or `Keywords/` may alter every port,
so it plans a full bulk. A `DependencyIndex` (each port's dependencies as make(1) reports them,
at one tree revision, updated from diffs) turns the changed ports into everything that depends
on them. plancli.py ships this file as it is into worker jails, where jailfarm is not
installed: it imports nothing but the standard library, and it touches no file or process.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

INDEX_FORMAT = 1
# What a change there can alter in every port; poudriere knows no finer rule either.
GLOBAL_DIRS = frozenset({"Mk", "Templates", "Keywords"})
# FreeBSD categories are lowercase; the top-level directories that are not categories (Mk,
# Tools, Templates...) start with a capital letter, and dotfiles are never ports.
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_+.-]*")
_PORT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]*")  # names.ORIGIN's port part
# A revision we hand to git: a hex name or a branch/tag name (narrowed like names.BRANCH), then
# optional ~N/^N steps. Never an option, whitespace or a shell/glob metacharacter.
REVISION = re.compile(
    r"(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,198}[A-Za-z0-9_-])?"
    r"(?:[~^][0-9]{0,4}){0,8}"
)
OBJECT_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories
# make -V variables one port query asks for, in this order (one output line each). Raw
# *_DEPENDS in FreeBSD's `pkg:origin[:target]` syntax exist in FreeBSD's Mk and in the demo's;
# .MAKE.MAKEFILES lists every makefile read, which reveals slave ports (MASTERDIR).
DEPENDS = tuple(f"{k}_DEPENDS" for k in ("PKG", "EXTRACT", "PATCH", "FETCH", "BUILD", "LIB", "RUN"))
QUERY = ("PKGNAME", *DEPENDS, ".MAKE.MAKEFILES")


class PlanError(ValueError):
    """Input the planner cannot use: a malformed revision, diff, MOVED line, INDEX or query."""


def check_revision(rev: str) -> str:
    if not isinstance(rev, str) or not REVISION.fullmatch(rev):
        raise PlanError(
            f"malformed revision {rev!r}: expected a commit hash or a branch or tag name "
            "(letters, digits, '._/-', optionally followed by ~N or ^N)"
        )
    return rev


def origin_of(path: str) -> str | None:
    """The port origin a tree path belongs to (`misc/foo/files/patch-x` -> `misc/foo`)."""
    parts = path.split("/")
    if len(parts) < 3 or not _CATEGORY.fullmatch(parts[0]) or not _PORT.fullmatch(parts[1]):
        return None
    return f"{parts[0]}/{parts[1]}"


def is_global(path: str) -> bool:
    top, sep, _ = path.partition("/")
    return bool(sep) and top in GLOBAL_DIRS


def touches_ports(files: Iterable[str]) -> bool:
    """Whether a change to `files` changes some port's own directory (a testport candidate)."""
    return any(origin_of(f) for f in files)


def affects_build(files: Iterable[str]) -> bool:
    """Whether a change to `files` can change a package: a port's directory, a global
    directory or MOVED. Top-level documents and category Makefiles cannot."""
    return any(origin_of(f) or is_global(f) or f == "MOVED" for f in files)


# --- diffs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    """One line of `git diff --name-status`: git's status letter, the path (the new one for a
    rename or copy) and, for renames and copies, the old path."""

    status: str
    path: str
    old_path: str = ""


def parse_name_status(text: str) -> list[FileChange]:
    """`git diff --name-status -z -M` output: `STATUS NUL PATH NUL`, or `Rnnn NUL OLD NUL NEW
    NUL` for renames and copies. PlanError on anything else."""
    fields = text.split("\0")
    if fields[-1] == "":
        fields.pop()
    out: list[FileChange] = []
    i = 0
    while i < len(fields):
        status = fields[i]
        paired = status[:1] in ("R", "C") and status[1:].isdigit()
        if not (paired or status in ("A", "M", "D", "T")):
            raise PlanError(f"git diff: unexpected status {status!r} at field {i + 1}")
        need = 3 if paired else 2
        if i + need > len(fields) or not all(fields[i + 1 : i + need]):
            raise PlanError(f"git diff: status {status!r} at field {i + 1} lacks its paths")
        if paired:
            out.append(FileChange(status[0], fields[i + 2], fields[i + 1]))
        else:
            out.append(FileChange(status, fields[i + 1]))
        i += need
    return out


@dataclass(frozen=True)
class DiffSummary:
    """What a diff touches: origins with a file changed (both sides of a rename), paths in the
    global directories, whether MOVED changed, and (old, new) origins of renamed Makefiles."""

    touched: frozenset[str]
    global_paths: tuple[str, ...]
    moved_file: bool
    renamed: tuple[tuple[str, str], ...]


def summarize(changes: Iterable[FileChange]) -> DiffSummary:
    touched: set[str] = set()
    global_paths: list[str] = []
    renamed: list[tuple[str, str]] = []
    moved_file = False
    for c in changes:
        for path in (c.path, c.old_path) if c.old_path else (c.path,):
            if (o := origin_of(path)) is not None:
                touched.add(o)
            elif is_global(path):
                global_paths.append(path)
            moved_file = moved_file or path == "MOVED"
        old, new = origin_of(c.old_path), origin_of(c.path)
        if c.status == "R" and c.path.endswith("/Makefile") and old and new and old != new:
            renamed.append((old, new))
    return DiffSummary(
        frozenset(touched), tuple(sorted(set(global_paths))), moved_file, tuple(renamed)
    )


def parse_moved(text: str) -> dict[str, str]:
    """MOVED's `old|new|date|reason` lines as {old: new}, '' for a removed port; comments and
    blank lines are skipped, and a later line for the same origin wins."""
    moved: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("|")
        if (
            len(fields) != 4
            or not _origin_ok(fields[0])
            or (fields[1] and not _origin_ok(fields[1]))
        ):
            raise PlanError(f"MOVED line {n}: expected old|new|date|reason, got {line[:120]!r}")
        moved[fields[0]] = fields[1]
    return moved


def new_moves(before: str, after: str) -> dict[str, str]:
    """The moves MOVED records in `after` but not in `before`, chains followed to the last
    origin ({old: final new}; '' when the port was removed on the way)."""
    old, new = parse_moved(before), parse_moved(after)
    added = {o: n for o, n in new.items() if old.get(o, None) != n}
    final = {}
    for origin, first in added.items():
        target, seen = first, {origin}
        while target and target in new and target not in seen:  # a->b, b->c: a went to c
            seen.add(target)
            target = new[target]
        final[origin] = target
    return final


def _origin_ok(origin: str) -> bool:
    cat, sep, port = origin.partition("/")
    return bool(sep) and bool(_CATEGORY.fullmatch(cat)) and bool(_PORT.fullmatch(port))


# --- the dependency index -------------------------------------------------------------------


@dataclass(frozen=True)
class PortEntry:
    """One port in the index: its package name, the origins it depends on (every kind of
    dependency, flavors dropped) and the other ports whose files its Makefile reads."""

    pkgname: str = ""
    deps: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()


def dependency_origin(spec: str) -> str:
    """The origin in a FreeBSD dependency `pkg:origin[@flavor][:target]`; an old-style
    absolute `${PORTSDIR}/cat/port` keeps its last two components."""
    parts = spec.split(":")
    origin = parts[1] if len(parts) >= 2 else ""
    if origin.startswith("/"):
        origin = "/".join(origin.rstrip("/").split("/")[-2:])
    origin = origin.partition("@")[0]
    if not _origin_ok(origin):
        raise PlanError(f"dependency {spec!r}: expected pkg:category/port[@flavor][:target]")
    return origin


def parse_port_query(origin: str, output: str, tree: str) -> PortEntry:
    """A port's entry from the output of `make -C <tree>/<origin> -V ...` over QUERY (one line
    per variable). `tree` is the absolute tree path make was given."""
    lines = output.split("\n")
    if len(lines) != len(QUERY) + 1 or lines[-1] != "":
        raise PlanError(f"{origin}: make -V printed {len(lines) - 1} lines, expected {len(QUERY)}")
    values = dict(zip(QUERY, lines, strict=False))
    deps = {dependency_origin(s) for name in DEPENDS for s in values[name].split()}
    deps.discard(origin)
    return PortEntry(
        values["PKGNAME"],
        tuple(sorted(deps)),
        makefile_reads(origin, values[".MAKE.MAKEFILES"].split(), tree),
    )


def makefile_reads(origin: str, makefiles: Sequence[str], tree: str) -> tuple[str, ...]:
    """Other ports whose files `origin`'s make read (a slave port reads its MASTERDIR)."""
    base = posixpath.join(tree, origin)
    reads = set()
    for path in makefiles:
        full = posixpath.normpath(posixpath.join(base, path))
        if full.startswith(tree.rstrip("/") + "/"):
            other = origin_of(full[len(tree.rstrip("/")) + 1 :])
            if other and other != origin:
                reads.add(other)
    return tuple(sorted(reads))


def parse_index(text: str) -> dict[str, PortEntry]:
    """FreeBSD's INDEX (`make index`/`make fetchindex`) or `make describe` lines:
    `pkgname|portdir|prefix|comment|descr|maintainer|categories|extract|patch|fetch|build|run|www`.
    Dependencies are package names (INDEX) or port directories (describe)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        fields = line.split("|")
        origin = "/".join(fields[1].rstrip("/").split("/")[-2:]) if len(fields) == 13 else ""
        if not _origin_ok(origin):
            raise PlanError(f"INDEX line {n}: expected 13 '|'-separated fields with a port dir")
        rows.append((n, origin, fields))
    by_pkgname = {fields[0]: origin for _, origin, fields in rows}
    ports = {}
    for n, origin, fields in rows:
        deps = set()
        for token in " ".join(fields[7:12]).split():
            dep = (
                "/".join(token.rstrip("/").split("/")[-2:])
                if "/" in token
                else by_pkgname.get(token)
            )
            if dep is None or not _origin_ok(dep):
                raise PlanError(f"INDEX line {n}: dependency {token!r} is no port in the INDEX")
            deps.add(dep)
        deps.discard(origin)
        ports[origin] = PortEntry(fields[0], tuple(sorted(deps)))
    return ports


def parse_subdirs(makefile: str) -> list[str]:
    """The `SUBDIR += name` lines of a top-level or category Makefile (what `bulk -a` reads)."""
    return re.findall(r"^\s*SUBDIR\s*\+=\s*(\S+)", makefile, re.M)


class DependencyIndex:
    """Every port's entry at one tree revision, with the reverse maps (who depends on a port,
    whose Makefile reads it) kept in step. `update` changes it in place: a push re-queries only
    the ports it touched, not the 30,000 others."""

    def __init__(self, revision: str = "", ports: Mapping[str, PortEntry] | None = None) -> None:
        self.revision = revision
        self.ports: dict[str, PortEntry] = {}
        self._rdeps: dict[str, set[str]] = {}
        self._readers: dict[str, set[str]] = {}
        for origin, entry in (ports or {}).items():
            self._link(origin, entry)

    def __contains__(self, origin: object) -> bool:
        return origin in self.ports

    def __len__(self) -> int:
        return len(self.ports)

    def _link(self, origin: str, entry: PortEntry) -> None:
        self.ports[origin] = entry
        for dep in entry.deps:
            self._rdeps.setdefault(dep, set()).add(origin)
        for other in entry.reads:
            self._readers.setdefault(other, set()).add(origin)

    def _unlink(self, origin: str) -> None:
        entry = self.ports.pop(origin, None)
        if entry is None:
            return
        for reverse, keys in ((self._rdeps, entry.deps), (self._readers, entry.reads)):
            for key in keys:
                users = reverse[key]
                users.discard(origin)
                if not users:
                    del reverse[key]

    def update(
        self, revision: str, changed: Mapping[str, PortEntry], removed: Iterable[str]
    ) -> None:
        """Move the index to `revision`: `changed` ports get their new entries, `removed` go."""
        for origin in removed:
            self._unlink(origin)
        for origin, entry in changed.items():
            self._unlink(origin)
            self._link(origin, entry)
        self.revision = revision

    def dependents(self, seeds: Iterable[str]) -> dict[str, str]:
        """Every port that depends on a seed, directly or through others: {origin: the
        dependency that pulled it in}, nearest first (breadth-first). Seeds are left out."""
        seen = set(seeds)
        via: dict[str, str] = {}
        queue = deque(seen)
        rdeps = self._rdeps
        while queue:
            origin = queue.popleft()
            for user in rdeps.get(origin, ()):
                if user not in seen:
                    seen.add(user)
                    via[user] = origin
                    queue.append(user)
        return via

    def missing(self) -> dict[str, set[str]]:
        """Dependencies that are no port of the index, and who names them."""
        return {d: self._rdeps[d] for d in self._rdeps.keys() - self.ports.keys()}

    def readers(self, origins: Iterable[str]) -> dict[str, str]:
        """Ports whose Makefiles read files of `origins` (slave ports): {origin: which}."""
        return {r: o for o in origins for r in sorted(self._readers.get(o, ()))}

    def requirements(self, origins: Iterable[str]) -> set[str]:
        """`origins` and everything they depend on, recursively (what their bulk builds)."""
        seen = set(origins)
        todo = list(seen)
        while todo:
            entry = self.ports.get(todo.pop())
            for dep in entry.deps if entry else ():
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def to_json(self) -> str:
        ports = {o: [e.pkgname, list(e.deps), list(e.reads)] for o, e in sorted(self.ports.items())}
        doc = {"format": INDEX_FORMAT, "revision": self.revision, "ports": ports}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DependencyIndex:
        """The index `to_json` wrote; PlanError on any other shape (the caller rebuilds it)."""
        try:
            doc = json.loads(text)
            if doc["format"] != INDEX_FORMAT or not isinstance(doc["revision"], str):
                raise PlanError(f"index format {doc['format']!r}, expected {INDEX_FORMAT}")
            ports = {o: PortEntry(p, tuple(d), tuple(r)) for o, (p, d, r) in doc["ports"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"unreadable dependency index: {e}") from None
        return cls(doc["revision"], ports)


# --- plans ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one push (or request) rebuilds. `changed` ports were edited; `dependents` maps each
    port rebuilt because of them to the reason; `deleted` ports left the tree; `moved` maps old
    origins to new ones ('' = removed); `broken` lists (port, dependency not in the tree).
    A `full` plan rebuilds every port, for `reason`."""

    changed: tuple[str, ...] = ()
    dependents: Mapping[str, str] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    moved: Mapping[str, str] = field(default_factory=dict)
    broken: tuple[tuple[str, str], ...] = ()
    full: bool = False
    reason: str = ""
    revisions: tuple[str, str] = ("", "")

    @property
    def ports(self) -> tuple[str, ...]:
        return tuple(sorted({*self.changed, *self.dependents}))

    @property
    def empty(self) -> bool:
        return not self.full and not self.changed and not self.dependents

    def headline(self, label: str = "this push") -> str:
        """One line: "this push rebuilds 14 ports (3 changed, 11 dependents)"."""
        return self._headline(label, "")

    def _headline(self, label: str, listing: str) -> str:
        if self.full:
            text = f"{label} rebuilds every port ({self.reason})"
        elif self.ports:
            c, d = len(self.changed), len(self.dependents)
            text = (
                f"{label} rebuilds {_count(c + d, 'port')} ({c} changed, {_count(d, 'dependent')})"
            )
        else:
            text = f"{label} rebuilds nothing"
        return text + listing + (f"; {len(self.deleted)} deleted" if self.deleted else "")

    def text(self, label: str = "this push", shown: int = 20) -> str:
        """The plan for people: the headline with the first ports, then every section."""
        ports = self.ports
        listing = ""
        if ports:
            more = f" (+{len(ports) - shown} more)" if len(ports) > shown else ""
            listing = ": " + " ".join(ports[:shown]) + more
        lines = [self._headline(label, listing)]
        if any(self.revisions):
            lines.append(f"range: {self.revisions[0] or '(none)'}..{self.revisions[1]}")
        if self.changed:
            lines += ["changed:", *(f"  {o}" for o in self.changed)]
        if self.dependents:
            width = max(len(o) for o in self.dependents)
            lines.append("dependents:")
            lines += [f"  {o:<{width}}  {self.dependents[o]}" for o in sorted(self.dependents)]
        if self.deleted:
            lines += ["deleted (not built):", *(f"  {o}" for o in self.deleted)]
        if self.moved:
            lines.append("moved:")
            lines += [f"  {o} -> {n or '(removed)'}" for o, n in sorted(self.moved.items())]
        for origin, dep in self.broken:
            lines.append(f"warning: {origin} depends on {dep}, which is not in the tree")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": list(self.changed),
            "dependents": dict(sorted(self.dependents.items())),
            "deleted": list(self.deleted),
            "moved": dict(sorted(self.moved.items())),
            "broken": [list(b) for b in self.broken],
            "full": self.full,
            "reason": self.reason,
            "revisions": list(self.revisions),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        try:
            frm, to = d["revisions"]
            return cls(
                tuple(map(str, d["changed"])),
                {str(k): str(v) for k, v in d["dependents"].items()},
                tuple(map(str, d["deleted"])),
                {str(k): str(v) for k, v in d["moved"].items()},
                tuple((str(a), str(b)) for a, b in d["broken"]),
                bool(d["full"]),
                str(d["reason"]),
                (str(frm), str(to)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"unreadable plan: {e}") from None


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def plan_rebuild(
    index: DependencyIndex,
    changed: Iterable[str],
    deleted: Iterable[str] = (),
    moved: Mapping[str, str] | None = None,
    revisions: tuple[str, str] = ("", ""),
) -> Plan:
    """The ports to rebuild at the index's revision: the `changed` ports, the ports whose
    Makefiles read their files, and everything that depends on any of them or on a `deleted`
    or moved-away port (those still naming a port that is gone are listed as `broken`)."""
    moved = dict(moved or {})
    edited = sorted(o for o in set(changed) if o in index)
    gone = sorted({*deleted, *(o for o in moved if o not in index)} - set(edited))
    reasons: dict[str, str] = {}
    for target in sorted({n for n in moved.values() if n in index} - set(edited)):
        reasons[target] = "moved from " + ", ".join(
            sorted(o for o, n in moved.items() if n == target)
        )
    for reader, origin in index.readers([*edited, *gone]).items():
        reasons.setdefault(reader, f"reads files of {origin}")
    seeds = [*edited, *gone, *reasons]
    for origin, dep in index.dependents(seeds).items():
        reasons.setdefault(origin, f"depends on {dep}")
    ports, kept = index.ports, set(edited)
    dependents = {o: r for o, r in reasons.items() if o in ports and o not in kept}
    rebuilt = kept | set(dependents)
    broken = sorted((u, d) for d, users in index.missing().items() for u in users if u in rebuilt)
    return Plan(tuple(edited), dependents, tuple(gone), moved, tuple(broken), revisions=revisions)


def plan_full(reason: str, revisions: tuple[str, str] = ("", ""), **known: Any) -> Plan:
    """A plan that rebuilds every port; `known` may carry `deleted` and `moved` for the log."""
    return Plan(full=True, reason=reason, revisions=revisions, **known)


def bulk_targets(
    plan: Plan, scope: Sequence[str] = (), index: DependencyIndex | None = None
) -> tuple[bool, tuple[str, ...]]:
    """What the bulk of one set builds for `plan`: (every port, origins). A set that lists its
    packages (`scope`) only rebuilds planned ports among them and their dependencies; a full
    plan builds its whole list. `index` is needed for a scope of a partial plan."""
    if plan.full:
        return not scope, tuple(scope)
    if not scope:
        return False, plan.ports
    if index is None:
        raise PlanError("a set with a package list needs the dependency index to be planned")
    allowed = index.requirements(scope)
    return False, tuple(o for o in plan.ports if o in allowed)
