"""poudriere.conf, make.conf and port list files, rendered from typed settings (pure).

`PoudriereConf` has one field per poudriere.conf key we may write, each with its description
and the section of shared/spec/poudriere.md that documents it (`KEYS`), so an unknown key
cannot be rendered. poudriere.conf is sourced by sh (§2.1): values are single-quoted and must
be one line. make.conf values are held to a strict character set.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal

from jailfarm.configschema import MAKE_VAR, POOL
from jailfarm.names import ORIGIN, POUDRIERE_JAIL, SET, TREE

if TYPE_CHECKING:
    from collections.abc import Iterable

    from jailfarm.config import FarmConfig
    from jailfarm.poudriere.commands import Target
    from jailfarm.poudriere.status import PoudriereVersion

Kind = Literal["text", "path", "int", "bool", "flag", "words", "ip4", "ip6"]


def _meta(
    kind: Kind, section: str, doc: str, choices: tuple[str, ...] = (), master: bool = False
) -> dict[str, object]:
    return {"kind": kind, "section": section, "doc": doc, "choices": choices, "master": master}


# One helper per value type: `field(default=None)` is typed None, so each helper's return
# type gives its field's type to mypy.
def _text(
    section: str, doc: str, choices: tuple[str, ...] = (), master: bool = False
) -> str | None:
    return field(default=None, metadata=_meta("text", section, doc, choices, master))


def _path(section: str, doc: str) -> str | None:
    return field(default=None, metadata=_meta("path", section, doc))


def _int(section: str, doc: str) -> int | None:
    return field(default=None, metadata=_meta("int", section, doc))


def _bool(section: str, doc: str, master: bool = False) -> bool | None:
    return field(default=None, metadata=_meta("bool", section, doc, master=master))


def _flag(section: str, doc: str) -> Literal[True] | None:
    # Keys poudriere tests for being set at all: writing "no" would turn them on.
    return field(default=None, metadata=_meta("flag", section, doc))


def _words(
    section: str, doc: str, choices: tuple[str, ...] = (), master: bool = False
) -> tuple[str, ...] | None:
    return field(default=None, metadata=_meta("words", section, doc, choices, master))


def _ip(kind: Literal["ip4", "ip6"], section: str, doc: str) -> str | None:
    return field(default=None, metadata=_meta(kind, section, doc))


@dataclass(frozen=True)
class PoudriereConf:
    """poudriere.conf settings; a field left None is not written (poudriere's default applies).
    Field `x_y` is key `X_Y`. Conflicting settings raise ValueError."""

    basefs: str | None = _path("2.2", "parent of jails/ and ports/; required")
    zpool: str | None = _text("2.2", "pool for poudriere's datasets (or set no_zfs)")
    zrootfs: str | None = _path("2.2", "dataset root below ZPOOL, starting with '/'")
    no_zfs: Literal[True] | None = _flag("2.2", "plain directories, cpdup copies not clones")
    poudriere_data: str | None = _path("2.2", "logs, packages, .m, cache, wrkdirs")
    freebsd_host: str | None = _text("2.2", "where jail -c downloads dist sets")
    resolv_conf: str | None = _path("2.2", "copied into every jail")
    use_tmpfs: tuple[str, ...] | None = _words(
        "2.2", "tmpfs use", ("yes", "no", "all", "wrkdir", "data", "localbase", "image")
    )
    tmpfs_limit: int | None = _int("2.2", "GiB per builder for each tmpfs")
    tmpfs_blacklist: tuple[str, ...] | None = _words("2.2", "packages built on disk instead")
    tmpfs_blacklist_tmpdir: str | None = _path("2.2", "where TMPFS_BLACKLIST WRKDIRs go")
    max_memory: int | None = _int("2.2", "GiB of address space per jexec (limits -v)")
    max_memory_bytes: int | None = _int("2.2", "MAX_MEMORY in bytes")
    max_files: int | None = _int("2.2", "open files per jexec (limits -n)")
    parallel_jobs: int | None = _int("2.2", "number of builders (-J overrides)")
    prepare_parallel_jobs: int | None = _int("2.2", "parallelism of the prepare phase")
    allow_make_jobs: bool | None = _bool("2.2", "let ports use make -j")
    allow_make_jobs_packages: tuple[str, ...] | None = _words("2.2", "make -j exceptions")
    mutually_exclusive_build_packages: tuple[str, ...] | None = _words(
        "2.2", "patterns never built at the same time", master=True
    )
    priority_boost: tuple[str, ...] | None = _words("2.2", "packages built first")
    pkg_repo_signing_key: str | None = _text("2.2, 5.1", "[rsa|ecdsa|eddsa:]private key path")
    signing_command: tuple[str, ...] | None = _words("2.2, 5.1", "external signer argv")
    pkg_repo_from_host: bool | None = _bool("2.2, 5.1", "run pkg repo and the signer on host")
    pkg_repo_meta_file: str | None = _path("2.2", "UCL meta file for pkg repo -m")
    pkg_repo_list_files: bool | None = _bool("2.2", "also write the files catalogue")
    pkg_hash: bool | None = _bool("2.2", "hashed package file names")
    pkg_reproducible: bool | None = _bool("2.2", "no build_timestamp/built_by annotations")
    ccache_dir: str | None = _path("2.2", "ccache directory, nullfs-mounted")
    ccache_dir_non_root_safe: bool | None = _bool("2.2", "ccache usable by BUILD_AS_NON_ROOT")
    ccache_static_prefix: str | None = _path("2.2", "static ccache copied in from the host")
    distfiles_cache: str | None = _text("2.2", "distfiles directory (must exist) or 'no'")
    nolinux: Literal[True] | None = _flag("2.2, 3.1", "no linux modules or linprocfs")
    use_procfs: bool | None = _bool("2.2, 3.1", "mount procfs in the jails")
    use_fdescfs: bool | None = _bool("2.2, 3.1", "mount fdescfs in the jails")
    patched_fs_kernel: bool | None = _bool("2.2, 3.1", "fdescfs works inside a jail")
    use_portlint: bool | None = _bool("2.2", "run portlint in testport")
    builder_hostname: str | None = _text("2.2", "host.hostname of every build jail")
    html_type: str | None = _text("2.2", "web UI mode", ("inline", "hosted"))
    url_base: str | None = _text("2.2", "base of BUILD_URL and LOG_URL")
    html_json_update_interval: int | None = _int("2.2, 6", "seconds between stats refreshes")
    html_track_remaining: bool | None = _bool("2.2", "write .poudriere.ports.remaining")
    atomic_package_repository: bool | None = _bool("2.2, 4.3", "build into .building, swap")
    commit_packages_on_failure: bool | None = _bool("2.2, 4.3", "commit despite failures")
    keep_old_packages: bool | None = _bool("2.2, 4.3", "keep old .real_* directories")
    keep_old_packages_count: int | None = _int("2.2, 4.3", "how many, the newest included")
    delete_unqueued_packages: str | None = _text("2.2", "pkgclean", ("yes", "no", "always"))
    delete_unknown_files: bool | None = _bool("2.2", "delete unknown repository files")
    check_changed_options: str | None = _text(
        "2.2", "rebuild on changed options", ("yes", "no", "verbose")
    )
    check_changed_deps: bool | None = _bool("2.2", "rebuild on changed dependencies")
    build_as_non_root: bool | None = _bool("2.2", "build as PORTBUILD_USER")
    portbuild_user: str | None = _text("2.2", "user for BUILD_AS_NON_ROOT")
    portbuild_uid: int | None = _int("2.2", "its uid (code default 65532)")
    timestamp_logs: bool | None = _bool("2.2", "prefix log lines with the elapsed time")
    max_execution_time: int | None = _int("2.2", "seconds per phase")
    max_execution_time_extract: int | None = _int("2.2", "seconds for extract")
    max_execution_time_install: int | None = _int("2.2", "seconds for install")
    max_execution_time_package: int | None = _int("2.2", "seconds for package")
    max_execution_time_deinstall: int | None = _int("2.2", "seconds for deinstall")
    nohang_time: int | None = _int("2.2, 7", "kill a phase whose log is silent this long")
    qemu_max_execution_time: int | None = _int("2.2", "MAX_EXECUTION_TIME under QEMU")
    qemu_nohang_time: int | None = _int("2.2", "NOHANG_TIME under QEMU")
    restrict_networking: bool | None = _bool("2.2", "network only in the fetch phase")
    allow_networking_packages: tuple[str, ...] | None = _words("2.2", "full network for these")
    disallow_networking: bool | None = _bool("2.2", "no network even to fetch")
    devfs_ruleset: int | None = _int("2.2, 3.2", "ruleset for /dev (not when jailed)")
    loip4: str | None = _ip("ip4", "2.2, 3.2", "IPv4 of the no-network jails, no /prefix")
    loip6: str | None = _ip("ip6", "2.2, 3.2", "IPv6 of the no-network jails, no /prefix")
    save_wrkdir: bool | None = _bool("2.2", "tar failed WRKDIRs (bulk -w)")
    wrkdir_archive_format: str | None = _text(
        "2.2", "WRKDIR tarball format", ("tar", "tgz", "tbz", "txz", "tzst")
    )
    trim_orphaned_build_deps: bool | None = _bool("2.2", "skip unneeded build-only deps")
    package_fetch_branch: str | None = _text("2.2", "default for bulk -b")
    package_fetch_url: str | None = _text("2.2", "URL for bulk -b")
    package_fetch_blacklist: tuple[str, ...] | None = _words("2.2", "never fetched")
    package_fetch_whitelist: tuple[str, ...] | None = _words("2.2", "only these fetched")
    immutable_base: str | None = _text("2.2", "protect the base", ("no", "schg", "nullfs"))
    buildname_format: str | None = _text("2.2", "strftime format of default BUILDNAMEs")
    logs_for_ignored: bool | None = _bool("2.2", "write logs for ignored ports", master=True)
    determine_build_failure_reason: bool | None = _bool("2.2, 4.2", "fill errortype")
    shared_lock_dir: str | None = _path("2.2, 7", "directory of the global locks")
    force_mount_hash: bool | None = _bool("2.2, 4.1", "hashed names under .m")
    flavor_default_all: bool | None = _bool("2.4", "origin alone means every flavor")
    http_proxy: str | None = _text("0", "exported: the environment is wiped")
    https_proxy: str | None = _text("0", "exported: the environment is wiped")
    no_proxy: str | None = _text("0", "exported: the environment is wiped")
    max_memory_per_package: tuple[tuple[str, int], ...] = ()  # MAX_MEMORY_<pkgbase> (§2.2)
    max_files_per_package: tuple[tuple[str, int], ...] = ()  # MAX_FILES_<pkgbase> (§2.2)
    max_execution_time_per_package: tuple[tuple[str, int], ...] = ()  # (§2.2)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata and value is not None:
                _check(f.name.upper(), f.metadata["kind"], f.metadata["choices"], value)
        for name in _PER_PACKAGE:
            for pkgbase, value in getattr(self, f"{name.lower()}_per_package"):
                _check(f"{name}_{_pkgbase(pkgbase)}", "int", (), value)
        _conflicts(self)


@dataclass(frozen=True)
class Key:
    """One poudriere.conf key: its description and the spec section documenting it."""

    name: str
    doc: str
    section: str
    master_only: bool


KEYS = {
    f.name.upper(): Key(
        f.name.upper(), f.metadata["doc"], f.metadata["section"], f.metadata["master"]
    )
    for f in fields(PoudriereConf)
    if f.metadata
}
_PER_PACKAGE = ("MAX_MEMORY", "MAX_FILES", "MAX_EXECUTION_TIME")  # <KEY>_<pkgbase> (2.2)
_EXPORTED = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"})
_WORD = re.compile(r"[A-Za-z0-9_.+@*?/:,=%-]+")
_ABS_PATH = re.compile(r"/[A-Za-z0-9_.+@,=/-]*")
_SIGNER_WORD = re.compile(r"[A-Za-z0-9@%+=:,./_-]+")
_KEY_TYPE = re.compile(r"(rsa|ecdsa|eddsa|ecc):")
# poudriere writes these into the jail's make.conf itself; DEVELOPER= lines it strips (§2.4).
POUDRIERE_MAKE_VARS = frozenset(
    "USE_PACKAGE_DEPENDS BATCH WRKDIRPREFIX PORTSDIR PACKAGES DISTDIR FORCE_PACKAGE "
    "PACKAGE_BUILDING PACKAGE_BUILDING_FLAVORS OVERLAYS DEVELOPER".split()
)
_MAKE_VALUE = re.compile(r"[A-Za-z0-9 _./+=:,@-]*")


def render_poudriere_conf(conf: PoudriereConf, version: PoudriereVersion | None = None) -> str:
    """The text of poudriere.conf. With `version`, keys that only master knows are refused on
    3.4.x (§2.2, §5.1), as is a key type prefix on PKG_REPO_SIGNING_KEY."""
    lines = ["# poudriere.conf written by jailfarm; sourced by sh (poudriere.md 2.1)."]
    old = version is not None and not version.is_master
    for f in fields(conf):
        value = getattr(conf, f.name)
        if not f.metadata or value is None:
            continue
        key = f.name.upper()
        typed_key = key == "PKG_REPO_SIGNING_KEY" and _KEY_TYPE.match(value)
        if old and (KEYS[key].master_only or typed_key):
            raise ValueError(
                f"{key}={value!r} needs poudriere master (poudriere.md {f.metadata['section']})"
            )
        export = "export " if key in _EXPORTED else ""
        lines.append(f"{export}{key}={sh_quote(_value(value))}")
    for name in _PER_PACKAGE:
        for pkgbase, value in getattr(conf, f"{name.lower()}_per_package"):
            lines.append(f"{name}_{pkgbase}={sh_quote(str(value))}")
    return "\n".join(lines) + "\n"


def sh_quote(value: str) -> str:
    """`value` single-quoted for sh; a newline, NUL or other control character is refused."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r}: control characters cannot go into poudriere.conf")
    return "'" + value.replace("'", "'\\''") + "'"


