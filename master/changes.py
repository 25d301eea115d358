"""How pushes become builds (adapter): per ports tree a GitPoller, web hooks for generic JSON,
GitHub and Gitea pushes checked against a shared secret (HMAC-SHA256), and a PB change source
for `buildbot sendchange` from a post-receive hook; the schedulers (one bulk per ABI jail per
push, a testport of each changed port, a nightly full bulk, the rebuild form); and PlanPorts,
the step that shows what a push rebuilds before the bulk and hands the bulk its list.
The helpers above the adapters are pure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from buildbot.changes.filter import ChangeFilter
from buildbot.changes.gitpoller import GitPoller
from buildbot.changes.pb import ChangePerspective, PBChangeSource
from buildbot.process import buildstep
from buildbot.process import results as _results
from buildbot.process.properties import Properties, Property
from buildbot.schedulers.basic import SingleBranchScheduler
from buildbot.schedulers.forcesched import (
    BooleanParameter,
    ChoiceStringParameter,
    CollectedValidationError,
    ForceScheduler,
    StringParameter,
)
from buildbot.schedulers.timed import Nightly
from buildbot.steps.transfer import FileDownload, FileUpload, StringDownload
from buildbot.www.hooks.base import BaseHookHandler
from twisted.internet import defer
from twisted.logger import Logger

from jailfarm.cmd import Secret
from jailfarm.errors import ConfigError, FarmError, InvalidName
from jailfarm.names import BRANCH, ORIGIN
from jailfarm.poudriere import planner

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from jailfarm.config import FarmConfig, PortsTree

SUCCESS: int = _results.SUCCESS
FAILURE: int = _results.FAILURE
SKIPPED: int = _results.SKIPPED
MAX_BODY = 5 << 20  # a GitHub push payload is at most 25 MB; ours list files, not diffs
MAX_FILES = 20000  # more than this many files: treat the list as unknown
MAX_TESTPORTS = 10  # testports per build; the rest are named in the plan log
GITHUB_MAX_COMMITS = 2048  # GitHub truncates a push payload's commit list here
PLANNER_DIR = "planner"  # in the builder's directory on the worker, next to `ports`
_ZERO = re.compile(r"0+")


class PushRejected(FarmError, ValueError):
    """A push notification that is refused; `code` is the HTTP status a web hook answers."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- pure: payloads, signatures, trees ------------------------------------------------------


@dataclass(frozen=True)
class Push:
    """One push as a payload tells it. `files` is None when the payload does not list them
    all; `tree` is the ports tree the payload names (generic JSON only)."""

    ref: str
    after: str
    before: str = ""
    files: tuple[str, ...] | None = None
    urls: tuple[str, ...] = ()
    tree: str | None = None
    author: str = ""
    comments: str = ""
    revlink: str = ""
    created: bool = False
    forced: bool = False


def _text(value: Any, limit: int = 10000) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _files(commits: Sequence[Any]) -> set[str]:
    files: set[str] = set()
    for commit in commits:
        for key in ("added", "removed", "modified"):
            files.update(f for f in commit.get(key) or () if isinstance(f, str))
    return files


def _forge_push(p: Mapping[str, Any], listed_all: bool) -> Push:
    """GitHub's and Gitea's push payloads share these fields."""
    commits = p.get("commits") or []
    head = p.get("head_commit") or (commits[-1] if commits else {})
    repo = p["repository"]
    urls = tuple(
        str(repo[k]) for k in ("clone_url", "ssh_url", "git_url", "html_url") if repo.get(k)
    )
    created = bool(p.get("created")) or bool(_ZERO.fullmatch(str(p.get("before", ""))))
    known = listed_all and not created and not p.get("forced")
    author = (head.get("author") or {}).get("name") or (p.get("pusher") or {}).get("name")
    return Push(
        ref=str(p["ref"]),
        after=str(p["after"]),
        before=str(p.get("before", "")),
        files=tuple(sorted(_files(commits))) if known else None,
        urls=urls,
        author=_text(author),
        comments=_text(head.get("message")),
        revlink=_text(head.get("url")),
        created=created,
        forced=bool(p.get("forced")),
    )


