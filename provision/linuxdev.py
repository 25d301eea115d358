"""`jailfarm up` and `jailfarm provision` on the Linux development host: `queries` names what
to read from the host, `plan_linuxdev` compares farm.toml with the answers and returns only the
steps still needed, in order (pure), so a host that is up plans nothing. The `Action`s at the
end (start zfs-fuse, seed the demo ports tree, start the master, wait for nginx) are the shell
parts those steps name; `converge` gathers, plans and applies until nothing is left to do.

Facts (linux-dev-host.md): `zpool list` fails with zfs-fuse's NOT_RUNNING message while the
daemon is down; GNU stat; a process is alive if `/proc/PID/stat` shows a state other than Z.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet import task

from jailfarm.cmd import Cmd
from jailfarm.errors import FarmError, ParseError
from jailfarm.host import zfs as zfsops
from jailfarm.host.zfsfuse import NOT_RUNNING, ZfsFuse
from jailfarm.provision.nginx import NginxProcess, render_index_html, render_nginx_conf
from jailfarm.provision.nginx import site_from_config as nginx_site
from jailfarm.provision.plan import (
    Action,
    Answer,
    FileWrite,
    Plan,
    Step,
    apply_plan,
    cat_cmd,
    file_text,
    gather,
    gnu_stat_cmd,
    parse_stat,
)
from jailfarm.workers.layout import OWNER, jails_dataset, templates_dataset
from jailfarm.workers.templateplan import STATE_PROPERTIES, parse_state
from jailfarm.workers.workerplan import local_tree_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from jailfarm.config import FarmConfig
    from jailfarm.provision.nginx import NginxSite
    from jailfarm.provision.plan import Facts, Stat
    from jailfarm.runner import Runner

    Say = Callable[[str], None]

ZPOOLS = Cmd(("zpool", "list", "-H", "-o", "name"))
DEFAULT_POOL_SIZE = 4 << 30


@dataclass(frozen=True)
class Context:
    """The running jailfarm's side of the plan: the farm.toml (its absolute path, read by
    `jailfarm template build`, and its text, which the master runs a copy of), the master.cfg
    to run, the directory of jailfarm's and buildbot's scripts, the `uid:gid` files are
    written as, and the demo ports tree a missing local ports tree is made from."""

    farm_toml_path: str
    farm_toml: str
    master_cfg: str
    bin_dir: str
    ids: str = "0:0"
    demo_tree: str | None = None


def pool_image(cfg: FarmConfig) -> str:
    return cfg.zfs.pool_file or f"{cfg.state_dir}/pool.img"


def daemon_pidfile(cfg: FarmConfig) -> str:
    return f"{cfg.state_dir}/run/zfs-fuse.pid"


def master_dir(cfg: FarmConfig) -> str:
    return f"{cfg.state_dir}/master"


def repository_dirs(cfg: FarmConfig) -> tuple[str, ...]:
    logs = cfg.publish.logs or f"{cfg.state_dir}/logs/bulk"
    return (cfg.publish.root, logs, f"{cfg.state_dir}/incoming")


def _ancestors(path: str) -> list[str]:
    out = []
    while path not in ("/", ""):
        out.append(path)
        path = posixpath.dirname(path)
    return out


def parse_alive(answer: Answer) -> bool:
    """Whether `cat /proc/PID/stat` shows a live process (a zombie is not)."""
    if answer.rc != 0:
        return False  # no such process
    try:
        return answer.out.rsplit(")", 1)[1].split()[0] != "Z"
    except IndexError:
        raise ParseError(
            "/proc/PID/stat", 1, answer.out[:200], "expected pid (comm) state"
        ) from None


class Host:
    """The facts of one Linux dev host, read through `facts`; `queries` names what is still
    to ask (pid files and the pool's datasets come in a later round)."""

    def __init__(self, cfg: FarmConfig, ctx: Context, facts: Facts) -> None:
        self.cfg, self.ctx, self.facts = cfg, ctx, facts
        self.site = nginx_site(cfg)
        self.problems: list[str] = []
        self.notes: list[str] = []

    # ---- what to ask

    def paths(self) -> list[str]:
        cfg = self.cfg
        paths = [pool_image(cfg), f"{master_dir(cfg)}/buildbot.tac"]
        paths += [p for t in cfg.trees if (p := local_tree_path(t.url)) is not None]
        for d in repository_dirs(cfg):
            paths += _ancestors(d)
        if cfg.signing.key_file:
            key = cfg.signing.key_file
            paths += [key, public_key_file(key), posixpath.dirname(key)]
        paths += self.nginx_dirs()
        return list(dict.fromkeys(paths))

    def files(self) -> list[str]:
        site, master = self.site, master_dir(self.cfg)
        files = [f"{master}/twistd.pid", f"{master}/master.cfg", f"{master}/farm.toml"]
        files += [site.conf_file, site.pid_file]
        if site.static_index:
            files.append(f"{site.html_root}/index.html")
        return files

    def queries(self) -> list[Cmd]:
        cmds = [ZPOOLS, *map(gnu_stat_cmd, self.paths()), *map(cat_cmd, self.files())]
        if self.facts.has(ZPOOLS) and self.cfg.zfs.pool in self.pools():
            cmds += [self.datasets_cmd(), self.template_cmd()]
        for pidfile in (f"{master_dir(self.cfg)}/twistd.pid", self.site.pid_file):
            if self.facts.has(cat_cmd(pidfile)) and (pid := self.pid(pidfile)) is not None:
                cmds += [cat_cmd(f"/proc/{pid}/stat"), cat_cmd(f"/proc/{pid}/comm")]
        return cmds

    def datasets_cmd(self) -> Cmd:
        return Cmd(("zfs", "list", "-H", "-o", "name", "-t", "filesystem", "-r", self.cfg.zfs.pool))

    def template_cmd(self) -> Cmd:
        return zfsops.get_cmd([templates_dataset(self.cfg)], STATE_PROPERTIES, depth=1)

    # ---- answers

    def daemon_up(self) -> bool:
        answer = self.facts.get(ZPOOLS)
        if answer.rc == 0:
            return True
        if NOT_RUNNING in answer.err:
            return False
        raise ParseError("zpool", 1, answer.err.strip()[:200], f"zpool list exited {answer.rc}")

    def pools(self) -> set[str]:
        return set(self.facts.get(ZPOOLS).out.split()) if self.daemon_up() else set()

    def pool_up(self) -> bool:
        return self.cfg.zfs.pool in self.pools()

    def datasets(self) -> set[str]:
        answer = self.facts.get(self.datasets_cmd())
        if answer.rc != 0:
            raise ParseError("zfs", 1, answer.err.strip()[:200], f"zfs list exited {answer.rc}")
        return set(answer.out.split())

    def template_live(self) -> bool:
        answer = self.facts.get(self.template_cmd())
        if answer.rc != 0 and zfsops.MISSING in answer.err:
            return False
        if answer.rc != 0:
            raise ParseError("zfs", 1, answer.err.strip()[:200], f"zfs get exited {answer.rc}")
        state = parse_state(templates_dataset(self.cfg), zfsops.parse_get(answer.out))
        return state.live is not None

    def stat(self, path: str) -> Stat | None:
        return parse_stat(self.facts.get(gnu_stat_cmd(path)), path)

    def text(self, path: str) -> str | None:
        return file_text(self.facts.get(cat_cmd(path)), path)

    def pid(self, pidfile: str) -> int | None:
        text = self.text(pidfile)
        try:
            return int(text.strip()) if text else None
        except ValueError:
            return None  # a torn or foreign pid file: the process is not ours to trust

    def running(self, pidfile: str, comm: str | None = None) -> int | None:
        pid = self.pid(pidfile)
        if pid is None or not parse_alive(self.facts.get(cat_cmd(f"/proc/{pid}/stat"))):
            return None
        if comm is not None and (self.text(f"/proc/{pid}/comm") or "").strip() != comm:
            return None
        return pid

    def nginx_dirs(self) -> list[str]:
        site = self.site
        dirs = [site.prefix, site.temp_dir, *(posixpath.dirname(p) for p in _nginx_files(site))]
        if site.static_index:
            dirs.append(site.html_root)
        return list(dict.fromkeys(dirs))

    def top_missing(self, path: str) -> str | None:
        """The first directory `mkdir -p path` would create, or None if `path` exists. Never
        a top-level directory such as /var or /srv: `down` removes what this names."""
        top = None
        for p in _ancestors(path):
            if self.stat(p) is not None or p.count("/") < 2:
                break
            top = p
        return top


def _nginx_args(site: NginxSite) -> tuple[str, ...]:
    return ("-c", site.conf_file, "-p", site.prefix)


def _nginx_files(site: NginxSite) -> tuple[str, ...]:
    return (site.pid_file, site.error_log, site.access_log)


def public_key_file(key_file: str) -> str:
    """The public half of a signing key: `repo.key` -> `repo.pub`, next to it."""
    return posixpath.splitext(key_file)[0] + ".pub"


def queries(cfg: FarmConfig, ctx: Context) -> Callable[[Facts], list[Cmd]]:
    """What `gather` asks the host, round by round."""
    return lambda facts: Host(cfg, ctx, facts).queries()


def plan_linuxdev(cfg: FarmConfig, ctx: Context, facts: Facts) -> Plan:
    """The steps that bring this Linux dev host to what `cfg` describes (README, "What
    `jailfarm up` does"), in order. When the pool is only imported, not created, its datasets
    are not known yet: they are planned in the next round (`converge`)."""
    h = Host(cfg, ctx, facts)
    if cfg.platform != "linux-dev":
        h.problems.append(f"farm.platform is {cfg.platform!r}, not 'linux-dev'")
    if "/" in cfg.zfs.pool:
        h.problems.append(f"zfs.pool {cfg.zfs.pool!r} may not contain '/'")
    if not posixpath.isabs(pool_image(cfg)) or not posixpath.isabs(cfg.state_dir):
        h.problems.append("state_dir and zfs.pool_file must be absolute paths")
    builders: tuple[Callable[[Host], Step | None], ...] = (
        _daemon,
        _pool,
        _datasets,
        _template,
        *(_tree_step(t.name, local_tree_path(t.url), t.branch) for t in cfg.trees),
        _repository_dirs,
        _signing_key,
        _master_basedir,
        _master,
        _nginx_dirs,
        _nginx_config,
        _nginx,
    )
    steps = [s for b in builders if (s := b(h)) is not None]
    return Plan(tuple(steps), tuple(h.problems), tuple(h.notes))


# ---- storage ------------------------------------------------------------------------------------


def _daemon(h: Host) -> Step | None:
    if h.daemon_up():
        return None
    pidfile = daemon_pidfile(h.cfg)

    async def start(runner: Runner, say: Say) -> None:
        await ZfsFuse(runner, Path(pidfile)).ensure_running()
        say(f"started the zfs-fuse daemon (pid file {pidfile})")

    return Step(
        "zfs-fuse",
        "linux-dev-host.md: ZFS on this host is the zfs-fuse daemon, stopped by `down` by its PID",
        ("zpool list: the zfs-fuse daemon is not running",),
        actions=(Action(f"zfs-fuse --pidfile {pidfile}, wait until it answers", start),),
        creates=(pidfile,),
    )


def _pool(h: Host) -> Step | None:
    cfg = h.cfg
    if h.pool_up():
        return None
    image = pool_image(cfg)
    if h.stat(image) is not None:
        return Step(
            "pool-import",
            "zfsfuse.py: after a daemon restart the file-backed pool comes back by import",
            (f"pool {cfg.zfs.pool} is not imported; {image} exists",),
            (Cmd(("zpool", "import", "-d", posixpath.dirname(image), cfg.zfs.pool)),),
        )
    size = cfg.zfs.pool_size or DEFAULT_POOL_SIZE
    return Step(
        "pool",
        "linux-dev-host.md: a pool on a sparse file (absolute path), mounted at zfs.mountpoint",
        (f"pool {cfg.zfs.pool} does not exist, nor {image}",),
        (
            Cmd(("mkdir", "-p", posixpath.dirname(image))),
            Cmd(("truncate", "-s", str(size), image)),
            Cmd(("zpool", "create", "-m", cfg.zfs.mountpoint or "/jf", cfg.zfs.pool, image)),
        ),
        creates=(cfg.zfs.pool,),
    )


def _known_datasets(h: Host) -> set[str] | None:
    """The pool's filesystems: none if this plan creates the pool, unknown (None) if it only
    imports it."""
    if h.pool_up():
        return h.datasets()
    if h.stat(pool_image(h.cfg)) is None:
        return set()
    h.notes.append("the pool's datasets and the template are planned once it is imported")
    return None


def _datasets(h: Host) -> Step | None:
    cfg, known = h.cfg, _known_datasets(h)
    if known is None:
        return None
    owner = {OWNER: cfg.name}
    wanted = [(cfg.zfs.root, True), (jails_dataset(cfg), False)]
    missing = [(d, parents) for d, parents in wanted if d not in known and d != cfg.zfs.pool]
    if not missing:
        return None
    return Step(
        "datasets",
        "the farm's datasets below zfs.root, marked jailfarm:owner (the reaper and `down` "
        "touch only what carries it); worker jails are clones below <root>/jails",
        tuple(f"{d} does not exist" for d, _ in missing),
        tuple(zfsops.create_cmd(d, owner, parents=p) for d, p in missing),
        creates=tuple(d for d, _ in missing),
    )


def _template(h: Host) -> Step | None:
    if h.pool_up():
        if h.template_live():
            return None
        found = f"{templates_dataset(h.cfg)} has no current generation"
    elif _known_datasets(h) is not None:
        found = f"{templates_dataset(h.cfg)} does not exist (new pool)"
    else:
        return None
    jailfarm = posixpath.join(h.ctx.bin_dir, "jailfarm")
    return Step(
        "worker-template",
        "workers/template.py: a thin root written with file operations, read-only, "
        "snapshotted as the next generation and made current (README, `jailfarm up`)",
        (found,),
        (Cmd((jailfarm, "template", "build", "-c", h.ctx.farm_toml_path), timeout=1800),),
    )


# ---- ports trees, repository, signing key ------------------------------------------------------


def _tree_step(name: str, path: str | None, branch: str) -> Callable[[Host], Step | None]:
    def build(h: Host) -> Step | None:
        if path is None or h.stat(path) is not None:
            return None
        demo = h.ctx.demo_tree
        if demo is None:
            h.problems.append(f"ports tree {name}: {path} does not exist and there is no demo tree")
            return None

        async def seed(runner: Runner, say: Say) -> None:
            await seed_tree(runner, Path(demo), Path(path), branch)
            say(f"ports tree {name}: made {path} (branch {branch}) from {demo}")

        return Step(
            f"ports-tree-{name}",
            "README: a local ports tree URL that does not exist is made from the demo tree",
            (f"{path} does not exist",),
            actions=(Action(f"git repository {path} (branch {branch}) from {demo}", seed),),
            creates=(path,),
        )

    return build


def _repository_dirs(h: Host) -> Step | None:
    missing = [d for d in repository_dirs(h.cfg) if h.stat(d) is None]
    if not missing:
        return None
    tops = [t for d in missing if (t := h.top_missing(d)) is not None]
    return Step(
        "repository-directories",
        "where the master publishes signed generations, keeps bulk logs and receives uploads",
        tuple(f"{d} does not exist" for d in missing),
        (Cmd(("mkdir", "-p", *missing)),),
        creates=tuple(dict.fromkeys(tops)),
    )


def _signing_key(h: Host) -> Step | None:
    key = h.cfg.signing.key_file
    if key is None:
        return None
    pub = public_key_file(key)
    commands, check = [], []
    if h.stat(key) is None:
        check.append(f"{key} does not exist")
        if h.stat(posixpath.dirname(key)) is None:
            commands.append(Cmd(("install", "-d", "-m", "0700", posixpath.dirname(key))))
        commands += [
            # Mode 0600 before a byte of the key is written (openssl keeps an existing file's
            # mode); made aside and renamed, so a failed openssl leaves no empty "key".
            Cmd(("install", "-m", "0600", "/dev/null", f"{key}.new")),
            Cmd(("openssl", "genrsa", "-out", f"{key}.new", "4096"), timeout=300),
            Cmd(("mv", f"{key}.new", key)),
        ]
    if not commands and h.stat(pub) is not None:
        return None
    check.append(f"{pub} does not exist")
    commands += [
        Cmd(("openssl", "rsa", "-in", key, "-pubout", "-out", pub)),
        Cmd(("chmod", "0644", pub)),
    ]
    return Step(
        "signing-key",
        "jails spec f.114: an RSA-4096 repository key, 0600, never regenerated; its public "
        "half next to it for consumers and `jailfarm repo verify`",
        tuple(check),
        tuple(commands),
        creates=(key,) if h.stat(key) is None else (),
    )


# ---- the master ---------------------------------------------------------------------------------


def _master_basedir(h: Host) -> Step | None:
    basedir = master_dir(h.cfg)
    if h.stat(f"{basedir}/buildbot.tac") is not None:
        return None
    buildbot = posixpath.join(h.ctx.bin_dir, "buildbot")
    return Step(
        "master-basedir",
        "README: a Buildbot master with its basedir in <state_dir>/master",
        (f"{basedir}/buildbot.tac does not exist",),
        (Cmd((buildbot, "create-master", "--quiet", "--relocatable", basedir), timeout=300),),
        creates=(basedir,),
    )


def _master_files(h: Host) -> tuple[FileWrite, ...]:
    basedir, ctx = master_dir(h.cfg), h.ctx
    writes = []
    for name, content in (("master.cfg", ctx.master_cfg), ("farm.toml", ctx.farm_toml)):
        path = f"{basedir}/{name}"
        before = h.text(path)
        write = FileWrite(
            path, content.encode(), 0o644, ctx.ids, None if before is None else before.encode()
        )
        if write.changed:
            writes.append(write)
    return tuple(writes)


def _master(h: Host) -> Step | None:
    basedir = master_dir(h.cfg)
    buildbot = posixpath.join(h.ctx.bin_dir, "buildbot")
    files = _master_files(h)
    if h.running(f"{basedir}/twistd.pid") is not None:
        if not files:
            return None
        return Step(
            "master-config",
            "the running master reads master.cfg and its farm.toml copy again (buildbot reconfig)",
            tuple(f"{f.path} differs" for f in files),
            (Cmd((buildbot, "reconfig", basedir), timeout=300),),
            files=files,
        )
    tac = f"{basedir}/buildbot.tac"

    async def start(runner: Runner, say: Say) -> None:
        await start_master(runner, buildbot, basedir)

    return Step(
        "master",
        "README: the master runs a copy of farm.toml next to its master.cfg; twistd's umask "
        "077 would hide bulk logs and repositories from nginx's workers, hence 0o022",
        (f"no master is running in {basedir}",),
        (
            Cmd(("sed", "-i", "s/umask = None/umask = 0o022/", tac)),
            # A master killed with SIGKILL leaves its pid file; buildbot refuses to start over it.
            Cmd(("rm", "-f", f"{basedir}/twistd.pid")),
            Cmd((buildbot, "upgrade-master", basedir), timeout=300),
        ),
        files=files,
        actions=(Action(f"{buildbot} start {basedir}", start),),
        creates=(basedir,),
    )


# ---- nginx --------------------------------------------------------------------------------------


def _nginx_dirs(h: Host) -> Step | None:
    missing = [d for d in h.nginx_dirs() if h.stat(d) is None]
    if not missing:
        return None
    return Step(
        "nginx-directories",
        "provision/nginx.py: the farm's own nginx keeps its conf, pid, logs and temp files in "
        "<state_dir>/nginx",
        tuple(f"{d} does not exist" for d in missing),
        (Cmd(("mkdir", "-p", *missing)),),
        creates=(h.site.prefix,),
    )


def _nginx_config(h: Host) -> Step | None:
    site, ids = h.site, h.ctx.ids
    wanted = [(site.conf_file, render_nginx_conf(site))]
    if site.static_index:
        wanted.append((f"{site.html_root}/index.html", render_index_html(site)))
    writes = []
    for path, content in wanted:
        before = h.text(path)
        write = FileWrite(
            path, content.encode(), 0o644, ids, None if before is None else before.encode()
        )
        if write.changed:
            writes.append(write)
    if not writes:
        return None
    actions: tuple[Action, ...] = ()
    if h.running(site.pid_file, "nginx") is not None:

        async def reload(runner: Runner, say: Say) -> None:
            await NginxProcess(runner, site).reload()

        actions = (Action("SIGHUP nginx, wait until only new workers accept", reload),)
    return Step(
        "nginx-config",
        "provision/nginx.py: nginx.conf rendered from farm.toml, checked with `nginx -t`",
        tuple(f"{w.path} differs" for w in writes),
        (Cmd((NginxProcess.binary, "-t", "-q", *_nginx_args(site)), timeout=60),),
        files=tuple(writes),
        actions=actions,
        creates=(site.prefix,),
    )


def _nginx(h: Host) -> Step | None:
    site = h.site
    if h.running(site.pid_file, "nginx") is not None:
        return None

    async def start(runner: Runner, say: Say) -> None:
        await start_nginx(runner, site)

    return Step(
        "nginx",
        "README: nginx in front of it all (/buildbot/, /packages/, /data/), its own pid file",
        (f"no nginx is running with {site.pid_file}",),
        actions=(
            Action(f"nginx -c {site.conf_file} -p {site.prefix}, wait until it answers", start),
        ),
        creates=(site.prefix,),
    )


# ---- the shell parts the steps call --------------------------------------------------------------


async def start_master(runner: Runner, buildbot: str, basedir: str) -> None:
    """`buildbot start`; on failure the error carries the end of twistd.log."""
    start = await runner.run(Cmd((buildbot, "start", basedir), timeout=120))
    if not start.ok:
        log = Path(basedir) / "twistd.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise FarmError(f"the master did not start: {start.out.strip()}\n{tail}")


async def start_nginx(runner: Runner, site: NginxSite) -> None:
    nginx = NginxProcess(runner, site)
    if nginx.running_pid() is not None:
        return
    result = await runner.run(Cmd((nginx.binary, *_nginx_args(site)), timeout=60))
    if not result.ok:
        raise FarmError(f"nginx did not start: {(result.err or result.out).strip()}")
    for _ in range(300):
        if nginx.running_pid() is not None and await nginx.answering():
            return
        await task.deferLater(nginx.clock, 0.05, lambda: None)
    raise FarmError(f"nginx started but does not answer on {site.url}; see {site.error_log}")


async def seed_tree(runner: Runner, demo: Path, repo: Path, branch: str) -> None:
    """A bare git repository at `repo` holding one commit of a copy of the demo tree."""
    work = Path(tempfile.mkdtemp(prefix="jf-seed-"))
    try:
        shutil.copytree(
            demo, work / "ports", ignore=shutil.ignore_patterns("work", "distfiles", "__pycache__")
        )
        ports = str(work / "ports")
        git = (
            "git",
            "-C",
            ports,
            "-c",
            "user.name=jailfarm",
            "-c",
            "user.email=jailfarm@jailfarm.invalid",
        )
        repo.parent.mkdir(parents=True, exist_ok=True)
        for argv in (
            ("git", "init", "-q", "--bare", f"--initial-branch={branch}", str(repo)),
            ("git", "init", "-q", f"--initial-branch={branch}", ports),
            (*git, "add", "-A"),
            (*git, "commit", "-q", "-m", "The jailfarm demo ports tree"),
            (*git, "push", "-q", str(repo), f"HEAD:refs/heads/{branch}"),
        ):
            (await runner.run(Cmd(argv, timeout=120))).check()
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def converge(
    cfg: FarmConfig,
    ctx: Context,
    runner: Runner,
    say: Say,
    before_step: Callable[[Step], None] | None = None,
    rounds: int = 3,
) -> int:
    """Gather, plan and apply until a plan is empty (a later round plans what depends on an
    earlier one, such as an imported pool's datasets); the number of steps run. Raises
    `PlanRefused` for problems, `ApplyError` for a failing step."""
    total = 0
    for _ in range(rounds):
        plan = plan_linuxdev(cfg, ctx, await gather(runner, queries(cfg, ctx)))
        if not plan.steps and not plan.problems:
            return total
        total += await apply_plan(plan, runner, say, before_step=before_step)
    raise FarmError(f"the host still plans steps after {rounds} rounds of apply")