def render_make_conf(assignments: Iterable[tuple[str, str]], comment: str = "") -> str:
    """make.conf lines `VAR=value` (a name ending in `+` appends: `VAR+=value`). Variables that
    poudriere sets or strips itself are refused (§2.4), and values keep to letters, digits,
    space and `_-./+=:,@`: no `$`, quotes, backslashes or newlines."""
    lines = [f"# {_comment(comment)}"] if comment else []
    for var, value in assignments:
        if not MAKE_VAR.fullmatch(var):
            raise ValueError(f"make.conf: invalid variable name {var!r}")
        if var.rstrip("+") in POUDRIERE_MAKE_VARS:
            raise ValueError(f"make.conf: {var.rstrip('+')} is poudriere's own (poudriere.md 2.4)")
        if not _MAKE_VALUE.fullmatch(value):
            raise ValueError(f"make.conf: {var}={value!r}: expected letters, digits, ' _-./+=:,@'")
        lines.append(f"{var}={value}" if not var.endswith("+") else f"{var[:-1]}+={value}")
    return "\n".join(lines) + "\n"


def make_conf_name(
    jail: str | None = None, tree: str | None = None, set_name: str | None = None
) -> str:
    """`[<jail>-][<tree>-][<set>-]make.conf` in poudriere.d/ (§2.3, §2.4)."""
    parts = (
        POUDRIERE_JAIL.check(jail) if jail is not None else None,
        TREE.check(tree) if tree is not None else None,
        SET.check(set_name) if set_name is not None else None,
    )
    return "-".join([*(p for p in parts if p is not None), "make.conf"])


