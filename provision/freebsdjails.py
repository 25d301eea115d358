"""The master and nginx jails of `jailfarm provision` on FreeBSD (pure): their userland,
jail.conf, packages, users, configuration and services, each step only where the host's facts
(freebsdfacts.py) differ from farm.toml.

The master runs Buildbot (pkg's py3XY-buildbot under its rc.d script, jails spec g.124-g.125)
as the unprivileged `buildbot-master`, with the host's jailfarm installation mounted read-only;
it drives this host's jail(8) and zfs(8) over ssh as root (see freebsd.py's sshd step). nginx
runs in a jail of its own (h.136).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jailfarm.cmd import Cmd
from jailfarm.host.freebsd import jexec_cmd
from jailfarm.host.jailconf import render_jail_conf
from jailfarm.provision.freebsdfacts import (
    JAIL_CONF,
    MASTER_IDS,
    MASTER_UID,
    MASTER_USER,
    base_release,
    install_dir_cmd,
    sysrc_cmd,
    yes,
)
from jailfarm.provision.nginx import render_nginx_conf
from jailfarm.provision.plan import MARKER, FileWrite, Step, managed_file
from jailfarm.workers.templatefill import base_url

if TYPE_CHECKING:
    from jailfarm.provision.freebsdfacts import Host, ServiceJail

PKG_ENV = {"ASSUME_ALWAYS_YES": "yes"}

MASTER_TAC = """\
# Managed by jailfarm: buildbot create-master --relocatable's buildbot.tac, umask 022 so nginx
# can serve the logs and repositories the master writes.
import os

from twisted.application import service
from buildbot.master import BuildMaster

basedir = '.'
rotateLength = 10000000
maxRotatedFiles = 10
configfile = 'master.cfg'

umask = 0o022

if basedir == '.':
    basedir = os.path.abspath(os.path.dirname(__file__))

# note: this line is matched against to check that this is a buildmaster
# directory; do not edit it.
application = service.Application('buildmaster')
from twisted.python.logfile import LogFile
from twisted.python.log import ILogObserver, FileLogObserver
logfile = LogFile.fromFullPath(os.path.join(basedir, "twistd.log"), rotateLength=rotateLength,
                                maxRotatedFiles=maxRotatedFiles)
application.setComponent(ILogObserver, FileLogObserver(logfile).emit)

m = BuildMaster(basedir, configfile, umask)
m.setServiceParent(application)
m.log_rotation.rotateLength = rotateLength
m.log_rotation.maxRotatedFiles = maxRotatedFiles
"""


def userland_step(h: Host, jail: ServiceJail) -> Step | None:
    if jail.path is None:
        return None
    release = h.cfg.template.release or ""
    have = h.userland(jail)
    if have is not None:
        if base_release(have) != base_release(release):
            h.notes.append(
                f"jail {jail.name} runs {have}, template.release is {release}: provision does "
                "not upgrade jails (freebsd-update -b, jails spec f.118)"
            )
        return None
    if h.exists(jail.dataset) and not h.ours(jail.dataset):
        h.problems.append(
            f"{jail.dataset} exists and is not jailfarm's (no jailfarm:owner={h.cfg.name}); "
            f"provision would extract a system into it: remove it or choose another "
            f"provision.{jail.role}_jail"
        )
        return None
    machine, arch = h.uname
    cache = f"{h.cfg.state_dir}/cache/dist"
    tarball = f"{cache}/{base_release(release)}-{arch}-base.txz"  # templatefill's cache name
    root = jail.path
    commands = (
        Cmd(("mkdir", "-p", cache)),
        Cmd(("fetch", "-m", "-o", tarball, base_url(release, machine, arch)), timeout=3600),
        Cmd(("tar", "-xpf", tarball, "-C", root), timeout=1800),
        Cmd(("cp", "/etc/resolv.conf", f"{root}/etc/resolv.conf")),
        Cmd(("cp", "/etc/localtime", f"{root}/etc/localtime")),
        Cmd(("touch", f"{root}/etc/fstab")),
    )
    return Step(
        f"{jail.role}-userland",
        "jails spec a.1 #4-5: the jail's userland from base.txz of template.release (cached "
        "with the template's), then resolv.conf, localtime and an empty fstab",
        (f"no userland in {root} (bin/freebsd-version)",),
        commands,
    )


def network_rc_step(h: Host, jail: ServiceJail) -> Step | None:
    """vnet: before the jail first starts, its own interface and route (jails spec d.97)."""
    wanted = h.jail_net_rc(jail)
    if not wanted or jail.path is None:
        return None
    have = h.jail_rc(jail)
    missing = [f"{k}={v}" for k, v in wanted if have.get(k) != v]
    if not missing:
        return None
    return Step(
        f"{jail.role}-network",
        "jails spec d.97: a vnet jail configures e0b_<jail> and its default route itself",
        tuple(f"{a.split('=')[0]} is not {a.split('=', 1)[1]!r}" for a in missing),
        (sysrc_cmd(*missing, root=jail.path),),
    )


def mountpoints_step(h: Host) -> Step | None:
    """What the jails' nullfs mounts need inside their roots; jail(8) mounts them at start."""
    commands, check = [], []
    for jail in h.jails:
        if jail.path is None:
            continue
        for m in jail.mounts:
            st = h.jail_stat(jail, m.jail_path)
            if st is not None and not st.is_dir:
                # jail(8) mounts from the host, following links: a jail that turned its mount
                # point into a symlink would redirect the mount onto a host path.
                h.problems.append(
                    f"{jail.at(m.jail_path)} is a {st.kind.lower()}, not a directory: refusing "
                    "to mount over it; check the jail, then replace it with a directory"
                )
            elif st is None:
                check.append(f"{jail.at(m.jail_path)} does not exist")
                commands.append(Cmd(("install", "-d", "-m", "0755", jail.at(m.jail_path))))
    if not commands:
        return None
    return Step(
        "mountpoints",
        "jails spec a.3 mount: nullfs targets must exist inside the jail root",
        tuple(check),
        tuple(commands),
    )


