"""The Buildbot configuration of a farm, built from farm.toml (adapter).

`master.cfg` in a master's basedir is two lines that call `master_config("farm.toml")`; every
setting comes from the farm file copied next to it, so what a master runs is reproducible.
"""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from buildbot.plugins import schedulers, steps, util

from jailfarm.config import FarmConfig, PortSet, PortsTree, PoudriereJail, load_farm
from jailfarm.master import changes
from jailfarm.master.steps import (
    PoudriereBulk,
    PoudriereTestport,
    PublishRepository,
    bulk_passed,
)
from jailfarm.master.www import www_config
from jailfarm.poudriere.commands import PRIVILEGE, Target
from jailfarm.poudriere.conf import (
    WORKER_ETC,
    PoudriereConf,
    etc_files,
    worker_conf,
    worker_data,
)
from jailfarm.workers.latent import JailLatentWorker
from jailfarm.workers.layout import worker_slots
from jailfarm.workers.reaper import ReaperService

JAIL_CHECK = "jail-check"


def poudriere_layout(cfg: FarmConfig) -> tuple[PoudriereConf, tuple[str, ...]]:
    """poudriere.conf of the workers and the privilege poudriere runs with (poudriere.md §3):
    root through sudo on FreeBSD; the dev host's builder needs none."""
    return worker_conf(cfg), (() if cfg.platform == "linux-dev" else PRIVILEGE[1])


def jail_check_factory() -> util.BuildFactory:
    """The smallest useful job: prove the build runs inside a fresh worker jail."""
    factory = util.BuildFactory()
    for name, command in (
        ("where", ["sh", "-c", "echo jail $(hostname) as $(id -un); uname -sr; pwd"]),
        ("processes", ["ps", "-o", "pid,user,args", "-A"]),
        ("filesystem", ["df", "-h", "/"]),
    ):
        factory.addStep(
            steps.ShellCommand(name=name, command=command, logEnviron=False, haltOnFailure=True)
        )
    return factory


def poudriere_program(cfg: FarmConfig) -> str:
    """`poudriere` from the worker's PATH: the real one on FreeBSD; on the dev host our
    poudriere-compatible builder, which install.sh links as `poudriere` into the venv's bin,
    first on the PATH of every worker jail (workerplan.tool_dirs)."""
    return "poudriere"


def bulk_builder_name(jail: PoudriereJail, tree: PortsTree, pset: PortSet) -> str:
    name = f"bulk-{jail.name}-{tree.name}"
    return name if pset.name == "default" else f"{name}-{pset.name}"


def bulk_factory(
    cfg: FarmConfig, jail: PoudriereJail, tree: PortsTree, pset: PortSet, farm_toml: str
) -> util.BuildFactory:
    """Check the ports tree out at the pushed commit and plan what to rebuild (changes.py:
    the changed ports and their dependents, or every port); on the dev host, write
    poudriere's configuration (poudriere.conf, each set's make.conf and list) and register the
    jail and the tree; then bulk the planned ports. A plan with nothing to build ends the
    build before the jail and tree are set up."""
    program = poudriere_program(cfg)
    _, privilege = poudriere_layout(cfg)
    factory = util.BuildFactory()
    factory.addStep(_checkout(tree))
    factory.addSteps(changes.plan_steps(cfg, tree, scope=pset.packages))
    _poudriere_setup(factory, cfg, jail, tree)
    factory.addStep(
        PoudriereBulk(
            jail=jail.name,
            tree=tree.name,
            set_name=pset.name,
            etcdir=WORKER_ETC,
            data_dir=worker_data(cfg.platform),
            poudriere=program,
            privilege=privilege,
            builders=cfg.workers.builders,
            # PlanPorts sets one of them: the list file it wrote, or every port.
            list_files=util.Property("plan_list_file", default=[]),
            all_ports=util.Property("plan_bulk_all", default=False),
            on_port_failure=cfg.on_port_failure,
            buildname_prefix=cfg.prefix,
            log_url=logs_url(cfg),
        )
    )
    add_publish_steps(factory, cfg, Target(jail.name, tree.name, pset.name), farm_toml)
    return factory


def _checkout(tree: PortsTree) -> Any:
    # A full clone: the planner diffs the pushed range in it.
    return steps.Git(
        name="ports-tree",
        repourl=tree.url,
        branch=tree.branch,
        mode="full",
        method="clobber",
        workdir="ports",
        logEnviron=False,
        haltOnFailure=True,
    )


