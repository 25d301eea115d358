"""What `jailfarm provision` reads from a FreeBSD host (pure): the queries, typed views of
their answers (each parser raises `ParseError` on output it does not expect) and the farm's
layout derived from farm.toml and those answers. The steps are in freebsd.py.

Layout (datasets below `zfs.root`, each created with `jailfarm:owner=<farm>`):
  jails/ packages/ templates/worker   what the workers use (workers/layout.py)
  services/<master> services/<nginx>  the master and nginx jails (thick: base.txz extracted)
  reserve                             an unmounted dataset holding the pool reservation (c.63)
Spec citations: "jails spec" is shared/spec/freebsd-jails-zfs.md; poudriere.md and
buildbot-4.3.md are in shared/spec.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

from jailfarm.cmd import Cmd
from jailfarm.errors import ParseError
from jailfarm.host import zfs as zfsops
from jailfarm.host.base import JailSpec, Mount
from jailfarm.host.freebsd import jexec_cmd, jls_cmd, parse_jls_json
from jailfarm.host.jailconf import Param, jail_params
from jailfarm.provision.nginx import site_from_config
from jailfarm.provision.plan import (
    cat_cmd,
    exit_status,
    file_text,
    parse_sysrc,
    stat_cmd,
)
from jailfarm.provision.plan import parse_stat as _parse_stat
from jailfarm.workers.layout import CURRENT, OWNER, templates_dataset
from jailfarm.workers.templatefill import (
    parse_uname,
)
from jailfarm.workers.workerplan import tree_mounts

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig
    from jailfarm.host.jailconf import ParamValue
    from jailfarm.provision.nginx import NginxSite
    from jailfarm.provision.plan import Facts, Stat

MASTER_USER = "buildbot-master"  # jails spec g.124, j.154
MASTER_UID = 1002  # fixed, like the worker's 1001, so the host can chown files for it
MASTER_IDS = f"{MASTER_UID}:{MASTER_UID}"
NGINX_PACKAGES = ("nginx", "poudriere")  # poudriere only for its status pages (h.134)
JIB = "/usr/share/examples/jails/jib"  # jails spec d.96
CONSOLE_DIR = "/var/log/jailfarm"  # jail_params' exec.consolelog directory (j.157)
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
JAIL_CONF = "/etc/jail.conf"  # what `service jail` reads (jails spec a.4 #16)
PF_CONF = "/etc/pf.conf"
SSHD_CONFIG = "/etc/ssh/sshd_config"
LOADER_CONF = "/boot/loader.conf"
RACCT = "kern.racct.enable=1"
# Kernel modules a jailed poudriere cannot load (poudriere.md 3.1; jails spec gotcha 19):
# (file for kldload and kld_list, module name for kldstat -m).
MODULES = (
    ("tmpfs", "tmpfs"),
    ("nullfs", "nullfs"),
    ("procfs", "procfs"),
    ("fdescfs", "fdescfs"),
    ("linprocfs", "linprocfs"),
)
LINUX_MODULES = {
    "amd64": (("linux", "linuxelf"), ("linux64", "linux64elf")),
    "i386": (("linux", "linuxelf"),),
}
HOST_RC = ("kld_list", "cloned_interfaces", "ifconfig_lo1", "jail_enable", "jail_list", "pf_enable")
ZFS_PROPS = ("type", "mountpoint", "mounted", "readonly", "reservation", "origin", "creation")
ZFS_USER = (OWNER, CURRENT)
_USERLAND = re.compile(r'^USERLAND_VERSION="([^"\n]+)"$', re.MULTILINE)
_RELEASE = re.compile(r"([0-9]+)\.([0-9]+)-[A-Z0-9]+(?:-p[0-9]+)?")
_PKG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]*")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_YES = ("yes", "true", "on", "1")


@dataclass(frozen=True)
class Context:
    """What the plan needs besides farm.toml and the facts: the farm.toml text and master.cfg
    the master gets, the site-packages directory of the jailfarm installation running the
    provisioning (mounted read-only into the master jail, so the master runs the same jailfarm
    and the Buildbot it was tested with), and that Python's version ("3.11": pkg's py311-*)."""

    farm_toml: str
    master_cfg: str
    site_packages: str
    python: str = "3.11"

    @property
    def flavor(self) -> str:
        return "py" + self.python.replace(".", "")


# ---- fact parsers -------------------------------------------------------------------------------


def parse_release(text: str, tool: str = "freebsd-version") -> tuple[int, int]:
    """(major, minor) of a release such as 14.1-RELEASE-p5."""
    m = _RELEASE.fullmatch(text.strip())
    if m is None:
        raise ParseError(tool, 1, text.strip()[:200], "expected a release such as 14.1-RELEASE")
    return int(m[1]), int(m[2])


def parse_userland(script: str) -> str:
    """The USERLAND_VERSION baked into a tree's /bin/freebsd-version (a sh script)."""
    m = _USERLAND.search(script)
    if m is None:
        raise ParseError("freebsd-version", 1, script[:80], "no USERLAND_VERSION line")
    parse_release(m[1])
    return m[1]


