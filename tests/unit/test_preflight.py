"""`jailfarm doctor` judges: facts in, one line per requirement out (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jailfarm.config import load_farm, parse_farm
from jailfarm.provision.preflight import FreeBsdFacts, LinuxFacts, judge_freebsd, judge_linux

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "farm.toml"
GIB = 1 << 30

LINUX_OK = LinuxFacts(
    is_root=True,
    binaries={
        n: f"/usr/bin/{n}"
        for n in (
            "zfs-fuse",
            "unshare",
            "nsenter",
            "setpriv",
            "nginx",
            "bmake",
            "cc",
            "patch",
            "git",
        )
    },
    dev_fuse=True,
    namespaces_ok=True,
    namespaces_error="",
    daemon_answers=True,
    pool_present=True,
    pool_available=3 * GIB,
    state_free=50 * GIB,
    buildbot_version="4.3.0",
)

FREEBSD = parse_farm(
    {
        "farm": {"platform": "freebsd"},
        "zfs": {"pool": "zroot", "root": "zroot/jf", "reserve": "10G"},
        "template": {"release": "14.1-RELEASE"},
        "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
        "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
        "signing": {"key_file": "/usr/local/etc/jailfarm/repo.key"},
    }
)
FREEBSD_OK = FreeBsdFacts(
    is_root=True,
    jailed="0",
    modules={m: True for m in ("tmpfs", "nullfs", "procfs", "fdescfs", "linprocfs")},
    racct="1",
    binaries={n: f"/usr/sbin/{n}" for n in ("zfs", "jail", "jexec", "nginx", "git", "make")},
    pool_present=True,
    pool_available=100 * GIB,
)


def failed(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {c.name: c.line() for c in checks if c.status == "fail"}


class LinuxJudgeTests:
    def test_a_ready_host_passes_with_one_line_per_requirement(self) -> None:
        checks = judge_linux(load_farm(EXAMPLE), LINUX_OK)
        assert failed(checks) == {}
        names = [c.name for c in checks]
        for need in (
            "root",
            "zfs-fuse",
            "zfs-fuse daemon",
            "pool jailfarm",
            "namespaces",
            "nginx",
            "bmake",
            "git",
            "free space",
            "buildbot",
        ):
            assert need in names

    def test_each_missing_requirement_says_how_to_fix_it(self) -> None:
        facts = dataclasses.replace(
            LINUX_OK,
            binaries={**LINUX_OK.binaries, "bmake": None, "zfs-fuse": None},
            namespaces_ok=False,
            namespaces_error="unshare: Operation not permitted",
            is_root=False,
        )
        bad = failed(judge_linux(load_farm(EXAMPLE), facts))
        assert set(bad) == {"bmake", "zfs-fuse", "namespaces", "root"}
        assert "fix: apt-get install -y bmake" in bad["bmake"]
        assert "Operation not permitted" in bad["namespaces"]

    def test_pool_below_reserve_fails_naming_the_figures(self) -> None:
        facts = dataclasses.replace(LINUX_OK, pool_available=100 << 20)
        bad = failed(judge_linux(load_farm(EXAMPLE), facts))
        assert "0.1 GiB available, below the reserve of 0.5 GiB" in bad["pool jailfarm"]

    def test_missing_pool_is_fine_when_jailfarm_makes_it(self) -> None:
        facts = dataclasses.replace(LINUX_OK, pool_present=False, pool_available=None)
        checks = {c.name: c for c in judge_linux(load_farm(EXAMPLE), facts)}
        assert checks["pool jailfarm"].status == "info"
        assert "creates it in /var/lib/jailfarm/pool.img" in checks["pool jailfarm"].detail

    def test_not_enough_room_for_the_pool_file(self) -> None:
        facts = dataclasses.replace(LINUX_OK, pool_present=False, state_free=1 * GIB)
        assert "free space" in failed(judge_linux(load_farm(EXAMPLE), facts))


class FreeBsdJudgeTests:
    def test_a_ready_host_passes(self) -> None:
        assert failed(judge_freebsd(FREEBSD, FREEBSD_OK)) == {}

    def test_unloaded_modules_racct_and_jailed_host_fail_with_fixes(self) -> None:
        facts = dataclasses.replace(
            FREEBSD_OK,
            modules={**FREEBSD_OK.modules, "linprocfs": False, "nullfs": False},
            racct="0",
            jailed="1",
        )
        bad = failed(judge_freebsd(FREEBSD, facts))
        assert set(bad) == {"kernel module linprocfs", "kernel module nullfs", "racct", "jail host"}
        assert "kldload nullfs && sysrc kld_list+=nullfs" in bad["kernel module nullfs"]
        assert "kern.racct.enable=1 >> /boot/loader.conf" in bad["racct"]

    def test_missing_pool_on_freebsd_is_an_error(self) -> None:
        facts = dataclasses.replace(FREEBSD_OK, pool_present=False, pool_available=None)
        assert "pool zroot" in failed(judge_freebsd(FREEBSD, facts))
