"""The `jailfarm` command line (adapter): parses arguments, runs one command on the reactor.

Exit codes: 0 success, 1 the command failed (message on stderr), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from jailfarm import plancli, repocli
from jailfarm.config import FarmConfig, load_farm
from jailfarm.errors import ConfigError, FarmError
from jailfarm.provision import consumer, provcli
from jailfarm.runner import LocalRunner

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

DEFAULT_CONFIG = "farm.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jailfarm", description="CI build farm for FreeBSD packages")
    sub = p.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="farm.toml tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a farm.toml, listing every error")
    check.add_argument("file")
    repocli.register(sub)
    plancli.register(sub)
    consumer.register(sub)
    provcli.register(sub)
    commands = {
        "doctor": "check this host's requirements",
        "smoke": "one worker-jail cycle: clone, jail, exec, teardown",
        "up": "bring the farm up on this (Linux dev) host and run a first build",
        "down": "stop the farm and remove what `up` made",
        "status": "the master, worker jails with their leases, last builds",
        "template": "worker templates: build | list | promote [GEN] | rollback",
        "reap": "remove the farm's orphaned worker jails and clones",
    }
    for name, text in commands.items():
        sp = sub.add_parser(name, help=text)
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="farm.toml to use")
        if name == "smoke":
            sp.add_argument("--template", help="template snapshot to clone (FreeBSD)")
        if name == "up":
            sp.add_argument("--no-build", action="store_true", help="skip the first build")
        if name == "template":
            sp.add_argument("action", choices=("build", "list", "promote", "rollback"))
            sp.add_argument("generation", nargs="?", help="for promote: gN (default: newest)")
        if name == "reap":
            sp.add_argument("--dry-run", action="store_true", help="only say what would go")
            sp.add_argument(
                "--all",
                action="store_true",
                help="everything of this farm, not only expired leases",
            )
    return p


def _config_check(args: argparse.Namespace) -> int:
    cfg = load_farm(args.file)
    print(
        f"{args.file}: ok ({cfg.platform} farm {cfg.name!r}: {len(cfg.poudriere_jails)} "
        f"poudriere jail(s), {len(cfg.trees)} tree(s), {len(cfg.jail_hosts)} jail host(s))"
    )
    return 0


async def _doctor(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.provision.preflight import doctor

    checks = await doctor(LocalRunner(), cfg)
    for c in checks:
        print(c.line())
    failed = [c for c in checks if c.status == "fail"]
    print(f"{len(checks) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


async def _smoke(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.workers.smoke import smoke

    await smoke(cfg, LocalRunner(), lambda line: print(line, flush=True), args.template)
    print("smoke: OK")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


async def _up(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.provision.devhost import DevHost

    return await DevHost(cfg, args.config, LocalRunner(), _say).up(not args.no_build)


async def _down(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.provision.devhost import DevHost

    return await DevHost(cfg, args.config, LocalRunner(), _say).down()


async def _status(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.provision.devhost import DevHost

    return await DevHost(cfg, args.config, LocalRunner(), _say).status()


async def _template(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.workers.template import template_command

    return await template_command(cfg, LocalRunner(), args.action, args.generation, _say)


async def _reap(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.workers.reaper import reap_command

    return await reap_command(cfg, LocalRunner(), args.dry_run, args.all, _say)


ASYNC: dict[str, Callable[[FarmConfig, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "doctor": _doctor,
    "smoke": _smoke,
    "up": _up,
    "down": _down,
    "status": _status,
    "template": _template,
    "reap": _reap,
    **dict.fromkeys(consumer.COMMANDS, consumer.run),
    **dict.fromkeys(provcli.COMMANDS, provcli.run),
}


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            sys.exit(_config_check(args))
        if args.command == "repo":
            sys.exit(repocli.run(args))
        if args.command == "plan":
            sys.exit(plancli.run(args))
        cfg = load_farm(args.config)
    except ConfigError as e:
        print(f"jailfarm: {e}", file=sys.stderr)
        sys.exit(2)
    code = {"rc": 1}

    async def run(reactor: Any) -> None:
        try:
            code["rc"] = await ASYNC[args.command](cfg, args)
        except FarmError as e:
            print(f"jailfarm {args.command}: {e}", file=sys.stderr)

    def go(reactor: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(run(reactor))

    try:
        task.react(go)
    except SystemExit:
        pass
    sys.exit(code["rc"])
