"""poudriere command builders and the MASTERNAME/BUILDNAME naming rules (pure).

Every builder returns a `Cmd` whose argv starts with the global prefix `poudriere -e <etcdir>
-N` (poudriere.md §0: one configuration directory per farm, colours off). Every name is
validated before it reaches an argv, and option combinations that poudriere rejects or
silently rewrites raise ValueError instead (§1). Section numbers refer to
shared/spec/poudriere.md.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from jailfarm.cmd import Cmd
from jailfarm.configschema import ARCHES, RELEASE
from jailfarm.errors import InvalidName
from jailfarm.names import BRANCH, ENV_KEY, ORIGIN, POUDRIERE_JAIL, SET, TREE, NameRule

DEFAULT_TREE = "default"  # `-p` defaults to `default`, and MASTERNAME always has it (§4.1)

BUILDNAME = NameRule(
    "poudriere build",
    # A path component under logs/bulk/<M>/, inserted raw into .data.json (no quotes or
    # backslashes, §4.2) and into URLs ('+' would be encoded, §4.1).
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*"),
    64,
    "a letter or digit, then letters, digits, '_', '.' or '-'",
)
# Siblings of the build directories in logs/bulk/<M>/ (§4.2): a build named so would clash.
_RESERVED_BUILDNAMES = frozenset({"latest", "latest-done", "latest-per-pkg"})
_PATH = re.compile(r"/|(/[A-Za-z0-9_+@,=-][A-Za-z0-9_.+@,=-]*)+")
_URL = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.-]*://[^\s'\"\\]+|[\w.-]+@[\w.-]+:[^\s'\"\\]+")
_VALUE = re.compile(r"[A-Za-z0-9_./:,@+=%-]*")
_FETCH_BRANCH = re.compile(r"latest|quarterly|release_[0-9]+")
_VCS = ("git", "svn")
_VCS_METHODS = frozenset(f"{v}{s}" for v in _VCS for s in ("", "+http", "+https", "+ssh", "+file"))
_JAIL_METHODS = frozenset({"http", "ftp", "ftp-archive", "freebsdci", "null", "pkgbase"})
_JAIL_PATH_METHODS = ("tar=", "src=")
_PORTS_METHODS = frozenset({"portsnap", "null", "none"})
_JAIL_CLEAN = frozenset({"all", "cache", "images", "logs", "packages", "wrkdirs"})


def check_buildname(name: str) -> str:
    """Return `name` if it can be a BUILDNAME (`-B`), else raise InvalidName/ValueError."""
    if BUILDNAME.check(name) in _RESERVED_BUILDNAMES:
        raise ValueError(f"build name {name!r} is reserved: logs/bulk/<M>/{name} is a link")
    return name


def buildname(prefix: str, build_number: int, attempt: int = 1) -> str:
    """A unique BUILDNAME such as `jf-42-1`. Always pass one with `-B`; a new attempt needs a
    new name, since reusing a name resumes that build (§1.3, §6.1, §8)."""
    if build_number < 0 or attempt < 1:
        raise ValueError(f"build number {build_number} / attempt {attempt} out of range")
    return check_buildname(f"{prefix}-{build_number}-{attempt}")


@dataclass(frozen=True)
class Target:
    """One MASTERNAME: jail, ports tree and optional set, each validated (no `-` or `.`)."""

    jail: str
    tree: str = DEFAULT_TREE
    set_name: str | None = None

    def __post_init__(self) -> None:
        POUDRIERE_JAIL.check(self.jail)
        TREE.check(self.tree)
        if self.set_name is not None:
            SET.check(self.set_name)

    @property
    def mastername(self) -> str:
        """`<jail>-<tree>[-<set>]`; the tree part is always there (§4.1)."""
        parts = (self.jail, self.tree, self.set_name)
        return "-".join(p for p in parts if p is not None)

    def selector_args(self) -> tuple[str, ...]:
        return ("-j", self.jail, "-p", self.tree) + (
            ("-z", self.set_name) if self.set_name is not None else ()
        )


def split_mastername(mastername: str) -> Target:
    """The inverse of `Target.mastername` (names never contain `-`, so the split is exact)."""
    parts = mastername.split("-")
    if len(parts) not in (2, 3):
        raise ValueError(f"{mastername!r} is not <jail>-<tree>[-<set>]")
    return Target(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def build_dir(poudriere_data: str, target: Target, build: str) -> str:
    """`${POUDRIERE_DATA}/logs/bulk/<MASTERNAME>/<BUILDNAME>`, where the status files are (§6)."""
    return f"{_path(poudriere_data)}/logs/bulk/{target.mastername}/{check_buildname(build)}"


def packages_dir(poudriere_data: str, target: Target) -> str:
    """`${POUDRIERE_DATA}/packages/<MASTERNAME>`; the live repository is its `.latest` (§4.3)."""
    return f"{_path(poudriere_data)}/packages/{target.mastername}"


def master_mount(poudriere_data: str, target: Target, hashed: bool = False) -> str:
    """`.m/<MASTERNAME>`, or `.m/<first 6 hex of sha256(MASTERNAME)>` when poudriere hashes it
    (FORCE_MOUNT_HASH=yes or a too long mount path, §4.1). Nothing of ours may hold it (§7)."""
    name = target.mastername
    if hashed:
        name = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{_path(poudriere_data)}/.m/{name}"


def build_jail_names(target: Target, builders: int) -> tuple[str, ...]:
    """Every jail a bulk on `target` may leave after a hard kill: `<M>`, `<M>-n` and
    `<M>-job-NN[-n]` for builders 01..NN (§4.1, §7)."""
    m = target.mastername
    jobs = [f"{m}-job-{n:02d}" for n in range(1, builders + 1)]
    return (m, f"{m}-n", *(j for job in jobs for j in (job, f"{job}-n")))


PRIVILEGE: tuple[tuple[str, ...], ...] = ((), ("sudo", "-n"))


@dataclass(frozen=True)
class Poudriere:
    """The global invocation: `<program> -e <etcdir> [-N] [-s VAR=value]... <command>`.
    poudriere wipes the environment (§0), so variables it must see go in poudriere.conf or
    `defines` (`-s`); `program` lets the dev-host builder stand in for poudriere."""

    etcdir: str
    program: str = "poudriere"
    no_color: bool = True
    defines: tuple[tuple[str, str], ...] = ()
    # poudriere runs as root (§3); a worker runs as an unprivileged user and gets root for
    # poudriere alone through sudo (a rule in the FreeBSD worker template). () on the dev host,
    # whose builder needs no privilege.
    privilege: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _path(self.etcdir)
        if self.privilege not in PRIVILEGE:
            raise InvalidName(f"privilege {self.privilege!r}: expected one of {PRIVILEGE}")
        for key, value in self.defines:
            ENV_KEY.check(key)
            _word(value, f"-s {key}", _VALUE)

    def cmd(self, command: str, *args: str) -> Cmd:
        words = [*self.privilege, self.program, "-e", self.etcdir]
        if self.no_color:
            words.append("-N")  # global -N (colours off), not `bulk -N` (§0)
        for key, value in self.defines:
            words += ["-s", f"{key}={value}"]
        return Cmd((*words, command, *args))


def version_cmd(p: Poudriere) -> Cmd:
    """`poudriere version`: prints `poudriere-git-<version>` (§0; see status.parse_version)."""
    return p.cmd("version")


def jail_create_cmd(
    p: Poudriere,
    jail: str,
    *,
    version: str | None,
    arch: str | None = None,
    method: str = "http",
    url: str | None = None,
    mountpoint: str | None = None,
) -> Cmd:
    """`jail -c -j NAME [-v VERSION] [-a ARCH] -m METHOD [-U URL] [-M MNT]` (§1.1). `version`
    is a release (`14.1-RELEASE`) or, for git/svn methods, a branch; it may be None only for
    `src=`, `null` and git/svn. `null` registers an existing tree and needs `mountpoint`."""
    args = ["-c", "-j", POUDRIERE_JAIL.check(jail)]
    vcs = _check_jail_method(method, url)
    if version is not None:
        args += ["-v", BRANCH.check(version) if vcs else _release(version)]
    elif not (vcs or method == "null" or method.startswith("src=")):
        raise ValueError(f"jail -m {method} needs a version (-v), e.g. '14.1-RELEASE'")
    if arch is not None:
        args += ["-a", _arch(arch)]
    args += ["-m", method]
    if url is not None:
        args += ["-U", url]
    args += _mountpoint(method, mountpoint, ("null",))
    return p.cmd("jail", *args)


def jail_update_cmd(p: Poudriere, jail: str) -> Cmd:
    """`jail -u -j NAME`. It is not blocked while a bulk uses the jail, and a changed jail
    version deletes all its packages on the next bulk: serialise it yourself (§1.1, §7)."""
    return p.cmd("jail", "-u", "-j", POUDRIERE_JAIL.check(jail))


def jail_delete_cmd(p: Poudriere, jail: str, clean: tuple[str, ...] = ()) -> Cmd:
    """`jail -d -j NAME -y [-C WHAT]...`; `clean` also deletes `<jail>-*` data (§1.1)."""
    args = ["-d", "-j", POUDRIERE_JAIL.check(jail), "-y"]
    for what in clean:
        if what not in _JAIL_CLEAN:
            raise ValueError(f"jail -d -C {what!r}: expected one of {sorted(_JAIL_CLEAN)}")
        args += ["-C", what]
    return p.cmd("jail", *args)


def jail_list_cmd(p: Poudriere) -> Cmd:
    """`jail -l -q -n`: names only; the full `-l` columns differ between releases (§1.1)."""
    return p.cmd("jail", "-l", "-q", "-n")


def jail_info_cmd(p: Poudriere, jail: str, tree: str | None = None) -> Cmd:
    """`jail -i -j NAME [-p TREE]`; with a tree it also shows the latest build (§1.1)."""
    args = ["-i", "-j", POUDRIERE_JAIL.check(jail)]
    return p.cmd("jail", *args, *(("-p", TREE.check(tree)) if tree is not None else ()))


def jail_kill_cmd(p: Poudriere, target: Target, builders: int | None = None) -> Cmd:
    """`jail -k -j J -p P [-z S] [-J N]`: recovery after a killed bulk (§7). It stops builders
    01..PARALLEL_JOBS, so pass `builders` when the dead bulk ran with a larger `-J`."""
    args = ["-k", *target.selector_args()]
    if builders is not None:
        args += ["-J", str(_positive(builders, "builders"))]
    return p.cmd("jail", *args)


def ports_create_cmd(
    p: Poudriere,
    tree: str,
    *,
    method: str = "git+https",
    url: str | None = None,
    branch: str | None = None,
    mountpoint: str | None = None,
    full_clone: bool = False,
) -> Cmd:
    """`ports -c -p NAME -m METHOD [-U URL] [-B BRANCH] [-M PATH] [-D]` (§1.2). For a pinned
    checkout you manage yourself use `method="null"` with `mountpoint`; `ports -u` never
    touches such a tree. `branch` and `url` are for git/svn only."""
    vcs = method in _VCS_METHODS
    if not vcs and method not in _PORTS_METHODS:
        known = sorted(_VCS_METHODS | _PORTS_METHODS)
        raise ValueError(f"ports -m {method!r}: expected one of {known}")
    if not vcs and (branch is not None or url is not None or full_clone):
        raise ValueError(f"ports -B/-U/-D are for git/svn methods only, not -m {method}")
    args = ["-c", "-p", TREE.check(tree), "-m", method]
    if url is not None:
        args += ["-U", _vcs_url(method, url)]
    if branch is not None:
        args += ["-B", BRANCH.check(branch)]  # used only at create time (§1.2)
    if full_clone:
        args.append("-D")
    args += _mountpoint(method, mountpoint, ("null", "none"))
    return p.cmd("ports", *args)


def ports_update_cmd(p: Poudriere, tree: str) -> Cmd:
    """`ports -u -p NAME`: refused while a bulk has the tree mounted (§1.2)."""
    return p.cmd("ports", "-u", "-p", TREE.check(tree))


def ports_delete_cmd(p: Poudriere, tree: str, keep_files: bool = False) -> Cmd:
    """`ports -d -p NAME -y [-k]`; `keep_files` unregisters only (§1.2)."""
    args = ["-d", "-p", TREE.check(tree), "-y"]
    return p.cmd("ports", *args, *(("-k",) if keep_files else ()))


def ports_list_cmd(p: Poudriere) -> Cmd:
    """`ports -l -q -n`: tree names only (§1.2)."""
    return p.cmd("ports", "-l", "-q", "-n")


@dataclass(frozen=True)
class BuildOptions:
    """Options `bulk` and `testport` share (§1.3, §1.4). `builders`/`prepare_jobs` give
    `-J n[:p]`: without `prepare_jobs`, p = n, not 1.25n. `no_repo` 1 is `-N` (no catalogue),
    2 is `-NN` (no commit either). `dry_run` (`-n`) needs ATOMIC_PACKAGE_REPOSITORY=yes.
    `fetch_branch` (`-b`) is `latest`, `quarterly`, `release_N` or a URL; `overlays` are
    trees (`-O`); `save_wrkdir` (`-w`) keeps failed WRKDIRs."""

    buildname: str
    builders: int | None = None
    prepare_jobs: int | None = None
    no_repo: int = 0
    dry_run: bool = False
    fetch_branch: str | None = None
    overlays: tuple[str, ...] = ()
    save_wrkdir: bool = False

    def args(self) -> list[str]:
        args = ["-B", check_buildname(self.buildname)]
        if self.prepare_jobs is not None and self.builders is None:
            raise ValueError("prepare_jobs (-J n:p) needs builders (n) as well")
        if self.builders is not None:
            jobs = str(_positive(self.builders, "builders"))
            if self.prepare_jobs is not None:
                jobs += f":{_positive(self.prepare_jobs, 'prepare_jobs')}"
            args += ["-J", jobs]
        if self.no_repo not in (0, 1, 2):
            raise ValueError("no_repo is 0, 1 (-N) or 2 (-NN)")
        args += ["-N"] * self.no_repo
        if self.fetch_branch is not None:
            args += ["-b", _fetch_branch(self.fetch_branch)]
        for overlay in self.overlays:
            args += ["-O", TREE.check(overlay)]
        return args + ["-n"] * self.dry_run + ["-w"] * self.save_wrkdir


def bulk_cmd(
    p: Poudriere,
    target: Target,
    options: BuildOptions,
    *,
    origins: tuple[str, ...] = (),
    list_files: tuple[str, ...] = (),
    all_ports: bool = False,
    clean: bool = False,
    clean_listed: bool = False,
    test: bool = False,
    test_deps: bool = False,
    test_nonfatal: bool = False,
) -> Cmd:
    """`bulk -j J -p P [-z S] -B NAME [options] (-a | -f FILE... | ORIGIN...)` (§1.3).
    Exactly one port source. `clean` (`-c`) deletes every package of the MASTERNAME first;
    `clean_listed` (`-C`) only the listed ones. `test` is `-t`, with `test_deps` (`-r`) and
    `test_nonfatal` (`-k`). Its exit code is not the result: see status.judge (§1.3, §8)."""
    sources = sum((all_ports, bool(list_files), bool(origins)))
    if sources != 1:
        raise ValueError("bulk needs exactly one of all_ports (-a), list_files (-f), origins")
    if clean and clean_listed:
        raise ValueError("bulk -c already deletes every package; don't combine it with -C")
    if clean_listed and all_ports:
        raise ValueError("bulk -a -C silently becomes -a -c; ask for clean=True instead")
    if (test_deps or test_nonfatal) and not test:
        raise ValueError("bulk -r/-k only make sense with -t (test=True)")
    args = [*target.selector_args(), *options.args()]
    flags = {"-c": clean, "-C": clean_listed, "-t": test, "-r": test_deps, "-k": test_nonfatal}
    args += [flag for flag, wanted in flags.items() if wanted]
    if all_ports:
        args.append("-a")
    for path in list_files:
        args += ["-f", _path(path)]  # absolute: poudriere resolves -f against its caller's cwd
    args += [ORIGIN.check(o) for o in origins]
    return p.cmd("bulk", *args)


def testport_cmd(
    p: Poudriere,
    target: Target,
    options: BuildOptions,
    origin: str,
    *,
    nonfatal: bool = False,
    prefix: str | None = None,
) -> Cmd:
    """`testport -j J -p P [-z S] -B NAME [options] -o ORIGIN [-k] [-P PREFIX]` (§1.4). Exit 0 is
    success, 1 failure. Interactive modes (`-c`, `-i`, `-I`) are never offered."""
    args = [*target.selector_args(), *options.args()]
    if nonfatal:
        args.append("-k")
    if prefix is not None:
        args += ["-P", _path(prefix)]
    return p.cmd("testport", *args, "-o", ORIGIN.check(origin))


def status_cmd(
    p: Poudriere,
    *,
    jail: str | None = None,
    tree: str | None = None,
    set_name: str | None = None,
    build_glob: str | None = None,
    finished: bool = True,
) -> Cmd:
    """`status -H [-f] -l [-j J] [-p P] [-z S] [-B GLOB]`: one tab-separated row per build,
    the log directory last (§1.5). `set_name=""` selects builds without a set (`-z 0`). The
    columns differ between 3.4.x and master: parse with status.parse_status_rows."""
    args = ["-H", *(("-f",) if finished else ()), "-l"]
    if jail is not None:
        args += ["-j", POUDRIERE_JAIL.check(jail)]
    if tree is not None:
        args += ["-p", TREE.check(tree)]
    if set_name == "0":
        raise ValueError("status -z 0 means 'no set'; a set named '0' cannot be selected")
    if set_name is not None:
        args += ["-z", SET.check(set_name) if set_name else "0"]
    if build_glob is not None:
        args += ["-B", _word(build_glob, "build glob", re.compile(r"[A-Za-z0-9_.*?\[\]-]+"))]
    return p.cmd("status", *args)


def _check_jail_method(method: str, url: str | None) -> bool:
    """Validate a `jail -m` method (and `-U`); return whether it is git/svn."""
    if method.startswith("url="):
        _word(method[4:], "jail -m url=", _URL)
    elif method.startswith(_JAIL_PATH_METHODS):
        _path(method[4:])
    elif method.startswith("pkgbase="):
        _word(method[8:], "pkgbase repository", re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*"))
    elif method not in _JAIL_METHODS | _VCS_METHODS:
        known = [*sorted(_JAIL_METHODS | _VCS_METHODS), "url=URL", "tar=PATH", "src=PATH"]
        raise ValueError(f"jail -m {method!r}: expected one of {known}")
    vcs = method in _VCS_METHODS
    if url is not None:
        if not (vcs or method.startswith("pkgbase")):
            raise ValueError(f"jail -U is for git/svn/pkgbase methods only, not -m {method}")
        if vcs:
            _vcs_url(method, url)
        else:
            _word(url, "jail -U", _URL)
    return vcs


def _vcs_url(method: str, url: str) -> str:
    """`-U URL` for a git/svn method. poudriere rewrites the method from the URL's scheme
    (§1.1, §1.2); an explicit method that the URL contradicts is refused."""
    if url.startswith("/"):
        _path(url)
    else:
        _word(url, "-U url", _URL)
    scheme = url.partition("://")[0] if "://" in url else ("file" if url[0] == "/" else "ssh")
    implied = {"https": "+https", "http": "+http", "ssh": "+ssh", "file": "+file"}
    vcs, _, variant = method.partition("+")
    if variant and implied.get(scheme) != f"+{variant}":
        raise ValueError(f"-U {url!r} implies another method than -m {method}; use -m {vcs}")
    return url


def _mountpoint(method: str, mountpoint: str | None, needs: tuple[str, ...]) -> list[str]:
    if mountpoint is None:
        if method in needs:
            raise ValueError(f"-m {method} registers an existing directory: give mountpoint")
        return []
    return ["-M", _path(mountpoint)]


def _release(version: str) -> str:
    if not RELEASE.fullmatch(version):
        raise ValueError(f"jail version {version!r}: expected e.g. '14.1-RELEASE'")
    return version


def _arch(arch: str) -> str:
    """`-a` takes TARGET.TARGET_ARCH; a bare TARGET_ARCH we know is mapped (§1.1)."""
    if arch in ARCHES.values():
        return arch
    if arch in ARCHES:
        return ARCHES[arch]
    raise ValueError(f"jail -a {arch!r}: expected one of {sorted(ARCHES.values())}")


def _fetch_branch(branch: str) -> str:
    if _FETCH_BRANCH.fullmatch(branch):
        return branch
    return _word(branch, "bulk -b (latest, quarterly, release_N or a URL)", _URL)


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _path(path: str) -> str:
    # No component starts with '.', so '..' can never climb out.
    if not _PATH.fullmatch(path):
        raise ValueError(f"{path!r}: expected an absolute path of letters, digits and '_.+@,=-'")
    return path


def _word(value: str, what: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value) or value.startswith("-"):
        raise ValueError(f"invalid {what} {value!r}")
    return value
