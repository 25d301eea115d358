"""`jailfarm provision plan | apply [--allow-destroy]` (adapter): reads the host's facts, prints
the plan, applies it and checks that a second plan is empty.

`plan` exits 0 when there is nothing to do, 3 when there are steps, 2 when farm.toml or the host
does not fit (problems). `apply` exits 0 when the host now matches farm.toml, 1 otherwise.
`--facts FILE` plans against recorded answers instead of this host (for review on another
machine); `--save-facts FILE` records this host's answers.

On the Linux development host (farm.platform = "linux-dev") the planner is
`linuxdev.plan_linuxdev`, and `apply` goes through `DevHost.apply`, which records what it
creates so `jailfarm down` removes it; `jailfarm up` is that apply plus a first build.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailfarm.errors import FarmError
from jailfarm.provision import freebsd, linuxdev
from jailfarm.provision.plan import Facts, Plan, apply_plan, format_plan, gather

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from jailfarm.config import FarmConfig
    from jailfarm.runner import Runner

    Say = Callable[[str], None]

COMMANDS = ("provision",)
EXIT_CHANGES = 3
EXIT_PROBLEMS = 2


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private API
    """Add `provision plan` and `provision apply` to the `jailfarm` subcommands."""
    p = sub.add_parser("provision", help="bring this host to what farm.toml describes")
    actions = p.add_subparsers(dest="provision_command", required=True)
    plan = actions.add_parser("plan", help="print what apply would change, and why")
    apply = actions.add_parser("apply", help="make the changes the plan lists")
    for sp in (plan, apply):
        sp.add_argument("-c", "--config", default="farm.toml", help="farm.toml to use")
        sp.add_argument("--save-facts", metavar="FILE", help="record the host's answers here")
    plan.add_argument("--facts", metavar="FILE", help="plan against recorded answers")
    apply.add_argument(
        "--allow-destroy",
        action="store_true",
        help="also run destructive steps (they replace what jailfarm did not create)",
    )


def context(cfg_path: str) -> freebsd.Context:
    """The running jailfarm's side of the plan: the farm.toml text, the packaged master.cfg,
    and where this Python's packages live (mounted into the master jail)."""
    return freebsd.Context(
        farm_toml=Path(cfg_path).read_text(),
        master_cfg=resources.files("jailfarm.master").joinpath("master.cfg").read_text(),
        site_packages=os.path.realpath(sysconfig.get_paths()["purelib"]),
        python=f"{sys.version_info[0]}.{sys.version_info[1]}",
    )


async def make_plan(
    cfg: FarmConfig, ctx: freebsd.Context, runner: Runner, save: str | None = None
) -> Plan:
    """Read this host's facts and plan; with `save`, record them (and this installation's
    side of the plan) for `plan --facts`."""
    facts = await gather(runner, freebsd.queries(cfg, ctx))
    if save:
        record = {
            "site_packages": ctx.site_packages,
            "python": ctx.python,
            "answers": facts.to_rows(),
        }
        Path(save).write_text(json.dumps(record, indent=1) + "\n")
    return freebsd.plan_freebsd(cfg, ctx, facts)


def recorded_plan(cfg: FarmConfig, ctx: freebsd.Context, path: str) -> Plan:
    """The plan for facts recorded with `--save-facts` (or a bare list of answers), as the
    recording host's jailfarm installation would make it."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        ctx = replace(ctx, site_packages=data["site_packages"], python=data["python"])
        data = data["answers"]
    try:
        return freebsd.plan_freebsd(cfg, ctx, Facts.from_rows(data))
    except KeyError as e:
        raise FarmError(
            f"{path} does not answer every query for this farm.toml ({e.args[0]}): record "
            "the host's facts again with `provision plan --save-facts`"
        ) from None


def _devhost(cfg: FarmConfig, config: str, runner: Runner, say: Say) -> Any:
    from jailfarm.provision.devhost import DevHost  # the adapter; imports buildbot's world

    return DevHost(cfg, config, runner, say)


async def run_linuxdev(
    cfg: FarmConfig, args: argparse.Namespace, runner: Runner | None = None, say: Say = print
) -> int:
    """`provision plan | apply` on the Linux development host."""
    if runner is None:
        from jailfarm.runner import LocalRunner

        runner = LocalRunner()
    host = _devhost(cfg, args.config, runner, say)
    ctx: linuxdev.Context = host.context()
    if args.provision_command == "plan" and getattr(args, "facts", None):
        try:
            plan = linuxdev.plan_linuxdev(cfg, ctx, Facts.from_json(Path(args.facts).read_text()))
        except KeyError as e:
            raise FarmError(f"{args.facts} does not answer every query ({e.args[0]})") from None
        say(format_plan(plan).rstrip("\n"))
        return _plan_status(plan)
    facts = await gather(runner, linuxdev.queries(cfg, ctx))
    if args.save_facts:
        Path(args.save_facts).write_text(facts.to_json())
    plan = linuxdev.plan_linuxdev(cfg, ctx, facts)
    say(format_plan(plan).rstrip("\n"))
    if args.provision_command == "plan" or plan.problems:
        return _plan_status(plan)
    if not plan.steps:
        return 0
    await host.apply()
    again = linuxdev.plan_linuxdev(cfg, ctx, await gather(runner, linuxdev.queries(cfg, ctx)))
    if again.steps or again.problems:
        say("applied, but planning again still finds steps or problems:")
        say(format_plan(again).rstrip("\n"))
        return 1
    say("applied; the host now matches farm.toml (a new plan is empty)")
    return 0


async def run(
    cfg: FarmConfig, args: argparse.Namespace, runner: Runner | None = None, say: Say = print
) -> int:
    if cfg.platform == "linux-dev":
        return await run_linuxdev(cfg, args, runner, say)
    ctx = context(args.config)
    if args.provision_command == "plan" and getattr(args, "facts", None):
        plan = recorded_plan(cfg, ctx, args.facts)
        say(format_plan(plan).rstrip("\n"))
        return _plan_status(plan)
    if runner is None:
        from jailfarm.runner import LocalRunner

        runner = LocalRunner()
    plan = await make_plan(cfg, ctx, runner, args.save_facts)
    say(format_plan(plan).rstrip("\n"))
    if args.provision_command == "plan":
        return _plan_status(plan)
    if plan.problems:
        return EXIT_PROBLEMS
    if not plan.steps:
        return 0
    await apply_plan(plan, runner, say, allow_destroy=args.allow_destroy)
    return await _verify(cfg, ctx, runner, say)


def _plan_status(plan: Plan) -> int:
    if plan.problems:
        return EXIT_PROBLEMS
    return EXIT_CHANGES if plan.steps else 0


async def _verify(cfg: FarmConfig, ctx: freebsd.Context, runner: Runner, say: Say) -> int:
    """Plan again: a host that now matches farm.toml plans nothing."""
    again = await make_plan(cfg, ctx, runner)
    if not again.steps and not again.problems:
        say("applied; the host now matches farm.toml (a new plan is empty)")
        return 0
    names = ", ".join(s.name for s in again.steps) or "none"
    say(f"applied, but planning again still finds steps ({names}) or problems:")
    say(format_plan(again).rstrip("\n"))
    return 1