def parse_pool_size(text: str, pool: str) -> int:
    """Bytes from `zpool list -H -p -o name,size POOL`."""
    fields = text.strip().split("\t")
    if len(fields) != 2 or fields[0] != pool or not fields[1].isdigit():
        raise ParseError("zpool list", 1, text.strip()[:200], "expected NAME<TAB>SIZE")
    return int(fields[1])


def parse_pkg_names(text: str) -> frozenset[str]:
    """Package names from `pkg query -a %n`, one per line."""
    names = set()
    for no, line in enumerate(text.splitlines(), 1):
        if not _PKG_NAME.fullmatch(line):
            raise ParseError("pkg query", no, line, "expected a package name")
        names.add(line)
    return frozenset(names)


def parse_passwd_uid(text: str, user: str) -> int | None:
    """The uid of `user` in a passwd(5) file, None if absent."""
    for no, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 7 or not fields[2].isdigit():
            raise ParseError("passwd", no, line, "expected 7 ':'-separated fields")
        if fields[0] == user:
            return int(fields[2])
    return None


def yes(value: str | None) -> bool:
    return (value or "").lower() in _YES


def base_release(release: str) -> str:
    return re.sub(r"-p[0-9]+$", "", release)


def _in(root: str, path: str) -> str:
    return root.rstrip("/") + path


def public_key_file(key_file: str) -> str:
    """Where the signing key's public half goes for consumers: `repo.key` -> `repo.pub` (the
    dev host's convention, provision/devhost.py)."""
    return posixpath.splitext(key_file)[0] + ".pub"


# ---- command helpers shared by the steps --------------------------------------------------------


def sysrc_cmd(*assignments: str, root: str | None = None) -> Cmd:
    """`sysrc [-R root] name=value...`: rc.conf(5) edits, in a jail's tree with -R."""
    return Cmd(("sysrc", *(("-R", root) if root else ()), *assignments))


def install_dir_cmd(path: str, ids: str, mode: int) -> Cmd:
    """`install -d`: makes the directory, or fixes the owner and mode of one that exists."""
    uid, _, gid = ids.partition(":")
    return Cmd(("install", "-d", "-o", uid, "-g", gid, "-m", f"{mode:04o}", path))


# ---- the service jails --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceJail:
    """The master or the nginx jail: its dataset and root, its address and mounts, the packages
    it gets and the rc.conf variables of its service."""

    role: str
    name: str
    address: str
    dataset: str
    path: str | None
    mounts: tuple[Mount, ...]
    packages: tuple[str, ...]
    service: str
    rc: tuple[tuple[str, str], ...]

    def at(self, path: str) -> str:
        if self.path is None:
            raise ValueError(f"jail {self.name} has no root")
        return _in(self.path, path)


