"""`jailfarm plan`, and the worker side of the PlanPorts step: git and make(1) around the pure
planner (shell, stdlib only).

The same code runs in two places. `jailfarm plan --tree DIR --from REV --to REV` prints a plan
on any machine with the tree's git checkout. In a build, the PlanPorts step downloads this file
and planner.py into the worker's build directory and runs `python3 plancli.py`: FreeBSD
workers do not have jailfarm installed, and the worker holds the checkout of the pushed commit
and the make(1) of the build platform. So this module imports only the standard library and
the planner (by package when installed, as the file next to it otherwise). Exit codes: 0 a
plan, 2 bad input (`jailfarm plan: message` on stderr), 1 git or make failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if __package__:
    from jailfarm.poudriere import planner
else:  # shipped into a worker jail next to planner.py (also under python -I)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import planner  # type: ignore[import-not-found, no-redef]

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from jailfarm.poudriere.planner import DependencyIndex, Plan, PortEntry

_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", "LC_ALL": "C"}


class ToolFailed(Exception):
    """git or make failed for a reason other than our input (exit code 1)."""


@dataclass
class Request:
    """One planning request. Exactly one of: `full`, `origins` (plan as if they changed), or
    a range (`frm`..`to`); `changed_only` leaves dependents out (for testport)."""

    tree: str
    to: str = "HEAD"
    frm: str | None = None
    origins: tuple[str, ...] = ()
    full: bool = False
    changed_only: bool = False
    scope: tuple[str, ...] = ()
    index: str | None = None
    index_file: str | None = None
    make: str = "make"
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    label: str = "this push"
    reason: str = "a full bulk was asked for"


@dataclass
class Outcome:
    plan: Plan
    all_ports: bool
    origins: tuple[str, ...]
    index: dict[str, Any]

    def to_json(self, label: str) -> str:
        return json.dumps(
            {
                "plan": self.plan.to_dict(),
                "headline": self.plan.headline(label),
                "text": self.plan.text(label),
                "bulk": {"all": self.all_ports, "origins": list(self.origins)},
                "index": self.index,
            }
        )


class Git:
    def __init__(self, tree: str) -> None:
        self.tree = tree

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**_ENV, "GIT_TERMINAL_PROMPT": "0", "HOME": os.environ.get("HOME", "/")}
        r = subprocess.run(
            ["git", "-C", self.tree, *args],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=600,
            check=False,
        )
        if check and r.returncode != 0:
            raise ToolFailed(
                f"git {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-500:]}"
            )
        return r

    def commit(self, rev: str) -> str | None:
        """The commit `rev` names (validated first), or None if there is none."""
        planner.check_revision(rev)
        r = self.run(
            "rev-parse", "--verify", "--quiet", "--end-of-options", rev + "^{commit}", check=False
        )
        return r.stdout.strip() if r.returncode == 0 else None

    def is_ancestor(self, old: str, new: str) -> bool:
        return self.run("merge-base", "--is-ancestor", old, new, check=False).returncode == 0

    def diff(self, old: str, new: str) -> list[planner.FileChange]:
        out = self.run("diff", "--name-status", "-z", "-M", "--no-color", old, new).stdout
        return planner.parse_name_status(out)

    def show(self, rev: str, path: str) -> str:
        r = self.run("show", f"{rev}:{path}", check=False)
        return r.stdout if r.returncode == 0 else ""


def resolve(git: Git, rev: str, what: str) -> str | None:
    """The commit of `rev`; None for the parent (`X^`) of a first commit. PlanError if unknown."""
    sha = git.commit(rev)
    if sha is None and rev.endswith("^") and git.commit(rev[:-1]):
        return None
    if sha is None:
        raise planner.PlanError(f"unknown {what} revision {rev!r} in {git.tree}")
    return sha


@contextmanager
def checkout_of(git: Git, sha: str) -> Iterator[str]:
    """A directory holding the tree at `sha`: the checkout itself when it is clean at `sha`
    (always so on a worker), else a temporary detached worktree, removed afterwards."""
    head = git.run("rev-parse", "HEAD", check=False).stdout.strip()
    dirty = git.run("status", "--porcelain", "--untracked-files=no").stdout.strip()
    if head == sha and not dirty:
        yield os.path.abspath(git.tree)
        return
    top = tempfile.mkdtemp(prefix="jailfarm-plan-")
    path = os.path.join(top, "tree")
    git.run("worktree", "add", "--detach", "--quiet", path, sha)
    try:
        yield path
    finally:
        git.run("worktree", "remove", "--force", path, check=False)
        shutil.rmtree(top, ignore_errors=True)


def make_argv(make: str, root: str, origin: str) -> list[str]:
    """`make -C <root>/<origin> PORTSDIR=<root> -V ...`; a tree that ships its own sys.mk
    (the demo tree, for bmake on Linux) is read with `-m <root>/Mk` as its README says."""
    argv = [make]
    if os.path.isfile(os.path.join(root, "Mk", "sys.mk")):
        argv += ["-m", os.path.join(root, "Mk")]
    argv += ["-C", os.path.join(root, origin), f"PORTSDIR={root}"]
    return argv + [a for v in planner.QUERY for a in ("-V", v)]


def query_port(make: str, root: str, origin: str) -> PortEntry:
    r = subprocess.run(
        make_argv(make, root, origin),
        capture_output=True,
        text=True,
        env=_ENV,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    if r.returncode != 0:
        raise ToolFailed(
            f"{origin}: make -V failed (exit {r.returncode}): {r.stderr.strip()[-500:]}"
        )
    return planner.parse_port_query(origin, r.stdout, root)


def query_ports(make: str, root: str, origins: Sequence[str], jobs: int) -> dict[str, PortEntry]:
    """One make -V per port, `jobs` at a time (threads: each only waits for its make)."""
    if not origins:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        entries = pool.map(lambda o: query_port(make, root, o), origins)
        return dict(zip(origins, entries, strict=True))


def tree_ports(root: str) -> list[str]:
    """Every port `bulk -a` builds: the SUBDIR lines of the top and category Makefiles."""

    def subdirs(path: str) -> list[str]:
        with open(path, encoding="utf-8", errors="replace") as f:
            return planner.parse_subdirs(f.read())

    return [
        f"{c}/{p}"
        for c in subdirs(os.path.join(root, "Makefile"))
        for p in subdirs(os.path.join(root, c, "Makefile"))
        if os.path.isfile(os.path.join(root, c, p, "Makefile"))
    ]


def _read(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def exists(root: str, origin: str) -> bool:
    return os.path.isfile(os.path.join(root, origin, "Makefile"))


def load_index(path: str | None) -> tuple[DependencyIndex | None, str]:
    if not path:
        return None, ""
    if not os.path.exists(path):
        return None, "no cached index"
    try:
        with open(path, encoding="utf-8") as f:
            return planner.DependencyIndex.from_json(f.read()), ""
    except (OSError, planner.PlanError) as e:
        return None, f"cached index ignored: {e}"


def save_index(path: str, index: DependencyIndex) -> None:
    """Write atomically: concurrent builds of one push may write the same cache."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".index-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(index.to_json())
    os.replace(tmp, path)


