"""farm.toml: the typed, validated description of one farm (pure, except `load_farm`, which
reads the file).

`parse_farm` checks everything and raises one `ConfigError` listing every problem, each naming
the key, the bad value and what is expected. The README's configuration reference is for
users; the value types and the reader live in configschema.py.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import urlsplit

from jailfarm import configschema as cs
from jailfarm import names
from jailfarm.cmd import Secret
from jailfarm.configschema import format_size, hash_password, parse_size, verify_password
from jailfarm.errors import ConfigError

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

__all__ = [
    "ConfigError",
    "DatabaseConfig",
    "FarmConfig",
    "JailHost",
    "NginxConfig",
    "PortSet",
    "PortsTree",
    "PoudriereJail",
    "ProvisionConfig",
    "PublishConfig",
    "SigningConfig",
    "TemplateConfig",
    "WebConfig",
    "WebUser",
    "WorkersConfig",
    "ZfsConfig",
    "format_size",
    "hash_password",
    "load_farm",
    "parse_farm",
    "parse_size",
    "verify_password",
]
Platform = Literal["freebsd", "linux-dev"]
PLATFORMS = ("freebsd", "linux-dev")
GiB, MiB = 1 << 30, 1 << 20
ROLES = ("viewer", "ops", "admin")
ROOT_MAX = 100  # leaves room below zfs.root for clones and poudriere's datasets (255 in all)
MOUNTPOINT_MAX = 32  # nested poudriere mount paths grow from the pool mountpoint
MIN_POOL = 64 * MiB  # zpool refuses smaller vdevs
MIN_MEMORY = 64 * MiB  # a lower rctl limit only makes every build fail
DEFAULT_PACKAGES = ("py311-buildbot-worker", "poudriere", "git-lite")
DEFAULT_DATABASE = "sqlite:///state.sqlite"  # relative to the master directory


@dataclass(frozen=True)
class ZfsConfig:
    """The pool, the dataset root everything the farm creates lives below, and the free-space
    reserve in bytes. `pool_file`, `pool_size` and `mountpoint` describe the file-backed
    zfs-fuse pool of a linux-dev farm (None on freebsd, where the pool already exists)."""

    pool: str
    root: str
    reserve: int = GiB
    pool_file: str | None = None
    pool_size: int | None = None
    mountpoint: str | None = None


@dataclass(frozen=True)
class JailHost:
    """A machine that runs worker jails: this one (`ssh` is None) or one reached over SSH."""

    name: str
    ssh: str | None = None
    ssh_user: str = "root"
    ssh_port: int = 22
    max_jails: int = 2

    @property
    def is_local(self) -> bool:
        return self.ssh is None


@dataclass(frozen=True)
class WorkersConfig:
    """Worker jails: timeouts and leases in seconds, poudriere builders per worker, the master's
    worker port, and the FreeBSD-only jail limits (None on linux-dev; memory in bytes)."""

    attach_timeout: int = 120
    lease: int = 14400
    builders: int = 2
    pb_port: int = 9989
    private_network: bool = False
    devfs_ruleset: int | None = 4
    memory_limit: int | None = None
    master_address: str | None = None

    @property
    def children_max(self) -> int:
        """Child jails a worker may create: poudriere needs 2 x (builders + 1)."""
        return 2 * (self.builders + 1)


@dataclass(frozen=True)
class TemplateConfig:
    """The worker template: FreeBSD release and packages (freebsd only; None and () on
    linux-dev) and how many template generations to keep."""

    release: str | None = None
    packages: tuple[str, ...] = ()
    keep: int = 3


@dataclass(frozen=True)
class PoudriereJail:
    """A poudriere build jail; `arch` is the TARGET_ARCH (amd64, aarch64, ...)."""

    name: str
    version: str
    arch: str = "amd64"

    @property
    def poudriere_arch(self) -> str:
        """The `poudriere jail -a` spelling (TARGET.TARGET_ARCH, e.g. arm64.aarch64)."""
        return cs.ARCHES[self.arch]

    @property
    def abi(self) -> str:
        """The pkg ABI of the packages this jail builds, e.g. FreeBSD:14:amd64."""
        return f"FreeBSD:{self.version.split('.')[0]}:{self.arch}"


@dataclass(frozen=True)
class PortsTree:
    """A ports tree: its git URL and branch, and how pushes to it become builds (the README's
    configuration reference): a GitPoller every `poll_interval` seconds (0: none), web hooks and
    `buildbot sendchange` checked against the secret in `hook_secret_file`, a full bulk every
    night at `nightly` ("HH:MM", "" for none), a testport of each changed port (`testport`),
    and `stable_timer` seconds of quiet that gather one push's commits into one build."""

    name: str
    url: str
    branch: str = "main"
    poll_interval: int = 300
    hook_secret_file: str | None = None
    nightly: str = "03:00"
    testport: bool = True
    stable_timer: int = 10