def parse_github(p: Mapping[str, Any]) -> Push:
    return _forge_push(p, len(p.get("commits") or ()) < GITHUB_MAX_COMMITS)


def parse_gitea(p: Mapping[str, Any]) -> Push:
    # Gitea sends at most webhook.PAGING_NUM commits and says how many there were.
    commits = p.get("commits") or []
    return _forge_push(p, int(p.get("total_commits", len(commits))) <= len(commits))


def parse_generic(p: Mapping[str, Any]) -> Push:
    """`{"tree", "ref" or "branch", "before", "after", "files", "repository", "author",
    "comments"}`; only `after` and a ref or branch are required."""
    ref = p["ref"] if "ref" in p else "refs/heads/" + str(p["branch"])
    files = p.get("files")
    if files is not None and not (
        isinstance(files, list) and all(isinstance(f, str) for f in files)
    ):
        raise PushRejected(400, "generic push payload: files must be a list of paths")
    repo = p.get("repository")
    return Push(
        ref=str(ref),
        after=str(p["after"]),
        before=str(p.get("before") or ""),
        files=tuple(files) if files is not None else None,
        urls=(repo,) if isinstance(repo, str) else (),
        tree=str(p["tree"]) if "tree" in p else None,
        author=_text(p.get("author")),
        comments=_text(p.get("comments")),
        created=bool(_ZERO.fullmatch(str(p.get("before", "")))),
    )


PARSERS: dict[str, Callable[[Mapping[str, Any]], Push]] = {
    "github": parse_github,
    "gitea": parse_gitea,
    "jailfarm": parse_generic,
}
# Headers that carry hex(HMAC-SHA256(secret, body)), with or without a "sha256=" prefix.
SIGNATURE_HEADERS = {
    "github": ("X-Hub-Signature-256",),
    "gitea": ("X-Gitea-Signature", "X-Hub-Signature-256"),
    "jailfarm": ("X-Jailfarm-Signature", "X-Hub-Signature-256"),
}
EVENT_HEADERS = {"github": "X-GitHub-Event", "gitea": "X-Gitea-Event"}


def parse_push(kind: str, payload: Any) -> Push:
    if not isinstance(payload, dict):
        raise PushRejected(400, f"{kind} push payload: expected a JSON object")
    try:
        return PARSERS[kind](payload)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, PushRejected):
            raise
        raise PushRejected(400, f"{kind} push payload: missing or malformed field {e}") from None


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(kind: str, headers: Mapping[str, str | None], body: bytes, secret: str) -> bool:
    """Whether the first signature header present matches; PushRejected(403) when none is."""
    for name in SIGNATURE_HEADERS[kind]:
        value = headers.get(name)
        if value:
            given = value.strip().removeprefix("sha256=").lower()
            return hmac.compare_digest(given, sign(secret, body))
    expected = " or ".join(SIGNATURE_HEADERS[kind])
    raise PushRejected(403, f"unsigned push: expected a {expected} header (HMAC-SHA256)")


def repo_key(url: str) -> tuple[str, str]:
    """(host, path) of a git URL, so https, ssh, scp-like and web URLs of one repository
    compare equal: `git@github.com:o/p.git` and `https://github.com/o/p` -> (github.com, o/p)."""
    if "://" in url:
        parts = urlsplit(url)
        host, path = (parts.hostname or "").lower(), parts.path
    elif ":" in url and not url.startswith("/"):
        host, _, path = url.partition(":")
        host = host.rpartition("@")[2].lower()
    else:
        host, path = "", url
    return host, path.strip("/").removesuffix(".git").rstrip("/")


@dataclass(frozen=True)
class HookTree:
    tree: PortsTree
    secret: Secret | None


def find_tree(trees: Sequence[HookTree], named: str | None, urls: Sequence[str]) -> HookTree:
    """The configured tree a push is for: the one named (`?tree=` or the payload's `tree`),
    else the one whose url is the payload's repository. PushRejected(404) otherwise."""
    known = ", ".join(t.tree.name for t in trees) or "none"
    if named is not None:
        for t in trees:
            if t.tree.name == named:
                return t
        raise PushRejected(404, f"no ports tree {named[:100]!r} in farm.toml (trees: {known})")
    keys = {repo_key(u) for u in urls}
    found = [t for t in trees if repo_key(t.tree.url) in keys]
    if len(found) == 1:
        return found[0]
    what = repr(urls[0][:200]) if urls else "an unnamed repository"
    raise PushRejected(
        404,
        f"the push is for {what}, which is no configured ports tree (trees: {known}); "
        "name the tree with ?tree=NAME in the hook URL",
    )