def render_jail_conf_file(h: Host) -> str:
    blocks = [
        render_jail_conf(j.name, h.jail_spec_params(j)) for j in h.jails if j.path is not None
    ]
    head = (
        f"# {MARKER} (farm {h.cfg.name}): `jailfarm provision apply` rewrites this file.\n"
        "# The farm's service jails; its worker jails use their own files (jail -f).\n"
    )
    return head + "\n" + "\n".join(blocks)


def jail_conf_step(h: Host) -> Step | None:
    if any(j.path is None for j in h.jails):
        return None
    write, foreign = managed_file(JAIL_CONF, render_jail_conf_file(h), h.text(JAIL_CONF))
    if not write.changed:
        return None
    check = f"{JAIL_CONF} is not jailfarm's" if foreign else f"{JAIL_CONF} differs"
    if h.text(JAIL_CONF) is None:
        check = f"{JAIL_CONF} does not exist"
    return Step(
        "jail.conf",
        "jails spec a.2, j.1: the master and nginx jails with the service profile "
        "(jailconf.py); `service jail` starts them at boot",
        (check,),
        files=(write,),
        destructive=foreign,
    )


def jail_service_step(h: Host) -> Step | None:
    names = [j.name for j in h.jails]
    assignments, check = [], []
    if not yes(h.host_rc.get("jail_enable")):
        assignments.append("jail_enable=YES")
        check.append("jail_enable is not YES")
    listed = h.host_rc.get("jail_list", "").split()
    missing = [n for n in names if n not in listed]
    if missing:
        assignments.append(f"jail_list+={' '.join(missing)}")
        check.append(f"jail_list lacks {' '.join(missing)}")
    if not assignments:
        return None
    return Step(
        "jail-service",
        "jails spec a.4 #16: jail_enable starts jail.conf's jails at boot; jail_list names "
        "them (never an unqualified `service jail restart`, gotcha 9)",
        tuple(check),
        (sysrc_cmd(*assignments),),
    )


def _block_changed(h: Host, jail: ServiceJail) -> bool:
    before = h.text(JAIL_CONF)
    if before is None or not is_ours_conf(before):
        return True
    new = render_jail_conf(jail.name, h.jail_spec_params(jail))
    return new not in before


def is_ours_conf(text: str) -> bool:
    return MARKER in text.split("\n", 1)[0]


def restarts(h: Host, jail: ServiceJail) -> bool:
    """Whether this plan (re)starts the jail: it is not running, or its block changes."""
    return jail.path is not None and (not h.running(jail.name) or _block_changed(h, jail))


def running_step(h: Host, jail: ServiceJail) -> Step | None:
    if jail.path is None:
        return None
    if not h.running(jail.name):
        check, action = f"jail {jail.name} is not running", "start"
    elif _block_changed(h, jail):
        check, action = f"jail {jail.name}'s parameters change", "restart"
        h.notes.append(f"jail {jail.name} restarts: its service is down for a moment")
    else:
        return None
    return Step(
        f"{jail.role}-jail",
        "jails spec a.4 #16: `service jail start|restart NAME`, always with the name",
        (check,),
        (Cmd(("service", "jail", action, jail.name), timeout=300),),
    )


