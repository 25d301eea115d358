"""The dev-host bulk builder (`jailfarm-poudriere`) on the demo ports tree, with the real bmake
and cc. Everything (etcdir, POUDRIERE_DATA, tree copies) lives under tmp_path; no root, zfs
or jails are needed. The results are read with the parsers the PoudriereBulk step uses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from jailfarm.master.steps import PoudriereTestport
from jailfarm.poudriere.devbuilder import main
from jailfarm.poudriere.pkgfile import read_package
from jailfarm.poudriere.status import (
    BulkResult,
    Verdict,
    judge,
    parse_build_files,
    parse_data_json,
)

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "examples" / "ports"
ALL = {
    "devel/libjf": "libjf-1.2.0",
    "devel/jf-buildtool": "jf-buildtool-2.0",
    "devel/jf-flaky": "jf-flaky-0.9",
    "misc/jf-hello": "jf-hello-1.0_1",
    "misc/jf-cowsay": "jf-cowsay-0.3",
    "misc/jf-meta": "jf-meta-1.0",
    "textproc/jf-wc": "jf-wc-1.1",
    "textproc/jf-docs": "jf-docs-2024.1,1",
}


@pytest.fixture(scope="module", autouse=True)
def zfs_daemon() -> None:
    """These tests need bmake and cc only: override the directory's zfs-fuse fixture."""
    for tool in ("bmake", "cc", "patch", "sha256sum"):
        if not shutil.which(tool):
            pytest.fail(f"the demo ports tree needs {tool}: install it (apt-get install {tool})")


@dataclass
class Farm:
    """An etcdir with one jail and one registered tree, and the data directory."""

    etc: Path
    tree: Path

    @property
    def data(self) -> Path:
        return self.etc / "data"

    @property
    def packages(self) -> Path:
        return self.data / "packages" / "j141-demo"

    def run(self, *args: str) -> int:
        return main(["-e", str(self.etc), "-N", *args])

    def bulk(self, name: str, *args: str) -> tuple[int, BulkResult]:
        rc = self.run("bulk", "-j", "j141", "-p", "demo", "-J", "2", "-B", name, *args)
        d = self.data / "logs" / "bulk" / "j141-demo" / name
        files = {p.name: p.read_text() for p in d.iterdir() if p.name.startswith(".poudriere.")}
        result = parse_build_files(files, str(d))
        from_json = parse_data_json((d / ".data.json").read_text())
        assert from_json.status == result.status and from_json.stats == result.stats
        assert set(from_json.ports or ()) == set(result.ports or ())
        return rc, result

    def pkg(self, pkgname: str) -> Path:
        return self.packages / ".latest" / "All" / f"{pkgname}.pkg"


def make_farm(tmp_path: Path, tree: Path = TREE) -> Farm:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "poudriere.conf").write_text(f"POUDRIERE_DATA='{etc / 'data'}'\nPARALLEL_JOBS=2\n")
    farm = Farm(etc, tree)
    assert farm.run("jail", "-c", "-j", "j141", "-v", "14.1-RELEASE", "-a", "amd64") == 0
    assert farm.run("ports", "-c", "-p", "demo", "-m", "null", "-M", str(tree)) == 0
    return farm


def built(result: BulkResult) -> set[str]:
    return {p.origin for p in result.by_result("built")}