def push_change(tree: PortsTree, push: Push) -> dict[str, Any] | None:
    """The buildbot change for a push to `tree`, or None when it builds nothing (a tag, a
    deleted branch, another branch). PushRejected(400) for a malformed ref or revision."""
    kind, _, name = push.ref.removeprefix("refs/").partition("/")
    if not name or kind not in ("heads", "tags"):
        raise PushRejected(400, f"malformed ref {push.ref[:200]!r}: expected refs/heads/BRANCH")
    try:
        BRANCH.check(name)
    except InvalidName as e:
        raise PushRejected(400, str(e)) from None
    if kind == "tags" or name != tree.branch or _ZERO.fullmatch(push.after):
        return None
    if not planner.OBJECT_NAME.fullmatch(push.after):
        raise PushRejected(400, f"malformed revision {push.after[:100]!r}: expected a commit hash")
    properties: dict[str, Any] = {"push_files": "unknown" if push.files is None else "listed"}
    if push.created or push.forced:
        # Nothing to compare with: the branch is new, or its old head may be gone.
        properties["rebuild_full"] = True
        why = "the branch is new" if push.created else "the branch was force-pushed"
        properties["rebuild_reason"] = why
    elif push.before:
        if not planner.OBJECT_NAME.fullmatch(push.before):
            raise PushRejected(
                400, f"malformed revision {push.before[:100]!r}: expected a commit hash"
            )
        properties["rebuild_from"] = push.before
    files = list(push.files or ())
    if len(files) > MAX_FILES:
        files, properties["push_files"] = [], "unknown"
    return {
        "author": push.author or "unknown",
        "comments": push.comments,
        "revision": push.after,
        "branch": tree.branch,
        "repository": tree.url,
        "project": tree.name,
        "category": "push",
        "files": files,
        "revlink": push.revlink,
        "properties": properties,
    }


def sendchange_change(tree: PortsTree, d: Mapping[str, Any]) -> dict[str, Any]:
    """What `buildbot sendchange` sent, checked like a web hook push; a change for another
    branch or tree is refused, so the sender sees why nothing builds."""
    project, branch = d.get("project") or tree.name, d.get("branch") or ""
    if project != tree.name:
        raise PushRejected(
            404, f"this login sends changes for ports tree {tree.name}, not {project!r}"
        )
    props = d.get("properties") or {}
    before = str(props.get("rebuild_from") or "")
    files = d.get("files") or []
    push = Push(
        ref=f"refs/heads/{branch}",
        after=str(d.get("revision") or ""),
        before=before,
        files=tuple(str(f) for f in files) if files else None,
        author=_text(d.get("who") or d.get("author")),
        comments=_text(d.get("comments")),
        revlink=_text(d.get("revlink")),
    )
    change = push_change(tree, push)
    if change is None:
        raise PushRejected(
            400, f"ports tree {tree.name} builds branch {tree.branch}, not {branch!r}"
        )
    return change


def read_secret(path: str, what: str) -> Secret:
    """The secret a file holds (one line). Like buildbot's SecretInAFile, a file others can
    read is refused: ConfigError naming the file."""
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(what, [f"{path} is readable by others; expected mode 0600 or 0400"])
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        raise ConfigError(what, [f"cannot read {path}: {e.strerror}"]) from None
    if not value or "\n" in value:
        raise ConfigError(what, [f"{path} must hold the secret on one line"])
    return Secret(value)


# --- pure: what a build plans, from its properties and changes ------------------------------


@dataclass(frozen=True)
class PlanRequest:
    frm: str | None = None
    origins: tuple[str, ...] = ()
    full: bool = False
    label: str = "this push"
    reason: str = ""

    def args(self) -> list[str]:
        if self.full:
            return ["--full", *(("--reason", self.reason) if self.reason else ())]
        if self.origins:
            return ["--origins", *self.origins]
        return ["--from", str(self.frm)]


