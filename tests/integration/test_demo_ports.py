"""The demo ports tree in examples/ports, queried and built with the real bmake and cc.

Everything the builds write (WRKDIRPREFIX, DISTDIR, STAGEDIR, the build root that plays
LOCALBASE) goes under pytest's tmp_path; the tree itself is only read.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "examples" / "ports"
IGNORE_MESSAGE = "jf-broken-0.1 is marked as IGNORE: is for testing IGNORE"

# origin -> (PKGNAME, BUILD, LIB, RUN dependency origins, IGNORE)
EXPECTED: dict[str, tuple[str, str, str, str, str]] = {
    "devel/libjf": ("libjf-1.2.0", "", "", "", ""),
    "devel/jf-buildtool": ("jf-buildtool-2.0", "", "", "", ""),
    "devel/jf-flaky": ("jf-flaky-0.9", "", "", "", ""),
    "misc/jf-hello": ("jf-hello-1.0_1", "", "devel/libjf", "", ""),
    "misc/jf-cowsay": ("jf-cowsay-0.3", "", "", "misc/jf-hello", ""),
    "misc/jf-broken": ("jf-broken-0.1", "", "", "", "is for testing IGNORE"),
    "misc/jf-meta": (
        "jf-meta-1.0",
        "",
        "",
        "devel/jf-flaky misc/jf-cowsay textproc/jf-docs textproc/jf-wc",
        "",
    ),
    "textproc/jf-wc": ("jf-wc-1.1", "devel/jf-buildtool", "", "", ""),
    "textproc/jf-docs": ("jf-docs-2024.1,1", "", "", "", ""),
}


@pytest.fixture(scope="module", autouse=True)
def zfs_daemon() -> None:
    """These tests need bmake and cc only: override the directory's zfs-fuse fixture."""
    for tool in ("bmake", "cc", "patch", "sha256sum"):
        if not shutil.which(tool):
            pytest.fail(f"the demo ports tree needs {tool}: install it (apt-get install {tool})")


def bmake(
    tree: Path, origin: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`bmake -m <tree>/Mk -C <tree>/<origin> args...`, as a builder runs it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["bmake", "-m", str(tree / "Mk"), "-C", str(tree / origin), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **(env or {})},
    )


def query(tree: Path, origin: str, *names: str) -> dict[str, str]:
    """Several `-V NAME` in one call: one output line per name."""
    args = [a for n in names for a in ("-V", n)]
    r = bmake(tree, origin, *args)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert len(lines) == len(names) + 1 and lines[-1] == "", r.stdout
    return dict(zip(names, lines, strict=False))


def subdirs(makefile: Path) -> list[str]:
    """The `SUBDIR += x` lines, read the way poudriere's `bulk -a` reads them."""
    return re.findall(r"^\s*SUBDIR\s*\+=\s*(\S+)", makefile.read_text(), re.M)


def all_origins() -> list[str]:
    return [f"{c}/{p}" for c in subdirs(TREE / "Makefile") for p in subdirs(TREE / c / "Makefile")]


@dataclass
class Build:
    """Where one test's builds go: per-port STAGEDIRs and one build root (LOCALBASE)."""

    tmp: Path
    tree: Path = TREE

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    @property
    def localbase(self) -> Path:
        return self.root / "usr" / "local"

    def stagedir(self, origin: str) -> Path:
        return self.tmp / "stage" / origin

    def make(self, origin: str, *args: str) -> subprocess.CompletedProcess[str]:
        return bmake(
            self.tree,
            origin,
            f"WRKDIRPREFIX={self.tmp / 'wrk'}",
            f"DISTDIR={self.tmp / 'distfiles'}",
            f"STAGEDIR={self.stagedir(origin)}",
            f"LOCALBASE={self.localbase}",
            *args,
        )

    def staged_files(self, origin: str) -> set[str]:
        prefix = self.stagedir(origin) / "usr" / "local"
        return {str(p.relative_to(prefix)) for p in prefix.rglob("*") if not p.is_dir()}

    def run_env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(self.localbase / "lib")}