def index_at(git: Git, root: str, sha: str, req: Request) -> tuple[DependencyIndex, dict[str, Any]]:
    """The dependency index at `sha`: the cache when it is there already, the cache updated
    from the diff when it is at an ancestor and no global file changed since, else built
    anew (from an INDEX file when there is one, else one make -V per port)."""
    cached, note = load_index(req.index)
    info: dict[str, Any] = {"revision": sha, "queried": 0, "note": note}
    if cached is not None and cached.revision == sha:
        return cached, {**info, "source": "cached"}
    if cached is not None and git.commit(cached.revision) and git.is_ancestor(cached.revision, sha):
        diff = planner.summarize(git.diff(cached.revision, sha))
        if not diff.global_paths:
            # A slave port's entry changes with its master's Makefile: re-query readers too.
            touched = set(diff.touched) | set(cached.readers(diff.touched))
            present = sorted(o for o in touched if exists(root, o))
            source = f"updated from {cached.revision[:12]}"
            cached.update(sha, query_ports(req.make, root, present, req.jobs), touched - {*present})
            return cached, {**info, "source": source, "queried": len(present)}
        info["note"] = f"rebuilt: {diff.global_paths[0]} changed since the cached index"
    index_file = req.index_file or _index_file(root)
    if index_file:
        with open(index_file, encoding="utf-8", errors="replace") as f:
            index = planner.DependencyIndex(sha, planner.parse_index(f.read()))
        return index, {**info, "source": f"built from {index_file}"}
    origins = tree_ports(root)
    index = planner.DependencyIndex(sha, query_ports(req.make, root, origins, req.jobs))
    return index, {**info, "source": "built", "queried": len(origins)}


def _index_file(root: str) -> str | None:
    """An INDEX that `make fetchindex` left in the tree (INDEX-14, ...), newest first."""
    names = sorted(
        (n for n in os.listdir(root) if n == "INDEX" or n.startswith("INDEX-")), reverse=True
    )
    return os.path.join(root, names[0]) if names else None


@dataclass
class _Changes:
    """What a request or a diff changed: ports edited, deleted, moved (old -> new), and why
    every port is rebuilt ('' when not)."""

    changed: list[str]
    deleted: list[str] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    full: str = ""