def plan_request(
    props: Mapping[str, Any], changes: Sequence[tuple[str, Mapping[str, Any]]]
) -> PlanRequest:
    """What to plan: a full bulk (nightly, a new branch, the form), the form's origins and
    their dependents, else the build's changes (oldest first) from the revision before the
    push (a hook says it) or the parent of the oldest commit; a build with none of these
    (a plain force) is a full bulk. PlanError or InvalidName for malformed input."""
    if props.get("rebuild_full"):
        return PlanRequest(full=True, label="this build", reason=_reason(props, "asked for"))
    for _, p in changes:
        if p.get("rebuild_full"):
            return PlanRequest(full=True, reason=_reason(p, "the push asked for it"))
    origins = props.get("rebuild_origins") or ()
    if origins:
        return PlanRequest(origins=tuple(ORIGIN.check(o) for o in origins), label="this request")
    for _, p in changes:
        if p.get("rebuild_from"):
            return PlanRequest(frm=planner.check_revision(str(p["rebuild_from"])))
    if changes:
        return PlanRequest(frm=planner.check_revision(changes[0][0]) + "^")
    return PlanRequest(full=True, label="this build", reason="no push to plan from")


def _reason(props: Mapping[str, Any], default: str) -> str:
    reason = props.get("rebuild_reason")
    return reason[:200] if isinstance(reason, str) and reason else default


def planner_python(cfg: FarmConfig) -> str:
    """The Python that runs the planner on a worker. On the dev host it is the venv's, which
    worker jails see; FreeBSD workers have the one their buildbot-worker package brings."""
    if cfg.platform == "linux-dev":
        return sys.executable
    for package in cfg.template.packages:
        if m := re.fullmatch(r"py3([0-9]+)-buildbot-worker", package):
            return f"/usr/local/bin/python3.{m[1]}"
    return "python3"


def planner_make(cfg: FarmConfig) -> str:
    return "bmake" if cfg.platform == "linux-dev" else "make"  # FreeBSD's make is bmake


def tool_sources() -> dict[str, str]:
    """planner.py and plancli.py as the worker gets them (see plancli's docstring)."""
    from jailfarm import plancli

    out = {}
    for name, module in (("planner.py", planner), ("plancli.py", plancli)):
        with open(str(module.__file__), encoding="utf-8") as f:
            out[name] = f.read()
    return out


def index_cache(tree: PortsTree) -> str:
    """Where the master keeps a tree's dependency index, relative to its basedir (as the
    GitPoller's clones are): it outlives the throw-away worker jails."""
    return f"planner/{tree.name}.json"


# --- adapters: web hooks and sendchange ---------------------------------------------------


class PushHook(BaseHookHandler):  # type: ignore[misc]  # buildbot is untyped
    """`/change_hook/<kind>`: a push for a configured tree, signed with its hook secret."""

    kind: ClassVar[str] = "jailfarm"
    log = Logger()

    def _trees(self) -> Sequence[HookTree]:
        # ChangeHookResource keeps one handler per dialect across reconfigs: read the trees
        # (and secrets) of the running configuration, not those this handler was made with.
        dialects = self.master.config.www.get("change_hook_dialects", {})
        trees: Sequence[HookTree] = dialects.get(self.kind, self.options)["trees"]
        return trees

    def getChanges(self, request: Any) -> defer.Deferred[tuple[list[dict[str, Any]], str]]:
        try:
            return defer.succeed((self._changes(request), self.kind))
        except PushRejected as e:
            self.log.info("{kind} hook: {code} {why}", kind=self.kind, code=e.code, why=str(e))
            request.setResponseCode(e.code)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.write(f"{e}\n".encode())
            request.finish()
            # ChangeHookResource answers 202, 400 or 500 only; a refusal (403 for a wrong
            # signature) is answered here, and this Deferred never fires: no change is added.
            return defer.Deferred()

    def _changes(self, request: Any) -> list[dict[str, Any]]:
        request.content.seek(0)
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise PushRejected(413, f"payload larger than {MAX_BODY} bytes")
        event = _header(request, EVENT_HEADERS[self.kind]) if self.kind in EVENT_HEADERS else None
        if event == "ping":  # GitHub's and Gitea's test delivery: nothing to build
            return []
        if event is not None and event != "push":
            raise PushRejected(400, f"{self.kind} event {event[:50]!r} is not handled; send pushes")
        query = parse_qs(urlsplit(request.uri.decode("latin-1")).query)
        named = query.get("tree", [None])[0]
        try:
            ctype = _header(request, "Content-Type") or ""
            form = ctype.startswith("application/x-www-form-urlencoded")
            text = request.args[b"payload"][0] if form else body
            payload = json.loads(text)
        except (KeyError, IndexError, ValueError):
            raise PushRejected(
                400, "the payload is not JSON (nor a form with payload=JSON)"
            ) from None
        push = parse_push(self.kind, payload)
        hook = find_tree(self._trees(), named or push.tree, push.urls)
        if hook.secret is None:
            raise PushRejected(
                403,
                f"ports tree {hook.tree.name} has no hook_secret_file: web hooks are off for it",
            )
        headers = {h: _header(request, h) for h in SIGNATURE_HEADERS[self.kind]}
        if not signature_ok(self.kind, headers, body, hook.secret.reveal()):
            raise PushRejected(403, f"wrong signature for ports tree {hook.tree.name}")
        change = push_change(hook.tree, push)
        return [change] if change else []