def check(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


# --- the tree and its metadata ------------------------------------------------------------


def test_the_tree_lists_at_least_8_ports_in_3_categories_each_complete() -> None:
    origins = all_origins()
    on_disk = sorted(f"{m.parent.parent.name}/{m.parent.name}" for m in TREE.glob("*/*/Makefile"))
    assert sorted(origins) == on_disk == sorted(EXPECTED)
    assert len(origins) >= 8
    assert len({o.split("/")[0] for o in origins}) >= 3
    for origin in origins:
        port = TREE / origin
        assert (port / "pkg-descr").read_text().strip(), origin
        assert ".include <bsd.port.mk>" in (port / "Makefile").read_text(), origin
        if origin != "misc/jf-meta":  # a metaport has no files and no distfiles
            assert (port / "pkg-plist").is_file(), origin
            assert "SHA256 (" in (port / "distinfo").read_text(), origin
    for f in ("Mk/bsd.port.mk", "Mk/sys.mk", "Templates/BSD.local.dist", "Keywords/README"):
        assert (TREE / f).is_file(), f


@pytest.mark.parametrize("origin", sorted(EXPECTED))
def test_metadata_queries_are_expanded_like_freebsd_make_v(origin: str) -> None:
    pkgname, build, lib, run, ignore = EXPECTED[origin]
    v = query(
        TREE,
        origin,
        "PKGNAME",
        "PKGBASE",
        "PKGORIGIN",
        "BUILD_DEPENDS_ORIGINS",
        "LIB_DEPENDS_ORIGINS",
        "RUN_DEPENDS_ORIGINS",
        "ALL_DEPENDS_ORIGINS",
        "IGNORE",
        "FLAVORS",
        "PREFIX",
        "COMMENT",
        "MAINTAINER",
        "WWW",
        "LICENSE",
    )
    assert v["PKGNAME"] == pkgname
    assert v["PKGNAME"].startswith(v["PKGBASE"] + "-")
    assert v["PKGORIGIN"] == origin
    assert (v["BUILD_DEPENDS_ORIGINS"], v["LIB_DEPENDS_ORIGINS"], v["RUN_DEPENDS_ORIGINS"]) == (
        build,
        lib,
        run,
    )
    assert v["ALL_DEPENDS_ORIGINS"].split() == sorted({*build.split(), *lib.split(), *run.split()})
    assert v["IGNORE"] == ignore
    assert v["FLAVORS"] == ""
    assert v["PREFIX"] == "/usr/local"
    assert all(v[k] for k in ("COMMENT", "MAINTAINER", "WWW", "LICENSE"))
    for dep in v["ALL_DEPENDS_ORIGINS"].split():
        assert dep in EXPECTED, f"{origin} depends on {dep}, which is not in the tree"


def test_raw_dependency_variables_keep_freebsd_syntax_and_poudriere_expressions_work() -> None:
    hello = query(TREE, "misc/jf-hello", "LIB_DEPENDS", "RUN_DEPENDS")
    assert hello == {"LIB_DEPENDS": "libjf.so:devel/libjf", "RUN_DEPENDS": ""}
    assert query(TREE, "textproc/jf-wc", "BUILD_DEPENDS") == {
        "BUILD_DEPENDS": "jf-buildtool:devel/jf-buildtool"
    }
    # poudriere's own query for the dependency origins (an expression given to -V).
    expr = "${_PDEPS:C,([^:]*):([^:]*):?.*,\\2,:C,^${PORTSDIR}/,,:O:u}"
    r = bmake(
        TREE,
        "misc/jf-meta",
        "-V",
        expr,
        "_PDEPS=${PKG_DEPENDS} ${BUILD_DEPENDS} ${LIB_DEPENDS} ${RUN_DEPENDS}",
    )
    assert check(r).split() == [
        "devel/jf-flaky",
        "misc/jf-cowsay",
        "textproc/jf-docs",
        "textproc/jf-wc",
    ]
    # An unknown flavor is refused, as FreeBSD's make refuses it.
    bad = bmake(TREE, "misc/jf-hello", "-V", "PKGNAME", "FLAVOR=py311")
    assert bad.returncode != 0
    assert "Unknown flavor 'py311'" in bad.stderr


def test_describe_gives_one_index_line_per_port() -> None:
    lines = check(bmake(TREE, ".", "describe")).splitlines()
    assert sorted(line.split("|")[0] for line in lines) == sorted(e[0] for e in EXPECTED.values())
    hello = next(line.split("|") for line in lines if line.startswith("jf-hello-"))
    assert len(hello) == 13
    assert hello[10] == str(TREE / "devel" / "libjf")  # build-deps field


def test_moved_parses() -> None:
    entries = [
        line.split("|")
        for line in (TREE / "MOVED").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert entries
    for entry in entries:
        assert len(entry) == 4, entry
        old, new, date, reason = entry
        assert re.fullmatch(r"[\w.+-]+/[\w.+-]+", old) and old not in EXPECTED
        assert new == "" or new in EXPECTED, entry
        datetime.date.fromisoformat(date)
        assert reason
    assert any(new for _, new, _, _ in entries), "no moved (not removed) entry"


# --- building -----------------------------------------------------------------------------


def test_jf_hello_builds_against_libjf_installed_in_a_build_root(tmp_path: Path) -> None:
    b = Build(tmp_path)
    # Without libjf in LOCALBASE, jf-hello stops at its library dependency.
    missing = b.make("misc/jf-hello", "build")
    assert missing.returncode == 1
    assert "depends on shared library: libjf.so - not found" in missing.stdout + missing.stderr
    assert "Install devel/libjf under LOCALBASE=" in missing.stderr

    check(b.make("devel/libjf", "stage"))
    assert b.staged_files("devel/libjf") == {
        "include/jf.h",
        "lib/libjf.a",
        "lib/libjf.so",
        "lib/libjf.so.1",
    }
    check(b.make("devel/libjf", "install", f"DESTDIR={b.root}"))
    assert (b.localbase / "include" / "jf.h").is_file()

    out = check(b.make("misc/jf-hello", "stage"))
    assert "depends on shared library: libjf.so - found" in out
    assert f"-I{b.localbase}/include" in out and f"-L{b.localbase}/lib" in out
    hello = b.stagedir("misc/jf-hello") / "usr/local/bin/jf-hello"
    ran = subprocess.run(
        [hello, "jail"], capture_output=True, text=True, env=b.run_env(), check=True
    )
    assert ran.stdout == "Hello, jail, from libjf 1.2.0\n"


@pytest.fixture(scope="module")
def whole_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Build, list[str]]]:
    """Every buildable port, dependencies first: check-plist, then install into the root."""
    b = Build(tmp_path_factory.mktemp("tree"))
    deps: dict[str, set[str]] = {}
    for origin in all_origins():
        v = query(TREE, origin, "ALL_DEPENDS_ORIGINS", "IGNORE")
        if not v["IGNORE"]:
            deps[origin] = set(v["ALL_DEPENDS_ORIGINS"].split())
    order = list(TopologicalSorter(deps).static_order())
    for origin in order:
        check(b.make(origin, "check-plist"))
        check(b.make(origin, "package"))
        check(b.make(origin, "install", f"DESTDIR={b.root}"))
    yield b, order