def test_full_bulk_builds_everything_then_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm = make_farm(tmp_path)
    rc, result = farm.bulk("b1", "-a")
    assert rc == 0
    assert result.status.raw == "stopped:done:"
    assert built(result) == set(ALL)
    assert [(p.origin, p.reason) for p in result.by_result("ignored")] == [
        ("misc/jf-broken", "is for testing IGNORE")
    ]
    assert judge(result, exit_code=rc).outcome == "success"
    out = capsys.readouterr().out
    assert "Building 8 packages using up to 2 builders" in out
    assert "Finished misc/jf-hello | jf-hello-1.0_1: Success" in out
    for pkgname in ALL.values():
        manifest, _ = read_package(farm.pkg(pkgname))
        assert manifest["abi"] == "FreeBSD:14:amd64"
    hello, files = read_package(farm.pkg("jf-hello-1.0_1"))
    assert hello["deps"] == {"libjf": {"origin": "devel/libjf", "version": "1.2.0"}}
    assert "/usr/local/bin/jf-hello" in {f.path for f in files}
    first_real = (farm.packages / ".latest").readlink()
    assert (farm.packages / ".latest" / ".buildname").read_text() == "b1\n"

    rc, again = farm.bulk("b2", "-a")
    assert (rc, built(again), again.stats.tobuild) == (0, set(), 0)
    assert judge(again, exit_code=rc).outcome == "success"
    real = (farm.packages / ".latest").readlink()
    assert real != first_real and (farm.packages / first_real).is_dir()  # previous kept
    assert not (farm.packages / ".building").exists()
    assert sorted(p.name[:-4] for p in (farm.packages / real / "All").iterdir()) == sorted(
        ALL.values()
    )
    rc, one = farm.bulk("b3", "misc/jf-hello")  # nothing queued: empty lists still parse
    assert (rc, one.stats.queued, judge(one, exit_code=rc).outcome) == (0, 0, "success")
    assert len(list((farm.packages / ".latest" / "All").iterdir())) == len(ALL)  # none pruned
    index = json.loads((farm.data / "logs/bulk/j141-demo/.data.json").read_text())
    assert index["builds"]["latest"] == "b3" and set(index["builds"]) == {
        "b1",
        "b2",
        "b3",
        "latest",
    }
    assert (farm.data / "logs/bulk/j141-demo/latest").readlink() == Path("b3")
    assert len(list(farm.packages.glob(".real_*"))) == 2  # the newest and the previous one


def test_a_portrevision_bump_rebuilds_the_port_and_its_dependents_only(tmp_path: Path) -> None:
    tree = tmp_path / "ports"
    shutil.copytree(TREE, tree)
    farm = make_farm(tmp_path, tree)
    assert farm.bulk("b1", "-a")[0] == 0
    makefile = tree / "devel/libjf/Makefile"
    makefile.write_text(
        makefile.read_text().replace("CATEGORIES=", "PORTREVISION=\t1\nCATEGORIES=", 1)
    )
    rc, result = farm.bulk("b2", "-a")
    assert rc == 0
    assert built(result) == {"devel/libjf", "misc/jf-hello", "misc/jf-cowsay", "misc/jf-meta"}
    assert farm.pkg("libjf-1.2.0_1").is_file() and not farm.pkg("libjf-1.2.0").exists()
    hello, _ = read_package(farm.pkg("jf-hello-1.0_1"))
    assert hello["deps"]["libjf"]["version"] == "1.2.0_1"


def test_a_failure_skips_its_dependents_and_the_exit_code_counts_them(tmp_path: Path) -> None:
    tree = tmp_path / "ports"
    shutil.copytree(TREE, tree)
    # jf-cowsay run-depends on jf-flaky in this copy, so jf-meta depends on it as well.
    cowsay = tree / "misc/jf-cowsay/Makefile"
    cowsay.write_text(
        cowsay.read_text().replace("RUN_DEPENDS=", "RUN_DEPENDS=\tjf-flaky:devel/jf-flaky ", 1)
    )
    farm = make_farm(tmp_path, tree)
    (farm.etc / "poudriere.d" / "j141-make.conf").write_text("JF_FAIL=yes\n")
    rc, result = farm.bulk("b1", "misc/jf-meta")
    failed = result.by_result("failed")
    assert [(p.origin, p.phase) for p in failed] == [("devel/jf-flaky", "build")]
    skipped = {p.origin: p.skipped_because for p in result.by_result("skipped")}
    assert skipped == {"misc/jf-cowsay": "jf-flaky-0.9", "misc/jf-meta": "jf-flaky-0.9"}
    assert rc == 3
    verdict = judge(result, exit_code=rc)
    assert verdict.outcome == "failure", verdict
    log = farm.data / "logs/bulk/j141-demo/b1/logs/errors/jf-flaky-0.9.log"
    assert "failing in the build phase because JF_FAIL=yes" in log.read_text()
    assert farm.pkg("jf-hello-1.0_1").is_file()  # committed despite the failure