class GitHubPushHook(PushHook):
    kind = "github"


class GiteaPushHook(PushHook):
    kind = "gitea"


HOOKS: dict[str, type[PushHook]] = {
    "github": GitHubPushHook,
    "gitea": GiteaPushHook,
    "jailfarm": PushHook,
}


def _header(request: Any, name: str) -> str | None:
    value = request.getHeader(name.encode())
    return value.decode("latin-1") if isinstance(value, bytes) else value


class TreeChangePerspective(ChangePerspective):  # type: ignore[misc]  # buildbot is untyped
    def __init__(self, master: Any, tree: PortsTree) -> None:
        super().__init__(master, None)
        self.tree = tree

    def perspective_addChange(self, changedict: dict[str, Any]) -> Any:
        # A refusal reaches `buildbot sendchange`, which prints it ("change not sent").
        return super().perspective_addChange(sendchange_change(self.tree, changedict))


class TreeChangeSource(PBChangeSource):  # type: ignore[misc]  # buildbot is untyped
    """`buildbot sendchange --auth push-<tree>:<secret>` for one tree (on the workers' PB
    port): a post-receive hook's way in. Changes are checked like web hook pushes."""

    compare_attrs: ClassVar[Sequence[str]] = (*PBChangeSource.compare_attrs, "tree")

    def __init__(self, tree: PortsTree, passwd: Secret) -> None:
        super().__init__(
            user=f"push-{tree.name}", passwd=passwd.reveal(), name=f"sendchange-{tree.name}"
        )
        self.tree = tree

    def getPerspective(self, mind: Any, username: str) -> TreeChangePerspective:
        return TreeChangePerspective(self.master, self.tree)


# --- adapters: schedulers ------------------------------------------------------------------


@dataclass(frozen=True)
class BuilderRef:
    """A builder the schedulers start: `kind` is "bulk" or "testport"."""

    name: str
    kind: str
    jail: str
    tree: str
    set_name: str


def push_is_important(change: Any) -> bool:
    """Build a push whose files can change a package, or whose files are not all listed."""
    props = change.properties
    if props.getProperty("push_files") == "unknown" or props.getProperty("rebuild_full"):
        return True
    return planner.affects_build(change.files)


def push_touches_ports(change: Any) -> bool:
    if change.properties.getProperty("push_files") == "unknown":
        return True
    return planner.touches_ports(change.files)


