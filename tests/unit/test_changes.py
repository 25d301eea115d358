"""How pushes become builds: payload parsing and signatures, tree matching, the change a push
makes, what a build plans from its properties and changes (pure); the web hooks behind
buildbot's ChangeHookResource, the PlanPorts step under buildbot's step harness, and the
schedulers and change sources a farm gets.

Payloads follow GitHub's and Gitea's documented push events, cut to the fields we read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from buildbot.changes.gitpoller import GitPoller
from buildbot.process.properties import Properties
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.schedulers.basic import SingleBranchScheduler
from buildbot.schedulers.timed import Nightly
from buildbot.test.fake.web import FakeRequest, fakeMasterForHooks
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from buildbot.www.change_hook import ChangeHookResource
from twisted.trial import unittest

from jailfarm.cmd import Secret
from jailfarm.config import ConfigError, PortsTree, parse_farm
from jailfarm.errors import InvalidName
from jailfarm.master import changes
from jailfarm.master import config as master_config
from jailfarm.master.changes import (
    BuilderRef,
    HookTree,
    PlanPorts,
    PlanRequest,
    Push,
    PushRejected,
    RebuildForceScheduler,
    TreeChangeSource,
    find_tree,
    parse_push,
    plan_request,
    push_change,
    read_secret,
    rebuild_targets,
    repo_key,
    sendchange_change,
    sign,
    signature_ok,
)
from jailfarm.master.config import build_config, bulk_builder_name
from jailfarm.poudriere import planner
from tests.support import deferred_test
from tests.unit.test_master_config import linux_farm

A, B = "a" * 40, "b" * 40
TREE = PortsTree("default", "https://github.com/example/ports.git", "main")
OTHER = PortsTree("other", "/srv/git/other.git", "main")
SECRET = "s3cret-hook-key"


def github_push(**over: Any) -> dict[str, Any]:
    payload = {
        "ref": "refs/heads/main",
        "before": A,
        "after": B,
        "created": False,
        "deleted": False,
        "forced": False,
        "repository": {
            "full_name": "example/ports",
            "clone_url": "https://github.com/example/ports.git",
            "ssh_url": "git@github.com:example/ports.git",
            "html_url": "https://github.com/example/ports",
        },
        "pusher": {"name": "alice"},
        "commits": [
            {
                "id": A,
                "message": "x",
                "added": ["misc/new/Makefile"],
                "removed": [],
                "modified": [],
            },
            {
                "id": B,
                "message": "devel/libjf: bump",
                "url": "https://github.com/example/ports/commit/" + B,
                "author": {"name": "Alice"},
                "added": [],
                "removed": [],
                "modified": ["devel/libjf/Makefile"],
            },
        ],
    }
    payload["head_commit"] = payload["commits"][-1]  # type: ignore[index]
    payload.update(over)
    return payload


class PayloadTests:
    def test_github(self) -> None:
        push = parse_push("github", github_push())
        assert push.ref == "refs/heads/main" and (push.before, push.after) == (A, B)
        assert push.files == ("devel/libjf/Makefile", "misc/new/Makefile")
        assert push.author == "Alice" and push.comments == "devel/libjf: bump"
        assert "git@github.com:example/ports.git" in push.urls

    def test_forced_created_or_truncated_pushes_do_not_list_their_files(self) -> None:
        assert parse_push("github", github_push(forced=True)).files is None
        assert parse_push("github", github_push(before="0" * 40)).files is None
        gitea = github_push(total_commits=7)
        assert parse_push("gitea", gitea).files is None
        assert parse_push("gitea", github_push(total_commits=2)).files is not None

    def test_generic(self) -> None:
        push = parse_push("jailfarm", {"tree": "default", "branch": "main", "after": B})
        assert push == Push("refs/heads/main", B, tree="default")
        push = parse_push("jailfarm", {"ref": "refs/heads/main", "after": B, "files": []})
        assert push.files == ()

    @pytest.mark.parametrize(
        ("kind", "payload"),
        [
            ("github", []),
            ("github", {"ref": "refs/heads/main"}),
            ("gitea", {"after": B, "repository": {}}),
            ("jailfarm", {"after": B}),
            ("jailfarm", {"branch": "main", "after": B, "files": "misc/x/Makefile"}),
        ],
    )
    def test_malformed_payloads_are_400(self, kind: str, payload: Any) -> None:
        with pytest.raises(PushRejected) as e:
            parse_push(kind, payload)
        assert e.value.code == 400


class SignatureTests:
    BODY = b'{"ref": "refs/heads/main"}'

    def test_hmac_sha256_with_or_without_prefix(self) -> None:
        good = sign(SECRET, self.BODY)
        assert signature_ok("github", {"X-Hub-Signature-256": "sha256=" + good}, self.BODY, SECRET)
        assert signature_ok("gitea", {"X-Gitea-Signature": good}, self.BODY, SECRET)
        assert signature_ok(
            "jailfarm", {"X-Jailfarm-Signature": "sha256=" + good}, self.BODY, SECRET
        )

    def test_wrong_or_missing_signature(self) -> None:
        bad = sign("other", self.BODY)
        assert not signature_ok(
            "github", {"X-Hub-Signature-256": "sha256=" + bad}, self.BODY, SECRET
        )
        tampered = sign(SECRET, self.BODY)
        assert not signature_ok("gitea", {"X-Gitea-Signature": tampered}, self.BODY + b" ", SECRET)
        with pytest.raises(PushRejected) as e:
            signature_ok("github", {"X-Hub-Signature-256": None}, self.BODY, SECRET)
        assert e.value.code == 403 and "X-Hub-Signature-256" in str(e.value)


class TreeTests:
    TREES = (HookTree(TREE, Secret(SECRET)), HookTree(OTHER, None))

    @pytest.mark.parametrize(
        "url",
        [
            "https://github.com/example/ports",
            "git@github.com:example/ports.git",
            "ssh://git@GitHub.com/example/ports.git/",
        ],
    )
    def test_one_repository_many_urls(self, url: str) -> None:
        assert repo_key(url) == ("github.com", "example/ports")
        assert find_tree(self.TREES, None, [url]).tree == TREE

    def test_by_name_and_unknown(self) -> None:
        assert find_tree(self.TREES, "other", []).tree == OTHER
        for named, urls in (("nope", []), (None, ["https://gitlab.com/x/y"]), (None, [])):
            with pytest.raises(PushRejected, match="ports tree") as e:
                find_tree(self.TREES, named, urls)
            assert e.value.code == 404


class PushChangeTests:
    def test_a_push_to_the_tree_branch(self) -> None:
        change = push_change(TREE, parse_push("github", github_push()))
        assert change is not None
        assert change["revision"] == B and change["branch"] == "main"
        assert change["project"] == "default" and change["repository"] == TREE.url
        assert change["files"] == ["devel/libjf/Makefile", "misc/new/Makefile"]
        assert change["properties"] == {"push_files": "listed", "rebuild_from": A}

    def test_tags_other_branches_and_deletions_build_nothing(self) -> None:
        for ref, after in (
            ("refs/tags/v1", B),
            ("refs/heads/other", B),
            ("refs/heads/main", "0" * 40),
        ):
            assert push_change(TREE, Push(ref, after, A)) is None

    def test_a_new_or_force_pushed_branch_is_a_full_bulk(self) -> None:
        change = push_change(TREE, Push("refs/heads/main", B, "0" * 40, created=True))
        assert change is not None and change["properties"]["rebuild_full"] is True
        forced = push_change(TREE, parse_push("github", github_push(forced=True)))
        assert forced is not None
        assert forced["properties"]["rebuild_reason"] == "the branch was force-pushed"
        assert "rebuild_from" not in forced["properties"]

    @pytest.mark.parametrize(
        ("ref", "after", "before", "match"),
        [
            ("refs/heads/ma$(id)in", B, A, "invalid branch name"),
            ("refs/heads/main;ls", B, A, "invalid branch name"),
            ("refs/heads/-x", B, A, "invalid branch name"),
            ("main", B, A, "malformed ref"),
            ("refs/heads/main", "HEAD", A, "malformed revision"),
            ("refs/heads/main", B, "$(id)", "malformed revision"),
        ],
    )
    def test_malformed_refs_and_revisions(
        self, ref: str, after: str, before: str, match: str
    ) -> None:
        with pytest.raises(PushRejected, match=match) as e:
            push_change(TREE, Push(ref, after, before))
        assert e.value.code == 400

    def test_sendchange(self) -> None:
        d = {"who": "dev", "branch": "main", "revision": B, "files": ["misc/x/Makefile"]}
        change = sendchange_change(TREE, {**d, "properties": {"rebuild_from": A}})
        assert change["author"] == "dev" and change["properties"]["rebuild_from"] == A
        for bad, match in (
            ({**d, "branch": "dev"}, "builds branch main"),
            ({**d, "branch": "ma`id`"}, "invalid branch"),
            ({**d, "project": "other"}, "not 'other'"),
            ({**d, "revision": "nope"}, "malformed revision"),
        ):
            with pytest.raises(PushRejected, match=match):
                sendchange_change(TREE, bad)


class SecretFileTests:
    def test_secret_files(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "hook"
            path.write_text(SECRET + "\n")
            path.chmod(0o600)
            secret = read_secret(str(path), "hook")
            assert secret.reveal() == SECRET and str(secret) == "***"
            path.chmod(0o640)
            with pytest.raises(ConfigError, match="readable by others"):
                read_secret(str(path), "hook")
            with pytest.raises(ConfigError, match="cannot read"):
                read_secret(os.path.join(d, "missing"), "hook")


class PlanRequestTests:
    def test_a_push_plans_from_the_revision_before_it(self) -> None:
        changes_ = [(B, {"rebuild_from": A, "push_files": "listed"})]
        assert plan_request({}, changes_) == PlanRequest(frm=A)
        assert plan_request({}, changes_).args() == ["--from", A]

    def test_polled_commits_plan_from_the_parent_of_the_oldest(self) -> None:
        assert plan_request({}, [(A, {}), (B, {})]).frm == A + "^"

    def test_full_origins_and_a_plain_force(self) -> None:
        nightly = plan_request(
            {"rebuild_full": True, "rebuild_reason": "the nightly full bulk"}, []
        )
        assert nightly.args() == ["--full", "--reason", "the nightly full bulk"]
        form = plan_request({"rebuild_origins": ["devel/libjf"]}, [])
        assert form.args() == ["--origins", "devel/libjf"] and form.label == "this request"
        assert plan_request({}, []).full
        new_branch = {"rebuild_full": True, "rebuild_reason": "the branch is new"}
        assert plan_request({}, [(B, new_branch)]).reason == "the branch is new"

    def test_malformed_input(self) -> None:
        with pytest.raises(InvalidName):
            plan_request({"rebuild_origins": ["devel/libjf;id"]}, [])
        with pytest.raises(planner.PlanError):
            plan_request({}, [(B, {"rebuild_from": "-x"})])


class RebuildFormTests:
    NAMES = ("bulk-141amd64-default", "bulk-150amd64-default", "bulk-141amd64-default-big")

    def test_targets(self) -> None:
        assert rebuild_targets(self.NAMES, "all", "default", "default") == list(self.NAMES[:2])
        assert rebuild_targets(self.NAMES, "141amd64", "default", "big") == [self.NAMES[2]]
        assert rebuild_targets(self.NAMES, "all", "nope", "default") == []

    def test_names_match_the_builders(self) -> None:
        cfg = parse_farm(linux_farm(sets=[{"name": "big"}]))
        j, t, s = cfg.poudriere_jails[0], cfg.trees[0], cfg.sets[1]
        assert rebuild_targets([bulk_builder_name(j, t, s)], j.name, t.name, s.name)


def farm(**tree: Any) -> Any:
    trees = [{"name": "default", "url": "file:///srv/ports.git", **tree}]
    jails = [
        {"name": "141amd64", "version": "14.1-RELEASE"},
        {"name": "150amd64", "version": "15.0-RELEASE"},
    ]
    return parse_farm(linux_farm(trees=trees, poudriere={"jails": jails}))


class WiringTests:
    def test_per_push_fan_out_testport_nightly_and_the_form(self) -> None:
        c = build_config(farm(), "/x/farm.toml")
        by_name = {s.name: s for s in c["schedulers"]}
        push = by_name["push-default"]
        assert isinstance(push, SingleBranchScheduler)
        bulks = ["bulk-141amd64-default", "bulk-150amd64-default"]
        assert push.builderNames == bulks
        tests = by_name["push-default-testport"].builderNames
        assert tests == ["testport-141amd64-default", "testport-150amd64-default"]
        assert isinstance(by_name["nightly-default"], Nightly)
        assert isinstance(by_name["rebuild"], RebuildForceScheduler)
        assert by_name["rebuild"].builderNames == bulks
        assert all(b.collapseRequests is False for b in c["builders"])
        names = [b.name for b in c["builders"]]
        assert set(tests) <= set(names)
        # A testport and the default set's bulk share one lock: one poudriere per MASTERNAME.
        locks = {b.name: b.locks[0].lockid for b in c["builders"] if b.locks}
        assert locks["testport-141amd64-default"] is locks["bulk-141amd64-default"]

    def test_bulk_steps_plan_first(self) -> None:
        c = build_config(farm(), "/x/farm.toml")
        bulk = next(b for b in c["builders"] if b.name == "bulk-141amd64-default")
        names = [s.kwargs.get("name") or s.step_class.name for s in bulk.factory.steps]
        assert names[:6] == [
            "ports-tree",
            "planner-planner",
            "planner-plancli",
            "planner-index",
            "plan",
            "planner-index-keep",
        ]
        assert names.index("plan") < names.index("poudriere-setup") < names.index("poudriere-bulk")

    def test_change_sources(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            secret = Path(d) / "hook"
            secret.write_text(SECRET)
            secret.chmod(0o600)
            cfg = farm(hook_secret_file=str(secret), poll_interval=60)
            sources = changes.change_sources(cfg)
            assert [type(s) for s in sources] == [GitPoller, TreeChangeSource]
            assert sources[1].user == "push-default" and sources[1].passwd == SECRET
            hooks = changes.www_hooks(cfg)["change_hook_dialects"]
            assert set(hooks) == {"github", "gitea", "jailfarm"}
            assert hooks["github"]["trees"][0].secret.reveal() == SECRET
        assert changes.change_sources(farm(poll_interval=0)) == []
        assert (
            master_config.testport_builder_name(cfg.poudriere_jails[0], cfg.trees[0])
            == "testport-141amd64-default"
        )

    def test_no_testport_builders_when_off(self) -> None:
        c = build_config(farm(testport=False, nightly=""), "/x/farm.toml")
        assert {s.name for s in c["schedulers"]} == {
            "force",
            "force-bulk",
            "push-default",
            "rebuild",
        }
        assert not [b for b in c["builders"] if b.name.startswith("testport-")]

    def test_bad_tree_keys_are_reported_together(self) -> None:
        bad = {
            "poll_interval": -1,
            "nightly": "25:00",
            "testport": "yes",
            "stable_timer": 7200,
            "hook_secret_file": "/var/lib/jailfarm/repo/hook",
        }
        with pytest.raises(ConfigError) as e:
            farm(**bad)
        problems = "\n".join(e.value.problems)
        for key in bad:
            assert f"trees[0].{key}:" in problems, problems
        assert "inside publish.root (nginx would serve it)" in problems

    def test_a_hook_secret_turns_polling_off_unless_asked(self) -> None:
        assert farm(hook_secret_file="/etc/jf/hook").trees[0].poll_interval == 0
        assert farm().trees[0].poll_interval == 300


class _Change:
    def __init__(self, files: list[str], **props: Any) -> None:
        self.files = files
        self.properties = Properties()
        for k, v in props.items():
            self.properties.setProperty(k, v, "Change")


class ImportanceTests:
    def test_push_importance(self) -> None:
        assert changes.push_is_important(_Change(["devel/libjf/Makefile"]))
        assert changes.push_is_important(_Change(["Mk/bsd.port.mk"]))
        assert not changes.push_is_important(_Change([]))  # an empty commit
        assert not changes.push_is_important(_Change(["README.md"]))
        assert changes.push_is_important(_Change([], push_files="unknown"))
        assert not changes.push_touches_ports(_Change(["Mk/bsd.port.mk"]))
        assert changes.push_touches_ports(_Change(["misc/jf-hello/distinfo"]))


# --- web hooks through buildbot's ChangeHookResource ----------------------------------------


def code(request: FakeRequest) -> int:
    """The status a FakeRequest was answered with (its setResponseCode is a Mock)."""
    return int(request.setResponseCode.call_args[0][0])


class HookTests(TestReactorMixin, unittest.TestCase):
    @deferred_test
    async def setUp(self) -> None:
        self.setup_test_reactor()
        master = await fakeMasterForHooks(self)
        trees = (HookTree(TREE, Secret(SECRET)), HookTree(OTHER, None))
        dialects = {k: {"custom_class": cls, "trees": trees} for k, cls in changes.HOOKS.items()}
        master.config.www = {"change_hook_dialects": dialects}
        self.master = master
        self.resource = ChangeHookResource(dialects=dialects, master=master)

    async def post(
        self, kind: str, payload: Any, secret: str = SECRET, uri: str = "", **headers: str
    ) -> FakeRequest:
        body = json.dumps(payload).encode()
        request = FakeRequest(content=body)
        request.uri = f"/change_hook/{kind}{uri}".encode()
        request.method = b"POST"
        request.received_headers = {
            b"Content-Type": b"application/json",
            **{k.encode(): v.encode() for k, v in headers.items()},
        }
        if secret:
            name = changes.SIGNATURE_HEADERS[kind][0].encode()
            request.received_headers[name] = ("sha256=" + sign(secret, body)).encode()
        await request.test_render(self.resource)
        return request

    def added(self) -> list[dict[str, Any]]:
        return list(self.master.data.updates.changesAdded)

    @deferred_test
    async def test_a_signed_github_push_adds_one_change(self) -> None:
        request = await self.post("github", github_push(), **{"X-GitHub-Event": "push"})
        assert code(request) == 202, request.written
        (change,) = self.added()
        assert change["project"] == "default" and change["revision"] == B
        assert change["files"] == ["devel/libjf/Makefile", "misc/new/Makefile"]

    @deferred_test
    async def test_a_wrong_signature_is_403_and_adds_nothing(self) -> None:
        request = await self.post(
            "github", github_push(), secret="guess", **{"X-GitHub-Event": "push"}
        )
        assert code(request) == 403
        assert b"wrong signature for ports tree default" in request.written
        assert self.added() == []

    @deferred_test
    async def test_unsigned_unknown_tree_and_hooks_off(self) -> None:
        request = await self.post("gitea", github_push(), secret="")
        assert code(request) == 403 and b"unsigned push" in request.written
        request = await self.post("jailfarm", {"tree": "nope", "branch": "main", "after": B})
        assert code(request) == 404 and b"no ports tree 'nope'" in request.written
        request = await self.post("jailfarm", {"tree": "other", "branch": "main", "after": B})
        assert code(request) == 403 and b"web hooks are off" in request.written
        assert self.added() == []

    @deferred_test
    async def test_bad_branch_is_400_and_other_branches_build_nothing(self) -> None:
        payload = {"tree": "default", "branch": "main;reboot", "after": B}
        request = await self.post("jailfarm", payload)
        assert code(request) == 400 and b"invalid branch name" in request.written
        request = await self.post("jailfarm", {**payload, "branch": "feature"})
        assert code(request) == 202 and request.written == b"no change found"
        assert self.added() == []

    @deferred_test
    async def test_ping_and_other_events(self) -> None:
        request = await self.post("github", {"zen": "hi"}, **{"X-GitHub-Event": "ping"})
        assert code(request) == 202
        request = await self.post("github", github_push(), **{"X-GitHub-Event": "issues"})
        assert code(request) == 400 and b"not handled" in request.written

    @deferred_test
    async def test_tree_named_in_the_url(self) -> None:
        payload = github_push(repository={"clone_url": "https://mirror.example/ports.git"})
        request = await self.post("gitea", payload, uri="?tree=default")
        assert code(request) == 202, request.written
        assert len(self.added()) == 1


# --- the plan step ------------------------------------------------------------------------

PLAN_JSON = {
    "plan": planner.plan_rebuild(
        planner.DependencyIndex(
            "r",
            {
                "devel/libjf": planner.PortEntry("libjf-1"),
                "misc/jf-hello": planner.PortEntry("jf-hello-1", ("devel/libjf",)),
            },
        ),
        ["devel/libjf"],
        revisions=(A, B),
    ).to_dict(),
    "bulk": {"all": False, "origins": ["devel/libjf", "misc/jf-hello"]},
    "index": {"source": "updated from aaaa", "ports": 2, "queried": 1},
}
EMPTY_JSON = {
    "plan": planner.Plan(deleted=("misc/jf-broken",), revisions=(A, B)).to_dict(),
    "bulk": {"all": False, "origins": []},
    "index": {"source": "cached", "ports": 8, "queried": 0},
}
PLAN = ["/py", "plancli.py", "--tree", "../ports", "--to", B]
TAIL = ["--make", "bmake", "--json", "--index", "index.json", "--list", "ports.list"]


class PlanPortsTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self) -> Any:
        self.setup_test_reactor()
        return self.setup_test_build_step()

    def step(self, **kwargs: Any) -> PlanPorts:
        self.setup_step(PlanPorts(python="/py", make="bmake", **kwargs))
        self.build.setProperty("got_revision", B, "Git")
        self.build.setProperty("builddir", "/home/w/bulk-x", "Worker")
        self.build.allChanges = lambda: [_Commit(1, B, rebuild_from=A)]
        return self.get_nth_step(0)

    @deferred_test
    async def test_a_push_plan_is_shown_and_handed_to_the_bulk(self) -> None:
        self.step()
        argv = [*PLAN, "--from", A, "--label", "this push", *TAIL]
        self.expect_commands(
            ExpectShell(workdir="planner", log_environ=False, command=argv)
            .stdout(json.dumps(PLAN_JSON))
            .exit(0)
        )
        summary = "this push rebuilds 2 ports (1 changed, 1 dependent)"
        self.expect_outcome(result=SUCCESS, state_string=summary)
        self.expect_property("plan_ports", ["devel/libjf", "misc/jf-hello"], "PlanPorts")
        self.expect_property("plan_list_file", "/home/w/bulk-x/planner/ports.list", "PlanPorts")
        self.expect_property("plan_bulk_all", False, "PlanPorts")
        self.expect_property("plan_summary", summary, "PlanPorts")
        self.expect_property("plan_index_updated", True, "PlanPorts")
        await self.run_step()
        log = self.get_nth_step(0).logs["plan"].stdout
        assert log.startswith(summary + ": devel/libjf misc/jf-hello\n")
        assert "index: updated from aaaa, 2 ports, 1 queried with make -V" in log
        assert not getattr(self.build, "terminate", False)

    @deferred_test
    async def test_an_empty_plan_ends_the_build_successfully(self) -> None:
        self.step()
        argv = [*PLAN, "--from", A, "--label", "this push", *TAIL]
        self.expect_commands(
            ExpectShell(workdir="planner", log_environ=False, command=argv)
            .stdout(json.dumps(EMPTY_JSON))
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS, state_string="this push rebuilds nothing; 1 deleted")
        await self.run_step()
        assert self.build.terminate is True

    @deferred_test
    async def test_a_bad_revision_fails_with_the_planner_message(self) -> None:
        self.step()
        argv = [*PLAN, "--from", A, "--label", "this push", *TAIL]
        why = f"jailfarm plan: unknown --from revision '{A}' in ../ports\n"
        self.expect_commands(
            ExpectShell(workdir="planner", log_environ=False, command=argv).stderr(why).exit(2)
        )
        self.expect_outcome(
            result=FAILURE,
            state_string=f"plan: unknown --from revision '{A}' in ../ports (failure)",
        )
        await self.run_step()

    @deferred_test
    async def test_malformed_request_fails_before_running_anything(self) -> None:
        self.step()
        self.build.setProperty("rebuild_origins", ["misc/$(id)"], "Force Build Form")
        self.expect_outcome(result=FAILURE)
        await self.run_step()
        assert "invalid port origin name" in self.get_nth_step(0).logs["error"].stdout

    @deferred_test
    async def test_testport_adds_one_step_per_changed_port(self) -> None:
        added: list[Any] = []
        self.step(testport=lambda origin: origin)
        self.build.addStepsAfterLastStep = added.extend
        argv = [*PLAN, "--from", A, "--label", "this push", "--make", "bmake", "--json"]
        self.expect_commands(
            ExpectShell(workdir="planner", log_environ=False, command=[*argv, "--changed-only"])
            .stdout(json.dumps({**PLAN_JSON, "index": {}}))
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS)
        await self.run_step()
        assert added == ["devel/libjf"]


class _Commit:
    """What Build.allChanges() yields: buildbot.process.buildrequest.TempChange's fields."""

    def __init__(self, changeid: int, revision: str, **props: Any) -> None:
        self.changeid, self.revision = changeid, revision
        self.files: list[str] = []
        self.properties = Properties()
        for k, v in props.items():
            self.properties.setProperty(k, v, "Change")


def test_tool_sources_are_the_shipped_files() -> None:
    sources = changes.tool_sources()
    assert set(sources) == {"planner.py", "plancli.py"}
    assert "import planner" in sources["plancli.py"]
    assert "class DependencyIndex" in sources["planner.py"]


def test_planner_python_follows_the_worker_package() -> None:
    cfg = parse_farm(
        linux_farm(
            farm={"platform": "freebsd", "name": "f", "prefix": "jf"},
            template={"release": "14.1-RELEASE", "packages": ["py312-buildbot-worker", "git-lite"]},
            signing={"key_file": "/etc/jf/repo.key"},
            zfs={"pool": "zroot", "root": "zroot/jf"},
            web={"bind": "127.0.0.1", "port": 8011, "url": "http://localhost:8080/buildbot/"},
        )
    )
    assert changes.planner_python(cfg) == "/usr/local/bin/python3.12"
    assert changes.planner_make(cfg) == "make"


def test_builder_refs_cover_every_builder() -> None:
    ref = BuilderRef("bulk-141amd64-default", "bulk", "141amd64", "default", "default")
    assert ref.name == "bulk-141amd64-default"
