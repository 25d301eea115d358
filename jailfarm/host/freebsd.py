"""FreeBSD jails through jail(8), jexec(8) and jls(8): pure command builders, the `jls --libxo
json` parser, and `FreeBsdJails`, the `Jails` implementation that runs them through a `Runner`
(local, or ssh to the jail host).

Every file this module writes lives on the jail host and is written by a command, never by
local file I/O, because the runner may be an `SshRunner`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from twisted.logger import Logger

from jailfarm.cmd import Cmd, Result, env_words
from jailfarm.errors import JailError, ParseError
from jailfarm.host.base import (
    CAP_NESTED,
    CAP_RCTL,
    CAP_VNET,
    CAP_ZFS_JAILED,
    JailInfo,
    Jails,
)
from jailfarm.host.jailconf import (
    EXEC_TIMEOUT,
    check_path,
    jail_params,
    param_mismatches,
    parse_jls_params,
    render_jail_conf,
)
from jailfarm.names import JAIL, USER

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jailfarm.host.base import JailSpec
    from jailfarm.runner import Runner

# jail -r runs exec.prestop, exec.stop, stop.timeout and exec.poststop, each hook bounded by
# exec.timeout (90 s); this bounds the whole of it when the caller gives no timeout.
DEFAULT_REMOVE_TIMEOUT = 300.0
FORCE_REMOVE_TIMEOUT = 60.0


def mkdirs_cmd(*dirs: str) -> Cmd:
    """Create root-only directories (install -d also chmods ones that exist, xinstall.c)."""
    return Cmd(("install", "-d", "-m", "0700", *(check_path("directory", d) for d in dirs)))


def write_file_cmd(path: str, text: str) -> Cmd:
    """Write `text` to `path` on the jail host. tee(1), not `install /dev/stdin`: FreeBSD's
    install refuses a source that is not a regular file (xinstall.c: EFTYPE), and tee needs no
    shell. The file's privacy comes from its 0700 directory (`mkdirs_cmd`)."""
    return Cmd(("tee", check_path("file", path)), stdin=text.encode())


def remove_file_cmd(path: str) -> Cmd:
    return Cmd(("rm", "-f", check_path("file", path)))


def jail_create_cmd(conf: str, name: str) -> Cmd:
    return Cmd(("jail", "-f", check_path("jail.conf", conf), "-c", JAIL.check(name)))


def jail_remove_cmd(conf: str, name: str, timeout: float | None) -> Cmd:
    """`jail -r` with the jail's own conf, so its stop hooks and unmounts run."""
    return Cmd(
        ("jail", "-f", check_path("jail.conf", conf), "-r", JAIL.check(name)), timeout=timeout
    )


def jail_force_remove_cmd(name: str) -> Cmd:
    """`jail -R`: removes the jail without the configuration file, so no exec.poststop and no
    unmounting (jail(8) -R); the caller cleans up after it."""
    return Cmd(("jail", "-R", JAIL.check(name)), timeout=FORCE_REMOVE_TIMEOUT)


def jls_cmd(name: str | None = None) -> Cmd:
    """`jls --libxo json -v [-j name]`: -v is the display mode whose JSON carries both name and
    jid (jls.c print_jail PRINT_VERBOSE); the default mode has no name."""
    select = ("-j", JAIL.check(name)) if name is not None else ()
    return Cmd(("jls", "--libxo", "json", "-v", *select))


def jls_params_cmd(name: str) -> Cmd:
    """`jls -s -j name`: the jail's kernel parameters as jail(8) arguments (jls(8) -s)."""
    return Cmd(("jls", "-s", "-j", JAIL.check(name)))


def rctl_remove_cmd(name: str) -> Cmd:
    """Remove every rule of the jail by filter (jails spec gotcha 42)."""
    return Cmd(("rctl", "-r", f"jail:{JAIL.check(name)}"))


def _jls_error(why: str, obj: object) -> ParseError:
    return ParseError("jls", 1, json.dumps(obj)[:200], why)


def _jail_info(entry: object) -> JailInfo:
    if not isinstance(entry, dict):
        raise _jls_error("a jail entry is not an object", entry)
    for key, kind in (("jid", int), ("name", str), ("hostname", str), ("path", str)):
        value = entry.get(key)
        if value is None:
            raise _jls_error(f"jail entry has no {key!r} (run jls with -v)", entry)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _jls_error(f"jail entry {key!r} is not {kind.__name__}", entry)
    extra: dict[str, str] = {}
    for key, value in entry.items():
        if key in ("jid", "name", "hostname", "path"):
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            extra[key] = ",".join(value)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            extra[key] = str(value)
        else:
            raise _jls_error(f"jail entry {key!r} has an unexpected type", entry)
    return JailInfo(entry["name"], entry["jid"], entry["path"], entry["hostname"], extra)