def packages_step(h: Host, jail: ServiceJail) -> Step | None:
    if jail.path is None:
        return None
    installed = h.installed(jail.path if h.userland(jail) else None)
    missing = [p for p in jail.packages if p not in installed]
    if not missing:
        return None
    return Step(
        f"{jail.role}-packages",
        "jails spec f.115-f.116: `pkg -j` installs from the host, with the jail's own "
        "package database and repositories",
        (f"not installed: {' '.join(missing)}",),
        (Cmd(("pkg", "-j", jail.name, "install", "-y", *missing), env=PKG_ENV, timeout=3600),),
    )


def master_user_step(h: Host) -> Step | None:
    jail = h.master
    if jail.path is None:
        return None
    passwd = h.jail_text(jail, "/etc/passwd")
    uid = h.master_uid(passwd)
    if uid == MASTER_UID:
        return None
    if uid is not None:
        h.problems.append(f"{MASTER_USER} in jail {jail.name} has uid {uid}, not {MASTER_UID}")
        return None
    cmd = Cmd(
        ("pw", "-R", jail.path, "useradd", "-n", MASTER_USER, "-u", str(MASTER_UID),
         "-c", "buildbot master", "-d", h.master_home, "-m", "-s", "/bin/sh", "-w", "no")
    )  # fmt: skip
    return Step(
        "master-user",
        "jails spec g.124, j.154: Buildbot runs as an unprivileged user without a password "
        "login (the host enters the jail with jexec)",
        (f"no user {MASTER_USER} in jail {jail.name}",),
        (cmd,),
    )


def master_ssh_key_step(h: Host) -> Step | None:
    jail = h.master
    if jail.path is None:
        return None
    key = jail.at(f"{h.master_home}/.ssh/id_ed25519")
    pub = h.jail_text(jail, f"{h.master_home}/.ssh/id_ed25519.pub")
    exists = h.jail_stat(jail, f"{h.master_home}/.ssh/id_ed25519") is not None
    commands, check = [], []
    keygen = ("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C")
    if not exists:
        check.append(f"{key} does not exist")
        commands += [
            install_dir_cmd(jail.at(f"{h.master_home}/.ssh"), MASTER_IDS, 0o700),
            Cmd((*keygen, f"jailfarm-master@{h.cfg.name}", "-f", key)),
            Cmd(("chown", MASTER_IDS, key, f"{key}.pub")),
        ]
    if not exists or pub is None or pub != h.text(h.master_pub):
        check.append(f"{h.master_pub} is not the master's public key")
        commands.append(
            Cmd(("install", "-m", "0644", "-o", "root", "-g", "wheel", f"{key}.pub", h.master_pub))
        )
    if not commands:
        return None
    return Step(
        "master-ssh-key",
        "the master's SshRunner key; sshd reads its public half from a root-owned copy, so "
        "the jail cannot add keys",
        tuple(check),
        tuple(commands),
    )


def _known_hosts(h: Host) -> str | None:
    key = h.host_key
    if key is None:
        return None
    fields = key.split()
    local = next((j for j in h.cfg.jail_hosts if j.ssh == h.p.host_address), None)
    port = local.ssh_port if local else 22
    name = h.p.host_address if port == 22 else f"[{h.p.host_address}]:{port}"
    return f"{name} {fields[0]} {fields[1]}\n"


def master_known_hosts_step(h: Host) -> Step | None:
    jail, content = h.master, _known_hosts(h)
    if jail.path is None or content is None:
        return None
    path = f"{h.master_home}/.ssh/known_hosts"
    before = h.jail_text(jail, path)
    if before == content:
        return None
    raw = None if before is None else before.encode()
    write = FileWrite(jail.at(path), content.encode(), 0o644, MASTER_IDS, raw)
    return Step(
        "master-known-hosts",
        "the SshRunner runs ssh with BatchMode: this host's key must be known beforehand",
        (f"{jail.at(path)} does not name this host's key",),
        files=(write,),
    )


def master_dirs_step(h: Host) -> Step | None:
    jail = h.master
    if jail.path is None:
        return None
    commands, check = [], []
    for d in (h.cfg.state_dir, h.master_dir, f"{h.cfg.state_dir}/incoming"):
        st = h.jail_stat(jail, d)
        if (
            st is None
            or not st.is_dir
            or (st.uid, st.gid, st.mode) != (MASTER_UID, MASTER_UID, 0o755)
        ):
            check.append(f"{jail.at(d)} is missing or not {MASTER_IDS} 0755")
            commands.append(install_dir_cmd(jail.at(d), MASTER_IDS, 0o755))
    if not commands:
        return None
    return Step(
        "master-directories",
        "jails spec g.124: the master directory owned by its user; incoming uploads beside it",
        tuple(check),
        tuple(commands),
    )