def _poudriere_setup(
    factory: util.BuildFactory, cfg: FarmConfig, jail: PoudriereJail, tree: PortsTree
) -> None:
    conf, privilege = poudriere_layout(cfg)
    poudriere = [*privilege, poudriere_program(cfg), "-e", WORKER_ETC]
    for etc in etc_files(cfg, conf):
        factory.addStep(
            steps.StringDownload(
                etc.text,
                name="etc-" + etc.path.replace("/", "-").replace(".", "-"),
                mode=0o644,
                workerdest=f"{WORKER_ETC}/{etc.path}",
                haltOnFailure=True,
            )
        )
    if cfg.platform == "linux-dev":
        # The dev host's builder registers the jail for each build (it only records it).
        jail_cmd = ["jail", "-c", "-j", jail.name, "-v", jail.version, "-a", jail.arch]
        jail_cmd += ["-m", "null"]
    else:
        # Creating a FreeBSD jail downloads and extracts a release: the worker template
        # carries it (templatefill); a template without it fails here, saying so.
        jail_cmd = ["jail", "-i", "-j", jail.name]
    # The tree is the checkout of the pushed commit, registered as a null-mounted tree
    # (poudriere.md §1.2), on both platforms.
    ports_cmd = ["ports", "-c", "-p", tree.name, "-m", "null", "-M"]
    factory.addStep(
        steps.ShellSequence(
            name="poudriere-setup",
            logEnviron=False,
            haltOnFailure=True,
            commands=[
                util.ShellArg(command=[*poudriere, *jail_cmd], logname="jail", haltOnFailure=True),
                util.ShellArg(
                    command=[
                        *poudriere,
                        *ports_cmd,
                        util.Interpolate("%(prop:builddir)s/ports"),
                    ],
                    logname="ports",
                    haltOnFailure=True,
                ),
            ],
        )
    )


def testport_builder_name(jail: PoudriereJail, tree: PortsTree) -> str:
    return f"testport-{jail.name}-{tree.name}"


def testport_factory(cfg: FarmConfig, jail: PoudriereJail, tree: PortsTree) -> util.BuildFactory:
    """After a push, `poudriere testport` of each changed port (the default set): checkout,
    plan (changed ports only), setup, then one testport step per port, added by the plan.
    Its dependencies go to the MASTERNAME's repository like a bulk's (poudriere.md §1.4); the
    tested packages are never published."""
    factory = util.BuildFactory()
    factory.addStep(_checkout(tree))
    factory.addSteps(changes.plan_steps(cfg, tree, testport=partial(_testport, cfg, jail, tree)))
    _poudriere_setup(factory, cfg, jail, tree)
    return factory


def _testport(cfg: FarmConfig, jail: PoudriereJail, tree: PortsTree, origin: str) -> Any:
    _, privilege = poudriere_layout(cfg)
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", origin)
    return PoudriereTestport(
        name=f"testport-{slug}",
        origin=origin,
        jail=jail.name,
        tree=tree.name,
        set_name="default",
        etcdir=WORKER_ETC,
        data_dir=worker_data(cfg.platform),
        poudriere=poudriere_program(cfg),
        privilege=privilege,
        builders=cfg.workers.builders,
        on_port_failure=cfg.on_port_failure,
        # Not the bulk builder's jf-N-1 on the same MASTERNAME: a reused name resumes (§1.3).
        buildname=util.Interpolate(f"{cfg.prefix}-t%(prop:buildnumber)s-{slug}"),
    )


def logs_url(cfg: FarmConfig) -> str | None:
    """Where nginx serves the bulk logs (`/data`, next to `/buildbot/`), or None when the web
    UI is not behind the farm's nginx (`web.url` not ending in /buildbot/)."""
    url = urlsplit(cfg.web.url)
    if not url.path.endswith("/buildbot/"):
        return None
    return f"{url.scheme}://{url.netloc}{url.path.removesuffix('/buildbot/')}/data"


def add_publish_steps(
    factory: util.BuildFactory, cfg: FarmConfig, target: Target, farm_toml: str
) -> None:
    """After the bulk: its logs to the master (served by nginx at /data, also after a failed
    bulk: the failed ports' logs are what ops open), then the packages, published there as a
    new signed generation (the key never enters a worker), then the upload removed."""
    m = target.mastername
    build = "%(prop:poudriere_buildname)s"
    data = worker_data(cfg.platform)
    # Not the build directory whole: its `packages` and `packages_root` links point at absolute
    # paths of the worker (poudriere.md §4.2), which the master rightly refuses to unpack.
    here = f"{data}/logs/bulk/{m}/{build}"
    factory.addStep(
        steps.MultipleFileUpload(
            name="upload-logs",
            workersrcs=[
                util.Interpolate(f"{here}/{name}")
                for name in ("logs", ".data.json", ".data.mini.json", ".poudriere.*")
            ],
            masterdest=util.Interpolate(f"{cfg.publish.logs}/{m}/{build}"),
            glob=True,
            mode=0o644,  # nginx's workers read them
            alwaysRun=True,
            doStepIf=lambda step: bool(step.getProperty("poudriere_buildname")),
        )
    )
    incoming = f"{cfg.state_dir}/incoming/%(prop:buildername)s-%(prop:buildnumber)s"
    factory.addStep(
        steps.DirectoryUpload(
            name="upload-packages",
            # .latest is a symlink (poudriere.md §4.3): upload the directory it holds.
            workersrc=f"{data}/packages/{m}/.latest/All",
            masterdest=util.Interpolate(f"{incoming}/All"),
            doStepIf=bulk_passed,
            haltOnFailure=True,
        )
    )
    factory.addStep(
        PublishRepository(farm_toml=farm_toml, repo=m, source=util.Interpolate(incoming))
    )
    factory.addStep(
        steps.MasterShellCommand(
            ["rm", "-rf", util.Interpolate(incoming)],
            name="remove-upload",
            alwaysRun=True,
            logEnviron=False,
        )
    )