class RebuildForceScheduler(ForceScheduler):  # type: ignore[misc]  # buildbot is untyped
    """The rebuild form: bulk builds of one jail (or all) x tree x set, of the origins given
    and everything that depends on them, or of every port. Builder names are
    `bulk-<jail>-<tree>[-<set>]` (config.bulk_builder_name; names hold no '-')."""

    def addBuildsetForSourceStampsWithDefaults(
        self,
        reason: str,
        sourcestamps: Any = None,
        waited_for: bool = False,
        properties: Any = None,
        builderNames: Any = None,
        priority: Any = None,
        **kw: Any,
    ) -> Any:
        props = properties or Properties()
        targets = rebuild_targets(
            builderNames or self.builderNames,
            props.getProperty("rebuild_jail", "all"),
            props.getProperty("rebuild_tree", ""),
            props.getProperty("rebuild_set", "default"),
        )
        text, full = props.getProperty("rebuild_origins", ""), props.getProperty("rebuild_full")
        errors = {}
        try:
            origins = [ORIGIN.check(o) for o in str(text or "").replace(",", " ").split()]
        except InvalidName as e:
            errors["rebuild_origins"] = str(e)
            origins = []
        if not targets:
            errors["rebuild_jail"] = "no bulk builder for that jail, tree and set"
        if bool(origins) == bool(full) and "rebuild_origins" not in errors:
            errors["rebuild_origins"] = (
                "give origins to rebuild (with their dependents) or tick full"
            )
        if errors:
            raise CollectedValidationError(errors)
        props.setProperty("rebuild_origins", origins, "Force Build Form")
        return super().addBuildsetForSourceStampsWithDefaults(
            reason, sourcestamps, waited_for, props, targets, priority, **kw
        )


def rebuild_targets(names: Sequence[str], jail: str, tree: str, set_name: str) -> list[str]:
    out = []
    for name in names:
        kind, *parts = name.split("-")
        j, t, s = (*parts, "default")[:3]
        if kind == "bulk" and jail in ("all", j) and t == tree and s == set_name:
            out.append(name)
    return out


def schedulers(cfg: FarmConfig, builders: Sequence[BuilderRef]) -> list[Any]:
    """Per tree: one bulk per ABI jail (and set) for each push, a testport build of each
    changed port, a nightly full bulk; and the rebuild form over every bulk builder. Each
    bulk is a builder of its own, and the master sets collapseRequests=False, so pushes and
    ABIs are never merged into one another's builds (buildbot-4.3.md §4)."""
    out: list[Any] = []
    bulks = [b for b in builders if b.kind == "bulk"]
    for tree in cfg.trees:
        names = [b.name for b in bulks if b.tree == tree.name]
        pushes = ChangeFilter(project=tree.name, branch=tree.branch)
        timer = tree.stable_timer or None
        out.append(
            SingleBranchScheduler(
                name=f"push-{tree.name}",
                change_filter=pushes,
                treeStableTimer=timer,
                builderNames=names,
                fileIsImportant=push_is_important,
                onlyImportant=True,
            )
        )
        tests = [b.name for b in builders if b.kind == "testport" and b.tree == tree.name]
        if tree.testport and tests:
            out.append(
                SingleBranchScheduler(
                    name=f"push-{tree.name}-testport",
                    change_filter=pushes,
                    treeStableTimer=timer,
                    builderNames=tests,
                    fileIsImportant=push_touches_ports,
                    onlyImportant=True,
                )
            )
        if tree.nightly:
            hour, minute = (int(x) for x in tree.nightly.split(":"))
            out.append(
                Nightly(
                    name=f"nightly-{tree.name}",
                    builderNames=names,
                    hour=hour,
                    minute=minute,
                    properties={"rebuild_full": True, "rebuild_reason": "the nightly full bulk"},
                )
            )
    params = [
        ChoiceStringParameter(
            name="rebuild_jail",
            label="jail",
            default="all",
            choices=["all", *(j.name for j in cfg.poudriere_jails)],
        ),
        ChoiceStringParameter(
            name="rebuild_tree",
            label="ports tree",
            default=cfg.trees[0].name,
            choices=[t.name for t in cfg.trees],
        ),
        ChoiceStringParameter(
            name="rebuild_set", label="set", default="default", choices=[s.name for s in cfg.sets]
        ),
        StringParameter(
            name="rebuild_origins", label="origins (and what depends on them)", default="", size=80
        ),
        BooleanParameter(name="rebuild_full", label="full bulk (every port)", default=False),
    ]
    out.append(
        RebuildForceScheduler(
            name="rebuild",
            builderNames=[b.name for b in bulks],
            label="Rebuild ports",
            buttonName="Plan and build",
            properties=params,
        )
    )
    return out