def make_conf_stack(target: Target) -> tuple[str, ...]:
    """The make.conf files poudriere appends for `target`, in its order (§2.4); the same order
    holds for `*-poudriere.conf` (§2.1)."""
    j, t, s = target.jail, target.tree, target.set_name
    order = [(), (s,), (t,), (j,), (t, s), (j, t), (j, s), (j, t, s)]
    return tuple(
        "-".join([*(p for p in parts if p), "make.conf"]) for parts in order if None not in parts
    )


def render_list(origins: Iterable[str], comment: str = "") -> str:
    """A `bulk -f` list file: one validated origin (`category/port[@flavor]`) per line, each
    once, in the given order (§2.4)."""
    seen = dict.fromkeys(ORIGIN.check(o) for o in origins)
    head = [f"# {_comment(comment)}"] if comment else []
    return "\n".join([*head, *seen]) + "\n"


@dataclass(frozen=True)
class EtcFile:
    """A file to write under the farm's poudriere etcdir (`poudriere -e`, §0)."""

    path: str
    text: str


def farm_conf(farm: FarmConfig, conf: PoudriereConf, *, sign: bool = False) -> PoudriereConf:
    """`conf` with what the farm decides: PARALLEL_JOBS = workers.builders unless set, and with
    `sign`, the farm's signing (a command runs on the host, PKG_REPO_FROM_HOST=yes, §8). The
    default is unsigned: the farm signs outside the worker, where the key lives."""
    if conf.parallel_jobs is None:
        conf = replace(conf, parallel_jobs=farm.workers.builders)
    if not sign:
        return conf
    if conf.pkg_repo_signing_key is not None or conf.signing_command is not None:
        raise ValueError("sign=True, but conf already sets a signing key or command")
    if farm.signing.command:
        return replace(conf, signing_command=farm.signing.command, pkg_repo_from_host=True)
    return replace(conf, pkg_repo_signing_key=farm.signing.key_file)