def master_config(farm_toml: str) -> dict[str, Any]:
    """The `BuildmasterConfig` dict for the farm described by `farm_toml`."""
    path = os.path.abspath(farm_toml)
    cfg = load_farm(path)
    return build_config(cfg, path)


def _escaped(address: str) -> str:
    # Twisted endpoint strings separate fields with ':'; an IPv6 interface needs them escaped.
    return address.replace(":", "\\:")


def build_config(cfg: FarmConfig, farm_toml: str) -> dict[str, Any]:
    bind = cfg.web.bind
    # Worker jails connect here (a remote jail host needs a routable address).
    master_address = cfg.workers.master_address or bind
    workers = [
        JailLatentWorker(slot.name, farm_toml=farm_toml, host=slot.host, master_host=master_address)
        for slot in worker_slots(cfg)
    ]
    names = [w.name for w in workers]
    # One bulk per MASTERNAME at a time (poudriere refuses a second one, §7): its packages
    # live in the jail host's packages dataset, shared by the worker jails.
    # One lock object per MASTERNAME (buildbot refuses two locks of one name): a bulk and a
    # testport on the same jail, tree and set take the same one.
    locks: dict[str, Any] = {}

    def lock(name: str) -> Any:
        return locks.setdefault(name, util.MasterLock(name)).access("exclusive")

    bulks = [
        util.BuilderConfig(
            name=bulk_builder_name(j, t, s),
            workernames=names,
            factory=bulk_factory(cfg, j, t, s, farm_toml),
            collapseRequests=False,
            locks=[lock(bulk_builder_name(j, t, s))],
        )
        for j in cfg.poudriere_jails
        for t in cfg.trees
        for s in cfg.sets
    ]
    default = next(s for s in cfg.sets if s.name == "default")
    testports = [
        util.BuilderConfig(
            name=testport_builder_name(j, t),
            workernames=names,
            factory=testport_factory(cfg, j, t),
            collapseRequests=False,
            locks=[lock(bulk_builder_name(j, t, default))],
        )
        for j in cfg.poudriere_jails
        for t in cfg.trees
        if t.testport
    ]
    refs = [
        changes.BuilderRef(bulk_builder_name(j, t, s), "bulk", j.name, t.name, s.name)
        for j in cfg.poudriere_jails
        for t in cfg.trees
        for s in cfg.sets
    ] + [
        changes.BuilderRef(testport_builder_name(j, t), "testport", j.name, t.name, "default")
        for j in cfg.poudriere_jails
        for t in cfg.trees
        if t.testport
    ]
    return {
        "title": f"jailfarm {cfg.name}",
        "titleURL": cfg.web.url,
        "buildbotURL": cfg.web.url,
        "buildbotNetUsageData": None,
        "db": {"db_url": cfg.database.url.reveal()},
        "protocols": {
            "pb": {"port": f"tcp:{cfg.workers.pb_port}:interface={_escaped(master_address)}"}
        },
        "www": www_config(cfg, farm_toml, hooks=changes.www_hooks(cfg)),
        "workers": workers,
        "builders": [
            util.BuilderConfig(
                name=JAIL_CHECK,
                workernames=names,
                factory=jail_check_factory(),
                collapseRequests=False,
            ),
            *bulks,
            *testports,
        ],
        "schedulers": [
            schedulers.ForceScheduler(name="force", builderNames=[JAIL_CHECK]),
            schedulers.ForceScheduler(name="force-bulk", builderNames=[b.name for b in bulks]),
            *changes.schedulers(cfg, refs),
        ],
        "change_source": changes.change_sources(cfg),
        "services": [ReaperService(farm_toml)],
        # Fan-out per ABI must never merge requests that differ only in properties
        # (buildbot-spec 4, "collapseRequests=False is required").
        "collapseRequests": False,
    }
