"""`jailfarm-poudriere`: the poudriere-compatible bulk builder of the Linux development host
(shell: it runs bmake and writes files). Same command line, output layout, status files and
exit codes as poudriere for the subset jailfarm uses (`jail`, `ports`, `bulk`, `testport`;
shared/spec/poudriere.md §1, §4, §7).

Each port builds in a clean build root of its own, made from a reference root as poudriere
clones and rolls back its builder jails: a nested user/mount/PID namespace with an overlay
whose tmpfs upper layer goes with the port (devbuild_sandbox). Honest limits: the base system
in the build root is the host's (Debian's /usr, read-only), not a FreeBSD world, and the
builder makes FreeBSD-format packages for the ABI of the poudriere jail without
cross-compiling: the demo ports' programs are Linux programs.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from jailfarm.errors import FarmError
from jailfarm.names import ORIGIN, POUDRIERE_JAIL, TREE
from jailfarm.poudriere import devbuild_graph as graph
from jailfarm.poudriere import devbuild_layout as layout
from jailfarm.poudriere.commands import Target, check_buildname, packages_dir
from jailfarm.poudriere.conf import make_conf_stack
from jailfarm.poudriere.devbuild_run import Bulk, Fatal, gather
from jailfarm.poudriere.devbuild_testport import Testport
from jailfarm.poudriere.pkgfile import pkg_arch

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

EX_USAGE = 64
_NOT_YET = ("options", "status")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jailfarm-poudriere",
        description="poudriere-compatible bulk builder for the Linux dev host. Commands: "
        "jail, ports, bulk, testport. Not implemented yet: options, status (they fail).",
    )
    p.add_argument("-e", dest="etcdir", default="/usr/local/etc")
    p.add_argument("-N", dest="no_color", action="store_true", help="no colours (never any)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    j = sub.add_parser("jail")
    for flag in ("-c", "-l", "-d", "-k"):
        j.add_argument(flag, dest="action", action="append_const", const=flag[1])
    for flag in ("-j", "-v", "-a", "-m", "-M", "-p", "-z", "-J"):
        j.add_argument(flag)
    for flag in ("-q", "-n", "-y"):
        j.add_argument(flag, action="store_true")
    t = sub.add_parser("ports")
    for flag in ("-c", "-l", "-d"):
        t.add_argument(flag, dest="action", action="append_const", const=flag[1])
    for flag in ("-p", "-m", "-M"):
        t.add_argument(flag)
    for flag in ("-q", "-n", "-y", "-k"):
        t.add_argument(flag, action="store_true")
    b = sub.add_parser("bulk")
    tp = sub.add_parser("testport", help="build a port's dependencies, then test the port")
    for build in (b, tp):  # the options bulk and testport share (poudriere.md 1.3, 1.4)
        build.add_argument("-j", required=True)
        build.add_argument("-p", default="default")
        build.add_argument("-z")
        build.add_argument("-J", type=int)
        build.add_argument("-B")
        build.add_argument("-n", action="store_true", help="dry run")
    b.add_argument("-a", action="store_true")
    b.add_argument("-f", action="append", default=[])
    b.add_argument("origins", nargs="*")
    tp.add_argument("-o", help="the origin to test (or give it as the argument)")
    tp.add_argument("origin", nargs="?")
    for name in _NOT_YET:
        sub.add_parser(name, help="not implemented by the dev builder (fails)")
    return p


class Etc:
    """The configuration directory (`-e`): poudriere.conf, poudriere.d/{jails,ports}/."""

    def __init__(self, etcdir: str) -> None:
        self.path = Path(etcdir).resolve()
        self.d = self.path / "poudriere.d"
        if (
            not (self.path / "poudriere.conf").is_file()
            and not (self.d / "poudriere.conf").is_file()
        ):
            raise Fatal(f"Unable to find a readable poudriere.conf in {self.path} or {self.d}")

    def conf(self, target: Target | None = None) -> dict[str, str]:
        files = [self.path / "poudriere.conf", self.d / "poudriere.conf"]
        if target is not None:  # same order as make.conf (§2.1)
            names = make_conf_stack(target)[1:]
            files += [self.d / n.replace("make.conf", "poudriere.conf") for n in names]
        conf: dict[str, str] = {}
        for f in files:
            if f.is_file():
                conf.update(_sh_assignments(f.read_text()))
        return conf

    def make_vars(self, target: Target) -> list[str]:
        """The make.conf stack (§2.4) as `VAR=value` command-line assignments. Honest limit:
        command-line variables override the port's own `=` assignments, where make.conf
        lines would not; `?=` defaults (JF_FAIL) behave the same."""
        values: dict[str, str] = {}
        for name in make_conf_stack(target):
            f = self.d / name
            for line in f.read_text().splitlines() if f.is_file() else []:
                m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*([+?]?)=\s*(.*?)\s*", line)
                if not m or m[1] == "DEVELOPER":
                    continue
                append = m[2] == "+" and m[1] in values
                values[m[1]] = f"{values[m[1]]} {m[3]}" if append else m[3]
        return [f"{k}={v}" for k, v in values.items()]

    def data(self, conf: Mapping[str, str]) -> Path:
        if conf.get("POUDRIERE_DATA"):
            return Path(conf["POUDRIERE_DATA"])
        if conf.get("BASEFS"):
            return Path(conf["BASEFS"]) / "data"
        return self.path / "data"  # /usr/local/poudriere/data is no place on a dev host

    def record(self, kind: str, name: str) -> Path:
        return self.d / kind / name

    def attr(self, kind: str, name: str, key: str) -> str:
        f = self.record(kind, name) / key
        return f.read_text().strip() if f.is_file() else ""


def _sh_assignments(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if m:
            words = shlex.split(m[2], comments=True)
            out[m[1]] = " ".join(words)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in _NOT_YET:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command in _NOT_YET:
            raise Fatal(f"{args.command} is not implemented by the dev builder yet", EX_USAGE)
        etc = Etc(args.etcdir)
        commands = {"jail": cmd_jail, "ports": cmd_ports, "bulk": cmd_bulk}
        command = (commands | {"testport": cmd_testport})[args.command]
        return command(args, etc)
    except Fatal as e:
        print(f"[00:00:00] Error: {e}", file=sys.stderr)
        return e.code
    except (FarmError, ValueError) as e:
        print(f"[00:00:00] Error: {e}", file=sys.stderr)
        return 1


def _one_action(args: argparse.Namespace, allowed: str) -> str:
    actions = args.action or []
    if len(actions) != 1:
        raise Fatal(f"exactly one of -{' -'.join(allowed)} is needed", EX_USAGE)
    return str(actions[0])


def cmd_jail(args: argparse.Namespace, etc: Etc) -> int:
    action = _one_action(args, "cldk")
    if action == "l":
        root = etc.d / "jails"
        if not (args.q or args.n):
            print("JAILNAME VERSION ARCH METHOD TIMESTAMP PATH")
        for name in sorted(p.name for p in root.iterdir()) if root.is_dir() else []:
            keys = ("version", "arch", "method", "timestamp", "mnt")
            row = [name] if args.n else [name, *(etc.attr("jails", name, k) or "-" for k in keys)]
            print(" ".join(row))
        return 0
    name = POUDRIERE_JAIL.check(args.j or "")
    rec = etc.record("jails", name)
    if action == "c":
        if rec.exists():
            raise Fatal(f"jail {name} already exists")
        if args.m not in (None, "null"):
            raise Fatal(f"jail -m {args.m}: the dev builder only registers jails (-m null)")
        if not args.v or not re.match(r"[1-9][0-9]*\.", args.v):
            raise Fatal("jail -c needs -v VERSION, e.g. 14.1-RELEASE", EX_USAGE)
        arch = args.a or "amd64"
        abi = jail_abi(args.v, arch)
        rec.mkdir(parents=True)
        values = {"version": args.v, "arch": arch, "method": "null", "abi": abi}
        values |= {"mnt": args.M or "", "timestamp": str(int(time.time()))}
        for key, value in values.items():
            (rec / key).write_text(value + "\n")
        print(f"Jail {name} {args.v} {arch} is ready to be used")
        return 0
    if not rec.is_dir():
        raise Fatal(f"No such jail: {name}")
    if action == "d":
        shutil.rmtree(rec)
        print(f"Removing {name} jail... done")
        return 0
    return kill_jail(etc, Target(name, TREE.check(args.p or "default"), args.z))


def jail_abi(version: str, arch: str) -> str:
    """`FreeBSD:<major>:<arch>` for a jail: 14.1-RELEASE on arm64.aarch64 -> FreeBSD:14:aarch64."""
    abi = f"FreeBSD:{version.split('.', maxsplit=1)[0]}:{arch.rpartition('.')[2]}"
    pkg_arch(abi)  # refuses arches pkg does not know
    return abi


def kill_jail(etc: Etc, target: Target) -> int:
    """`jail -k` (§7): clean up after a killed bulk. Removes the builders' roots and the
    uncommitted `.building`, and marks an unfinished latest build `stopped:<last status>`."""
    data = etc.data(etc.conf(target))
    m = target.mastername
    print(f"[00:00:00] Stopping jail {m} (not running, but cleaning up anyway)")
    for path in (data / ".m" / m, Path(packages_dir(str(data), target)) / ".building"):
        if path.exists() and path.resolve().is_relative_to(data.resolve()):
            shutil.rmtree(path)
    status = data / "logs" / "bulk" / m / "latest" / ".poudriere.status"
    if status.is_file() and not status.read_text().startswith("stopped:"):
        layout.BuildDir(status.parent).status("stopped:" + status.read_text().strip())
    return 0


def cmd_ports(args: argparse.Namespace, etc: Etc) -> int:
    action = _one_action(args, "cld")
    if action == "l":
        root = etc.d / "ports"
        if not (args.q or args.n):
            print("PORTSTREE METHOD TIMESTAMP PATH")
        for name in sorted(p.name for p in root.iterdir()) if root.is_dir() else []:
            keys = ("method", "timestamp", "mnt")
            print(
                " ".join([name] if args.n else [name, *(etc.attr("ports", name, k) for k in keys)])
            )
        return 0
    name = TREE.check(args.p or "default")
    rec = etc.record("ports", name)
    if action == "d":
        if not rec.is_dir():
            raise Fatal(f"No such ports tree: {name}", 2)
        shutil.rmtree(rec)
        return 0
    if args.m not in ("null", "none") or not args.M:
        raise Fatal("ports -c: the dev builder registers existing trees only (-m null -M PATH)")
    mnt = Path(args.M).resolve()
    if not (mnt / "Mk" / "bsd.port.mk").is_file():
        raise Fatal(f"{mnt} is not a ports tree (no Mk/bsd.port.mk)")
    if rec.exists():
        raise Fatal(f"ports tree {name} already exists")
    rec.mkdir(parents=True)
    values = {"mnt": str(mnt), "method": args.m, "timestamp": str(int(time.time()))}
    for key, value in values.items():
        (rec / key).write_text(value + "\n")
    return 0


def listed_origins(args: argparse.Namespace, tree: Path) -> list[str]:
    """The ports asked for: `-a` reads the SUBDIR lines of the tree's Makefiles; `-f` list
    files take the first word of each line, skipping blanks and `#` comments (§2.4)."""
    if sum((args.a, bool(args.f), bool(args.origins))) != 1:
        raise Fatal("bulk needs exactly one of -a, -f FILE or origins", EX_USAGE)
    if args.a:
        return [
            f"{c}/{p}" for c in _subdirs(tree / "Makefile") for p in _subdirs(tree / c / "Makefile")
        ]
    origins = list(args.origins)
    for path in args.f:
        for line in Path(path).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                origins.append(line.split()[0])
    return list(dict.fromkeys(ORIGIN.check(o) for o in origins))


def _subdirs(makefile: Path) -> list[str]:
    return re.findall(r"^\s*SUBDIR\s*\+=\s*(\S+)", makefile.read_text(), re.M)


class _Setup:
    """What bulk and testport read before gathering: the target, its tree and data
    directory, the builders, the build name, the make.conf stack and the repository."""

    def __init__(self, args: argparse.Namespace, etc: Etc) -> None:
        self.target = Target(args.j, args.p, args.z)
        if not etc.record("jails", self.target.jail).is_dir():
            raise Fatal(f"No such jail: {self.target.jail}")
        tree_path = etc.attr("ports", self.target.tree, "mnt")
        if not tree_path:
            raise Fatal(f"No such ports tree: {self.target.tree}", 2)
        self.tree = Path(tree_path)
        conf = etc.conf(self.target)
        self.builders = args.J or int(conf.get("PARALLEL_JOBS") or 2)
        self.buildname = check_buildname(args.B or time.strftime("%Y-%m-%d_%Hh%Mm%Ss"))
        self.keep_old = int(conf.get("KEEP_OLD_PACKAGES_COUNT") or 2)
        self.make_vars = etc.make_vars(self.target)
        self.data = etc.data(conf).resolve()
        self.version = etc.attr("jails", self.target.jail, "version")
        self.abi = etc.attr("jails", self.target.jail, "abi")
        self.existing = layout.existing_packages(
            Path(packages_dir(str(self.data), self.target)), self.version
        )

    def check_listed(self, listed: Sequence[str]) -> None:
        missing = [o for o in listed if "@" in o or not (self.tree / o / "Makefile").is_file()]
        if missing:
            raise Fatal(f"Nonexistent origin listed: {' '.join(missing)}")


def cmd_bulk(args: argparse.Namespace, etc: Etc) -> int:
    s = _Setup(args, etc)
    listed = listed_origins(args, s.tree)
    s.check_listed(listed)
    ports = gather(s.tree, listed, s.make_vars)
    plan = graph.plan(ports, listed, s.existing)
    if args.n:
        print(f"Would build {len(plan.tobuild)} packages using {s.builders} builders")
        print("Ports to build: " + " ".join(plan.tobuild))
        return 0
    bulk = Bulk(
        s.target,
        s.buildname,
        s.data,
        s.tree,
        ports,
        plan,
        s.builders,
        s.make_vars,
        s.abi,
        s.existing,
    )
    return bulk.run(s.version, s.keep_old)


def cmd_testport(args: argparse.Namespace, etc: Etc) -> int:
    """`testport [-o] ORIGIN` (§1.4): exit 0 when the port builds, 1 when it or one of its
    dependencies fails."""
    if bool(args.o) == bool(args.origin):
        raise Fatal("testport needs one origin: -o ORIGIN or ORIGIN", EX_USAGE)
    s = _Setup(args, etc)
    origin = ORIGIN.check(args.o or args.origin)
    s.check_listed([origin])
    ports = gather(s.tree, [origin], s.make_vars)
    full = graph.plan(ports, [origin], s.existing)
    if args.n:
        deps = graph.plan_testport_deps(full, origin)
        print(f"Would build {len(deps.tobuild)} packages using {s.builders} builders")
        print("Ports to build: " + " ".join([*deps.tobuild, origin]))
        return 0
    test = Testport(
        s.target,
        s.buildname,
        s.data,
        s.tree,
        ports,
        full,
        s.builders,
        s.make_vars,
        s.abi,
        s.existing,
        origin,
    )
    return test.run(s.version, s.keep_old)