def change_sources(cfg: FarmConfig) -> list[Any]:
    """A GitPoller per tree that polls, a sendchange login per tree with a hook secret."""
    out: list[Any] = []
    for tree in cfg.trees:
        if tree.poll_interval:
            out.append(
                GitPoller(
                    repourl=tree.url,
                    branches=[tree.branch],
                    pollInterval=tree.poll_interval,
                    pollAtLaunch=True,
                    project=tree.name,
                    workdir=f"gitpoller-{tree.name}",
                    name=f"poll-{tree.name}",
                )
            )
        if tree.hook_secret_file:
            secret = read_secret(tree.hook_secret_file, f"trees {tree.name} hook_secret_file")
            out.append(TreeChangeSource(tree, secret))
    return out


def www_hooks(cfg: FarmConfig) -> dict[str, Any]:
    """The `change_hook_dialects` for c["www"]: /change_hook/github, /change_hook/gitea and
    /change_hook/jailfarm (generic JSON), each checking the tree's hook secret. No
    change_hook_auth is needed: every push is signed."""
    trees = tuple(
        HookTree(
            t,
            read_secret(t.hook_secret_file, f"trees {t.name} hook_secret_file")
            if t.hook_secret_file
            else None,
        )
        for t in cfg.trees
    )
    return {
        "change_hook_dialects": {
            kind: {"custom_class": cls, "trees": trees} for kind, cls in HOOKS.items()
        }
    }


# --- adapters: the plan step ----------------------------------------------------------------