class Host:
    """farm.toml, the context and the facts, with everything derived from them: what to ask
    the host (`queries`) and typed views of the answers."""

    def __init__(self, cfg: FarmConfig, ctx: Context, facts: Facts) -> None:
        self.cfg, self.ctx, self.facts = cfg, ctx, facts
        self.p = cfg.provision
        self.root = cfg.zfs.root
        self.problems: list[str] = []
        self.notes: list[str] = []

    # -- names and places

    @property
    def lo1(self) -> bool:
        return self.p.network_mode == "lo1"

    @cached_property
    def datasets(self) -> dict[str, str]:
        """Datasets jailfarm makes, by role."""
        r = self.root
        return {
            "jails": f"{r}/jails",
            "packages": f"{r}/packages",
            "templates": f"{r}/templates",
            "services": f"{r}/services",
            "master": f"{r}/services/{self.p.master_jail}",
            "nginx": f"{r}/services/{self.p.nginx_jail}",
        }

    @property
    def reserve(self) -> str:
        return f"{self.root}/reserve"

    @property
    def ancestors(self) -> list[str]:
        """The pool and every dataset between it and the root (the pool even when it is the
        root: its `available` is what a reservation takes from)."""
        parts = self.root.split("/")
        return ["/".join(parts[: i + 1]) for i in range(max(1, len(parts) - 1))]

    @property
    def key_dir(self) -> str | None:
        key = self.cfg.signing.key_file
        return posixpath.dirname(key) if key else None

    @property
    def ssh_dir(self) -> str:
        return f"{self.cfg.state_dir}/ssh"

    @property
    def master_pub(self) -> str:
        """The master's ssh public key as sshd reads it (AuthorizedKeysFile), root-owned."""
        return f"{self.ssh_dir}/master.pub"

    @property
    def host_dirs(self) -> list[tuple[str, str, int]]:
        """Host directories: (path, uid:gid, mode)."""
        dirs = [
            (self.cfg.publish.root, MASTER_IDS, 0o755),
            (self.cfg.publish.logs, MASTER_IDS, 0o755),
            (self.ssh_dir, "0:0", 0o755),
            (CONSOLE_DIR, "0:0", 0o700),
        ]
        if self.key_dir:
            dirs.append((self.key_dir, MASTER_IDS, 0o700))
        return dirs

    @cached_property
    def master(self) -> ServiceJail:
        cfg, ctx = self.cfg, self.ctx
        mounts = [Mount(ctx.site_packages, ctx.site_packages)]
        mounts += [Mount(d, d, read_only=False) for d in (cfg.publish.root, cfg.publish.logs)]
        if self.key_dir:
            mounts.append(Mount(self.key_dir, self.key_dir))
        mounts += tree_mounts(cfg)
        rc = (
            ("buildbot_enable", "YES"),
            ("buildbot_basedir", self.master_dir),
            ("buildbot_user", MASTER_USER),
        )
        packages = (f"{ctx.flavor}-buildbot", f"{ctx.flavor}-buildbot-www", "git-lite")
        return self._jail(
            "master", self.p.master_jail, self.p.master_address, mounts, packages, "buildbot", rc
        )

    @cached_property
    def nginx(self) -> ServiceJail:
        n, pub = self.cfg.nginx, self.cfg.publish
        dirs = [pub.root, pub.logs]
        dirs += [posixpath.dirname(f) for f in (n.tls_cert, n.tls_key, n.htpasswd) if f]
        mounts = [Mount(d, d) for d in dict.fromkeys(dirs)]
        rc = (("nginx_enable", "YES"),)
        return self._jail(
            "nginx", self.p.nginx_jail, self.p.nginx_address, mounts, NGINX_PACKAGES, "nginx", rc
        )

    def _jail(
        self,
        role: str,
        name: str,
        address: str,
        mounts: list[Mount],
        packages: tuple[str, ...],
        service: str,
        rc: tuple[tuple[str, str], ...],
    ) -> ServiceJail:
        dataset = self.datasets[role]
        return ServiceJail(
            role,
            name,
            address,
            dataset,
            self.mountpoint(dataset),
            tuple(mounts),
            packages,
            service,
            rc,
        )

    @property
    def jails(self) -> tuple[ServiceJail, ServiceJail]:
        return self.master, self.nginx

    @property
    def master_dir(self) -> str:
        return f"{self.cfg.state_dir}/master"

    @property
    def master_home(self) -> str:
        return f"/home/{MASTER_USER}"

    @property
    def master_site(self) -> str:
        return f"/usr/local/lib/python{self.ctx.python}/site-packages"

    # -- queries

    def queries(self) -> list[Cmd]:
        """Everything to ask the host, given what is known so far (later rounds read files
        below the mountpoints the first round found)."""
        cfg = self.cfg
        qs = [
            Cmd(("uname", "-m", "-p")),
            Cmd(("freebsd-version", "-r")),
            self._sysrc_cmd(None, HOST_RC),
            # The linux modules are asked about everywhere; only amd64/i386 hosts need them.
            *(self._kldstat(module) for _, module in (*MODULES, *LINUX_MODULES["amd64"])),
            Cmd(("ifconfig", "-l")),
            jls_cmd(),
            Cmd(("zpool", "list", "-H", "-p", "-o", "name,size", cfg.zfs.pool)),
            *(zfsops.get_cmd([a], ("type", "mountpoint", "available")) for a in self.ancestors),
            zfsops.get_cmd([self.root], (*ZFS_PROPS, *ZFS_USER), recursive=True),
            cat_cmd(JAIL_CONF),
            cat_cmd(SSHD_CONFIG),
            cat_cmd(HOST_KEY),
            cat_cmd(self.master_pub),
            Cmd(("service", "sshd", "onestatus")),
            *(stat_cmd(path) for path, _, _ in self.host_dirs),
            stat_cmd(self.ctx.site_packages),
            *(stat_cmd(m.host_path) for m in tree_mounts(cfg)),
        ]
        if self.lo1:
            qs += [cat_cmd(PF_CONF), Cmd(("pfctl", "-s", "Running"))]
        else:
            qs.append(stat_cmd(JIB))
        if cfg.signing.key_file:
            qs += [stat_cmd(cfg.signing.key_file), stat_cmd(public_key_file(cfg.signing.key_file))]
        if cfg.workers.memory_limit:
            qs += [cat_cmd(LOADER_CONF), Cmd(("sysctl", "-n", "kern.racct.enable"))]
        for jail in self.jails:
            qs += self._jail_queries(jail)
        return qs + self._template_queries()

    def _kldstat(self, module: str) -> Cmd:
        return Cmd(("kldstat", "-q", "-m", module))

    def _sysrc_cmd(self, root: str | None, names: tuple[str, ...]) -> Cmd:
        where = ("-R", root) if root else ()
        return Cmd(("sysrc", *where, "-e", "-i", *names))

    def _mounted_root(self, dataset: str) -> str | None:
        """The mountpoint of `dataset` if it exists and is mounted (its files can be read)."""
        row = self.zfs_rows.get(dataset) if self._has_zfs else None
        if not row or row.get("mounted") != "yes":
            return None
        return self.mountpoint(dataset)

    def _jail_queries(self, jail: ServiceJail) -> list[Cmd]:
        root = self._mounted_root(jail.dataset)
        if root is None:
            return []
        version = cat_cmd(_in(root, "/bin/freebsd-version"))
        if not self.facts.has(version) or self.userland(jail) is None:
            return [version]
        qs = [
            stat_cmd(_in(root, "/var/db/pkg/local.sqlite")),
            self._sysrc_cmd(root, self._jail_rc_names(jail)),
            *(stat_cmd(_in(root, m.jail_path)) for m in jail.mounts),
        ]
        if self._pkgdb(jail.path):
            qs.append(self._pkg_query(root))
        if self.running(jail.name):
            qs.append(self._service_status(jail))
        if jail.role == "master":
            qs += self._master_queries(root)
        else:
            qs += self._nginx_queries(root)
        return qs

    def _master_queries(self, root: str) -> list[Cmd]:
        key = _in(root, f"{self.master_home}/.ssh/id_ed25519")
        return [
            cat_cmd(_in(root, "/etc/passwd")),
            stat_cmd(key),
            cat_cmd(key + ".pub"),
            cat_cmd(_in(root, f"{self.master_home}/.ssh/known_hosts")),
            *(stat_cmd(_in(root, d)) for d in self._master_dirs()),
            *(cat_cmd(_in(root, path)) for path in self._master_files()),
        ]

    def _nginx_queries(self, root: str) -> list[Cmd]:
        site = self.site
        dirs = (site.temp_dir, posixpath.dirname(site.error_log))
        return [cat_cmd(_in(root, site.conf_file)), *(stat_cmd(_in(root, d)) for d in dirs)]

    def _template_queries(self) -> list[Cmd]:
        root = self._mounted_root(templates_dataset(self.cfg))
        if root is None:
            return []
        etc = _in(root, "/usr/local/etc")
        qs = [
            cat_cmd(_in(root, "/bin/freebsd-version")),
            stat_cmd(_in(root, "/var/db/pkg/local.sqlite")),
            cat_cmd(f"{etc}/poudriere.conf"),
            cat_cmd(f"{etc}/sudoers.d/jailfarm-poudriere"),
        ]
        for j in self.cfg.poudriere_jails:
            qs += [cat_cmd(f"{etc}/poudriere.d/jails/{j.name}/{f}") for f in ("version", "arch")]
        if self._pkgdb(root):
            qs.append(self._pkg_query(root))
        return qs

    def _pkg_query(self, root: str) -> Cmd:
        # pkg -c: the host's pkg on the tree's database, the jail need not run (jails spec f.117).
        return Cmd(("pkg", "-c", root, "query", "-a", "%n"))

    def _service_status(self, jail: ServiceJail) -> Cmd:
        # onestatus: whether it runs, whatever <service>_enable says (rc.subr(8)).
        return jexec_cmd(jail.name, ["service", jail.service, "onestatus"])

    def _jail_rc_names(self, jail: ServiceJail) -> tuple[str, ...]:
        return tuple(name for name, _ in (*self.jail_net_rc(jail), *jail.rc))

    def _master_dirs(self) -> list[str]:
        state = self.cfg.state_dir
        return [state, self.master_dir, f"{state}/incoming"]

    def _master_files(self) -> list[str]:
        return [
            f"{self.master_dir}/buildbot.tac",
            f"{self.master_dir}/master.cfg",
            f"{self.master_dir}/farm.toml",
            f"{self.master_site}/jailfarm.pth",
        ]

    # -- answers

    def text(self, path: str) -> str | None:
        return file_text(self.facts.get(cat_cmd(path)), path)

    def stat(self, path: str) -> Stat | None:
        return _parse_stat(self.facts.get(stat_cmd(path)), path)

    @cached_property
    def uname(self) -> tuple[str, str]:
        return parse_uname(self._ok(Cmd(("uname", "-m", "-p"))))

    @cached_property
    def host_release(self) -> tuple[int, int]:
        return parse_release(self._ok(Cmd(("freebsd-version", "-r"))))

    def _ok(self, cmd: Cmd) -> str:
        answer = self.facts.get(cmd)
        if answer.rc != 0:
            raise ParseError(cmd.argv[0], 1, answer.err.strip()[:200], f"{cmd} exited {answer.rc}")
        return answer.out

    @cached_property
    def host_rc(self) -> dict[str, str]:
        return parse_sysrc(self.facts.get(self._sysrc_cmd(None, HOST_RC)))

    def jail_rc(self, jail: ServiceJail) -> dict[str, str]:
        if jail.path is None or self.userland(jail) is None:
            return {}
        return parse_sysrc(self.facts.get(self._sysrc_cmd(jail.path, self._jail_rc_names(jail))))

    def loaded(self, module: str) -> bool:
        return exit_status(self.facts.get(self._kldstat(module)), "kldstat")

    @cached_property
    def interfaces(self) -> frozenset[str]:
        words = self._ok(Cmd(("ifconfig", "-l"))).split()
        if not words or not all(re.fullmatch(r"[a-z][a-z0-9_.]*", w) for w in words):
            raise ParseError("ifconfig -l", 1, " ".join(words)[:200], "expected interface names")
        return frozenset(words)

    @cached_property
    def jls(self) -> frozenset[str]:
        return frozenset(j.name for j in parse_jls_json(self._ok(jls_cmd())))

    def running(self, name: str) -> bool:
        return name in self.jls

    @cached_property
    def pool_size(self) -> int | None:
        cmd = Cmd(("zpool", "list", "-H", "-p", "-o", "name,size", self.cfg.zfs.pool))
        answer = self.facts.get(cmd)
        if answer.rc != 0:
            return None
        return parse_pool_size(answer.out, self.cfg.zfs.pool)

    @cached_property
    def zfs_rows(self) -> dict[str, dict[str, str]]:
        rows: dict[str, dict[str, str]] = {}
        queries = [zfsops.get_cmd([a], ("type", "mountpoint", "available")) for a in self.ancestors]
        queries.append(zfsops.get_cmd([self.root], (*ZFS_PROPS, *ZFS_USER), recursive=True))
        for cmd in queries:
            answer = self.facts.get(cmd)
            if answer.rc != 0:
                if zfsops.MISSING in answer.err:
                    continue
                raise ParseError("zfs get", 1, answer.err.strip()[:200], f"{cmd} failed")
            for name, props in zfsops.parse_get(answer.out).items():
                rows.setdefault(name, {}).update(props)
        return rows

    @property
    def _has_zfs(self) -> bool:
        return self.facts.has(zfsops.get_cmd([self.root], (*ZFS_PROPS, *ZFS_USER), recursive=True))

    def exists(self, dataset: str) -> bool:
        return dataset in self.zfs_rows

    def ours(self, dataset: str) -> bool:
        return self.zfs_rows.get(dataset, {}).get(OWNER) == self.cfg.name

    def mountpoint(self, dataset: str) -> str | None:
        """Where `dataset` is (or, once created with an inherited mountpoint, will be)
        mounted; None for `none`/`legacy`, or when the pool is unknown."""
        if not self._has_zfs:
            return None
        row = self.zfs_rows.get(dataset)
        if row is not None:
            value = row.get("mountpoint", "-")
            return value if value.startswith("/") else None
        parent, _, leaf = dataset.rpartition("/")
        if not parent:
            return None
        above = self.mountpoint(parent)
        return None if above is None else posixpath.join(above, leaf)

    def userland(self, jail: ServiceJail) -> str | None:
        """The release of the jail's userland; None if none is extracted yet."""
        root = self._mounted_root(jail.dataset)
        if root is None:
            return None
        script = self.text(_in(root, "/bin/freebsd-version"))
        return None if script is None else parse_userland(script)

    def _pkgdb(self, root: str | None) -> bool:
        if root is None or not self.facts.has(stat_cmd(_in(root, "/var/db/pkg/local.sqlite"))):
            return False
        return self.stat(_in(root, "/var/db/pkg/local.sqlite")) is not None

    def installed(self, root: str | None) -> frozenset[str]:
        if root is None or not self._pkgdb(root):
            return frozenset()
        answer = self.facts.get(self._pkg_query(root))
        if answer.rc != 0:
            raise ParseError("pkg query", 1, answer.err.strip()[:200], f"exited {answer.rc}")
        return parse_pkg_names(answer.out)

    def service_running(self, jail: ServiceJail) -> bool:
        if not self.running(jail.name) or self.userland(jail) is None:
            return False
        return exit_status(self.facts.get(self._service_status(jail)), "service", (1, 3))

    def jail_text(self, jail: ServiceJail, path: str) -> str | None:
        """A file inside the jail's tree; None if absent or the tree is not there yet."""
        if jail.path is None or self.userland(jail) is None:
            return None
        return self.text(jail.at(path))

    def jail_stat(self, jail: ServiceJail, path: str) -> Stat | None:
        if jail.path is None or self.userland(jail) is None:
            return None
        return self.stat(jail.at(path))

    # -- derived configuration

    @cached_property
    def site(self) -> NginxSite:
        """The nginx site, proxying Buildbot at the master jail's address: a jail's 127.0.0.1
        is the jail's own first address (jails spec gotcha 1), not the master's."""
        return replace(site_from_config(self.cfg), buildbot_host=self.p.master_address)

    def jail_net_rc(self, jail: ServiceJail) -> tuple[tuple[str, str], ...]:
        """vnet: the jail configures its own interface and route (jails spec d.97)."""
        if self.lo1:
            return ()
        prefix = ipaddress.IPv4Network(self.p.network).prefixlen
        return (
            (f"ifconfig_e0b_{jail.name}", f"inet {jail.address}/{prefix}"),
            ("defaultrouter", self.p.gateway or ""),
        )

    def jail_spec_params(self, jail: ServiceJail) -> tuple[Param, ...]:
        """jail(8) parameters of a service jail: the service profile (jails spec j.1) with
        its address on lo1 or its own vnet stack bridged by jib (d.96)."""
        assert jail.path is not None
        spec = JailSpec(
            name=jail.name,
            path=jail.path,
            hostname=f"{jail.name}.{self.cfg.name.replace('_', '-')}",
            profile="service",
            ip4=(f"lo1|{jail.address}",) if self.lo1 else (),
            private_network=not self.lo1,
            mounts=jail.mounts,
        )
        params = []
        for param in jail_params(spec, consolelog_dir=CONSOLE_DIR):
            if param.name == "ip6" and param.value == "inherit":
                # jails spec j.149: never the host's IPv6 addresses (ip6=inherit) in a service.
                params.append(
                    Param("ip6", "disable", "jails spec j.149: no inherited host addresses")
                )
            else:
                params.append(param)
        if not self.lo1:
            params += self._vnet_params(jail)
        return tuple(params)

    def _vnet_params(self, jail: ServiceJail) -> list[Param]:
        iface = self.p.external_interface or "em0"
        value: ParamValue = f"e0b_{jail.name}"
        return [
            Param("vnet.interface", value, "jails spec d.96: jib names the jail's end e0b_<jail>"),
            Param("exec.prestart", (f"/bin/sh {JIB} addm {jail.name} {iface}",), "jails spec d.96"),
            Param("exec.poststop", (f"/bin/sh {JIB} destroy {jail.name}",)),
        ]

    # -- more answers

    @cached_property
    def racct(self) -> str:
        return self._ok(Cmd(("sysctl", "-n", "kern.racct.enable"))).strip()

    @cached_property
    def pf_running(self) -> bool:
        # pfctl -s Running: non-zero exit when pf is disabled (pfctl(8)), also when pf.ko is
        # not loaded (no /dev/pf).
        return exit_status(self.facts.get(Cmd(("pfctl", "-s", "Running"))), "pfctl")

    @cached_property
    def sshd_running(self) -> bool:
        return exit_status(self.facts.get(Cmd(("service", "sshd", "onestatus"))), "service")

    @cached_property
    def sshd_config(self) -> str | None:
        return self.text(SSHD_CONFIG)

    @cached_property
    def host_key(self) -> str | None:
        """This host's ed25519 public key line (what the master's known_hosts needs)."""
        text = self.text(HOST_KEY)
        if text is None:
            return None
        fields = text.split()
        if len(fields) < 2 or fields[0] != "ssh-ed25519" or not _B64.fullmatch(fields[1]):
            raise ParseError(HOST_KEY, 1, text.strip()[:200], "expected ssh-ed25519 KEY [comment]")
        return text.strip()

    def master_uid(self, passwd: str | None) -> int | None:
        return None if passwd is None else parse_passwd_uid(passwd, MASTER_USER)

    @property
    def buildbot(self) -> str:
        """The buildbot script the port's rc.d script runs (command=.../buildbot-X.Y)."""
        return f"/usr/local/bin/buildbot-{self.ctx.python}"

    def template_tree(self) -> TemplateTree | None:
        """What the worker template's tree holds; None if it is not mounted."""
        root = self._mounted_root(templates_dataset(self.cfg))
        if root is None:
            return None
        etc = _in(root, "/usr/local/etc")
        script = self.text(_in(root, "/bin/freebsd-version"))
        jails = {}
        for j in self.cfg.poudriere_jails:
            version = self.text(f"{etc}/poudriere.d/jails/{j.name}/version")
            arch = self.text(f"{etc}/poudriere.d/jails/{j.name}/arch")
            if version is not None and arch is not None:
                jails[j.name] = (version.strip(), arch.strip())
        return TemplateTree(
            userland=None if script is None else parse_userland(script),
            packages=self.installed(root),
            poudriere_conf=self.text(f"{etc}/poudriere.conf"),
            sudoers=self.text(f"{etc}/sudoers.d/jailfarm-poudriere"),
            jails=jails,
        )


@dataclass(frozen=True)
class TemplateTree:
    """The worker template's tree as read from the host."""

    userland: str | None
    packages: frozenset[str]
    poudriere_conf: str | None
    sudoers: str | None
    jails: dict[str, tuple[str, str]]