@dataclass(frozen=True)
class PortSet:
    """A poudriere set: make.conf assignments in file order (a key ending in '+' appends) and
    the origins to build (empty: the whole tree)."""

    name: str
    make_conf: tuple[tuple[str, str], ...] = ()
    packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishConfig:
    """Where repository generations are written (`root`) and where the bulk logs nginx serves
    at /data live (`logs`, laid out like poudriere's logs/bulk); `parse_farm` always sets
    `logs` (`<state_dir>/logs/bulk` by default)."""

    root: str
    keep: int = 5
    logs: str = ""
    catalogue: str = "jailfarm"  # or "pkg": FreeBSD's `pkg repo` writes the catalogues


@dataclass(frozen=True)
class SigningConfig:
    """Exactly one of a private key file or a signing command (argv for pkg's
    signing_command protocol)."""

    key_file: str | None = None
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebUser:
    """A web UI user: a PBKDF2 hash, never the password (`hash_password` makes one), and a
    role from ROLES, each including the ones before it: a viewer reads, ops also force,
    stop, rebuild and cancel builds and roll repositories back, an admin may do anything."""

    name: str
    password_hash: str = field(repr=False)
    role: str = "viewer"


@dataclass(frozen=True)
class WebConfig:
    """Buildbot's web server. `auth` is "users" (sign-in against `users`; anonymous visitors
    only read) or "none" (everyone may do everything: loopback binds only); it defaults to
    "users" when users are listed."""

    bind: str = "127.0.0.1"
    port: int = 8010
    url: str = "http://localhost:8010/"
    auth: str = "none"
    users: tuple[WebUser, ...] = ()


@dataclass(frozen=True)
class NginxConfig:
    """nginx in front of the farm: the repositories at /packages/, the bulk logs at /data/,
    poudriere's status pages at / and the Buildbot UI at /buildbot/. TLS on `port` when
    `tls_cert` and `tls_key` are set; HTTP basic authentication from the `htpasswd` file on
    everything but /packages/, and on that too with `protect_packages`. The defaults are
    linux-dev's (freebsd: bind 0.0.0.0, port 80)."""

    bind: str = "127.0.0.1"
    port: int = 8080
    server_name: str = "localhost"
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd: str | None = None
    protect_packages: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None


@dataclass(frozen=True)
class DatabaseConfig:
    """The master's database URL, a `Secret` since it may carry a password: pass
    `url.reveal()` to buildbot and show `display_url` to people."""

    url: Secret = field(default_factory=lambda: Secret(DEFAULT_DATABASE))

    @property
    def display_url(self) -> str:
        return cs.mask_url(self.url.reveal())


NETWORK_MODES = ("lo1", "vnet")
DEFAULT_JAIL_NETWORK = "10.87.0.0/24"
RESERVATION_PERCENT = 20  # jails spec c.63: keep 20% of the pool in a reservation


@dataclass(frozen=True)
class ProvisionConfig:
    """How `jailfarm provision` lays out a FreeBSD host. `network_mode` "lo1": the master and
    nginx jails have addresses on a cloned lo1 (the host's is `host_address`), pf NATs them out
    of `external_interface` and forwards nginx's port to the nginx jail (jails spec d.88-d.90);
    "vnet": each has its own network stack, bridged to `external_interface` with jib(8), on
    the LAN `network` with router `gateway` (d.95-d.97). `reservation` is bytes, or None for
    `reservation_percent` of the pool (c.63). On linux-dev only the reservation is read."""

    network_mode: str = "lo1"
    external_interface: str | None = None
    network: str = DEFAULT_JAIL_NETWORK
    host_address: str = "10.87.0.1"
    gateway: str | None = None
    master_jail: str = "jfmaster"
    master_address: str = "10.87.0.2"
    nginx_jail: str = "jfnginx"
    nginx_address: str = "10.87.0.3"
    reservation: int | None = None
    reservation_percent: int | None = RESERVATION_PERCENT


@dataclass(frozen=True)
class FarmConfig:
    """One farm, as farm.toml describes it (see the README's configuration reference)."""

    name: str
    platform: Platform
    prefix: str
    state_dir: str
    zfs: ZfsConfig
    jail_hosts: tuple[JailHost, ...]
    workers: WorkersConfig
    template: TemplateConfig
    poudriere_jails: tuple[PoudriereJail, ...]
    trees: tuple[PortsTree, ...]
    sets: tuple[PortSet, ...]
    publish: PublishConfig
    signing: SigningConfig
    web: WebConfig
    database: DatabaseConfig
    # What a bulk whose ports failed is: "failure" (the build fails) or "warnings".
    on_port_failure: str = "failure"
    nginx: NginxConfig = field(default_factory=NginxConfig)
    provision: ProvisionConfig = field(default_factory=ProvisionConfig)