def test_errors_are_reported_like_poudriere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm = make_farm(tmp_path)
    rc = farm.run("bulk", "-j", "j141", "-p", "demo", "misc/nonexistent", "misc/jf-hello")
    assert rc == 1
    assert "misc/nonexistent" in capsys.readouterr().err
    assert farm.run("bulk", "-j", "nojail", "-p", "demo", "-a") == 1
    assert farm.run("bulk", "-j", "j141", "-p", "notree", "-a") == 2
    assert farm.run("options", "-j", "j141", "misc/jf-hello") == 64
    assert farm.run("testport", "-j", "j141", "-p", "demo", "-o", "misc/nonexistent") == 1
    assert farm.run("testport", "-j", "j141", "-p", "demo") == 64
    rc = farm.run("bulk", "-j", "j141", "-p", "demo", "-n", "misc/jf-hello")
    assert rc == 0
    assert "Would build 2 packages using 2 builders" in capsys.readouterr().out


def test_jail_kill_cleans_up_after_a_killed_bulk(tmp_path: Path) -> None:
    farm = make_farm(tmp_path)
    d = farm.data / "logs/bulk/j141-demo/dead"
    d.mkdir(parents=True)
    (d / ".poudriere.status").write_text("parallel_build:\n")
    (farm.data / "logs/bulk/j141-demo/latest").symlink_to("dead")
    (farm.packages / ".building/All").mkdir(parents=True)
    (farm.data / ".m/j141-demo/01").mkdir(parents=True)
    assert farm.run("jail", "-k", "-j", "j141", "-p", "demo") == 0
    assert (d / ".poudriere.status").read_text() == "stopped:parallel_build:\n"
    assert not (farm.packages / ".building").exists()
    assert not (farm.data / ".m/j141-demo").exists()


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "jailfarm-poudriere"
    r = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "Not implemented yet: options, status" in r.stdout


def _processes_under(top: Path) -> list[str]:
    """PIDs (with their command lines) whose cwd or command line is under `top`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if str(top) in cmdline or Path(cwd).is_relative_to(top):
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_sigterm_mid_bulk_stops_cleanly_and_the_next_bulk_builds_everything(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "ports"
    shutil.copytree(TREE, tree)
    # devel/jf-flaky's build sleeps only while JF_SLEEP is set in make.conf (the demo tree's
    # knob), so the next bulk is fast.
    farm = make_farm(tmp_path, tree)
    assert farm.bulk("b0", "devel/libjf")[0] == 0
    latest = (farm.packages / ".latest").readlink()
    make_conf = farm.etc / "poudriere.d" / "j141-make.conf"
    make_conf.write_text("JF_SLEEP=60\n")
    script = Path(sys.executable).parent / "jailfarm-poudriere"
    argv = [script, "-e", farm.etc, "-N", "bulk", "-j", "j141", "-p", "demo", "-B", "b1", "-a"]
    d = farm.data / "logs/bulk/j141-demo/b1"
    with (tmp_path / "b1.out").open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not any(
                s.read_text().startswith("build:devel/jf-flaky:")
                for s in d.glob(".poudriere.status.0[0-9]")
            ):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.2)  # let make reach the sleep
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=20)
            elapsed = time.monotonic() - sent
            left = _processes_under(tmp_path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for line in _processes_under(tmp_path):  # what a failed run left: this test's own
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert rc == -signal.SIGTERM, (tmp_path / "b1.out").read_text()
    assert elapsed < 10
    assert left == []
    assert list((farm.data / ".m").iterdir()) == []
    assert (d / ".poudriere.status").read_text() == "stopped:SIGTERM:\n"
    assert (farm.packages / ".latest").readlink() == latest
    assert [p.name for p in (farm.packages / ".latest/All").iterdir()] == ["libjf-1.2.0.pkg"]

    make_conf.unlink()
    rc, result = farm.bulk("b2", "-a")
    assert (rc, result.status.raw) == (0, "stopped:done:")
    assert built(result) == set(ALL) - {"devel/libjf"}
    assert sorted(p.name[:-4] for p in (farm.packages / ".latest/All").iterdir()) == sorted(
        ALL.values()
    )


def run_testport(farm: Farm, name: str, origin: str) -> tuple[int, BulkResult, Path]:
    """Run testport, then read its build as the PoudriereTestport step does."""
    rc = farm.run("testport", "-j", "j141", "-p", "demo", "-J", "2", "-B", name, "-o", origin)
    d = farm.data / "logs" / "bulk" / "j141-demo" / name
    files = {p.name: p.read_text() for p in d.iterdir() if p.name.startswith(".poudriere.")}
    result = parse_build_files(files, str(d))
    assert parse_data_json((d / ".data.json").read_text()).status == result.status
    return rc, result, d


def decide(farm: Farm, result: BulkResult, rc: int) -> Verdict:
    """The PoudriereTestport step's verdict on a finished testport."""
    step = PoudriereTestport(
        jail="j141", tree="demo", etcdir=str(farm.etc), data_dir=str(farm.data), origin="x/y"
    )
    return step.decide(result, rc)