def test_every_buildable_port_stages_exactly_its_plist(
    whole_tree: tuple[Build, list[str]],
) -> None:
    b, order = whole_tree
    assert sorted(order) == sorted(o for o in EXPECTED if o != "misc/jf-broken")
    for origin in order:
        plist = TREE / origin / "pkg-plist"
        lines = plist.read_text().splitlines() if plist.exists() else []
        expected = {
            line.replace("%%SHLIB_MAJOR%%", "1").replace("%%PORTNAME%%", origin.split("/")[1])
            for line in lines
            if line and not line.startswith("@")
        }
        assert b.staged_files(origin) == expected, origin
        tmpplist = Path(check(b.make(origin, "-V", "TMPPLIST")).strip())
        assert set(tmpplist.read_text().split()) == expected, origin


def test_the_built_programs_run(whole_tree: tuple[Build, list[str]]) -> None:
    b, _ = whole_tree
    bin_ = b.localbase / "bin"
    env = {**b.run_env(), "JF_HELLO": str(bin_ / "jf-hello")}

    def run(*cmd: str | Path, stdin: str = "") -> str:
        return subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, env=env, check=True
        ).stdout

    assert "< Hello, cow, from libjf 1.2.0 >" in run(bin_ / "jf-cowsay", "cow")
    # jf-wc: patched (files/patch-jf-wc.c adds -V) and given a header by jf-buildtool.
    assert run(bin_ / "jf-wc", "-V") == "jf-wc 1.1 (FreeBSD ports patch, jf-buildtool 2.0)\n"
    assert run(bin_ / "jf-wc", stdin="one two\nthree\n") == "2 3 14\n"
    assert run(bin_ / "jf-flaky") == "jf-flaky built fine\n"
    assert (b.localbase / "share/doc/jf-docs/README").is_file()


