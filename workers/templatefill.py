"""What goes into a worker template's tree: the secret rules, the mountpoint check that keeps
a rebuild inside the template, and the FreeBSD fill plan (pure)."""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import TYPE_CHECKING

from jailfarm.cmd import Cmd
from jailfarm.errors import ParseError, UnsafeOperation
from jailfarm.host.base import WORKER_UID, WORKER_USER

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


# ---- secrets --------------------------------------------------------------------------------

# What must not reach a clone (jails spec c.68, gotcha 23; ARCHITECTURE "Secrets"): SSH host
# keys, known_hosts and client keys, the worker's buildbot.tac (it holds the worker password),
# password files and any `*.key` (a signing key). Paths are relative to the template root;
# `*` also matches '/', in fnmatch and in find(1)'s -path alike.
SECRET_PATHS = (
    "etc/ssh/*key*",
    "root/.ssh/known_hosts",
    "root/.ssh/id_*",
    "home/*/.ssh/known_hosts",
    "home/*/.ssh/id_*",
)
SECRET_NAMES = ("buildbot.tac", "*.key", "*.password")


def is_secret(relpath: str) -> bool:
    """Whether a file at `relpath` (relative to a template root) must be removed."""
    name = posixpath.basename(relpath)
    return any(fnmatch.fnmatchcase(relpath, p) for p in SECRET_PATHS) or any(
        fnmatch.fnmatchcase(name, n) for n in SECRET_NAMES
    )


_MOUNTPOINT = re.compile(r"(/[A-Za-z0-9_.:-]+)+")


def check_mountpoint(mountpoint: str | None, root_mountpoint: str | None) -> str:
    """The template's mountpoint, if it is a plain absolute path strictly below the farm
    root's mountpoint; anything else would let a clean step empty a host directory."""
    ok = (
        mountpoint is not None
        and root_mountpoint is not None
        and _MOUNTPOINT.fullmatch(mountpoint) is not None
        and posixpath.normpath(mountpoint) == mountpoint
        and mountpoint.startswith(root_mountpoint.rstrip("/") + "/")
    )
    if not ok or mountpoint is None:
        raise UnsafeOperation(
            f"refusing to write the template at mountpoint {mountpoint!r}: expected a plain "
            f"path below the farm root's mountpoint {root_mountpoint!r}"
        )
    return mountpoint


def secret_clean_cmd(mountpoint: str) -> Cmd:
    """find(1) that prints and deletes every secret below `mountpoint`, on one filesystem
    (`-x`), never a directory, never following symlinks (find's default -P)."""
    expr: list[str] = []
    for p in SECRET_PATHS:
        expr += ["-o", "-path", f"{mountpoint}/{p}"]
    for n in SECRET_NAMES:
        expr += ["-o", "-name", n]
    return Cmd(
        ("find", "-x", mountpoint, "(", *expr[1:], ")", "!", "-type", "d", "-print", "-delete")
    )


# ---- the FreeBSD build plan -----------------------------------------------------------------

MIRROR = "https://download.FreeBSD.org"
_RELEASE = re.compile(
    r"([0-9]+\.[0-9]+-(RELEASE|STABLE|CURRENT|PRERELEASE|ALPHA[0-9]+|BETA[0-9]+|"
    r"RC[0-9]+))(-p[0-9]+)?"
)
_MACHINE = re.compile(r"[a-z0-9_]{1,16}")


def parse_uname(text: str) -> tuple[str, str]:
    """`uname -m -p` on FreeBSD: hw.machine and hw.machine_arch, e.g. ('arm64', 'aarch64')."""
    words = text.split()
    if len(words) != 2 or not all(_MACHINE.fullmatch(w) for w in words):
        raise ParseError("uname -m -p", 1, text.strip(), "expected MACHINE MACHINE_ARCH")
    return words[0], words[1]


def base_url(release: str, machine: str, machine_arch: str) -> str:
    """base.txz of `release` on the FreeBSD mirror. A patch level (-pN) is not a directory
    there: its base is X.Y-RELEASE. STABLE/CURRENT/PRERELEASE builds live in snapshots/."""
    m = _RELEASE.fullmatch(release)
    if m is None or not _MACHINE.fullmatch(machine) or not _MACHINE.fullmatch(machine_arch):
        raise ValueError(f"cannot name base.txz for {release!r} on {machine}/{machine_arch}")
    tree = "snapshots" if m.group(2) in ("STABLE", "CURRENT", "PRERELEASE") else "releases"
    return f"{MIRROR}/{tree}/{machine}/{machine_arch}/{m.group(1)}/base.txz"


# The worker runs unprivileged; poudriere must run as root (poudriere.md §3): sudo lets the
# worker user run poudriere, and nothing else, as root (the worker jail is thrown away).
SUDO_RULE = f"{WORKER_USER} ALL=(root) NOPASSWD: /usr/local/bin/poudriere\n"
REQUIRED_PACKAGES = ("poudriere", "sudo")