def parse_jls_json(text: str) -> list[JailInfo]:
    """Jails from `jls --libxo json -v` (libxo version "2": jls.c JLS_XO_VERSION). Other
    fields (state, cpusetid, ipv4_addrs, ...) go to `JailInfo.extra`, lists comma-joined.
    Raises ParseError on anything else; never returns partial data."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        lines = text.splitlines() or [""]
        line = lines[min(e.lineno, len(lines)) - 1]
        raise ParseError("jls", e.lineno, line[:200], f"not JSON ({e.msg})") from None
    if not isinstance(doc, dict) or doc.get("__version") != "2":
        raise _jls_error("expected a libxo document with __version '2'", doc)
    info = doc.get("jail-information")
    jails = info.get("jail") if isinstance(info, dict) else None
    if not isinstance(jails, list):
        raise _jls_error("expected jail-information.jail to be a list", doc)
    return [_jail_info(entry) for entry in jails]


def mount_points_cmd() -> Cmd:
    """`mount -p`: the mount table in fstab(5) format (jails spec a.4 #25)."""
    return Cmd(("mount", "-p"))


def parse_mount_points(text: str) -> list[str]:
    """Mount points from `mount -p` output; fstab(5) encodes spaces and tabs as octal escapes
    (\\040, \\011)."""
    points = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 3:
            raise ParseError("mount -p", no, line, "expected device, mount point and type")
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
    return points


def umount_cmd(point: str) -> Cmd:
    return Cmd(("umount", "-f", check_path("mount point", point)))


def jexec_cmd(
    name: str,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stdin: bytes | None = None,
) -> Cmd:
    """`jexec -l [-U user] name argv...`. -l gives a clean login environment, so nothing of
    the caller's (ssh agent, tokens) leaks in (jails spec gotcha 7); for the same reason `env`
    cannot travel as the Cmd's environment and is passed with `/usr/bin/env K=V` inside the jail
    (secrets stay masked). `user` is looked up in the jail's passwd (jexec -U)."""
    if not argv:
        raise ValueError("jexec needs a command")
    words = ["jexec", "-l"]
    if user is not None:
        words += ["-U", USER.check(user)]
    words.append(JAIL.check(name))
    if env:
        if "=" in argv[0]:
            raise ValueError(f"command {argv[0]!r} would be read by env(1) as an assignment")
        words += ["/usr/bin/env", *env_words(env)]
    return Cmd((*words, *argv), stdin=stdin, timeout=timeout)


def _tail(result: Result) -> str:
    text = (result.err.strip() or result.out.strip())[-1000:]
    return text or "(no output)"


class FreeBsdJails(Jails):
    """The `Jails` protocol on a FreeBSD host.

    Each jail gets its own jail.conf at `<conf_dir>/<name>.conf` and console log at
    `<consolelog_dir>/<name>.console`, both in root-only directories. `list()` returns only
    top-level jails whose name starts with `prefix` (None: all), so poudriere's build jails
    (`<worker>.<name>`) and foreign jails are never reported as ours.
    """

    log = Logger()
    capabilities = frozenset({CAP_ZFS_JAILED, CAP_RCTL, CAP_VNET, CAP_NESTED})

    def __init__(
        self,
        runner: Runner,
        conf_dir: str = "/var/run/jailfarm",
        consolelog_dir: str = "/var/log/jailfarm",
        prefix: str | None = None,
        exec_timeout: int = EXEC_TIMEOUT,
    ) -> None:
        self.runner = runner
        self.conf_dir = check_path("conf_dir", conf_dir)
        self.consolelog_dir = check_path("consolelog_dir", consolelog_dir)
        if prefix is not None and not re.fullmatch(r"[a-z][a-z0-9_-]*", prefix):
            raise ValueError(f"jail name prefix {prefix!r} is not the start of a jail name")
        self.prefix = prefix
        self.exec_timeout = exec_timeout

    def conf_path(self, name: str) -> str:
        return f"{self.conf_dir}/{JAIL.check(name)}.conf"

    def consolelog_path(self, name: str) -> str:
        return f"{self.consolelog_dir}/{JAIL.check(name)}.console"

    def render(self, spec: JailSpec) -> str:
        """The jail.conf `start` writes for `spec` (pure)."""
        params = jail_params(
            spec, consolelog_dir=self.consolelog_dir, exec_timeout=self.exec_timeout
        )
        return render_jail_conf(spec.name, params)

    async def start(self, spec: JailSpec) -> JailInfo:
        """Write the jail's conf, `jail -f conf -c name`, and return what jls reports.

        jail(8) exits only 0 or 1 (jails spec gotcha 6), so on failure the JailError carries
        its stderr and points at the console log, where exec.start output goes. A failed start
        may leave the conf behind; `remove` cleans up."""
        if self.prefix is not None and not spec.name.startswith(self.prefix):
            raise ValueError(
                f"jail {spec.name} does not start with the farm prefix {self.prefix!r}; "
                "list() would never report it and the reconciler could not find it"
            )
        conf_text = self.render(spec)
        conf = self.conf_path(spec.name)
        (await self.runner.run(mkdirs_cmd(self.conf_dir, self.consolelog_dir))).check()
        (await self.runner.run(write_file_cmd(conf, conf_text))).check()
        result = await self.runner.run(jail_create_cmd(conf, spec.name))
        if not result.ok:
            raise JailError(
                f"jail -c {spec.name} failed (jail(8) exit {result.rc}): {_tail(result)}; "
                f"see the console log {self.consolelog_path(spec.name)} on the jail host"
            )
        listed = await self.runner.run(jls_cmd(spec.name))
        jails = parse_jls_json(listed.out) if listed.ok else []
        if [j.name for j in jails] != [spec.name]:
            raise JailError(
                f"jail -c {spec.name} reported success but jls does not show it "
                f"({_tail(listed)}); see the console log {self.consolelog_path(spec.name)}"
            )
        self.log.info("started jail {name} (jid {jid})", name=spec.name, jid=jails[0].jid)
        return jails[0]

    def exec_cmd(
        self,
        name: str,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Cmd:
        return jexec_cmd(name, argv, user=user, env=env, timeout=timeout, stdin=stdin)

    async def remove(self, name: str, timeout: float | None = None) -> None:
        """Stop and remove jail `name`, verify with jls that it is gone, delete its conf.

        `jail -f conf -r` (bounded by `timeout`, default DEFAULT_REMOVE_TIMEOUT) runs the stop
        hooks; if it fails or times out this escalates to `jail -R` (jails spec feature 2),
        which skips exec.poststop, so the jail's rctl rules are then removed here (gotcha 41).
        Mounts jail(8) made (devfs, fdescfs, nullfs) stay behind after `-R` (gotcha 10): the
        teardown's unmount sweep below the jail root must follow. Removing an absent jail only
        deletes the conf."""
        conf = self.conf_path(name)
        if await self._listed(name):
            await self._stop(name, conf, DEFAULT_REMOVE_TIMEOUT if timeout is None else timeout)
        (await self.runner.run(remove_file_cmd(conf))).check()

    async def unmount_below(self, path: str) -> list[str]:
        """Unmount, deepest first, everything below `path`: jail(8) leaves its own mounts after
        `jail -R`, and nothing unmounts what the jail mounted itself (jails spec gotcha 10)."""
        prefix = check_path("path", path).rstrip("/") + "/"
        table = (await self.runner.run(mount_points_cmd())).check()
        below = [p for p in parse_mount_points(table.out) if p.startswith(prefix)]
        for point in sorted(below, key=lambda p: p.count("/"), reverse=True):
            (await self.runner.run(umount_cmd(point))).check()
        return below

    async def _stop(self, name: str, conf: str, timeout: float) -> None:
        stop = await self.runner.run(jail_remove_cmd(conf, name, timeout))
        if stop.ok and not await self._listed(name):
            return
        self.log.warn(
            "jail -r {name} did not remove it (rc={rc}, timed_out={t}): {err}; using jail -R",
            name=name,
            rc=stop.rc,
            t=stop.timed_out,
            err=_tail(stop),
        )
        force = await self.runner.run(jail_force_remove_cmd(name))
        if await self._listed(name):
            raise JailError(
                f"jail {name} is still running after jail -r ({_tail(stop)}) and jail -R "
                f"({_tail(force)}); see the console log {self.consolelog_path(name)}"
            )
        await self._remove_rctl_rules(name)

    async def _remove_rctl_rules(self, name: str) -> None:
        result = await self.runner.run(rctl_remove_cmd(name))
        # Named, harmless outcomes: no rule matched (ESRCH, "No such process", gotcha 42), or
        # RACCT is disabled on this host, so no rule can exist.
        if result.ok or "No such process" in result.err or "disabled" in result.err:
            return
        raise JailError(
            f"jail {name} is gone but its rctl rules could not be removed ({_tail(result)}); "
            "they would apply to the next jail of that name (jails spec gotcha 41)"
        )

    async def _listed(self, name: str) -> bool:
        # All jails rather than `jls -j name`: that exits 1 both for "not found" and for real
        # failures, and absence must not be mistaken for an error (or the reverse).
        return any(j.name == name for j in await self._all())

    async def _all(self) -> list[JailInfo]:
        result = await self.runner.run(jls_cmd())
        if not result.ok:
            raise JailError(f"jls failed (rc={result.rc}): {_tail(result)}")
        return parse_jls_json(result.out)

    async def verify(self, spec: JailSpec) -> list[str]:
        """Compare the running jail's kernel parameters (`jls -s -j`) with what its profile
        asks for (jails spec feature 25); returns the differences, empty if none."""
        result = (await self.runner.run(jls_params_cmd(spec.name))).check()
        params = jail_params(
            spec, consolelog_dir=self.consolelog_dir, exec_timeout=self.exec_timeout
        )
        return param_mismatches(params, parse_jls_params(result.out))

    async def list(self) -> list[JailInfo]:
        """Running top-level jails, restricted to `prefix` if one was given."""
        return [
            j
            for j in await self._all()
            if "." not in j.name and (self.prefix is None or j.name.startswith(self.prefix))
        ]