def plan(req: Request) -> Outcome:
    git = Git(req.tree)
    if git.run("rev-parse", "--git-dir", check=False).returncode != 0:
        raise planner.PlanError(f"--tree {req.tree} is not a git checkout")
    to = resolve(git, req.to, "--to")
    assert to is not None  # a `^` revision only ever comes as --from
    revisions = (req.frm or "", to)
    with checkout_of(git, to) as root:
        if req.full:
            return _finish(req, planner.plan_full(req.reason, revisions), None, {})
        if req.origins:
            missing = [o for o in req.origins if not exists(root, o)]
            if missing:
                raise planner.PlanError(f"no port {' '.join(missing)} in the tree at {to[:12]}")
            c = _Changes(list(req.origins))
        else:
            c, revisions = _from_diff(git, root, req, to)
        if c.full:
            full = planner.plan_full(c.full, revisions, deleted=tuple(c.deleted), moved=c.moved)
            return _finish(req, full, None, {})
        if req.changed_only:
            only = planner.Plan(tuple(c.changed), {}, tuple(c.deleted), c.moved)
            return _finish(req, replace(only, revisions=revisions), None, {})
        index, info = index_at(git, root, to, req)
        missing = [o for o in c.changed if o not in index]  # an INDEX older than the push
        index.update(to, query_ports(req.make, root, missing, req.jobs), ())
        info["queried"] += len(missing)
        info["ports"] = len(index)
        if req.index:
            save_index(req.index, index)
        p = planner.plan_rebuild(index, c.changed, c.deleted, c.moved, revisions)
        return _finish(req, p, index, info)


def _from_diff(git: Git, root: str, req: Request, to: str) -> tuple[_Changes, tuple[str, str]]:
    if req.frm is None:
        raise planner.PlanError("give --from REV (or --origins, or --full)")
    frm = resolve(git, req.frm, "--from")
    if frm is None:
        return _Changes([], full=f"{req.frm[:-1]} is the first commit"), ("", to)
    diff = planner.summarize(git.diff(frm, to))
    moved: dict[str, str] = {}
    if diff.moved_file:
        moved = planner.new_moves(git.show(frm, "MOVED"), _read(os.path.join(root, "MOVED")))
    for old, new in diff.renamed:
        if not exists(root, old):
            moved.setdefault(old, new)
    touched = diff.touched | set(moved)
    changes = _Changes(
        sorted(o for o in touched if exists(root, o)),
        sorted(o for o in touched if not exists(root, o)),
        moved,
    )
    if diff.global_paths:
        more = len(diff.global_paths) - 1
        changes.full = f"{diff.global_paths[0]} changed" + (
            f", and {more} more global files" if more else ""
        )
    return changes, (frm, to)


def _finish(
    req: Request, p: Plan, index: DependencyIndex | None, info: Mapping[str, Any]
) -> Outcome:
    all_ports, origins = planner.bulk_targets(p, req.scope, index)
    return Outcome(p, all_ports, origins, dict(info))


# --- command line -------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", required=True, help="a git checkout of the ports tree")
    p.add_argument("--to", default="HEAD", help="the pushed revision (default: HEAD)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--from", dest="frm", metavar="REV", help="the revision before the push")
    what.add_argument("--origins", nargs="+", metavar="ORIGIN", help="plan as if these changed")
    what.add_argument("--full", action="store_true", help="plan a full bulk")
    p.add_argument("--reason", default="a full bulk was asked for", help="why --full")
    p.add_argument("--changed-only", action="store_true", help="leave dependents out")
    p.add_argument("--scope", nargs="+", default=[], metavar="ORIGIN", help="the set's list")
    p.add_argument("--index", metavar="FILE", help="dependency index cache (read and written)")
    p.add_argument("--index-file", metavar="FILE", help="build the index from this INDEX")
    p.add_argument("--make", default=None, help="make program (default: bmake, else make)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="make -V at once")
    p.add_argument("--label", default="this push", help="how the plan names its cause")
    p.add_argument("--list", metavar="FILE", help="write the bulk's origins here, one a line")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `plan` to the jailfarm command line."""
    p = sub.add_parser("plan", help="the ports a push rebuilds: changed ports and dependents")
    add_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run `jailfarm plan`; the exit code."""
    make = args.make or ("bmake" if shutil.which("bmake") else "make")
    req = Request(
        tree=args.tree,
        to=args.to,
        frm=args.frm,
        origins=tuple(args.origins or ()),
        full=args.full,
        changed_only=args.changed_only,
        scope=tuple(args.scope),
        index=args.index,
        index_file=args.index_file,
        make=make,
        jobs=args.jobs,
        label=args.label,
        reason=args.reason,
    )
    try:
        for origin in (*req.origins, *req.scope):
            if not planner.origin_of(origin + "/Makefile"):
                raise planner.PlanError(f"invalid port origin {origin!r}: expected category/port")
        if not os.path.isdir(req.tree):
            raise planner.PlanError(f"--tree {req.tree}: no such directory")
        outcome = plan(req)
    except planner.PlanError as e:
        print(f"jailfarm plan: {e}", file=sys.stderr)
        return 2
    except (ToolFailed, OSError, subprocess.SubprocessError) as e:
        print(f"jailfarm plan: {e}", file=sys.stderr)
        return 1
    if args.list and not outcome.all_ports:
        with open(args.list, "w", encoding="utf-8") as f:
            f.writelines(o + "\n" for o in outcome.origins)
    print(
        outcome.to_json(req.label) if args.json else outcome.plan.text(req.label),
        end="\n" if args.json else "",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plancli.py", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
