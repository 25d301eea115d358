"""The Buildbot configuration of a farm, built from farm.toml (adapter).

`master.cfg` in a master's basedir is two lines that call `master_config("farm.toml")`; every
setting comes from the farm file copied next to it, so what a master runs is reproducible.
"""

from __future__ import annotations

import os
from typing import Any

from buildbot.plugins import schedulers, steps, util

from jailfarm.config import FarmConfig, load_farm
from jailfarm.workers.latent import JailLatentWorker
from jailfarm.workers.layout import worker_slots
from jailfarm.workers.reaper import ReaperService

JAIL_CHECK = "jail-check"


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
    return {
        "title": f"jailfarm {cfg.name}",
        "titleURL": cfg.web.url,
        "buildbotURL": cfg.web.url,
        "buildbotNetUsageData": None,
        "db": {"db_url": cfg.database.url.reveal()},
        "protocols": {
            "pb": {"port": f"tcp:{cfg.workers.pb_port}:interface={_escaped(master_address)}"}
        },
        "www": {
            "port": f"tcp:{cfg.web.port}:interface={_escaped(bind)}",
            "plugins": {"waterfall_view": {}, "console_view": {}, "grid_view": {}},
        },
        "workers": workers,
        "builders": [
            util.BuilderConfig(
                name=JAIL_CHECK,
                workernames=names,
                factory=jail_check_factory(),
                collapseRequests=False,
            ),
        ],
        "schedulers": [schedulers.ForceScheduler(name="force", builderNames=[JAIL_CHECK])],
        "services": [ReaperService(farm_toml)],
        # Fan-out per ABI must never merge requests that differ only in properties
        # (buildbot-spec 4, "collapseRequests=False is required").
        "collapseRequests": False,
    }
