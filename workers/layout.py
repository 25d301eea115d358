"""Where the farm keeps things, and what it calls them (pure).

Datasets under `zfs.root` on every jail host:
  <root>/templates/worker           the worker template; snapshots @g1, @g2, ... are its
                                    generations; the user property `jailfarm:current` names the
                                    generation new workers are cloned from
  <root>/jails/<jail>               one clone per running worker jail, carrying its lease
  <root>/packages                   poudriere's packages (`<mastername>/` each), mounted into
                                    every worker jail, so they outlive the jails
Worker (and jail) names are `<prefix>w<N>`, numbered across all jail hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jailfarm.names import JAIL, SNAPSHOT_TAG

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig

# Lease properties on every clone (ARCHITECTURE.md "Leases").
OWNER = "jailfarm:owner"
BUILD = "jailfarm:build"
EXPIRES = "jailfarm:expires"
WORKER = "jailfarm:worker"
HOST = "jailfarm:host"
LEASE_PROPERTIES = (OWNER, BUILD, EXPIRES, WORKER, HOST)
# On the template dataset: the generation new clones come from.
CURRENT = "jailfarm:current"

_GENERATION = re.compile(r"g([1-9][0-9]*)")


def templates_dataset(cfg: FarmConfig) -> str:
    return f"{cfg.zfs.root}/templates/worker"


def jails_dataset(cfg: FarmConfig) -> str:
    return f"{cfg.zfs.root}/jails"


def packages_dataset(cfg: FarmConfig) -> str:
    return f"{cfg.zfs.root}/packages"


def clone_dataset(cfg: FarmConfig, jail: str) -> str:
    return f"{jails_dataset(cfg)}/{JAIL.check(jail)}"


def generation_tag(n: int) -> str:
    if n < 1:
        raise ValueError(f"template generations count from 1, got {n}")
    return SNAPSHOT_TAG.check(f"g{n}")


def generation_number(tag: str) -> int | None:
    """N for a tag `gN`, None for any other snapshot (not one of our generations)."""
    m = _GENERATION.fullmatch(tag)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class WorkerSlot:
    """One worker name, bound to the jail host whose slot it is."""

    name: str
    host: str


def worker_slots(cfg: FarmConfig) -> tuple[WorkerSlot, ...]:
    """`max_jails` worker names per jail host, numbered across hosts: jfw1, jfw2, ..."""
    slots: list[WorkerSlot] = []
    for host in cfg.jail_hosts:
        for _ in range(host.max_jails):
            slots.append(WorkerSlot(JAIL.check(f"{cfg.prefix}w{len(slots) + 1}"), host.name))
    return tuple(slots)
