"""ZFS operations with one argv for FreeBSD and zfs-fuse (pure builders/parsers + `Zfs` ops).

Only the argv subset both implementations accept is used. zfs-fuse 0.7 has no `zfs list -p`
and no `zfs get -t` (measured on the dev host), so every read is
`zfs get -H -p -o name,property,value [-r | -d N] PROPS TARGET...`: tab-separated, exact
numbers, scripted output on both platforms (zfs-get(8)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.logger import Logger

from jailfarm.cmd import Cmd, Result
from jailfarm.errors import CommandFailed, ParseError, ZfsError
from jailfarm.names import DATASET, PROPERTY_VALUE, USER_PROPERTY, require_under, split_snapshot

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from jailfarm.runner import Runner

# Native properties we read; user properties (jailfarm:*) are validated separately.
NATIVE_PROPERTIES = frozenset(
    {
        "type",
        "used",
        "available",
        "referenced",
        "origin",
        "mountpoint",
        "mounted",
        "creation",
        "usedbysnapshots",
        "reservation",
        "refreservation",
        "quota",
        "readonly",
        "canmount",
        "compression",
        "atime",
        "sync",
        "jailed",
        "name",
    }
)
# Properties we may set at create/clone time.
SETTABLE = frozenset(
    {
        "mountpoint",
        "canmount",
        "readonly",
        "reservation",
        "refreservation",
        "quota",
        "compression",
        "atime",
        "sync",
        "jailed",
        "exec",
        "setuid",
    }
)


def _prop_name(name: str) -> str:
    if name in NATIVE_PROPERTIES or name in SETTABLE:
        return name
    return USER_PROPERTY.check(name)


def _props_args(props: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in props.items():
        _prop_name(key)
        if key == "mountpoint":
            if not (value in ("none", "legacy") or value.startswith("/")) or "\n" in value:
                raise ValueError(f"mountpoint {value!r} must be absolute, 'none' or 'legacy'")
        else:
            PROPERTY_VALUE.check(value)
        args += ["-o", f"{key}={value}"]
    return args


def create_cmd(dataset: str, props: Mapping[str, str] | None = None, parents: bool = False) -> Cmd:
    """`zfs create [-p] [-o k=v]... DATASET` (zfs-create(8))."""
    flags = ["-p"] if parents else []
    return Cmd(("zfs", "create", *flags, *_props_args(props or {}), DATASET.check(dataset)))


def snapshot_cmd(snapshot: str, props: Mapping[str, str] | None = None) -> Cmd:
    """`zfs snapshot [-o k=v]... DATASET@TAG` (zfs-snapshot(8))."""
    split_snapshot(snapshot)
    return Cmd(("zfs", "snapshot", *_props_args(props or {}), snapshot))


def clone_cmd(snapshot: str, target: str, props: Mapping[str, str] | None = None) -> Cmd:
    """`zfs clone [-o k=v]... SNAPSHOT TARGET` (zfs-clone(8)); properties such as the lease
    (`jailfarm:owner`, `jailfarm:build`, `jailfarm:expires`) are set atomically with the clone."""
    split_snapshot(snapshot)
    return Cmd(("zfs", "clone", *_props_args(props or {}), snapshot, DATASET.check(target)))


def get_cmd(
    targets: Iterable[str], props: Iterable[str], recursive: bool = False, depth: int | None = None
) -> Cmd:
    """`zfs get -H -p -o name,property,value [-r | -d N] PROPS TARGET...`."""
    names = [_prop_name(p) for p in props]
    flags: list[str] = []
    if recursive:
        flags = ["-r"]
    elif depth is not None:
        if depth < 0:
            raise ValueError(f"zfs get depth must be >= 0, got {depth}")
        flags = ["-d", str(int(depth))]
    checked = []
    for t in targets:
        if "@" in t:
            split_snapshot(t)
            checked.append(t)
        else:
            checked.append(DATASET.check(t))
    if not names or not checked:
        raise ValueError("zfs get needs at least one property and one target")
    return Cmd(
        ("zfs", "get", "-H", "-p", "-o", "name,property,value", *flags, ",".join(names), *checked)
    )


def set_cmd(dataset: str, prop: str, value: str) -> Cmd:
    return Cmd(("zfs", "set", *_props_args({prop: value})[1:], DATASET.check(dataset)))


def destroy_cmd(dataset: str, recursive: bool = False) -> Cmd:
    """`zfs destroy [-r] DATASET|SNAPSHOT` (never -R: dependent clones are not ours to kill)."""
    if "@" in dataset:
        split_snapshot(dataset)
    else:
        DATASET.check(dataset)
    return Cmd(("zfs", "destroy", *(["-r"] if recursive else []), dataset))


def umount_cmd(dataset: str, force: bool = False) -> Cmd:
    return Cmd(("zfs", "umount", *(["-f"] if force else []), DATASET.check(dataset)))


def mount_cmd(dataset: str) -> Cmd:
    return Cmd(("zfs", "mount", DATASET.check(dataset)))


def parse_get(text: str) -> dict[str, dict[str, str]]:
    """Parse `zfs get -H -p -o name,property,value` output into {name: {property: value}}."""
    result: dict[str, dict[str, str]] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise ParseError("zfs get", no, line, "expected NAME<TAB>PROPERTY<TAB>VALUE")
        name, prop, value = fields
        result.setdefault(name, {})[prop] = value
    return result


def _int(name: str, props: Mapping[str, str], key: str) -> int:
    value = props.get(key, "-")
    if value == "-":
        return 0
    try:
        return int(value)
    except ValueError:
        raise ParseError("zfs get", 0, f"{name}\t{key}\t{value}", "expected a number") from None


@dataclass(frozen=True)
class Dataset:
    """One dataset or snapshot as read with `zfs get`; `user` holds the jailfarm:* properties
    that are set (ZFS answers '-' for unset user properties; those are left out)."""

    name: str
    type: str
    used: int
    available: int
    referenced: int
    origin: str | None
    mountpoint: str | None
    mounted: bool
    user: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_props(cls, name: str, props: Mapping[str, str]) -> Dataset:
        if "type" not in props:
            raise ParseError("zfs get", 0, name, "no 'type' property in the answer")

        def opt(key: str) -> str | None:
            value = props.get(key, "-")
            return None if value in ("-", "none", "") else value

        return cls(
            name=name,
            type=props["type"],
            used=_int(name, props, "used"),
            available=_int(name, props, "available"),
            referenced=_int(name, props, "referenced"),
            origin=opt("origin"),
            mountpoint=opt("mountpoint"),
            mounted=props.get("mounted") == "yes",
            user={k: v for k, v in props.items() if k.startswith("jailfarm:") and v != "-"},
        )


LEASE = ("jailfarm:owner", "jailfarm:build", "jailfarm:expires")
LIST_PROPERTIES = ("type", "used", "available", "referenced", "origin", "mountpoint", "mounted")
# How "busy" reads: zfs itself, zfs-fuse's umount child (Linux), FreeBSD's unmount(2) EBUSY.
BUSY = ("dataset is busy", "target is busy", "Device busy", "cannot unmount")
MISSING = "does not exist"


class Zfs:
    """ZFS operations through a `Runner`. Destructive operations only reach datasets strictly
    below `root`; everything else raises `UnsafeOperation` before any command runs."""

    log = Logger()

    def __init__(self, runner: Runner, root: str, clock: Any = None) -> None:
        self.runner = runner
        self.root = DATASET.check(root)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock

    async def _run(self, cmd: Cmd) -> Result:
        result: Result = await self.runner.run(cmd)
        return result

    async def create(
        self, dataset: str, props: Mapping[str, str] | None = None, parents: bool = False
    ) -> None:
        (await self._run(create_cmd(dataset, props, parents))).check()

    async def snapshot(self, snapshot: str, props: Mapping[str, str] | None = None) -> None:
        (await self._run(snapshot_cmd(snapshot, props))).check()

    async def clone(self, snapshot: str, target: str, props: Mapping[str, str]) -> None:
        require_under(self.root, target)
        (await self._run(clone_cmd(snapshot, target, props))).check()

    async def set(self, dataset: str, prop: str, value: str) -> None:
        (await self._run(set_cmd(dataset, prop, value))).check()

    async def get(
        self,
        targets: Iterable[str],
        props: Iterable[str],
        recursive: bool = False,
        depth: int | None = None,
    ) -> dict[str, dict[str, str]]:
        result = (await self._run(get_cmd(targets, props, recursive, depth))).check()
        return parse_get(result.out)

    async def exists(self, dataset: str) -> bool:
        result = await self._run(get_cmd([dataset], ["type"]))
        if result.ok:
            return True
        if MISSING in result.err:
            return False
        result.check()
        return False

    async def info(self, dataset: str, user_props: Iterable[str] = LEASE) -> Dataset | None:
        """The dataset's facts (with the lease properties), or None if it does not exist."""
        result = await self._run(get_cmd([dataset], [*LIST_PROPERTIES, *user_props]))
        if not result.ok and MISSING in result.err:
            return None
        rows = parse_get(result.check().out)
        return Dataset.from_props(dataset, rows.get(dataset, {}))

    async def list(
        self, top: str, user_props: Iterable[str] = (), depth: int | None = None
    ) -> list[Dataset]:
        """Datasets and snapshots at and below `top` (all of them, or `depth` levels)."""
        props = [*LIST_PROPERTIES, *user_props]
        result = await self._run(get_cmd([top], props, recursive=depth is None, depth=depth))
        if not result.ok and MISSING in result.err:
            return []
        rows = parse_get(result.check().out)
        return [Dataset.from_props(name, p) for name, p in rows.items()]

    async def available(self, dataset: str) -> int:
        """Bytes available to new data under `dataset` (reservations taken into account)."""
        rows = await self.get([dataset], ["available"])
        return _int(dataset, rows.get(dataset, {}), "available")

    async def destroy(
        self, dataset: str, recursive: bool = False, attempts: int = 6, delay: float = 0.1
    ) -> None:
        """Destroy a dataset or snapshot below the farm root; absent already counts as done.

        A just-used clone often answers "dataset is busy" (linux-dev-host.md; also FreeBSD while
        a jail's mounts drain): unmount it (forced from the third attempt on) and retry with
        growing delays, then fail with a `ZfsError` naming the dataset and what was tried.
        """
        require_under(self.root, dataset)
        last = ""
        for attempt in range(attempts):
            result = await self._run(destroy_cmd(dataset, recursive))
            if result.ok or MISSING in result.err:
                return
            if not any(marker in result.err for marker in BUSY):
                raise CommandFailed(result.cmd, result.rc, result.err)
            last = result.err.strip()
            if attempt == attempts - 1:
                break
            self.log.info(
                "{ds} is busy (attempt {n}); unmounting and retrying", ds=dataset, n=attempt + 1
            )
            if "@" not in dataset:
                # The answer does not matter: the retry tells whether it helped.
                await self._run(umount_cmd(dataset, force=attempt >= 2))
            if attempt:  # the first retry follows the unmount at once; then back off
                await task.deferLater(self.clock, delay * (2 ** (attempt - 1)), lambda: None)
        raise ZfsError(
            f"cannot destroy {dataset}: still busy after {attempts} attempts with unmounts "
            f"({last}); find what holds it (fuser -m, a jail not removed) and run `jailfarm reap`"
        )