class PlanPorts(buildstep.ShellMixin, buildstep.BuildStep):  # type: ignore[misc]
    """Plan what this build rebuilds: plancli.py on the worker, over the checkout of the
    pushed commit (`ports`), with the dependency index the master keeps. The plan goes to the
    `plan` log, the step summary ("this push rebuilds 14 ports (3 changed, 11 dependents)")
    and properties: `plan` (all of it), `plan_ports`, `plan_full`, and for the bulk
    `plan_bulk_all` and `plan_list_file`. A plan that rebuilds nothing ends the build there,
    successfully. With `testport` (origin -> step), it plans only the changed ports and adds
    a testport step for each (at most MAX_TESTPORTS).

    Why on the worker: the worker has the tree at the exact commit and the make(1) of the
    build platform; the master only keeps the index between throw-away jails."""

    name = "plan"
    logEnviron = False
    renderables = ("revision",)

    def __init__(
        self,
        *,
        python: str,
        make: str,
        scope: Sequence[str] = (),
        testport: Callable[[str], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("workdir", PLANNER_DIR)
        kwargs.setdefault("haltOnFailure", True)
        kwargs = self.setupShellMixin(kwargs, prohibitArgs=["command"])
        super().__init__(**kwargs)
        self.python, self.make, self.scope, self.testport = python, make, tuple(scope), testport
        self.revision = Property("got_revision")

    def _request(self) -> PlanRequest:
        names = ("rebuild_full", "rebuild_origins", "rebuild_reason")
        props = {n: self.getProperty(n) for n in names}
        # buildrequest.TempChange: changeid, revision, properties (a Properties).
        ordered = sorted(self.build.allChanges(), key=lambda c: c.changeid)
        changes = [
            (str(c.revision), {k: v for k, (v, _) in c.properties.asDict().items()})
            for c in ordered
        ]
        return plan_request(props, changes)

    def _argv(self, request: PlanRequest) -> list[str]:
        argv = [self.python, "plancli.py", "--tree", "../ports", "--to", str(self.revision)]
        argv += [*request.args(), "--label", request.label, "--make", self.make, "--json"]
        if self.testport:
            return [*argv, "--changed-only"]
        argv += ["--index", "index.json", "--list", "ports.list"]
        return argv + (["--scope", *self.scope] if self.scope else [])

    async def run(self) -> int:
        if not self.revision:
            return await self._fail("no revision: the checkout did not run", "got_revision unset")
        try:
            request = self._request()
        except ValueError as e:  # PlanError, InvalidName
            return await self._fail(str(e), str(e))
        cmd = await self.makeRemoteShellCommand(
            command=self._argv(request), collectStdout=True, collectStderr=True
        )
        await self.runCommand(cmd)
        if cmd.rc != 0:
            why = (cmd.stderr.strip().splitlines() or [f"exit {cmd.rc}"])[-1]
            return await self._fail(why.removeprefix("jailfarm plan: "), cmd.stderr)
        try:
            data = json.loads(cmd.stdout)
            plan = planner.Plan.from_dict(data["plan"])
            bulk_all, origins = bool(data["bulk"]["all"]), list(data["bulk"]["origins"])
            index = dict(data.get("index") or {})
        except (ValueError, KeyError, TypeError) as e:
            return await self._fail("unreadable plan", f"{e}\n{cmd.stdout[:2000]}")
        return await self._report(request, plan, bulk_all, origins, index)

    async def _report(
        self,
        request: PlanRequest,
        plan: planner.Plan,
        bulk_all: bool,
        origins: list[str],
        index: Mapping[str, Any],
    ) -> int:
        source = self.__class__.__name__
        text = plan.text(request.label)
        if index:
            text += f"index: {index.get('source')}, {index.get('ports')} ports, "
            text += f"{index.get('queried')} queried with make -V\n"
        tests = list(plan.changed[:MAX_TESTPORTS]) if self.testport else []
        if self.testport and len(plan.changed) > len(tests):
            text += "not tested (limit): " + " ".join(plan.changed[len(tests) :]) + "\n"
        await self.addCompleteLog("plan", text)
        self.setProperty("plan", plan.to_dict(), source)
        self.setProperty("plan_summary", plan.headline(request.label), source)
        self.setProperty("plan_ports", list(plan.ports), source)
        self.setProperty("plan_full", plan.full, source)
        self.setProperty("plan_bulk_all", bulk_all, source)
        self.setProperty("plan_index_updated", index.get("source", "cached") != "cached", source)
        if origins and not self.testport:
            path = f"{self.getProperty('builddir')}/{PLANNER_DIR}/ports.list"
            self.setProperty("plan_list_file", path, source)
        self.descriptionDone = [plan.headline(request.label)]
        if self.testport:
            assert self.testport is not None
            self.build.addStepsAfterLastStep([self.testport(o) for o in tests])
        if not (bulk_all or origins or tests):
            # buildbot has no "halt on success": this is the flag haltOnFailure sets
            # (process/build.py getNextStep); only alwaysRun steps still run.
            self.build.terminate = True
        return SUCCESS

    async def _fail(self, summary: str, log: str) -> int:
        await self.addCompleteLog("error", log.rstrip("\n") + "\n")
        self.descriptionDone = [f"plan: {summary[:200]}"]
        return FAILURE


def _skipped(results: int, step: Any) -> bool:
    return results == SKIPPED


def plan_steps(
    cfg: FarmConfig,
    tree: PortsTree,
    scope: Sequence[str] = (),
    testport: Callable[[str], Any] | None = None,
) -> list[Any]:
    """The steps that plan a build, after the checkout of the tree into `ports`: the planner
    shipped to the worker, the index cache from the master, PlanPorts, the index back."""
    tools = [
        StringDownload(
            text,
            workerdest=name,
            workdir=PLANNER_DIR,
            mode=0o644,
            name=f"planner-{name[:-3]}",
            hideStepIf=_skipped,
            haltOnFailure=True,
        )
        for name, text in tool_sources().items()
    ]
    plan = PlanPorts(
        python=planner_python(cfg), make=planner_make(cfg), scope=scope, testport=testport
    )
    if testport is not None:
        return [*tools, plan]
    cache = index_cache(tree)
    fetch = FileDownload(
        mastersrc=cache,
        workerdest="index.json",
        workdir=PLANNER_DIR,
        name="planner-index",
        doStepIf=partial(_cache_exists_step, cache),
        hideStepIf=_skipped,
    )
    keep = FileUpload(
        workersrc="index.json",
        masterdest=cache,
        workdir=PLANNER_DIR,
        name="planner-index-keep",
        alwaysRun=True,
        doStepIf=_index_updated,
        hideStepIf=_skipped,
    )
    return [*tools, fetch, plan, keep]


def _cache_exists_step(path: str, step: Any) -> bool:
    return os.path.isfile(os.path.join(step.master.basedir, path))


def _index_updated(step: Any) -> bool:
    return bool(step.getProperty("plan_index_updated"))
