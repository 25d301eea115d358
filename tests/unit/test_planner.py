"""The rebuild planner (pure): revisions, diffs, MOVED, port queries, INDEX, the dependency
index and its incremental updates, plans and their text.

The make -V output below was recorded from `bmake -V` over planner.QUERY on the demo tree
(examples/ports, misc/jf-hello) with the tree at /t; the INDEX lines follow FreeBSD's INDEX
format (`make index`), and the describe lines the demo's `make describe`.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jailfarm.poudriere import planner
from jailfarm.poudriere.planner import (
    DependencyIndex,
    FileChange,
    Plan,
    PlanError,
    PortEntry,
    bulk_targets,
    check_revision,
    new_moves,
    parse_index,
    parse_moved,
    parse_name_status,
    parse_port_query,
    plan_full,
    plan_rebuild,
    summarize,
)

# The demo tree's graph (examples/ports/README.md): build and run dependencies.
DEMO = {
    "devel/libjf": (),
    "devel/jf-buildtool": (),
    "devel/jf-flaky": (),
    "misc/jf-hello": ("devel/libjf",),
    "misc/jf-cowsay": ("misc/jf-hello",),
    "misc/jf-broken": (),
    "misc/jf-meta": ("devel/jf-flaky", "misc/jf-cowsay", "textproc/jf-docs", "textproc/jf-wc"),
    "textproc/jf-wc": ("devel/jf-buildtool",),
    "textproc/jf-docs": (),
}


def demo_index(**extra: tuple[str, ...]) -> DependencyIndex:
    ports = {o: PortEntry(o.split("/")[1] + "-1", d) for o, d in {**DEMO, **extra}.items()}
    return DependencyIndex("r1", ports)


class RevisionTests:
    @pytest.mark.parametrize(
        "rev",
        ["main", "HEAD", "HEAD~3", "abc123^", "a" * 40, "release/14.1", "v1.2", "main^2~1"],
    )
    def test_git_revisions_pass(self, rev: str) -> None:
        assert check_revision(rev) == rev

    @pytest.mark.parametrize(
        "rev",
        [
            "",
            "-x",
            "--upload-pack=sh",
            "main;ls",
            "$(rm -rf /)",
            "a b",
            "main..other",
            "ref@{1}",
            "`id`",
            "a\nb",
            "dir/",
            "feature|x",
            "x" * 300,
        ],
    )
    def test_shell_metacharacters_and_options_are_refused(self, rev: str) -> None:
        with pytest.raises(PlanError, match="malformed revision"):
            check_revision(rev)


class PathTests:
    @pytest.mark.parametrize(
        ("path", "origin"),
        [
            ("misc/jf-hello/Makefile", "misc/jf-hello"),
            ("textproc/jf-wc/files/patch-jf-wc.c", "textproc/jf-wc"),
            ("devel/p5-Foo/distinfo", "devel/p5-Foo"),
            ("misc/Makefile", None),  # a category Makefile
            ("Mk/bsd.port.mk", None),
            ("Tools/scripts/x.sh", None),
            (".github/workflows/x.yml", None),
            ("README.md", None),
        ],
    )
    def test_origin_of_a_path(self, path: str, origin: str | None) -> None:
        assert planner.origin_of(path) == origin

    def test_global_directories_and_what_affects_a_build(self) -> None:
        assert planner.is_global("Mk/Uses/cmake.mk")
        assert planner.is_global("Keywords/shell.ucl")
        assert not planner.is_global("Mk")
        assert planner.affects_build(["MOVED"])
        assert planner.affects_build(["Templates/BSD.local.dist"])
        assert not planner.affects_build(["README.md", "misc/Makefile", "Tools/x"])
        assert not planner.affects_build([])
        assert planner.touches_ports(["misc/jf-hello/pkg-descr"])
        assert not planner.touches_ports(["Mk/bsd.port.mk"])


class DiffTests:
    def test_name_status_with_renames(self) -> None:
        text = "M\0misc/jf-hello/Makefile\0R100\0misc/a/Makefile\0misc/b/Makefile\0D\0x/y/z\0"
        assert parse_name_status(text) == [
            FileChange("M", "misc/jf-hello/Makefile"),
            FileChange("R", "misc/b/Makefile", "misc/a/Makefile"),
            FileChange("D", "x/y/z"),
        ]
        assert parse_name_status("") == []

    @pytest.mark.parametrize("text", ["Q\0a/b/c\0", "M\0", "R100\0only-one\0", "M a/b/c\n"])
    def test_anything_else_is_refused(self, text: str) -> None:
        with pytest.raises(PlanError, match="git diff"):
            parse_name_status(text)

    def test_summary(self) -> None:
        s = summarize(
            [
                FileChange("M", "misc/jf-hello/Makefile"),
                FileChange("R", "textproc/new/Makefile", "textproc/old/Makefile"),
                FileChange("M", "Mk/bsd.port.mk"),
                FileChange("M", "MOVED"),
                FileChange("M", "README.md"),
            ]
        )
        assert s.touched == {"misc/jf-hello", "textproc/new", "textproc/old"}
        assert s.global_paths == ("Mk/bsd.port.mk",)
        assert s.moved_file
        assert s.renamed == (("textproc/old", "textproc/new"),)


class MovedTests:
    MOVED = (
        "# comment\n\nmisc/jf-greet|misc/jf-hello|2025-01-15|Renamed\nmisc/old||2025-03-01|Gone\n"
    )

    def test_parse(self) -> None:
        assert parse_moved(self.MOVED) == {"misc/jf-greet": "misc/jf-hello", "misc/old": ""}

    def test_new_entries_with_chains_followed(self) -> None:
        after = self.MOVED + "misc/jf-hello|misc/jf-hi|2026-01-01|Again\na/b|c/d|2026-01-01|x\n"
        assert new_moves(self.MOVED, after) == {"misc/jf-hello": "misc/jf-hi", "a/b": "c/d"}
        chain = "a/b|a/c|2026-01-01|x\na/c|a/d|2026-01-02|y\na/d||2026-01-03|z\n"
        assert new_moves("", chain) == {"a/b": "", "a/c": "", "a/d": ""}

    @pytest.mark.parametrize("line", ["a/b|c/d|x", "a/b|;rm|2026-01-01|x", "nope|a/b|d|r"])
    def test_malformed_lines_name_their_number(self, line: str) -> None:
        with pytest.raises(PlanError, match="MOVED line 2"):
            parse_moved("# x\n" + line + "\n")


class QueryTests:
    # bmake -m /t/Mk -C /t/misc/jf-hello PORTSDIR=/t -V PKGNAME -V PKG_DEPENDS ... -V
    # .MAKE.MAKEFILES (planner.QUERY)
    HELLO = (
        "jf-hello-1.0_1\n\n\n\n\n\nlibjf.so:devel/libjf\n\n"
        "/t/Mk/sys.mk Makefile /t/Mk/bsd.port.mk\n"
    )

    def test_a_recorded_query(self) -> None:
        assert parse_port_query("misc/jf-hello", self.HELLO, "/t") == PortEntry(
            "jf-hello-1.0_1", ("devel/libjf",), ()
        )

    def test_dependency_syntaxes_and_slave_ports(self) -> None:
        deps = "gmake>=4:devel/gmake py311-foo>0:devel/py-foo@py311 x:/usr/ports/lang/perl5:build"
        makefiles = "/t/Mk/sys.mk Makefile /t/misc/master/Makefile ../../misc/master/Makefile.inc"
        out = f"foo-1\n\n\n\n\n{deps}\n\n\n{makefiles}\n"
        entry = parse_port_query("misc/slave", out, "/t")
        assert entry.deps == ("devel/gmake", "devel/py-foo", "lang/perl5")
        assert entry.reads == ("misc/master",)

    @pytest.mark.parametrize(
        "bad", ["one line\n", HELLO + "extra\n", HELLO.replace("libjf.so:", "")]
    )
    def test_unexpected_output_is_refused(self, bad: str) -> None:
        with pytest.raises(PlanError):
            parse_port_query("misc/jf-hello", bad, "/t")


class IndexFileTests:
    def test_freebsd_index_names_packages(self) -> None:
        text = (
            "libjf-1.2.0|/usr/ports/devel/libjf|/usr/local|c|d|m|devel||||||w\n"
            "jf-hello-1.0_1|/usr/ports/misc/jf-hello|/usr/local|c|d|m|misc||||libjf-1.2.0|libjf-1.2.0|w\n"
        )
        assert parse_index(text) == {
            "devel/libjf": PortEntry("libjf-1.2.0"),
            "misc/jf-hello": PortEntry("jf-hello-1.0_1", ("devel/libjf",)),
        }

    def test_describe_lines_name_directories(self) -> None:
        text = "jf-wc-1.1|/t/textproc/jf-wc|/usr/local|c|d|m|textproc||||/t/devel/jf-buildtool||w\n"
        assert parse_index(text)["textproc/jf-wc"].deps == ("devel/jf-buildtool",)

    @pytest.mark.parametrize(
        "text",
        ["a|b|c\n", "x-1|/t/a/b|p|c|d|m|a||||nosuch-1.0||w\n"],
    )
    def test_malformed_index(self, text: str) -> None:
        with pytest.raises(PlanError, match="INDEX line 1"):
            parse_index(text)


def brute_dependents(deps: dict[str, tuple[str, ...]], seeds: set[str]) -> set[str]:
    """Every port whose full dependency closure meets `seeds` (what a from-scratch planner
    without a reverse index computes)."""
    out = set()
    for origin, direct in deps.items():
        todo, seen = list(direct), set()
        while todo:
            d = todo.pop()
            if d not in seen:
                seen.add(d)
                todo.extend(deps.get(d, ()))
        if seen & seeds and origin not in seeds:
            out.add(origin)
    return out


def random_dag(rnd: random.Random, n: int) -> dict[str, tuple[str, ...]]:
    names = [f"c{i % 3}/p{i}" for i in range(n)]
    return {
        names[i]: tuple(sorted(set(rnd.sample(names[:i], min(i, rnd.randint(0, 3))))))
        for i in range(n)
    }


class DependencyIndexTests:
    def test_dependents_nearest_first(self) -> None:
        via = demo_index().dependents(["devel/libjf"])
        assert via == {
            "misc/jf-hello": "devel/libjf",
            "misc/jf-cowsay": "misc/jf-hello",
            "misc/jf-meta": "misc/jf-cowsay",
        }

    def test_requirements(self) -> None:
        assert demo_index().requirements(["textproc/jf-wc"]) == {
            "textproc/jf-wc",
            "devel/jf-buildtool",
        }

    def test_update_moves_edges(self) -> None:
        index = demo_index()
        # jf-cowsay stops depending on jf-hello; jf-docs goes away.
        index.update("r2", {"misc/jf-cowsay": PortEntry("jf-cowsay-0.4")}, ["textproc/jf-docs"])
        assert index.revision == "r2"
        assert "textproc/jf-docs" not in index
        assert index.dependents(["devel/libjf"]) == {"misc/jf-hello": "devel/libjf"}

    def test_json_round_trip(self) -> None:
        index = demo_index()
        index.update("r9", {"misc/s": PortEntry("s-1", ("devel/libjf",), ("misc/jf-hello",))}, [])
        again = DependencyIndex.from_json(index.to_json())
        assert again.revision == "r9"
        assert again.ports == index.ports
        assert again.readers(["misc/jf-hello"]) == {"misc/s": "misc/jf-hello"}

    @pytest.mark.parametrize(
        "text", ["", "[]", '{"format": 99, "revision": "", "ports": {}}', '{"format": 1}']
    )
    def test_unreadable_index(self, text: str) -> None:
        with pytest.raises(PlanError):
            DependencyIndex.from_json(text)

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 10**6), st.integers(2, 40))
    def test_incremental_updates_equal_a_fresh_index(self, seed: int, n: int) -> None:
        rnd = random.Random(seed)
        old = random_dag(rnd, n)
        new = dict(random_dag(rnd, n))
        for gone in rnd.sample(sorted(new), rnd.randint(0, min(3, n))):
            del new[gone]
        index = DependencyIndex("a", {o: PortEntry(o, d) for o, d in old.items()})
        changed = {o: PortEntry(o, d) for o, d in new.items() if old.get(o) != d}
        index.update("b", changed, set(old) - set(new))
        fresh = DependencyIndex("b", {o: PortEntry(o, d) for o, d in new.items()})
        assert index.ports == fresh.ports
        seeds = set(rnd.sample(sorted(new), min(len(new), 3)))
        assert set(index.dependents(seeds)) == set(fresh.dependents(seeds))
        assert set(fresh.dependents(seeds)) == brute_dependents(new, seeds)


class PlanTests:
    def test_one_changed_port_and_its_dependents(self) -> None:
        p = plan_rebuild(demo_index(), ["devel/libjf"], revisions=("a" * 40, "b" * 40))
        assert p.changed == ("devel/libjf",)
        assert p.ports == ("devel/libjf", "misc/jf-cowsay", "misc/jf-hello", "misc/jf-meta")
        assert p.headline() == "this push rebuilds 4 ports (1 changed, 3 dependents)"
        text = p.text()
        assert text.startswith(
            "this push rebuilds 4 ports (1 changed, 3 dependents): devel/libjf misc/jf-cowsay"
        )
        assert "  misc/jf-meta    depends on misc/jf-cowsay\n" in text

    def test_a_deleted_port_is_not_built_and_its_users_are_flagged(self) -> None:
        index = demo_index()
        index.update("r2", {}, ["textproc/jf-docs"])
        p = plan_rebuild(index, [], deleted=["textproc/jf-docs"])
        assert "textproc/jf-docs" not in p.ports
        assert p.ports == ("misc/jf-meta",)  # it still names the deleted port
        assert p.broken == (("misc/jf-meta", "textproc/jf-docs"),)
        assert "warning: misc/jf-meta depends on textproc/jf-docs" in p.text()
        assert p.headline() == "this push rebuilds 1 port (0 changed, 1 dependent); 1 deleted"

    def test_deleting_a_port_nobody_uses_builds_nothing(self) -> None:
        index = demo_index()
        index.update("r2", {}, ["misc/jf-broken"])
        p = plan_rebuild(index, [], deleted=["misc/jf-broken"])
        assert p.empty and p.deleted == ("misc/jf-broken",)
        assert p.headline() == "this push rebuilds nothing; 1 deleted"

    def test_a_move_rebuilds_the_new_origin(self) -> None:
        index = demo_index()
        index.update("r2", {"textproc/jf-words": PortEntry("w-1")}, ["textproc/jf-docs"])
        p = plan_rebuild(index, [], moved={"textproc/jf-docs": "textproc/jf-words"})
        assert p.deleted == ("textproc/jf-docs",)
        assert p.dependents["textproc/jf-words"] == "moved from textproc/jf-docs"
        assert "misc/jf-meta" in p.ports
        assert "  textproc/jf-docs -> textproc/jf-words" in p.text()

    def test_a_slave_port_follows_its_master(self) -> None:
        index = demo_index()
        index.update("r2", {"misc/jf-hello-nox": PortEntry("n-1", reads=("misc/jf-hello",))}, [])
        p = plan_rebuild(index, ["misc/jf-hello"])
        assert p.dependents["misc/jf-hello-nox"] == "reads files of misc/jf-hello"

    def test_full_and_empty(self) -> None:
        full = plan_full("Mk/bsd.port.mk changed", ("a", "b"))
        assert full.headline() == "this push rebuilds every port (Mk/bsd.port.mk changed)"
        assert not full.empty
        assert Plan().empty and Plan().headline("this request") == "this request rebuilds nothing"

    def test_dict_round_trip(self) -> None:
        p = plan_rebuild(demo_index(), ["devel/libjf"], moved={"a/b": ""}, revisions=("x", "y"))
        assert Plan.from_dict(p.to_dict()) == p
        with pytest.raises(PlanError):
            Plan.from_dict({"changed": []})

    def test_long_lists_are_cut_in_the_headline_only(self) -> None:
        index = demo_index(**{f"misc/p{i}": ("devel/libjf",) for i in range(30)})
        text = plan_rebuild(index, ["devel/libjf"]).text()
        assert "(+14 more)" in text.splitlines()[0]
        assert "misc/p29" in text


class BulkTargetTests:
    def test_every_port_or_the_plan(self) -> None:
        index = demo_index()
        assert bulk_targets(plan_full("x")) == (True, ())
        p = plan_rebuild(index, ["devel/libjf"])
        assert bulk_targets(p) == (False, p.ports)

    def test_a_set_with_a_list_keeps_to_it(self) -> None:
        index = demo_index()
        p = plan_rebuild(index, ["devel/libjf"])
        assert bulk_targets(p, ["misc/jf-hello"], index) == (
            False,
            ("devel/libjf", "misc/jf-hello"),
        )
        assert bulk_targets(plan_full("x"), ["misc/jf-hello"]) == (False, ("misc/jf-hello",))
        with pytest.raises(PlanError, match="index"):
            bulk_targets(p, ["misc/jf-hello"])