# poudriere inside a worker jail. Its configuration: the worker user's home (writable, thrown
# away with the jail). Its jails and data: there too on the dev host, whose builder runs as the
# worker user; on FreeBSD poudriere runs as root (through sudo) with its jails in the template
# (templatefill), NO_ZFS: the worker's clone is the copy-on-write layer and no dataset needs to
# be delegated to the worker. `<data>/packages` is the jail host's packages dataset, mounted
# read-write, so packages outlive the worker jail and up-to-date ones are not rebuilt.
WORKER_ETC = "/home/buildbot/poudriere"
FREEBSD_BASEFS = "/usr/local/poudriere"


def worker_conf(farm: FarmConfig) -> PoudriereConf:
    """poudriere.conf of the farm's worker jails."""
    if farm.platform == "linux-dev":
        conf = PoudriereConf(basefs=WORKER_ETC, no_zfs=True, poudriere_data=f"{WORKER_ETC}/data")
    else:
        conf = PoudriereConf(
            basefs=FREEBSD_BASEFS, no_zfs=True, poudriere_data=f"{FREEBSD_BASEFS}/data"
        )
    return farm_conf(farm, conf)


def worker_data(platform: str) -> str:
    """POUDRIERE_DATA in the worker jails of a platform."""
    return f"{WORKER_ETC}/data" if platform == "linux-dev" else f"{FREEBSD_BASEFS}/data"


