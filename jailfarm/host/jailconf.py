"""jail(8) parameters as data: quoting, jail.conf and command-line rendering, the worker and
service privilege profiles built from a `JailSpec`, and the `jls -s` parameter parser (pure).

Spec references: "jails spec" is shared/spec/freebsd-jails-zfs.md, "poudriere.md" is
shared/spec/poudriere.md. Each non-obvious parameter carries its citation in `Param.why`, which
is also written into the generated jail.conf as a comment.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jailfarm.errors import ParseError
from jailfarm.names import DATASET, JAIL

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jailfarm.host.base import JailSpec

ParamValue = bool | int | str | tuple[str, ...]

_PARAM_NAME = re.compile(r"[a-z][a-z0-9_.]*")
# jail.conf(5): values of only letters, digits, '.', '-' and '_' need no quotes (jails spec a.2 #9).
_BARE = re.compile(r"[A-Za-z0-9._-]+")
# Lists jail(8) must see unquoted (jails spec gotcha 4); their values must be bare words.
_NEVER_QUOTED = frozenset({"vnet.interface"})
# Multi-valued parameters jail(8) splits on commas on its command line (jail.c main()).
_COMMA_LISTS = frozenset({"ip4.addr", "ip6.addr"})
# jail(8) derives these from the block label; redefining them is an error (config.c).
_IMPLIED = frozenset({"name", "jid"})


def _check_text(what: str, text: str) -> str:
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cs")]
    if bad:
        raise ValueError(f"{what}: control character {bad[0]!r} is not allowed in {text!r}")
    return text


@dataclass(frozen=True)
class Param:
    """One jail parameter: `True` is a bare flag (`allow.mount;`), a str or int a single value,
    a tuple of str a multi-valued parameter (rendered with `+=`). `why` is a citation written
    as a comment above it. Off-switches are written in their "no" form (`allow.noset_hostname`),
    never as False. Control characters (newline included) are rejected everywhere."""

    name: str
    value: ParamValue
    why: str = ""

    def __post_init__(self) -> None:
        if not _PARAM_NAME.fullmatch(self.name) or self.name in _IMPLIED:
            raise ValueError(f"invalid jail parameter name {self.name!r}")
        _check_text(f"{self.name} comment", self.why)
        value = self.value
        if isinstance(value, bool):
            if not value:
                raise ValueError(f"{self.name}: write the 'no' form of the flag, not False")
        elif isinstance(value, int):
            pass
        elif isinstance(value, str):
            self._check_value(value)
        elif isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            for item in value:
                self._check_value(item)
        else:
            raise TypeError(f"{self.name}: value must be True, int, str or a non-empty str tuple")

    def _check_value(self, value: str) -> None:
        _check_text(self.name, value)
        if self.name in _NEVER_QUOTED and not _BARE.fullmatch(value):
            raise ValueError(f"{self.name}: {value!r} must be a bare word (it is never quoted)")


def quote(value: str) -> str:
    """`value` as one jail.conf token: bare if only `[A-Za-z0-9._-]`, else double-quoted with
    `\\`, `"` and `$` escaped, so jail(8) never expands a variable inside data."""
    _check_text("value", value)
    if _BARE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _statements(param: Param) -> list[str]:
    value = param.value
    if value is True:
        return [param.name]
    if isinstance(value, int):
        return [f"{param.name} = {value}"]
    if isinstance(value, str):
        return [f"{param.name} = {quote(value)}"]
    # `+=` for every item: safe to initialise with and never wipes a default (a.2 #11, gotcha 3).
    return [f"{param.name} += {quote(item)}" for item in value]


def _check_unique(params: Sequence[Param]) -> None:
    seen: set[str] = set()
    for param in params:
        if param.name in seen:
            raise ValueError(f"jail parameter {param.name!r} given twice")
        seen.add(param.name)


def render_jail_conf(name: str, params: Sequence[Param]) -> str:
    """One jail.conf block for jail `name`, parameters in the given order, each `why` as a
    `#` comment line above its parameter (once for a run of parameters sharing it)."""
    JAIL.check(name)
    _check_unique(params)
    lines = [f"{name} {{"]
    previous = ""
    for param in params:
        if param.why and param.why != previous:
            lines.append(f"    # {param.why}")
        previous = param.why
        lines.extend(f"    {statement};" for statement in _statements(param))
    lines.append("}")
    return "\n".join(lines) + "\n"


def jail_create_argv(name: str, params: Sequence[Param]) -> tuple[str, ...]:
    """The command-line form `jail -c name=N key=value ...`, one argv element per parameter
    (no quoting: it is argv). Flags are the bare name (jail(8) "Jail Parameters"). Only
    ip4.addr/ip6.addr lists can be comma-joined; jail(8) documents no other way to give several
    values on the command line (a comma in an exec.* value is one sh(1) command), so any other
    multi-valued parameter with more than one value raises ValueError: use the jail.conf form."""
    JAIL.check(name)
    _check_unique(params)
    argv = ["jail", "-c", f"name={name}"]
    for param in params:
        value = param.value
        if value is True:
            argv.append(param.name)
        elif isinstance(value, (int, str)):
            argv.append(f"{param.name}={value}")
        elif param.name in _COMMA_LISTS and not any("," in v for v in value):
            argv.append(f"{param.name}={','.join(value)}")
        elif len(value) == 1:
            argv.append(f"{param.name}={value[0]}")
        else:
            raise ValueError(
                f"{param.name} has {len(value)} values, which the jail(8) command line cannot "
                "express; render a jail.conf (render_jail_conf) and run jail -f <conf> -c"
            )
    return tuple(argv)


# ------------------------------------------------------------------------------------------------
# Profiles

EXEC_TIMEOUT = 90  # the book's value, matching rc.shutdown (jails spec a.3 exec.timeout)
# poudriere starts 2 jails per MASTERNAME for the reference plus 2 per builder (poudriere.md
# 3.2), so one builder already needs 4.
MIN_WORKER_CHILDREN = 4
_PATH = re.compile(r"(/[A-Za-z0-9_.:+@-]+)+")
_RCTL_RULE = re.compile(r"[a-z]+:[a-z]+=[0-9]+[kmgtpeKMGTPE]?(/[a-z]+)?")
_IFACE = r"[a-z][a-z0-9_.]{0,14}"
_ADDR = re.compile(rf"(?:{_IFACE}\|)?(?P<addr>[0-9A-Fa-f.:]+)(?:/(?P<prefix>[0-9]{{1,3}}))?")

# SysV IPC on the worker. poudriere passes allow.sysvipc to its build jails only when the
# parent's security.jail.sysvipc_allowed is 1 (poudriere.md 3.1), and inside a jail that sysctl
# reads the jail's own allow.sysvipc flag (kern_jail.c sysctl_jail_default_allow); setting only
# sysv*=inherit/new would leave it 0. But allow.sysvipc alone also means sysv*=inherit, the
# host's IPC namespace (jails spec gotcha 14). An explicit sysvmsg/sysvsem/sysvshm takes
# precedence over the flag (sysv_msg.c msg_prison_set), so the worker gets both: the flag for
# poudriere and a private namespace (new) that its build jails then inherit.
_SYSV_WHY = "poudriere.md 3.1: build jails get SysV IPC only if security.jail.sysvipc_allowed"
_SYSV_NEW_WHY = "jails spec gotcha 14: own IPC namespace; overrides allow.sysvipc's inherit"


def check_path(what: str, path: str) -> str:
    """An absolute path safe in an fstab line and a sh(1) word: no whitespace, no `.`/`..`
    components, not `/` itself."""
    if not _PATH.fullmatch(path) or {".", ".."} & set(path.split("/")):
        raise ValueError(
            f"{what} {path!r} must be an absolute path below / made of letters, digits and "
            "'_.:+@-', without '.' or '..' components or whitespace"
        )
    return path


def _addresses(family: str, addrs: tuple[str, ...]) -> tuple[str, ...]:
    version, bits = (4, 32) if family == "ip4" else (6, 128)
    for item in addrs:
        match = _ADDR.fullmatch(item)
        try:
            ok = match is not None and ipaddress.ip_address(match["addr"]).version == version
        except ValueError:
            ok = False
        if not ok or (match and match["prefix"] and int(match["prefix"]) > bits):
            raise ValueError(f"{family}.addr {item!r} is not [iface|]IPv{version}-address[/prefix]")
    return addrs


def _head(spec: JailSpec, consolelog_dir: str, exec_timeout: int) -> list[Param]:
    if spec.devfs_ruleset <= 0:
        raise ValueError(
            f"jail {spec.name}: devfs_ruleset must be > 0; 0 means an unrestricted /dev "
            "(jail(8) devfs_ruleset; jails spec j.148; poudriere.md 3.2 'devfs')"
        )
    if spec.stop_timeout < 0 or exec_timeout <= 0:
        raise ValueError(f"jail {spec.name}: need stop_timeout >= 0 and exec_timeout > 0")
    console = f"{check_path('consolelog_dir', consolelog_dir)}/{spec.name}.console"
    starts = ("/sbin/zfs mount -a",) if spec.delegated_datasets else ()
    return [
        Param("path", check_path(f"jail {spec.name} path", spec.path)),
        Param("host.hostname", spec.hostname),
        Param("allow.noset_hostname", True, "jails spec gotcha 49: the jail cannot rename itself"),
        Param("persist", True, "jails spec a.3: the jail lives until jail -r, not until rc exits"),
        Param("exec.clean", True, "jails spec j.147: hooks start from a clean environment"),
        Param(
            "exec.start",
            (*starts, "/bin/sh /etc/rc"),
            "jails spec b.51: zfs mount -a before rc when a dataset is delegated" if starts else "",
        ),
        Param("exec.stop", ("/bin/sh /etc/rc.shutdown",)),
        Param("exec.timeout", exec_timeout, "jails spec gotcha 5: no default, jail(8) would wait"),
        Param("stop.timeout", spec.stop_timeout, "jails spec gotcha 5: always set a timeout"),
        Param("exec.consolelog", console, "jails spec j.157: console log in a root-only dir"),
        Param("mount.devfs", True),
        Param(
            "devfs_ruleset", spec.devfs_ruleset, "jail(8): 0 = unrestricted /dev (jails spec j.148)"
        ),
        Param("mount.fdescfs", True, "jails spec b.61: Python (buildbot) uses fdescfs(5)"),
    ]


def _mounts(spec: JailSpec) -> list[Param]:
    lines = []
    for mount in spec.mounts:
        host = check_path("mount host_path", mount.host_path)
        target = spec.path.rstrip("/") + check_path("mount jail_path", mount.jail_path)
        lines.append(f"{host} {target} nullfs {'ro' if mount.read_only else 'rw'} 0 0")
    if not lines:
        return []
    why = "jails spec a.3 mount, j.151: nullfs from the host, read-only wherever possible"
    return [Param("mount", tuple(lines), why)]


def _network(spec: JailSpec) -> list[Param]:
    if spec.private_network:
        if spec.ip4 or spec.ip6:
            raise ValueError(
                f"jail {spec.name}: a vnet jail cannot have ip4/ip6 addresses (kernel: 'vnet "
                "jails cannot have IP address restrictions'); configure them inside the jail"
            )
        return [
            Param("vnet", "new", "jails spec b.44: own network stack (recommended for parents)")
        ]
    params = []
    for family, addrs in (("ip4", spec.ip4), ("ip6", spec.ip6)):
        if addrs:
            params.append(Param(f"{family}.addr", _addresses(family, addrs)))
        else:
            params.append(Param(family, "inherit", "JailSpec: no addresses: the host's (b.34)"))
    return params


def _worker_privileges(spec: JailSpec) -> list[Param]:
    if spec.children_max < MIN_WORKER_CHILDREN:
        raise ValueError(
            f"jail {spec.name}: children_max={spec.children_max}; poudriere needs "
            f"2 x (builders + 1) child jails (poudriere.md 3.2), at least {MIN_WORKER_CHILDREN}"
        )
    mount_why = "poudriere.md 3.1: jail_start() refuses to run without it"
    params = [
        Param("children.max", spec.children_max, "poudriere.md 3.2: 2 x (builders + 1)"),
        Param("enforce_statfs", 1, "poudriere.md 3.1: jail_start() fails unless exactly 1"),
        Param("allow.mount", True, mount_why),
        Param("allow.mount.devfs", True, mount_why),
        Param("allow.mount.nullfs", True, mount_why),
        Param(
            "allow.mount.tmpfs", True, "poudriere.md 3.1: unless USE_TMPFS=no; cap RAM (gotcha 17)"
        ),
        Param("allow.mount.procfs", True, "poudriere.md 3.2: mount -t procfs runs under set -e"),
    ]
    if spec.delegated_datasets:
        why = "jails spec b.50: the ruleset must also unhide /dev/zfs"
        params.append(Param("allow.mount.zfs", True, why))
    passed_on = "poudriere.md 3.1: build jails get it only if this jail has it"
    return [
        *params,
        Param("allow.raw_sockets", True, passed_on),
        Param("allow.socket_af", True, passed_on),
        Param("allow.chflags", True, "poudriere.md 3.2: many ports fail to install without it"),
        Param("allow.mlock", True, passed_on),
        Param("allow.sysvipc", True, _SYSV_WHY),
        Param("sysvmsg", "new", _SYSV_NEW_WHY),
        Param("sysvsem", "new"),
        Param("sysvshm", "new"),
    ]


def _service_privileges(spec: JailSpec) -> list[Param]:
    if spec.delegated_datasets:
        raise ValueError(
            f"jail {spec.name}: a service jail cannot manage a delegated dataset; that needs "
            "allow.mount.zfs and enforce_statfs <= 1 (jails spec b.50)"
        )
    off = "jails spec j.149: SysV IPC off unless a service needs it"
    return [
        Param("children.max", 0, "jails spec j.1: service jails never nest"),
        Param("enforce_statfs", 2, "jails spec a.3: only the jail root is visible; no mounting"),
        Param("sysvmsg", "disable", off),
        Param("sysvsem", "disable"),
        Param("sysvshm", "disable"),
    ]


def _hooks(spec: JailSpec) -> list[Param]:
    created = []
    for dataset in spec.delegated_datasets:
        DATASET.check(dataset)
        created += [f"/sbin/zfs set jailed=on {dataset}", f"/sbin/zfs jail {spec.name} {dataset}"]
    for rule in spec.rctl:
        if not _RCTL_RULE.fullmatch(rule):
            raise ValueError(f"jail {spec.name}: rctl rule {rule!r} is not resource:action=amount")
        created.append(f"/usr/bin/rctl -a jail:{spec.name}:{rule}")
    params = []
    if created:
        why = "jails spec b.51, e.108: host side, after creation, before any jailed process"
        params.append(Param("exec.created", tuple(created), why))
    if spec.rctl:
        why = "jails spec gotcha 41: rctl rules outlive the jail unless removed"
        params.append(Param("exec.poststop", (f"/usr/bin/rctl -r jail:{spec.name}",), why))
    return params


def jail_params(
    spec: JailSpec, *, consolelog_dir: str = "/var/log/jailfarm", exec_timeout: int = EXEC_TIMEOUT
) -> tuple[Param, ...]:
    """The parameters of `spec` under its profile: "worker" is what poudriere needs in a parent
    jail (poudriere.md 3.1/3.2), "service" the restricted master/nginx profile (jails spec
    j.1). Raises ValueError for anything jail(8) or poudriere would reject later."""
    privileges = _worker_privileges(spec) if spec.profile == "worker" else _service_privileges(spec)
    return (
        *_head(spec, consolelog_dir, exec_timeout),
        *_mounts(spec),
        *_network(spec),
        *privileges,
        *_hooks(spec),
    )


# ------------------------------------------------------------------------------------------------
# jls -s output


_JLS_WORD = re.compile(r"""([a-z][a-z0-9_.]*)(?:=("[^"]*"|'[^']*'|[^\s"']*))?(?:\s+|$)""")


def _unflag(name: str) -> tuple[str, bool]:
    head, dot, last = name.rpartition(".")
    if last.startswith("no"):
        return f"{head}{dot}{last[2:]}", False
    return name, True


def parse_jls_params(text: str) -> dict[str, str | bool]:
    """The parameters of one jail from `jls -s -j <name>`: `name=value` words (values quoted
    with ' or " when they hold spaces or quotes, jls.c quoted_print), flags as `name` (True) or
    `noname` (False, keyed by `name`). Raises ParseError on anything else."""
    line = text.strip()
    if not line or "\n" in line:
        raise ParseError("jls", 1, text[:200], "expected exactly one line of parameters")
    result: dict[str, str | bool] = {}
    pos = 0
    while pos < len(line):
        match = _JLS_WORD.match(line, pos)
        if match is None:
            raise ParseError("jls", 1, line[pos : pos + 80], "not a name=value word")
        name, value = match[1], match[2]
        if value is None:
            key, flag = _unflag(name)
            result[key] = flag
        else:
            result[name] = value[1:-1] if value[:1] in ("'", '"') else value
        pos = match.end()
    return result


# jail(8) pseudo-parameters: never passed to the kernel, never shown by jls (jails spec a.4 #23).
_PSEUDO = ("exec.", "mount", "stop.", "vnet.interface", "interface", "depend", "ip_hostname")


def _bare_address(item: str) -> str:
    match = _ADDR.fullmatch(item)
    return str(ipaddress.ip_address(match["addr"])) if match else item


def _expected(param: Param) -> tuple[str, str | bool]:
    value = param.value
    if value is True:
        return _unflag(param.name)
    if isinstance(value, tuple):  # ip4.addr/ip6.addr: jls shows bare addresses, comma-joined
        return param.name, ",".join(_bare_address(item) for item in value)
    return param.name, str(value)


def param_mismatches(params: Sequence[Param], actual: Mapping[str, str | bool]) -> list[str]:
    """Differences between the kernel parameters in `params` and what `parse_jls_params`
    reported for the running jail (jails spec feature 25); empty when the jail is as asked."""
    problems = []
    for param in params:
        if param.name.startswith(_PSEUDO):
            continue
        key, want = _expected(param)
        got = actual.get(key)
        if got != want:
            problems.append(f"{key}: wanted {want!r}, jls -s reports {got!r}")
    return problems