def test_an_ignored_port_fails_every_build_target_with_its_reason(tmp_path: Path) -> None:
    b = Build(tmp_path)
    for target in ("fetch", "checksum", "extract", "build", "stage", "check-plist", "package"):
        r = b.make("misc/jf-broken", target)
        assert r.returncode == 1, target
        assert IGNORE_MESSAGE in r.stderr, target
    assert not (tmp_path / "wrk").exists()


def test_jf_flaky_fails_in_build_only_when_jf_fail_is_set(tmp_path: Path) -> None:
    b = Build(tmp_path)
    failed = b.make("devel/jf-flaky", "stage", "JF_FAIL=yes")
    assert failed.returncode != 0
    assert "===>  Configuring for jf-flaky-0.9" in failed.stdout  # earlier phases passed
    assert "===>  Building for jf-flaky-0.9" in failed.stdout
    assert "failing in the build phase because JF_FAIL=yes" in failed.stderr
    assert "Staging" not in failed.stdout
    # The same work directory then builds fine without it (the build phase is redone).
    out = check(b.make("devel/jf-flaky", "check-plist"))
    assert "Building for jf-flaky-0.9" in out and "Configuring" not in out
    assert b.staged_files("devel/jf-flaky") == {"bin/jf-flaky"}


def test_a_missing_build_dependency_stops_the_build_with_its_origin(tmp_path: Path) -> None:
    r = Build(tmp_path).make("textproc/jf-wc", "build")
    assert r.returncode == 1
    assert "depends on executable: jf-buildtool - not found" in r.stderr
    assert "Install devel/jf-buildtool under LOCALBASE=" in r.stderr


# --- a mutated copy of the tree -----------------------------------------------------------


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "ports"
    shutil.copytree(TREE, copy, ignore=shutil.ignore_patterns("work", "distfiles"))
    return copy


def test_check_plist_fails_when_staged_files_and_plist_differ(
    tree_copy: Path, tmp_path: Path
) -> None:
    (tree_copy / "misc/jf-hello/pkg-plist").write_text("bin/jf-hola\n")
    r = Build(tmp_path, tree=tree_copy).make("devel/jf-flaky", "check-plist")
    assert r.returncode == 0, r.stderr  # an untouched port still passes
    docs = tree_copy / "textproc/jf-docs/pkg-plist"
    docs.write_text(docs.read_text() + "share/doc/jf-docs/CHANGES\n")
    b = Build(tmp_path, tree=tree_copy)
    r = b.make("textproc/jf-docs", "check-plist")
    assert r.returncode == 1
    assert "Error: Missing: share/doc/jf-docs/CHANGES" in r.stderr
    assert "===> Error: Plist issues found." in r.stderr
    check(b.make("devel/libjf", "install", f"DESTDIR={b.root}"))
    r = b.make("misc/jf-hello", "check-plist")
    assert r.returncode == 1
    assert "Error: Orphaned: bin/jf-hello" in r.stderr
    assert "Error: Missing: bin/jf-hola" in r.stderr


def test_checksum_fails_when_a_distfile_does_not_match_distinfo(
    tree_copy: Path, tmp_path: Path
) -> None:
    src = tree_copy / "devel/jf-flaky/src/flaky.c"
    src.write_text(src.read_text().replace("built fine", "built badly"))
    r = Build(tmp_path, tree=tree_copy).make("devel/jf-flaky", "extract")
    assert r.returncode == 1
    assert "=> SHA256 Checksum mismatch for jf-flaky/flaky.c." in r.stderr
