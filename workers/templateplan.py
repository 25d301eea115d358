"""The generations `@gN` of the worker template and its `jailfarm:current` pointer: the state
parsed from `zfs get`, the promote, rollback and prune planners and the `list` lines (pure).

Rule: a generation that is current or has live clones is never destroyed (gotcha 22).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from jailfarm.errors import ParseError
from jailfarm.names import DATASET
from jailfarm.workers.errors import TemplateError
from jailfarm.workers.layout import CURRENT, generation_number, generation_tag

if TYPE_CHECKING:
    from collections.abc import Mapping

STATE_PROPERTIES = ("type", "origin", "creation", CURRENT)
BUILD_HINT = "run `jailfarm template build`"
PROMOTE_HINT = "run `jailfarm template promote [GEN]`"


# ---- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """One template generation: snapshot `<template>@gN`, its creation time (epoch seconds)
    and the datasets cloned from it."""

    number: int
    snapshot: str
    created: int
    clones: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return generation_tag(self.number)


@dataclass(frozen=True)
class TemplateState:
    """The template dataset of one jail host: whether it exists, the generations (oldest
    first) and the `jailfarm:current` tag (None if unset; it may name a vanished snapshot)."""

    dataset: str
    exists: bool = False
    current: str | None = None
    generations: tuple[Generation, ...] = ()

    def find(self, tag: str) -> Generation | None:
        return next((g for g in self.generations if g.tag == tag), None)

    @property
    def live(self) -> Generation | None:
        """The current generation if the pointer names one that exists."""
        return self.find(self.current) if self.current else None

    @property
    def next_tag(self) -> str:
        # Past the pointer too, so a tag the pointer still names is never reused.
        numbers = [g.number for g in self.generations]
        numbers.append(generation_number(self.current or "") or 0)
        return generation_tag(max(numbers) + 1)


def parse_state(dataset: str, rows: Mapping[str, Mapping[str, str]]) -> TemplateState:
    """Build the state from `zfs get -H -p -o name,property,value` rows of STATE_PROPERTIES,
    read recursively from the farm root (so clones below `<root>/jails` are seen) or at depth 1
    from the template (no clones). Snapshots not named `gN` are not generations. Snapshots
    inherit `jailfarm:current`, so only the dataset's own row counts."""
    DATASET.check(dataset)
    if dataset not in rows:
        return TemplateState(dataset)
    clones: dict[str, list[str]] = {}
    for name, props in rows.items():
        origin = props.get("origin", "-")
        if origin not in ("-", ""):
            clones.setdefault(origin, []).append(name)
    generations = []
    for name, props in rows.items():
        base, at, tag = name.partition("@")
        number = generation_number(tag) if at and base == dataset else None
        if number is not None:
            created = _created(name, props)
            generations.append(
                Generation(
                    number, name, created, tuple(sorted(clones[name])) if name in clones else ()
                )
            )
    current = rows[dataset].get(CURRENT, "-")
    return TemplateState(
        dataset,
        exists=True,
        current=None if current in ("-", "") else current,
        generations=tuple(sorted(generations, key=lambda g: g.number)),
    )


def _created(name: str, props: Mapping[str, str]) -> int:
    value = props.get("creation", "-")
    if not value.isdigit():
        raise ParseError("zfs get", 0, f"{name}\tcreation\t{value}", "expected epoch seconds")
    return int(value)


# ---- planners -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointerMove:
    """Moving `jailfarm:current` on `dataset` from `old` to `new` (no-op when equal)."""

    dataset: str
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def describe(self) -> str:
        if not self.changed:
            return f"{self.new} is already current"
        return f"current: {self.old or 'none'} -> {self.new}"


def _need_generations(state: TemplateState) -> None:
    if not state.generations:
        raise TemplateError(f"no worker template built yet ({state.dataset}): {BUILD_HINT}")


def _known(state: TemplateState) -> str:
    return ", ".join(g.tag for g in state.generations)


def current_generation(state: TemplateState) -> Generation:
    """The generation new workers are cloned from. Raises `TemplateError` saying to build or
    promote when there is none, or it no longer exists."""
    _need_generations(state)
    live = state.live
    if live is None:
        what = f"points to {state.current}, which no longer exists" if state.current else "is unset"
        raise TemplateError(f"current worker template of {state.dataset} {what}: {PROMOTE_HINT}")
    return live


def plan_promote(state: TemplateState, tag: str | None = None) -> PointerMove:
    """Point `current` at generation `tag` ("gN" or "N"), or at the newest when None."""
    _need_generations(state)
    if tag is None:
        target = state.generations[-1]
    else:
        number = generation_number(tag) or generation_number(f"g{tag}")
        found = state.find(generation_tag(number)) if number else None
        if found is None:
            raise TemplateError(
                f"unknown template generation {tag!r}; {state.dataset} has {_known(state)}"
            )
        target = found
    return PointerMove(state.dataset, state.current, target.tag)


def plan_rollback(state: TemplateState) -> PointerMove:
    """Point `current` at the newest generation older than the current one."""
    _need_generations(state)
    live = state.live
    if live is None:
        what = f"{state.current}, which no longer exists" if state.current else "nothing"
        raise TemplateError(
            f"cannot roll back: current points to {what} ({state.dataset}); {PROMOTE_HINT}"
        )
    older = [g for g in state.generations if g.number < live.number]
    if not older:
        raise TemplateError(
            f"nothing to roll back to: {live.tag} is the oldest generation of {state.dataset}"
        )
    return PointerMove(state.dataset, state.current, older[-1].tag)


def plan_prune(state: TemplateState, keep: int) -> tuple[str, ...]:
    """Snapshots to destroy, oldest first: every generation except the newest `keep`, the
    current one and any with live clones (a clone depends on its origin; jails spec c.65)."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    newest = {g.number for g in state.generations[-keep:]} if keep else set()
    return tuple(
        g.snapshot
        for g in state.generations
        if g.number not in newest and g.tag != state.current and not g.clones
    )


def format_state(state: TemplateState) -> list[str]:
    """`list` lines, newest first: `g3  2026-11-23 23:40 UTC  current  2 clones`."""
    if not state.generations:
        return [f"no worker template built yet ({state.dataset}): {BUILD_HINT}"]
    lines = []
    for g in reversed(state.generations):
        when = datetime.fromtimestamp(g.created, UTC).strftime("%Y-%m-%d %H:%M UTC")
        mark = "current" if g.tag == state.current else "-"
        count = f"{len(g.clones)} clone{'' if len(g.clones) == 1 else 's'}"
        lines.append(f"{g.tag:<5} {when}  {mark:<7}  {count}")
    if state.current is None:
        lines.append(f"no current generation: {PROMOTE_HINT}")
    elif state.live is None:
        lines.append(f"current points to {state.current}, which no longer exists: {PROMOTE_HINT}")
    return lines