def plan_freebsd_fill(
    mountpoint: str,
    release: str,
    machine: str,
    machine_arch: str,
    packages: Iterable[str],
    cache_dir: str,
    poudriere_conf: str = "",
    poudriere_jails: Sequence[tuple[str, str, str]] = (),
) -> list[Cmd]:
    """Commands that turn the (mounted, writable) template dataset into a fresh worker tree.

    The arch is the jail host's own (`uname -m -p`), not a poudriere jail's: the worker jail
    runs natively on the host kernel, and poudriere cross-builds other arches inside it.
    With `poudriere_jails` ((name, version, arch), ...) the template gets poudriere.conf and
    those poudriere jails, made once here rather than downloaded by every build.
    """
    m = _RELEASE.fullmatch(release)
    if m is None or not _MOUNTPOINT.fullmatch(mountpoint) or not _MOUNTPOINT.fullmatch(cache_dir):
        raise ValueError(f"bad release {release!r}, mountpoint or cache dir {cache_dir!r}")
    tarball = f"{cache_dir}/{m.group(1)}-{machine_arch}-base.txz"
    pkg_env = {"ASSUME_ALWAYS_YES": "yes"}
    pkgs = tuple(packages)
    pkgs += tuple(p for p in REQUIRED_PACKAGES if pkgs and p not in pkgs)
    user, home = WORKER_USER, f"/home/{WORKER_USER}"
    sudoers = f"{mountpoint}/usr/local/etc/sudoers.d/jailfarm-poudriere"
    conf = f"{mountpoint}/usr/local/etc/poudriere.conf"
    jails = [
        # poudriere.md 1.1: jail -c fetches and extracts the release into BASEFS/jails/NAME.
        Cmd(
            (
                "chroot",
                mountpoint,
                "/usr/local/bin/poudriere",
                "jail",
                "-c",
                "-j",
                name,
                "-v",
                version,
                "-a",
                arch,
            ),
            timeout=3600,
        )
        for name, version, arch in poudriere_jails
    ]
    pkg_steps = [
        # pkg -c runs the host's pkg chrooted into the tree, which needs /dev/null there (f.117,
        # pkg issue #1763); -c rather than -r/--rootdir, so package scripts run as in the jail.
        Cmd(("mount", "-t", "devfs", "devfs", f"{mountpoint}/dev")),
        Cmd(("pkg", "-c", mountpoint, "install", "-y", *pkgs), env=pkg_env, timeout=3600),
        Cmd(("pkg", "-c", mountpoint, "clean", "-a", "-y"), env=pkg_env),
        Cmd(("dd", f"of={sudoers}", "status=none"), stdin=SUDO_RULE.encode()),
        Cmd(("chmod", "0440", sudoers)),
        *(
            [Cmd(("dd", f"of={conf}", "status=none"), stdin=poudriere_conf.encode())]
            if poudriere_conf
            else []
        ),
        *jails,
        Cmd(("umount", f"{mountpoint}/dev")),
    ]
    # fmt: off
    return [
        # Install media kept apart from the jail, in a release-named file (a.1 #4).
        Cmd(("mkdir", "-p", cache_dir)),
        # fetch(1) -m: mirror mode, no download when the cached file matches the remote one.
        Cmd(("fetch", "-m", "-o", tarball, base_url(release, machine, machine_arch)),
            timeout=3600),
        # Rebuild, never upgrade (c.64, c.70): empty the tree first. base.txz sets schg on
        # some files (gotcha 52); -x keeps both on this filesystem, and find skips .zfs.
        Cmd(("chflags", "-R", "-x", "noschg,nosunlnk", mountpoint)),
        Cmd(("find", "-x", mountpoint, "-mindepth", "1", "-maxdepth", "1", "!", "-name", ".zfs",
             "-exec", "rm", "-rf", "-x", "{}", "+")),
        Cmd(("tar", "-xpf", tarball, "-C", mountpoint), timeout=1800),
        # A new jail has no resolver, no timezone and no fstab (a.1 #5, gotcha 35, 48).
        Cmd(("cp", "/etc/resolv.conf", f"{mountpoint}/etc/resolv.conf")),
        Cmd(("cp", "/etc/localtime", f"{mountpoint}/etc/localtime")),
        Cmd(("touch", f"{mountpoint}/etc/fstab")),
        *(pkg_steps if pkgs else []),
        # The unprivileged worker user with the Linux dev host's uid (f.116, item 7); no
        # password login for it or for root: the host enters a jail with jexec (c.68).
        Cmd(("pw", "-R", mountpoint, "useradd", "-n", user, "-u", str(WORKER_UID),
             "-c", "buildbot worker", "-d", home, "-m", "-s", "/bin/sh", "-w", "no")),
        Cmd(("pw", "-R", mountpoint, "usermod", "-n", "root", "-w", "no")),
        # No mail, no cron (no periodic storms across many workers, gotcha 45), syslog not
        # listening on the network, /tmp cleared at start.
        Cmd(("sysrc", "-R", mountpoint, "sendmail_enable=NONE", "cron_enable=NO",
             "syslogd_flags=-ss", "clear_tmp_enable=YES")),
        # Last, after everything that could add one (c.68, gotcha 23).
        secret_clean_cmd(mountpoint),
    ]
    # fmt: on


def plan_freebsd_cleanup(mountpoint: str) -> list[Cmd]:
    """After a failed fill: the devfs mounted for pkg must not stay (run, answers ignored)."""
    return [Cmd(("umount", "-f", f"{mountpoint}/dev"))]