def etc_files(
    farm: FarmConfig, conf: PoudriereConf, version: PoudriereVersion | None = None
) -> tuple[EtcFile, ...]:
    """poudriere.conf, `poudriere.d/<set>-make.conf` for each set with make.conf settings, and
    `lists/<set>` for each set that lists its ports (paths relative to the etcdir)."""
    files = [EtcFile("poudriere.conf", render_poudriere_conf(conf, version))]
    for s in farm.sets:
        note = f"set {s.name} of farm {farm.name}, written by jailfarm"
        if s.make_conf:
            name = f"poudriere.d/{make_conf_name(set_name=s.name)}"
            files.append(EtcFile(name, render_make_conf(s.make_conf, note)))
        if s.packages:
            files.append(EtcFile(f"lists/{s.name}", render_list(s.packages, note)))
    return tuple(files)


def _check(key: str, kind: str, choices: tuple[str, ...], value: object) -> None:
    ok = {
        "text": isinstance(value, str),
        "path": isinstance(value, str) and bool(_ABS_PATH.fullmatch(value)),
        "int": type(value) is int and value >= 0,
        "bool": type(value) is bool,
        "flag": value is True,
        "words": isinstance(value, tuple)
        and all(isinstance(w, str) and _WORD.fullmatch(w) for w in value),
        "ip4": isinstance(value, str) and _ip_ok(value, ipaddress.IPv4Address),
        "ip6": isinstance(value, str) and _ip_ok(value, ipaddress.IPv6Address),
    }[kind]
    if not ok:
        raise ValueError(f"{key}={value!r}: expected {kind}")
    words = value if isinstance(value, tuple) else (value,)
    if choices and not all(w in choices for w in words):
        raise ValueError(f"{key}={value!r}: expected {', '.join(choices)}")
    sh_quote(_value(value))