def master_config_step(h: Host) -> Step | None:
    jail, ctx = h.master, h.ctx
    if jail.path is None:
        return None
    pth = (
        f"# {MARKER}: the master runs the host's jailfarm and the Buildbot it was tested "
        f"with\nimport sys; sys.path.insert(0, {ctx.site_packages!r})\n"
    )
    wanted = (
        (f"{h.master_site}/jailfarm.pth", pth, 0o644, "0:0"),
        (f"{h.master_dir}/buildbot.tac", MASTER_TAC, 0o644, MASTER_IDS),
        (f"{h.master_dir}/master.cfg", ctx.master_cfg, 0o644, MASTER_IDS),
        (f"{h.master_dir}/farm.toml", ctx.farm_toml, 0o600, MASTER_IDS),
    )
    files = []
    for path, content, mode, owner in wanted:
        before = h.jail_text(jail, path)
        if before != content:
            raw = None if before is None else before.encode()
            files.append(FileWrite(jail.at(path), content.encode(), mode, owner, raw))
    if not files:
        return None
    commands = []
    new_master = h.jail_text(jail, f"{h.master_dir}/buildbot.tac") is None
    if new_master:
        # Creates the database (create-master exits 0 even when that fails, buildbot-4.3.md 1.3).
        commands.append(
            jexec_cmd(
                jail.name,
                [h.buildbot, "upgrade-master", h.master_dir],
                user=MASTER_USER,
                timeout=600,
            )
        )
    elif h.service_running(jail) and not restarts(h, jail):
        commands.append(jexec_cmd(jail.name, ["service", "buildbot", "onereload"], timeout=120))
    return Step(
        "master-config",
        "jails spec g.124-g.125, g.131: master.cfg builds everything from farm.toml (mode 0600: "
        "it may hold the database password); `service buildbot reload` applies changes",
        tuple(f"{f.path} {'differs' if f.before else 'does not exist'}" for f in files),
        tuple(commands),
        tuple(files),
    )


def service_rc_step(h: Host, jail: ServiceJail) -> Step | None:
    if jail.path is None:
        return None
    have = h.jail_rc(jail)
    missing = [f"{k}={v}" for k, v in jail.rc if have.get(k) != v]
    if not missing:
        return None
    return Step(
        f"{jail.role}-rc",
        "jails spec g.125 (buildbot_enable, buildbot_basedir, buildbot_user; the port's rc.d "
        "script) and g.130 (nginx_enable), set in the jail's rc.conf from the host",
        tuple(f"{a.split('=')[0]} is not {a.split('=', 1)[1]!r}" for a in missing),
        (sysrc_cmd(*missing, root=jail.path),),
    )


def nginx_config_step(h: Host) -> Step | None:
    jail, site = h.nginx, h.site
    if jail.path is None:
        return None
    content = render_nginx_conf(site)
    before = h.jail_text(jail, site.conf_file)
    files, commands, check = [], [], []
    if before != content:
        raw = None if before is None else before.encode()
        files.append(FileWrite(jail.at(site.conf_file), content.encode(), 0o644, "root:wheel", raw))
        check.append(f"{jail.at(site.conf_file)} {'differs' if before else 'does not exist'}")
    for d in (site.temp_dir, site.error_log.rsplit("/", 1)[0]):
        if h.jail_stat(jail, d) is None:
            check.append(f"{jail.at(d)} does not exist")
            commands.append(Cmd(("install", "-d", "-m", "0755", jail.at(d))))
    if files and h.service_running(jail) and not restarts(h, jail):
        commands.append(jexec_cmd(jail.name, ["service", "nginx", "onereload"], timeout=120))
    if not files and not commands:
        return None
    return Step(
        "nginx-config",
        "jails spec h.134, g.130, feature 19: packages, bulk logs, poudriere's pages and the "
        "Buildbot UI at the master jail's address (provision/nginx.py)",
        tuple(check),
        tuple(commands),
        tuple(files),
    )


def service_step(h: Host, jail: ServiceJail) -> Step | None:
    if jail.path is None or h.service_running(jail):
        return None
    # A jail this plan (re)starts runs its services from rc itself, if they are already
    # installed and enabled (else `service start` would find it running and fail).
    enabled = all(h.jail_rc(jail).get(k) == v for k, v in jail.rc)
    installed = set(jail.packages) <= h.installed(jail.path if h.userland(jail) else None)
    if restarts(h, jail) and enabled and installed:
        return None
    return Step(
        f"{jail.role}-service",
        "jails spec g.125, g.130: start the service in its jail",
        (f"{jail.service} is not running in jail {jail.name}",),
        (jexec_cmd(jail.name, ["service", jail.service, "start"], timeout=300),),
    )
