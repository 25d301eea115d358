"""Name validation: every name that can reach an argv is checked here first (pure).

Each kind of name has an explicit pattern and a length budget. The patterns never admit a
leading `-` (it would read as an option), whitespace, shell or glob metacharacters, `..`
(path escape) or NUL. Budgets come from FreeBSD limits: a jail name is embedded in epair
interface names `e0b_<name>` that must fit IFNAMSIZ (16 bytes with the NUL), and a ZFS dataset
name is at most 255 characters (ZFS_MAX_DATASET_NAME_LEN 256 with the NUL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jailfarm.errors import InvalidName, UnsafeOperation


@dataclass(frozen=True)
class NameRule:
    kind: str
    pattern: re.Pattern[str]
    max_len: int
    expected: str

    def check(self, value: object) -> str:
        """Return `value` if it is a valid name of this kind, else raise `InvalidName`."""
        if not isinstance(value, str):
            raise InvalidName(f"{self.kind} name must be a string, got {value!r}")
        if len(value) > self.max_len:
            raise InvalidName(
                f"{self.kind} name {value!r} is {len(value)} characters; "
                f"the limit is {self.max_len}"
            )
        if not self.pattern.fullmatch(value):
            raise InvalidName(f"invalid {self.kind} name {value!r}: expected {self.expected}")
        return value


_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"

JAIL = NameRule(
    "jail",
    re.compile(r"[a-z][a-z0-9_-]*"),
    11,  # "e0b_" + 11 = 15 characters: fits IFNAMSIZ for vnet epairs (jails spec a.5 #31)
    "a lowercase letter, then lowercase letters, digits, '_' or '-' (no '.': dots mean "
    "jail hierarchy), at most 11 characters",
)
HOSTNAME = NameRule(
    "hostname",
    re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"),
    253,
    "lowercase DNS labels separated by dots (RFC 1123)",
)
DATASET = NameRule(
    "dataset",
    re.compile(rf"{_COMPONENT}(/{_COMPONENT})*"),
    255,
    "'/'-separated components, each starting with a letter or digit and made of letters, "
    "digits, '_', '.', ':' or '-'",
)
SNAPSHOT_TAG = NameRule(
    "snapshot", re.compile(_COMPONENT), 64, "a letter or digit, then letters, digits, '_.:-'"
)
# poudriere joins jail, tree and set with '-' into MASTERNAME and uses '.' elsewhere, so
# neither may appear in these names (poudriere spec 4.1).
POUDRIERE_JAIL = NameRule(
    "poudriere jail",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*"),
    32,
    "letters, digits and '_' only (no '-' or '.': poudriere joins names with them)",
)
TREE = NameRule(
    "ports tree",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*"),
    32,
    "letters, digits and '_' only (no '-' or '.': poudriere joins names with them)",
)
SET = NameRule(
    "set",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*"),
    32,
    "letters, digits and '_' only (no '-' or '.': poudriere joins names with them)",
)
ORIGIN = NameRule(
    "port origin",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]*/[A-Za-z0-9][A-Za-z0-9_+.-]*(@[A-Za-z0-9_]+)?"),
    160,
    "category/port or category/port@flavor",
)
BRANCH = NameRule(
    "branch",
    # git check-ref-format rules, narrowed: no '..', '@{', '//', trailing '/', '.' or '.lock'.
    re.compile(r"(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*\.lock$)(?!.*[/.]$)[A-Za-z0-9][A-Za-z0-9._/-]*"),
    200,
    "a git branch name: letters, digits, '.', '_', '/', '-', starting with a letter or digit, "
    "no '..' or '//', not ending in '/', '.' or '.lock'",
)
USER_PROPERTY = NameRule(
    "ZFS user property",
    re.compile(r"jailfarm:[a-z][a-z0-9_]*"),
    64,
    "'jailfarm:' followed by lowercase letters, digits or '_'",
)
PROPERTY_VALUE = NameRule(
    "ZFS property value",
    # Non-empty and not starting with '-': zfs prints '-' for an unset property.
    re.compile(r"[A-Za-z0-9_.:@/+=,][A-Za-z0-9_.:@/+=,-]*"),
    1024,
    "letters, digits and '_.:@/+=,-' only, not empty, not starting with '-'",
)
ENV_KEY = NameRule(
    "environment variable",
    re.compile(r"[A-Za-z_][A-Za-z0-9_]*"),
    128,
    "a letter or '_', then letters, digits or '_'",
)
USER = NameRule(
    "user", re.compile(r"[a-z_][a-z0-9_-]*"), 32, "a POSIX user name (lowercase, digits, '_-')"
)


def snapshot_name(dataset: str, tag: str) -> str:
    """`dataset@tag`, both validated."""
    return f"{DATASET.check(dataset)}@{SNAPSHOT_TAG.check(tag)}"


def split_snapshot(name: str) -> tuple[str, str]:
    """Split and validate `dataset@tag`."""
    dataset, sep, tag = name.partition("@")
    if not sep:
        raise InvalidName(f"invalid snapshot {name!r}: expected dataset@tag")
    return DATASET.check(dataset), SNAPSHOT_TAG.check(tag)


def require_under(root: str, dataset: str) -> str:
    """Return `dataset` if it is strictly below `root` (both validated), else raise
    `UnsafeOperation`: destructive operations never reach outside the farm's root."""
    DATASET.check(root)
    base = split_snapshot(dataset)[0] if "@" in dataset else DATASET.check(dataset)
    if not base.startswith(root + "/"):
        raise UnsafeOperation(
            f"refusing to touch {dataset!r}: it is not below the farm root {root!r}"
        )
    return dataset