def test_testport_builds_the_dependencies_then_the_port_without_committing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm = make_farm(tmp_path)
    rc, result, d = run_testport(farm, "t1", "misc/jf-hello")
    assert rc == 0, capsys.readouterr()
    assert decide(farm, result, rc).outcome == "success"
    assert result.status.raw == "stopped:done:"
    assert built(result) == {"devel/libjf", "misc/jf-hello"}
    assert "Finished misc/jf-hello | jf-hello-1.0_1: Success" in capsys.readouterr().out
    assert (d / "logs/built/jf-hello-1.0_1.log").is_file()
    assert "PORTTESTING" not in (d / "logs/libjf-1.2.0.log").read_text()
    # The dependency is committed; the tested port's package is not.
    assert sorted(p.name for p in (farm.packages / ".latest/All").iterdir()) == ["libjf-1.2.0.pkg"]
    assert (farm.data / "logs/bulk/j141-demo/latest-done").readlink() == Path("t1")
    assert not (farm.data / ".m/j141-demo").exists()
    rc, again, _ = run_testport(farm, "t2", "misc/jf-hello")  # the dependency is kept now
    assert (rc, built(again)) == (0, {"misc/jf-hello"})


def test_testport_fails_when_the_port_fails(tmp_path: Path) -> None:
    farm = make_farm(tmp_path)
    (farm.etc / "poudriere.d" / "j141-make.conf").write_text("JF_FAIL=yes\n")
    rc, result, d = run_testport(farm, "t1", "devel/jf-flaky")
    assert rc == 1
    assert [(p.origin, p.phase) for p in result.by_result("failed")] == [
        ("devel/jf-flaky", "build")
    ]
    verdict = decide(farm, result, rc)
    assert verdict.outcome == "failure" and "jf-flaky-0.9 failed in build" in verdict.why[0]
    assert result.status.finished and not result.status.done
    assert "JF_FAIL=yes" in (d / "logs/errors/jf-flaky-0.9.log").read_text()
    assert not (farm.packages / ".latest/All/jf-flaky-0.9.pkg").exists()


def test_testport_fails_when_a_dependency_fails(tmp_path: Path) -> None:
    tree = tmp_path / "ports"
    shutil.copytree(TREE, tree)
    cowsay = tree / "misc/jf-cowsay/Makefile"
    cowsay.write_text(
        cowsay.read_text().replace("RUN_DEPENDS=", "RUN_DEPENDS=\tjf-flaky:devel/jf-flaky ", 1)
    )
    farm = make_farm(tmp_path, tree)
    (farm.etc / "poudriere.d" / "j141-make.conf").write_text("JF_FAIL=yes\n")
    rc, result, _ = run_testport(farm, "t1", "misc/jf-cowsay")
    assert rc == 1
    assert [p.origin for p in result.by_result("failed")] == ["devel/jf-flaky"]
    # As in poudriere, the tested port is never built: it stays queued without a result.
    assert [p.origin for p in result.by_result("pending")] == ["misc/jf-cowsay"]
    assert decide(farm, result, rc).outcome == "failure"