def load_farm(path: str | os.PathLike[str]) -> FarmConfig:
    """Read and validate a farm.toml. An unreadable file or a TOML syntax error (tomllib's
    message carries the line and column) is a `ConfigError` too."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, ["the file is not UTF-8 text"]) from None
    return parse_farm(data, source)


def parse_farm(data: Mapping[str, object], source: str = "farm.toml") -> FarmConfig:
    """Validate parsed TOML and build a `FarmConfig`, or raise one `ConfigError` that lists
    every problem: unknown keys, bad values, missing keys and conflicts between keys."""
    report = cs.Report()
    top = cs.Table(data, "", report)
    f = top.table("farm")
    platform = f.need("platform", cs.choice(*PLATFORMS), "", "'freebsd' or 'linux-dev'")
    name = f.get("name", cs.name_of(cs.FARM_NAME), "jailfarm")
    prefix = f.get("prefix", cs.name_of(cs.PREFIX), "jf")
    state_dir = f.get("state_dir", cs.abs_path, _state_default(platform))
    f.done()
    zfs = _zfs(top.table("zfs"), platform, prefix, state_dir)
    hosts = _jail_hosts(top)
    workers = _workers(top.table("workers"), platform)
    template = _template(top.table("template"), platform)
    jails, on_port_failure = _poudriere(top)
    trees = _trees(top)
    sets = _sets(top)
    publish = _publish(top.table("publish"), state_dir, platform)
    signing = _signing(top.table("signing"), platform, state_dir, publish.root)
    _logs_hold_no_key(report, publish, signing)
    _hook_secrets_not_served(report, trees, publish)
    web = _web(top.table("web"), workers.pb_port)
    _remote_workers_reach_master(report, hosts, workers, web)
    nginx = _nginx(top.table("nginx"), platform)
    _nginx_checks(report, platform, state_dir, publish, workers, web, nginx)
    provision = _provision(top.table("provision"), platform, prefix)
    db = top.table("database")
    database = DatabaseConfig(Secret(db.get("url", cs.database_url, DEFAULT_DATABASE)))
    db.done()
    top.done()
    if report.problems:
        raise ConfigError(source, report.problems)
    return FarmConfig(
        name=name,
        platform=cast("Platform", platform),
        prefix=prefix,
        state_dir=state_dir,
        zfs=zfs,
        jail_hosts=hosts,
        workers=workers,
        template=template,
        poudriere_jails=jails,
        trees=trees,
        sets=sets,
        publish=publish,
        signing=signing,
        web=web,
        database=database,
        on_port_failure=on_port_failure,
        nginx=nginx,
        provision=provision,
    )


def _state_default(platform: str) -> str:
    return "/var/db/jailfarm" if platform == "freebsd" else "/var/lib/jailfarm"


def _only(t: cs.Table, platform: str, wanted: str, *keys: str) -> bool:
    """Whether keys that mean something only on `wanted` are read. On the other platform each
    one present is a problem; with an unknown platform they are read, to find other errors."""
    if platform in (wanted, ""):
        return True
    for k in keys:
        t.forbid(
            k, f"is only valid with platform {wanted!r} (this farm is {platform!r}); remove it"
        )
    return False


def _unique(
    report: cs.Report, path: str, values: list[str], key: str = "name", what: str = "name"
) -> None:
    """Report each value that repeats an earlier one; values whose key failed are skipped."""
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        where = f"{path}[{i}].{key}"
        if not report.ok(where):
            continue
        if value in first:
            also = f"{path}[{first[value]}].{key}"
            report.add(where, f"{cs.show(value)} repeats {also}; expected each {what} once")
        first.setdefault(value, i)


def _zfs(t: cs.Table, platform: str, prefix: str, state_dir: str) -> ZfsConfig:
    pool = t.need("pool", cs.name_of(cs.POOL), "", "a ZFS pool name, e.g. 'jailfarm'")
    root = t.need(
        "root", cs.name_of(names.DATASET), "", "a dataset in the pool, e.g. 'jailfarm/farm'"
    )
    reserve = t.get("reserve", cs.size(), GiB)
    pool_file = pool_size = mountpoint = None
    if _only(t, platform, "linux-dev", "pool_file", "pool_size", "mountpoint"):
        pool_file = t.get("pool_file", cs.abs_path, f"{state_dir}/pool.img")
        pool_size = t.get("pool_size", cs.size(MIN_POOL), 4 * GiB)
        mountpoint = t.get("mountpoint", cs.abs_path, f"/{prefix}")
    t.done()
    r = t.report
    if r.ok("zfs.pool", "zfs.root") and not cs.is_under(root, pool):
        expected = f"{cs.show(pool)} or a dataset below it, e.g. '{pool}/farm'"
        r.add("zfs.root", f"{cs.show(root)} is not in pool {cs.show(pool)}; expected {expected}")
    if r.ok("zfs.root") and len(root) > ROOT_MAX:
        why = "clones and poudriere's datasets go below it, 255 characters in all"
        r.add("zfs.root", f"{cs.show(root)} is too long; expected at most {ROOT_MAX} ({why})")
    if pool_size and r.ok("zfs.reserve", "zfs.pool_size") and reserve >= pool_size:
        pool_text = f"zfs.pool_size ({format_size(pool_size)})"
        r.add("zfs.reserve", f"{format_size(reserve)} is not below {pool_text}; expected less")
    if mountpoint and len(mountpoint) > MOUNTPOINT_MAX:
        why = "nested mount paths grow from it"
        r.add(
            "zfs.mountpoint",
            f"{cs.show(mountpoint)} is too long; expected a path of at most "
            f"{MOUNTPOINT_MAX} characters such as '/jf' ({why})",
        )
    return ZfsConfig(pool, root, reserve, pool_file, pool_size, mountpoint)


def _jail_host(t: cs.Table) -> JailHost:
    name = t.need("name", cs.name_of(cs.HOST_LABEL), "", "a label such as 'local' or 'build2'")
    ssh = t.get("ssh", cs.name_of(names.HOSTNAME), None)
    user, port = "root", 22
    if not t.has("ssh"):
        for k in ("ssh_user", "ssh_port"):
            t.forbid(k, "is set without ssh; expected ssh = HOST as well, or neither")
    else:
        user = t.get("ssh_user", cs.name_of(names.USER), "root")
        port = t.get("ssh_port", cs.PORT, 22)
    max_jails = t.get("max_jails", cs.integer(1), 2)
    t.done()
    return JailHost(name, ssh, user, port, max_jails)


def _jail_hosts(top: cs.Table) -> tuple[JailHost, ...]:
    tables = top.tables("jail_hosts")
    if tables is None:
        return (JailHost("local"),)
    if not tables and top.report.ok("jail_hosts"):
        top.report.add("jail_hosts", "empty; expected at least one [[jail_hosts]] table")
    hosts = [_jail_host(t) for t in tables]
    _unique(top.report, "jail_hosts", [h.name for h in hosts])
    machines = [f"{h.ssh}:{h.ssh_port}" if h.ssh else "no ssh (this machine)" for h in hosts]
    _unique(top.report, "jail_hosts", machines, key="ssh", what="machine")
    return tuple(hosts)


def _workers(t: cs.Table, platform: str) -> WorkersConfig:
    attach = t.get("attach_timeout", cs.integer(1), 120)
    lease = t.get("lease", cs.integer(1), 14400)
    builders = t.get("builders", cs.integer(1), 2)
    pb_port = t.get("pb_port", cs.PORT, 9989)
    master_address = t.get("master_address", cs.ip_address, None)
    private = t.get("private_network", cs.boolean, False)
    devfs, memory = None, None
    if _only(t, platform, "freebsd", "devfs_ruleset", "memory_limit"):
        devfs = t.get("devfs_ruleset", cs.integer(0, 65535), 4)
        memory = t.get("memory_limit", cs.size(MIN_MEMORY), None)
    t.done()
    if t.report.ok("workers.lease", "workers.attach_timeout") and lease <= attach:
        expected = f"more seconds than workers.attach_timeout ({attach})"
        t.report.add("workers.lease", f"{lease} is too short; expected {expected}")
    return WorkersConfig(attach, lease, builders, pb_port, private, devfs, memory, master_address)


def _template(t: cs.Table, platform: str) -> TemplateConfig:
    version: str | None = None
    packages: tuple[str, ...] = ()
    if _only(t, platform, "freebsd", "release", "packages"):
        if platform == "freebsd":
            version = t.need("release", cs.release, None, cs.RELEASE_TEXT)
        else:
            version = t.get("release", cs.release, None)
        packages = t.items("packages", cs.package, DEFAULT_PACKAGES)
    keep = t.get("keep", cs.integer(1), 3)
    t.done()
    return TemplateConfig(version, packages, keep)


def _poudriere(top: cs.Table) -> tuple[tuple[PoudriereJail, ...], str]:
    p = top.table("poudriere")
    tables = p.tables("jails")
    on_port_failure = p.get("on_port_failure", cs.choice("failure", "warnings"), "failure")
    p.done()
    if not tables and top.report.ok("poudriere.jails"):
        expected = "at least one [[poudriere.jails]] table with name, version and arch"
        top.report.add("poudriere.jails", f"missing; expected {expected}")
    jails = []
    for t in tables or []:
        name = t.need(
            "name", cs.name_of(names.POUDRIERE_JAIL), "", "a jail name such as '141amd64'"
        )
        version = t.need("version", cs.release, "", cs.RELEASE_TEXT)
        jails.append(PoudriereJail(name, version, t.get("arch", cs.arch, "amd64")))
        t.done()
    _unique(top.report, "poudriere.jails", [j.name for j in jails])
    return tuple(jails), on_port_failure


def _trees(top: cs.Table) -> tuple[PortsTree, ...]:
    tables = top.tables("trees")
    if not tables and top.report.ok("trees"):
        top.report.add("trees", "missing; expected at least one [[trees]] table with name and url")
    trees = []
    for t in tables or []:
        name = t.need("name", cs.name_of(names.TREE), "", "a tree name such as 'default'")
        url = t.need("url", cs.git_url, "", "a git URL or an absolute path")
        branch = t.get("branch", cs.name_of(names.BRANCH), "main")
        trees.append(PortsTree(name, url, branch, *_tree_pushes(t)))
        t.done()
    _unique(top.report, "trees", [tree.name for tree in trees])
    return tuple(trees)


def _tree_pushes(t: cs.Table) -> tuple[int, str | None, str, bool, int]:
    """How pushes reach a tree. A tree with a hook secret is told of pushes, so it polls only
    when asked to: polling as well would build every push twice."""
    secret = t.get("hook_secret_file", cs.abs_path, None)
    poll = t.get("poll_interval", cs.integer(0), 0 if t.has("hook_secret_file") else 300)
    nightly = t.get("nightly", cs.nightly_time, "03:00")
    testport = t.get("testport", cs.boolean, True)
    stable = t.get("stable_timer", cs.integer(0, 3600), 10)
    return poll, secret, nightly, testport, stable


def _hook_secrets_not_served(
    report: cs.Report, trees: tuple[PortsTree, ...], publish: PublishConfig
) -> None:
    for i, tree in enumerate(trees):
        key = f"trees[{i}].hook_secret_file"
        for where, root in (("publish.root", publish.root), ("publish.logs", publish.logs)):
            secret = tree.hook_secret_file
            if secret and report.ok(key, where) and cs.is_under(secret, root):
                report.add(
                    key,
                    f"{cs.show(secret)} is inside {where} (nginx would serve it); "
                    "expected a path outside it",
                )


def _make_conf(t: cs.Table) -> tuple[tuple[str, str], ...]:
    conf = t.table("make_conf")
    assignments = []
    for var in conf.data:
        if not cs.MAKE_VAR.fullmatch(var):
            expected = "letters, digits, '_' or '.', with an optional '+' at the end to append"
            conf.report.add(conf.key(var), f"invalid make variable name; expected {expected}")
        assignments.append((var, conf.get(var, cs.text, "")))
    return tuple(assignments)


def _sets(top: cs.Table) -> tuple[PortSet, ...]:
    sets = []
    for t in top.tables("sets") or []:
        name = t.need("name", cs.name_of(names.SET), "", "a set name such as 'default'")
        make_conf = _make_conf(t)
        packages = t.items("packages", cs.name_of(names.ORIGIN), ())
        sets.append(PortSet(name, make_conf, packages))
        t.done()
    _unique(top.report, "sets", [s.name for s in sets])
    if all(s.name != "default" for s in sets):
        sets.insert(0, PortSet("default"))
    return tuple(sets)


def _publish(t: cs.Table, state_dir: str, platform: str) -> PublishConfig:
    root = t.get("root", cs.abs_path, f"{state_dir}/repo")
    # One generation more than the served one, at least: a client that fetched the catalogue
    # just before a swap still downloads its packages (the pool keeps them with it).
    keep = t.get("keep", cs.integer(2), 5)
    logs = t.get("logs", cs.nginx_path, f"{state_dir}/logs/bulk")
    catalogue = "jailfarm"
    if _only(t, platform, "freebsd", "catalogue"):
        catalogue = t.get("catalogue", cs.choice("jailfarm", "pkg"), "jailfarm")
    t.done()
    for key, path in (("publish.root", root), ("publish.logs", logs)):
        if t.report.ok(key, "farm.state_dir") and cs.is_under(state_dir, path):
            why = "nginx would serve the master's database"
            t.report.add(
                key,
                f"{cs.show(path)} contains farm.state_dir ({why}); expected a directory outside it",
            )
    return PublishConfig(root, keep, logs, catalogue)


def _signing(t: cs.Table, platform: str, state_dir: str, publish_root: str) -> SigningConfig:
    key_file = t.get("key_file", cs.abs_path, None)
    command = t.items("command", cs.signer_word, ())
    t.done()
    r = t.report
    if t.has("command") and r.ok("signing.command") and (not command or command[0][0] == "-"):
        expected = "an argv such as ['/usr/local/bin/sign-pkg', '--key', 'repo']"
        r.add("signing.command", f"{cs.show(list(command))} names no program; expected {expected}")
    neither = not key_file and not command and r.ok("signing")
    if key_file and command:
        r.add("signing", "both key_file and command are set; expected exactly one")
    elif neither and platform == "linux-dev":
        key_file = f"{state_dir}/keys/repo.key"
    elif neither and platform == "freebsd":
        expected = "signing.key_file (a private RSA key) or signing.command (a signer argv)"
        r.add("signing", f"missing; packages must be signed: expected {expected}")
    if (
        key_file
        and r.ok("signing.key_file", "publish.root")
        and cs.is_under(key_file, publish_root)
    ):
        why = "nginx would serve the private key"
        r.add(
            "signing.key_file",
            f"{cs.show(key_file)} is inside publish.root ({why}); expected a path outside it",
        )
    return SigningConfig(key_file, command)


def _logs_hold_no_key(report: cs.Report, publish: PublishConfig, signing: SigningConfig) -> None:
    key = signing.key_file
    if key and report.ok("signing.key_file", "publish.logs") and cs.is_under(key, publish.logs):
        why = "nginx would serve the private key at /data"
        report.add(
            "signing.key_file",
            f"{cs.show(key)} is inside publish.logs ({why}); expected a path outside it",
        )


def _web_user(t: cs.Table) -> WebUser:
    name = t.need("name", cs.name_of(names.USER), "", "a user name such as 'ops'")
    for plain in ("password", "passwd"):
        if t.has(plain):
            # Never `forbid`: its message would quote the password.
            t.forbidden.add(plain)
            t.report.add(
                t.key(plain),
                f"a plaintext password (not shown) is refused; expected password_hash = "
                f"{cs.HASH_TEXT}, and remove this key",
            )
    hashed = t.need("password_hash", cs.password_hash, "", cs.HASH_TEXT)
    role = t.get("role", cs.choice(*ROLES), "viewer")
    t.done()
    return WebUser(name, hashed, role)


def _web(t: cs.Table, pb_port: int) -> WebConfig:
    bind = t.get("bind", cs.ip_address, "127.0.0.1")
    port = t.get("port", cs.PORT, 8010)
    url = t.get("url", cs.web_url, f"http://localhost:{port}/")
    # Listing users turns sign-in on; auth = "none" with users is a contradiction (below).
    auth = t.get("auth", cs.choice("none", "users"), "users" if t.has("users") else "none")
    users = tuple(_web_user(u) for u in t.tables("users") or [])
    t.done()
    r = t.report
    _unique(r, "web.users", [u.name for u in users])
    if r.ok("web.port", "workers.pb_port") and port == pb_port:
        r.add("web.port", f"{port} is also workers.pb_port; expected a different port")
    if r.ok("web.auth", "web.users") and (auth == "users") != bool(users):
        expected = "auth = 'users' with at least one [[web.users]], or auth = 'none' with none"
        r.add("web.auth", f"{cs.show(auth)} with {len(users)} user(s); expected {expected}")
    if r.ok("web.auth", "web.bind") and auth == "none" and not _loopback(bind):
        why = "with auth = 'none' anyone on the network could force and stop builds"
        r.add(
            "web.bind",
            f"{cs.show(bind)} is not a loopback address ({why}); "
            "expected 127.0.0.1 or ::1, or auth = 'users'",
        )
    return WebConfig(bind, port, url, auth, users)


def _remote_workers_reach_master(
    report: cs.Report, hosts: tuple[JailHost, ...], workers: WorkersConfig, web: WebConfig
) -> None:
    """Worker jails connect to the master's PB port at workers.master_address (default:
    web.bind); a jail on another machine cannot reach a loopback address."""
    remote = [h.name for h in hosts if not h.is_local]
    if not remote or not report.ok("workers.master_address", "web.bind", "jail_hosts"):
        return
    address = workers.master_address or web.bind
    source = "workers.master_address" if workers.master_address else "web.bind"
    parsed = ipaddress.ip_address(address)
    if parsed.is_loopback or parsed.is_unspecified:
        report.add(
            "workers.master_address",
            f"{address!r} (from {source}) cannot be reached from the remote jail host(s) "
            f"{', '.join(remote)}; expected an address of the master that those hosts can "
            "connect to",
        )


def _loopback(bind: str) -> bool:
    return ipaddress.ip_address(bind).is_loopback


def _nginx(t: cs.Table, platform: str) -> NginxConfig:
    freebsd = platform == "freebsd"
    bind = t.get("bind", cs.ip_address, "0.0.0.0" if freebsd else "127.0.0.1")
    port = t.get("port", cs.PORT, 80 if freebsd else 8080)
    server_name = t.get("server_name", cs.name_of(names.HOSTNAME), "localhost")
    tls_cert = t.get("tls_cert", cs.nginx_path, None)
    tls_key = t.get("tls_key", cs.nginx_path, None)
    htpasswd = t.get("htpasswd", cs.nginx_path, None)
    protect_packages = t.get("protect_packages", cs.boolean, False)
    t.done()
    r = t.report
    if t.has("tls_cert") != t.has("tls_key"):
        given, missing = ("tls_cert", "tls_key") if t.has("tls_cert") else ("tls_key", "tls_cert")
        r.add(f"nginx.{missing}", f"missing; nginx.{given} is set: expected both or neither")
    if protect_packages and not t.has("htpasswd") and r.ok("nginx.protect_packages"):
        r.add(
            "nginx.protect_packages",
            "true without nginx.htpasswd; expected an htpasswd file to check logins against",
        )
    return NginxConfig(bind, port, server_name, tls_cert, tls_key, htpasswd, protect_packages)


def _nginx_checks(
    report: cs.Report,
    platform: str,
    state_dir: str,
    publish: PublishConfig,
    workers: WorkersConfig,
    web: WebConfig,
    nginx: NginxConfig,
) -> None:
    """What nginx serves and writes must fit its configuration syntax, its secrets must stay
    out of what it serves, its port must be its own, and a web.url through it must name the
    location it proxies Buildbot at."""
    paths = [("publish.root", publish.root)]
    if platform == "linux-dev":  # the dev host keeps nginx's own files in <state_dir>/nginx
        paths.insert(0, ("farm.state_dir", state_dir))
    for key, path in paths:
        try:
            cs.nginx_path(path)
        except ValueError as exc:
            # A publish.root below a refused state_dir (its default) is that same problem.
            if report.ok(key) and (report.ok("farm.state_dir") or not cs.is_under(path, state_dir)):
                report.add(key, str(exc))
    served = (("publish.root", publish.root), ("publish.logs", publish.logs))
    for key, secret in (("nginx.htpasswd", nginx.htpasswd), ("nginx.tls_key", nginx.tls_key)):
        for where, root in served:
            if secret and report.ok(key, where) and cs.is_under(secret, root):
                report.add(
                    key,
                    f"{cs.show(secret)} is inside {where} (nginx would serve it); "
                    "expected a path outside it",
                )
    _nginx_port_is_its_own(report, workers, web, nginx)
    _web_url_through_nginx(report, web, nginx)


def _nginx_port_is_its_own(
    report: cs.Report, workers: WorkersConfig, web: WebConfig, nginx: NginxConfig
) -> None:
    for other, port, bind in (
        ("web.port", web.port, web.bind),
        ("workers.pb_port", workers.pb_port, workers.master_address or web.bind),
    ):
        if (
            report.ok("nginx.port", "nginx.bind", other, "web.bind", "workers.master_address")
            and port == nginx.port
            and _may_share(bind, nginx.bind)
        ):
            report.add("nginx.port", f"{port} is also {other}; expected a different port")


def _may_share(a: str, b: str) -> bool:
    """Whether listeners on addresses `a` and `b` could collide on one port."""
    unspecified = ipaddress.ip_address(a).is_unspecified or ipaddress.ip_address(b).is_unspecified
    return a == b or unspecified


def _web_url_through_nginx(report: cs.Report, web: WebConfig, nginx: NginxConfig) -> None:
    """A web.url that names nginx's host and port must be nginx's /buildbot/ location, with
    the scheme nginx speaks there."""
    if not report.ok("web.url", "nginx"):
        return
    parts = urlsplit(web.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if port != nginx.port or not _reaches_nginx(parts.hostname or "", nginx):
        return
    scheme = "https" if nginx.tls else "http"
    expected = f"{scheme}://{parts.netloc}/buildbot/"
    if parts.path != "/buildbot/" or parts.scheme != scheme:
        why = f"nginx serves the Buildbot UI there at /buildbot/ over {scheme}"
        report.add("web.url", f"{cs.show(web.url)} points at nginx ({why}); expected {expected!r}")


def _reaches_nginx(host: str, nginx: NginxConfig) -> bool:
    """Whether a URL naming `host` (on nginx's port) arrives at nginx: an address it listens
    on, `localhost` if it listens on loopback, or its server_name (DNS is assumed right)."""
    if host == "localhost":
        addresses = {"127.0.0.1", "::1"}
    else:
        try:
            addresses = {str(ipaddress.ip_address(host))}
        except ValueError:
            return host == nginx.server_name
    return ipaddress.ip_address(nginx.bind).is_unspecified or nginx.bind in addresses


# ---- [provision] ------------------------------------------------------------------------------


def _provision(t: cs.Table, platform: str, prefix: str) -> ProvisionConfig:
    twenty: tuple[int | None, int | None] = (None, RESERVATION_PERCENT)
    reservation = t.get("reservation", cs.size_or_percent(1, 50), twenty)
    freebsd_keys = (
        *("network_mode", "external_interface", "network", "host_address", "gateway"),
        *("master_jail", "master_address", "nginx_jail", "nginx_address"),
    )
    if not _only(t, platform, "freebsd", *freebsd_keys):
        t.done()
        return ProvisionConfig(reservation=reservation[0], reservation_percent=reservation[1])
    mode = t.get("network_mode", cs.choice(*NETWORK_MODES), "lo1")
    iface = t.get("external_interface", cs.name_of(cs.INTERFACE), None)
    vnet = mode == "vnet"
    network = _provision_network(t, vnet)
    # lo1: the host, the master and nginx take the network's first three addresses.
    net = network if t.report.ok("provision.network") else DEFAULT_JAIL_NETWORK
    defaults = [str(h) for _, h in zip(range(3), ipaddress.IPv4Network(net).hosts(), strict=False)]
    addresses = {}
    keys = {
        "host_address": "this host's IPv4 address on the LAN",
        "master_address": "the master jail's IPv4 address on the LAN",
        "nginx_address": "the nginx jail's IPv4 address on the LAN",
    }
    for (key, expected), default in zip(keys.items(), defaults, strict=True):
        if vnet:
            addresses[key] = t.need(key, cs.ipv4_address, default, expected)
        else:
            addresses[key] = t.get(key, cs.ipv4_address, default)
    gateway = None
    if vnet:
        gateway = t.need("gateway", cs.ipv4_address, None, "the LAN's router, e.g. '192.0.2.1'")
    else:
        t.forbid("gateway", "is only used with network_mode = 'vnet'; remove it")
    master = t.get("master_jail", cs.name_of(names.JAIL), f"{prefix}master")
    nginx = t.get("nginx_jail", cs.name_of(names.JAIL), f"{prefix}nginx")
    t.done()
    config = ProvisionConfig(
        mode, iface, network, addresses["host_address"], gateway, master,
        addresses["master_address"], nginx, addresses["nginx_address"], *reservation,
    )  # fmt: skip
    _provision_checks(t.report, config, prefix)
    return config


def _provision_network(t: cs.Table, vnet: bool) -> str:
    if vnet:
        expected = "the LAN the jails join, e.g. '192.0.2.0/24'"
        return t.need("network", cs.ipv4_network, DEFAULT_JAIL_NETWORK, expected)
    return t.get("network", cs.ipv4_network, DEFAULT_JAIL_NETWORK)


def _provision_checks(report: cs.Report, p: ProvisionConfig, prefix: str) -> None:
    """Addresses inside the network and distinct; jail names distinct and not a worker's."""
    keys = ("host_address", "master_address", "nginx_address", "gateway")
    if report.ok("provision.network"):
        net = ipaddress.IPv4Network(p.network)
        seen: dict[str, str] = {}
        for key in keys:
            value = getattr(p, key)
            if value is None or not report.ok(f"provision.{key}"):
                continue
            address = ipaddress.IPv4Address(value)
            if address not in net or address in (net.network_address, net.broadcast_address):
                report.add(
                    f"provision.{key}",
                    f"{value!r} is not a host address in provision.network ({p.network}); "
                    "expected one inside it",
                )
            elif value in seen and key != "gateway":
                report.add(f"provision.{key}", f"{value!r} is also provision.{seen[value]}")
            seen.setdefault(value, key)
    for key in ("master_jail", "nginx_jail"):
        name = getattr(p, key)
        if not report.ok(f"provision.{key}"):
            continue
        if name.startswith(f"{prefix}w") and name[len(prefix) + 1 :].isdigit():
            report.add(f"provision.{key}", f"{name!r} is a worker jail's name; expected another")
        elif p.network_mode == "vnet" and "-" in name:
            why = "jib(8) names epairs after the jail and accepts only letters, digits and '_'"
            report.add(f"provision.{key}", f"{name!r} has a '-' ({why}); expected e.g. 'jfmaster'")
    if report.ok("provision.master_jail", "provision.nginx_jail") and p.master_jail == p.nginx_jail:
        report.add("provision.nginx_jail", f"{p.nginx_jail!r} is also provision.master_jail")
