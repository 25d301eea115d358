"""poudriere argv builders and naming rules: golden argv per spec section, refused option
combinations, name validation (pure). Section numbers: shared/spec/poudriere.md."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jailfarm.errors import InvalidName
from jailfarm.poudriere import commands
from jailfarm.poudriere.commands import (
    BuildOptions,
    Poudriere,
    Target,
    build_dir,
    build_jail_names,
    buildname,
    bulk_cmd,
    check_buildname,
    jail_create_cmd,
    jail_delete_cmd,
    jail_info_cmd,
    jail_kill_cmd,
    jail_list_cmd,
    jail_update_cmd,
    master_mount,
    packages_dir,
    ports_create_cmd,
    ports_delete_cmd,
    ports_list_cmd,
    ports_update_cmd,
    split_mastername,
    status_cmd,
    version_cmd,
)

P = Poudriere("/jf/etc/poudriere")
# §0: every farm has its own etcdir (-e); global -N turns colours off.
G = ("poudriere", "-e", "/jf/etc/poudriere", "-N")
SERVER = Target("141amd64", "default", "server")
B = BuildOptions("jf-42-1")
NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_]{0,15}", fullmatch=True)


class GlobalTests:
    def test_version(self) -> None:
        assert version_cmd(P).argv == (*G, "version")  # §0

    def test_defines_and_program(self) -> None:
        # §0: -s VAR=value passes a variable through the wiped environment.
        p = Poudriere(
            "/etc/pd",
            program="/usr/local/bin/jf-bulk",
            no_color=False,
            defines=(("HTTP_PROXY", "http://proxy:3128"),),
        )
        assert p.cmd("version").argv == (
            "/usr/local/bin/jf-bulk", "-e", "/etc/pd", "-s", "HTTP_PROXY=http://proxy:3128",
            "version",
        )  # fmt: skip

    @pytest.mark.parametrize("etcdir", ["etc", "/etc/../x", "/etc/pd dir", "-e"])
    def test_etcdir_must_be_a_plain_absolute_path(self, etcdir: str) -> None:
        with pytest.raises(ValueError):
            Poudriere(etcdir)


class JailTests:
    def test_create_release(self) -> None:
        # §1.1: -j name -v version -a TARGET.TARGET_ARCH -m method
        cmd = jail_create_cmd(P, "141arm64", version="14.1-RELEASE", arch="aarch64")
        assert cmd.argv == (
            *G, "jail", "-c", "-j", "141arm64", "-v", "14.1-RELEASE", "-a", "arm64.aarch64",
            "-m", "http",
        )  # fmt: skip

    def test_create_from_git_takes_a_branch(self) -> None:
        # §1.1: for git methods -v is a branch; -U gives the source URL.
        cmd = jail_create_cmd(
            P,
            "main",
            version="stable/14",
            method="git+https",
            url="https://git.FreeBSD.org/src.git",
        )
        assert cmd.argv == (
            *G, "jail", "-c", "-j", "main", "-v", "stable/14", "-m", "git+https",
            "-U", "https://git.FreeBSD.org/src.git",
        )  # fmt: skip

    def test_create_offline_from_tarball(self) -> None:
        # §1.1: -m tar=/path/base.tar avoids the network.
        cmd = jail_create_cmd(P, "j", version="14.1-RELEASE", method="tar=/mirror/base.txz")
        assert cmd.argv[-2:] == ("-m", "tar=/mirror/base.txz")

    def test_null_registers_an_existing_tree(self) -> None:
        cmd = jail_create_cmd(P, "j", version=None, method="null", mountpoint="/jails/j")
        assert cmd.argv[-4:] == ("-m", "null", "-M", "/jails/j")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"version": None}, "needs a version"),  # §1.1: required for http
            ({"version": "14.1"}, "expected e.g."),
            ({"version": "14.1-RELEASE", "method": "rsync"}, "jail -m"),
            ({"version": "14.1-RELEASE", "url": "https://x/src.git"}, "git/svn/pkgbase"),
            ({"version": "14.1-RELEASE", "arch": "sparc64"}, "jail -a"),
            ({"version": None, "method": "null"}, "give mountpoint"),
            # §1.1: -U rewrites the method from its scheme; a contradiction is refused.
            ({"version": "main", "method": "git+https", "url": "ssh://x/src.git"}, "implies"),
        ],
    )
    def test_refused(self, kwargs: dict[str, str | None], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            jail_create_cmd(P, "j", **kwargs)  # type: ignore[arg-type]

    def test_update_delete_list_info(self) -> None:
        assert jail_update_cmd(P, "j").argv == (*G, "jail", "-u", "-j", "j")  # §1.1
        assert jail_delete_cmd(P, "j", ("packages", "logs")).argv == (
            *G, "jail", "-d", "-j", "j", "-y", "-C", "packages", "-C", "logs",
        )  # fmt: skip
        assert jail_list_cmd(P).argv == (*G, "jail", "-l", "-q", "-n")  # names only (§1.1)
        assert jail_info_cmd(P, "j", "default").argv == (
            *G,
            "jail",
            "-i",
            "-j",
            "j",
            "-p",
            "default",
        )
        with pytest.raises(ValueError, match="-C"):
            jail_delete_cmd(P, "j", ("everything",))

    def test_kill_recovers_with_the_builders_used(self) -> None:
        # §7: jail -k -j J -p P [-z S] [-J N] after a SIGKILLed bulk.
        assert jail_kill_cmd(P, SERVER, builders=8).argv == (
            *G, "jail", "-k", "-j", "141amd64", "-p", "default", "-z", "server", "-J", "8",
        )  # fmt: skip
        assert jail_kill_cmd(P, Target("j")).argv == (*G, "jail", "-k", "-j", "j", "-p", "default")


class PortsTests:
    def test_create_git(self) -> None:
        # §1.2: -m git+https, -U url, -B branch (create time only).
        cmd = ports_create_cmd(
            P, "default", url="https://git.FreeBSD.org/ports.git", branch="2026Q2"
        )
        assert cmd.argv == (
            *G, "ports", "-c", "-p", "default", "-m", "git+https",
            "-U", "https://git.FreeBSD.org/ports.git", "-B", "2026Q2",
        )  # fmt: skip

    def test_create_null_for_a_pinned_checkout(self) -> None:
        # §1.2: register a checkout managed by the farm; ports -u never touches it.
        cmd = ports_create_cmd(P, "demo", method="null", mountpoint="/jf/trees/demo")
        assert cmd.argv == (*G, "ports", "-c", "-p", "demo", "-m", "null", "-M", "/jf/trees/demo")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"method": "null", "branch": "main", "mountpoint": "/t"}, "git/svn methods only"),
            ({"method": "portsnap", "url": "https://x"}, "git/svn methods only"),
            ({"method": "null"}, "give mountpoint"),
            ({"method": "cvs"}, "ports -m"),
            ({"method": "git+ssh", "url": "https://git.FreeBSD.org/ports.git"}, "implies"),
            ({"branch": "main; rm -rf /"}, "branch"),
        ],
    )
    def test_refused(self, kwargs: dict[str, str], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            ports_create_cmd(P, "default", **kwargs)  # type: ignore[arg-type]

    def test_ssh_urls_imply_git_ssh(self) -> None:
        cmd = ports_create_cmd(P, "t", method="git+ssh", url="anongit@git.FreeBSD.org:ports.git")
        assert cmd.argv[-2:] == ("-U", "anongit@git.FreeBSD.org:ports.git")

    def test_tree_names_cannot_hold_separators(self) -> None:
        # §1.2 / §4.1: '-' would be read as a set name, '.' is rejected by jail_start.
        for bad in ("my-tree", "my.tree"):
            with pytest.raises(InvalidName):
                ports_create_cmd(P, bad)

    def test_update_delete_list(self) -> None:
        assert ports_update_cmd(P, "t").argv == (*G, "ports", "-u", "-p", "t")
        assert ports_delete_cmd(P, "t", keep_files=True).argv == (
            *G, "ports", "-d", "-p", "t", "-y", "-k",
        )  # fmt: skip
        assert ports_list_cmd(P).argv == (*G, "ports", "-l", "-q", "-n")


class BulkTests:
    def test_origins(self) -> None:
        # §1.3, §6.1: always -B <unique name>; origins last.
        cmd = bulk_cmd(P, SERVER, B, origins=("www/nginx", "lang/python311@py311"))
        assert cmd.argv == (
            *G, "bulk", "-j", "141amd64", "-p", "default", "-z", "server", "-B", "jf-42-1",
            "www/nginx", "lang/python311@py311",
        )  # fmt: skip

    def test_list_files_and_options(self) -> None:
        # §1.3: -J n:p sets both builders and prepare jobs; -NN no commit; -f repeatable.
        options = BuildOptions(
            "jf-42-2",
            builders=4,
            prepare_jobs=5,
            no_repo=2,
            fetch_branch="latest",
            overlays=("local",),
            save_wrkdir=True,
        )
        cmd = bulk_cmd(
            P, Target("j"), options, list_files=("/jf/lists/a", "/jf/lists/b"), clean_listed=True
        )
        assert cmd.argv == (
            *G, "bulk", "-j", "j", "-p", "default", "-B", "jf-42-2", "-J", "4:5", "-N", "-N",
            "-b", "latest", "-O", "local", "-w", "-C", "-f", "/jf/lists/a", "-f", "/jf/lists/b",
        )  # fmt: skip

    def test_all_ports_with_tests_and_dry_run(self) -> None:
        # §1.3: -a; -t with -r/-k; -n dry run; -c cleans every package first.
        options = BuildOptions("dry", builders=2, dry_run=True)
        cmd = bulk_cmd(
            P, Target("j"), options, all_ports=True, clean=True, test=True, test_nonfatal=True
        )
        assert cmd.argv == (
            *G, "bulk", "-j", "j", "-p", "default", "-B", "dry", "-J", "2", "-n", "-c", "-t",
            "-k", "-a",
        )  # fmt: skip

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({}, "exactly one"),
            ({"all_ports": True, "origins": ("www/nginx",)}, "exactly one"),  # §1.3 -a
            ({"list_files": ("/l",), "origins": ("www/nginx",)}, "exactly one"),  # §1.3 -f
            ({"all_ports": True, "clean_listed": True}, "becomes -a -c"),  # §1.3 -C
            ({"origins": ("www/nginx",), "clean": True, "clean_listed": True}, "-c already"),
            ({"origins": ("www/nginx",), "test_deps": True}, "-t"),
            ({"list_files": ("lists/a",)}, "absolute path"),  # poudriere cd's to /tmp (§0)
            ({"origins": ("nginx",)}, "port origin"),
            ({"origins": ("-a",)}, "port origin"),
        ],
    )
    def test_refused(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            bulk_cmd(P, SERVER, B, **kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            (BuildOptions("latest"), "reserved"),  # logs/bulk/<M>/latest is a link (§4.2)
            (BuildOptions("a b"), "poudriere build"),
            (BuildOptions("b", prepare_jobs=3), "needs builders"),
            (BuildOptions("b", builders=0), "positive"),
            (BuildOptions("b", no_repo=3), r"0, 1 \(-N\) or 2"),
            (BuildOptions("b", fetch_branch="main"), "bulk -b"),
            (BuildOptions("b", overlays=("a-b",)), "ports tree"),
        ],
    )
    def test_bad_options(self, options: BuildOptions, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            bulk_cmd(P, SERVER, options, all_ports=True)

    @given(st.text(max_size=40))
    def test_an_origin_is_refused_or_passed_as_one_word(self, origin: str) -> None:
        try:
            cmd = bulk_cmd(P, SERVER, B, origins=(origin,))
        except ValueError:
            return
        assert cmd.argv[-1] == origin
        assert not origin.startswith("-") and origin.count("/") == 1


class TestportTests:
    def test_testport(self) -> None:
        # §1.4: -o origin; -k failures non-fatal; shares -B/-J with bulk.
        cmd = commands.testport_cmd(
            P, SERVER, BuildOptions("t1", builders=2), "www/nginx", nonfatal=True
        )
        assert cmd.argv == (
            *G, "testport", "-j", "141amd64", "-p", "default", "-z", "server", "-B", "t1",
            "-J", "2", "-k", "-o", "www/nginx",
        )  # fmt: skip


class StatusCmdTests:
    def test_script_mode(self) -> None:
        # §1.5: -H one tab between fields, -f finished builds too, -l log dir last.
        cmd = status_cmd(P, jail="141amd64", tree="default", set_name="", build_glob="jf-42-*")
        assert cmd.argv == (
            *G, "status", "-H", "-f", "-l", "-j", "141amd64", "-p", "default", "-z", "0",
            "-B", "jf-42-*",
        )  # fmt: skip

    def test_set_named_0_is_ambiguous(self) -> None:
        with pytest.raises(ValueError, match="no set"):
            status_cmd(P, set_name="0")


class NamingTests:
    def test_mastername(self) -> None:
        # §4.1: <jail>-<tree>[-<set>], the tree part always there.
        assert Target("141amd64").mastername == "141amd64-default"
        assert SERVER.mastername == "141amd64-default-server"

    @given(NAME, NAME, st.none() | NAME)
    def test_mastername_round_trips(self, jail: str, tree: str, set_name: str | None) -> None:
        target = Target(jail, tree, set_name)
        assert split_mastername(target.mastername) == target

    def test_paths(self) -> None:
        # §4.2, §4.3, §4.1
        assert build_dir("/pd", SERVER, "jf-1-1") == "/pd/logs/bulk/141amd64-default-server/jf-1-1"
        assert packages_dir("/pd", SERVER) == "/pd/packages/141amd64-default-server"
        assert master_mount("/pd", SERVER) == "/pd/.m/141amd64-default-server"
        hashed = master_mount("/pd", SERVER, hashed=True)
        assert len(hashed.rpartition("/")[2]) == 6

    def test_build_jail_names(self) -> None:
        # §4.1: <M>, <M>-n, <M>-job-NN, <M>-job-NN-n.
        assert build_jail_names(Target("j"), 2) == (
            "j-default", "j-default-n", "j-default-job-01", "j-default-job-01-n",
            "j-default-job-02", "j-default-job-02-n",
        )  # fmt: skip

    def test_buildname(self) -> None:
        assert buildname("jf", 42, 2) == "jf-42-2"
        assert check_buildname("2026-05-20_10h00m00s") == "2026-05-20_10h00m00s"
        with pytest.raises(ValueError):
            buildname("jf", 42, 0)

    @pytest.mark.parametrize("bad", ["a-b", "a.b", "", "-x", "x y"])
    def test_name_parts_cannot_hold_separators(self, bad: str) -> None:
        with pytest.raises(InvalidName):
            Target(bad)
        with pytest.raises(InvalidName):
            Target("j", "default", bad)


def test_poudriere_runs_as_root_through_sudo_and_recovery_does_too() -> None:
    """poudriere needs root (§3); an unprivileged FreeBSD worker gets it from the template's
    sudo rule, non-interactively (-n fails instead of waiting for a password)."""
    p = Poudriere("/home/buildbot/poudriere", privilege=("sudo", "-n"))
    kill = jail_kill_cmd(p, Target("141amd64", "default"))
    assert kill.argv[:5] == ("sudo", "-n", "poudriere", "-e", "/home/buildbot/poudriere")
    assert Poudriere("/e").cmd("status").argv[0] == "poudriere"
    with pytest.raises(ValueError, match="privilege"):
        Poudriere("/e", privilege=("sh", "-c"))