PROBE = """\
PORTNAME=	{name}
PORTVERSION=	1.0
CATEGORIES=	misc
MAINTAINER=	ports@jailfarm.example
COMMENT=	Looks at its build root
WWW=		https://jailfarm.example/ports/{name}
LICENSE=	BSD2CLAUSE
{deps}
do-build:
	@echo "probe: host=$$(hostname) uid=$$(id -u) init=$$(cat /proc/1/cmdline | tr '\\\\0' ' ')"
	@if touch /usr/bin/jf-leak 2>/dev/null; then echo "probe: /usr/bin writable"; \\
	else echo "probe: /usr/bin read-only"; fi
	@if touch /usr/ports/jf-leak 2>/dev/null; then echo "probe: ports writable"; \\
	else echo "probe: ports read-only"; fi
	@echo "probe: local=$$(cd /usr/local && find . -type f | sort | tr '\\\\n' ' ')"
	@touch /usr/local/share/left-by-{name} /tmp/left-by-{name}

do-install:
	mkdir -p ${{STAGEDIR}}${{PREFIX}}/share/{name}
	echo {name} > ${{STAGEDIR}}${{PREFIX}}/share/{name}/probe

.include <bsd.port.mk>
"""


def test_each_port_builds_in_a_fresh_root_made_from_the_reference_root(tmp_path: Path) -> None:
    """poudriere's clean environment per port (poudriere.md §4.1; linux-dev-host.md): a build
    sees only its own dependencies in /usr/local, the system and the tree read-only, its own
    PID 1, and what it leaves behind is gone for the next port; nothing stays mounted."""
    tree = tmp_path / "ports"
    shutil.copytree(TREE, tree)
    names = ("jf-probe-a", "jf-probe-b", "jf-probe-c")
    for name in names:
        port = tree / "misc" / name
        port.mkdir()
        dep = "RUN_DEPENDS=\t${LOCALBASE}/share/jf-probe-a/probe:misc/jf-probe-a\n"
        deps = dep if name == "jf-probe-c" else ""
        (port / "Makefile").write_text(PROBE.format(name=name, deps=deps))
        (port / "pkg-descr").write_text(f"{name} looks at its build root.\n")
        (port / "pkg-plist").write_text(f"share/{name}/probe\n")
    farm = make_farm(tmp_path, tree)
    origins = [f"misc/{n}" for n in names]
    for round_ in ("b1", "b2"):  # b2: all rebuilt, in the places b1's builds used
        rc, result = farm.bulk(round_, *origins)
        assert (rc, built(result)) == (0, set(origins))
        logs = farm.data / "logs/bulk/j141-demo" / round_ / "logs"
        probe = {
            n: [
                line
                for line in (logs / f"{n}-1.0.log").read_text().splitlines()
                if line.startswith("probe:")
            ]
            for n in names
        }
        for name in names:
            host, perms, local = probe[name][0], probe[name][1:3], probe[name][3]
            assert host.startswith("probe: host=j141-demo-job-0") and " uid=0 " in host
            assert "jailfarm.poudriere.devbuild_sandbox" in host  # its own PID 1
            assert perms == ["probe: /usr/bin read-only", "probe: ports read-only"]
            mine = "./share/jf-probe-a/probe" if name == "jf-probe-c" else ""
            assert local.rstrip() == f"probe: local={mine}".rstrip(), probe  # only its deps
        shutil.rmtree(farm.packages / ".latest" / "All")  # rebuild them all next round
        (farm.packages / ".latest" / "All").mkdir()
    assert not (tree / "jf-leak").exists() and not Path("/usr/bin/jf-leak").exists()
    ref = farm.data / ".m"
    assert not ref.exists() or list(ref.iterdir()) == []
    assert [
        m for m in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path) in m
    ] == []