def _conflicts(c: PoudriereConf) -> None:
    """Combinations poudriere refuses or misreads (§2.2, §3.1, §5.1, §6)."""
    if c.basefs is None:
        raise ValueError("BASEFS is required (poudriere.md 2.2)")
    if (c.zpool is None) == (c.no_zfs is None):
        raise ValueError("set exactly one of ZPOOL and NO_ZFS=yes (poudriere.md 2.2)")
    if c.zpool is not None:
        POOL.check(c.zpool)
    if c.no_zfs and c.zrootfs is not None:
        raise ValueError("ZROOTFS is a dataset below ZPOOL; it means nothing with NO_ZFS=yes")
    if c.pkg_repo_signing_key is not None and c.signing_command is not None:
        raise ValueError("set PKG_REPO_SIGNING_KEY or SIGNING_COMMAND, not both (poudriere.md 5.1)")
    if c.signing_command and not all(_SIGNER_WORD.fullmatch(w) for w in c.signing_command):
        raise ValueError("SIGNING_COMMAND words go through sh -c: use only '@%+=:,./_-' and alnum")
    if c.pkg_repo_signing_key is not None and not _ABS_PATH.fullmatch(
        _KEY_TYPE.sub("", c.pkg_repo_signing_key, count=1)
    ):
        raise ValueError(f"PKG_REPO_SIGNING_KEY={c.pkg_repo_signing_key!r}: expected [type:]/path")
    if c.distfiles_cache not in (None, "no") and not _ABS_PATH.fullmatch(c.distfiles_cache):
        raise ValueError(f"DISTFILES_CACHE={c.distfiles_cache!r}: expected a path or 'no'")
    if c.use_tmpfs and len(c.use_tmpfs) > 1 and {"yes", "no", "all"} & set(c.use_tmpfs):
        raise ValueError("USE_TMPFS: 'yes', 'no' and 'all' stand alone (poudriere.md 2.2)")
    if c.ccache_dir and c.build_as_non_root and not c.ccache_dir_non_root_safe:
        raise ValueError("BUILD_AS_NON_ROOT=yes with CCACHE_DIR needs CCACHE_DIR_NON_ROOT_SAFE=yes")
    if c.html_json_update_interval == 0:
        raise ValueError(
            "HTML_JSON_UPDATE_INTERVAL=0 leaves stats_* stale; jailfarm reads them (6)"
        )


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def _ip_ok(value: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def _pkgbase(pkgbase: str) -> str:
    # It becomes part of a sh variable name, so only [A-Za-z0-9_] fit.
    if not re.fullmatch(r"[A-Za-z0-9_]+", pkgbase):
        raise ValueError(f"{pkgbase!r}: a per-package key needs a pkgbase of [A-Za-z0-9_]")
    return pkgbase


def _comment(text: str) -> str:
    if "\n" in text:
        raise ValueError("a comment must be one line")
    return text
