"""`jailfarm up | down | status` on the Linux development host (adapter).

`up` brings the whole farm up on this machine and runs a first build on a jail worker: the
zfs-fuse daemon, the file-backed pool, the worker template, a Buildbot master (basedir
`<state_dir>/master`, running the farm.toml copied next to its master.cfg) with its web UI,
the repository signing key and nginx in front of it all.
What `up` created is recorded in `<state_dir>/up.json`, so `down` removes exactly that and
stops only the processes `up` started (by their PIDs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import treq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import task

from jailfarm.cmd import Cmd
from jailfarm.errors import FarmError
from jailfarm.host import zfsfuse
from jailfarm.host.platform import host_platforms, make_platform
from jailfarm.host.zfs import Zfs
from jailfarm.master.config import bulk_builder_name
from jailfarm.poudriere.commands import Target
from jailfarm.poudriere.pkgsign import public_key_pem
from jailfarm.provision.nginx import NginxProcess, site_from_config
from jailfarm.workers import layout
from jailfarm.workers.reaper import reap_command
from jailfarm.workers.template import current_snapshot, template_command
from jailfarm.workers.workerplan import local_tree_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from jailfarm.config import FarmConfig
    from jailfarm.runner import Runner

    Say = Callable[[str], None]

DEMO_TREE = Path(__file__).resolve().parents[1] / "examples" / "ports"


@dataclass
class UpState:
    """What `up` made, so that `down` removes exactly that."""

    daemon_pidfile: str | None = None
    pool_created: bool = False
    root_created: bool = False
    master_dir: str | None = None
    seeded_trees: list[str] = field(default_factory=list)
    made_dirs: list[str] = field(default_factory=list)
    signing_key: str | None = None
    nginx_prefix: str | None = None

    @classmethod
    def load(cls, path: Path) -> UpState:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.rename(path)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (someone else's files) or already gone: leave it
        pass


def public_key_file(key_file: str) -> str:
    """The public half of a signing key: `repo.key` -> `repo.pub`, next to it."""
    return os.path.splitext(key_file)[0] + ".pub"


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


class DevHost:
    def __init__(
        self,
        cfg: FarmConfig,
        farm_toml: str,
        runner: Runner,
        say: Say,
        clock: Any = None,
        master_cfg: str | None = None,
    ) -> None:
        if cfg.platform != "linux-dev":
            raise FarmError(
                "`jailfarm up/down/status` drive the Linux development host; on "
                "FreeBSD provision the host (see the README, 'Run it on FreeBSD')"
            )
        if clock is None:
            from twisted.internet import reactor as clock
        self.cfg, self.farm_toml, self.runner, self.say, self.clock = (
            cfg,
            os.path.abspath(farm_toml),
            runner,
            say,
            clock,
        )
        self.state_path = Path(cfg.state_dir) / "up.json"
        self.master_dir = Path(cfg.state_dir) / "master"
        self.platform = make_platform(cfg, runner, clock)
        self.api = f"http://{cfg.web.bind}:{cfg.web.port}/api/v2"
        # The master.cfg to run: the packaged one unless a caller (a test) brings its own.
        self.master_cfg = (
            master_cfg or resources.files("jailfarm.master").joinpath("master.cfg").read_text()
        )

    # ------------------------------------------------------------------ up

    async def up(self, first_build: bool = True) -> int:
        state = UpState.load(self.state_path)
        await self._storage(state)
        await self._template()
        await self._ports_trees(state)
        await self._repository(state)
        await self._master(state)
        await self._web(state)
        if not first_build:
            return 0
        if self.cfg.web.auth == "users":
            # Anonymous users may not force builds then, and `up` knows no password (only
            # hashes are configured): an ops user starts the first build.
            self.say(
                f"sign-in is on (web.auth = users): sign in at {self.cfg.web.url} as an ops "
                "user and force a bulk-... build; `up` does not start builds anonymously"
            )
            return 0
        return await self._first_build()

    async def _repository(self, state: UpState) -> None:
        """Where generations and bulk logs go, and the signing key (made once, 0600, with its
        public half next to it for consumers and `jailfarm repo verify`)."""
        cfg = self.cfg
        for d in (cfg.publish.root, cfg.publish.logs, os.path.join(cfg.state_dir, "incoming")):
            top = Path(d)
            while not top.parent.exists():  # the first directory `makedirs` will create
                top = top.parent
            if not os.path.isdir(d):
                os.makedirs(d)
                state.made_dirs.append(str(top))
        key = cfg.signing.key_file
        if key and not os.path.exists(key):
            os.makedirs(os.path.dirname(key), mode=0o700, exist_ok=True)
            private = rsa.generate_private_key(public_exponent=65537, key_size=4096)
            pem = private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            Path(public_key_file(key)).write_bytes(public_key_pem(pem))
            state.signing_key = key
            self.say(f"made the repository signing key {key} (public key {public_key_file(key)})")
        state.save(self.state_path)

    def _nginx(self) -> NginxProcess:
        return NginxProcess(self.runner, site_from_config(self.cfg), self.clock)

    async def _web(self, state: UpState) -> None:
        nginx = self._nginx()
        state.nginx_prefix = nginx.site.prefix
        state.save(self.state_path)
        pid = await nginx.ensure_running()
        self.say(
            f"nginx (pid {pid}) on {nginx.site.url}: /buildbot/ (web UI), /packages/ "
            "(signed repositories), /data/ (bulk logs)"
        )

    async def _storage(self, state: UpState) -> None:
        cfg = self.cfg
        daemon = zfsfuse.ZfsFuse(
            self.runner, Path(self.platform.run_dir) / "zfs-fuse.pid", self.clock
        )
        await daemon.ensure_running()
        if daemon.started:
            state.daemon_pidfile = str(daemon.pidfile)
            state.save(self.state_path)
            self.say(f"started the zfs-fuse daemon (pid file {daemon.pidfile})")
        image = Path(cfg.zfs.pool_file or os.path.join(cfg.state_dir, "pool.img"))
        if await zfsfuse.ensure_pool(
            self.runner,
            cfg.zfs.pool,
            image,
            cfg.zfs.pool_size or (4 << 30),
            cfg.zfs.mountpoint or "/jf",
        ):
            state.pool_created = True
            state.save(self.state_path)
            self.say(f"created pool {cfg.zfs.pool} on {image}")
        else:
            self.say(f"pool {cfg.zfs.pool} is imported")
        if not await self.platform.zfs.exists(cfg.zfs.root):
            await self.platform.zfs.create(cfg.zfs.root, parents=True)
            state.root_created = True
            state.save(self.state_path)
        if not await self.platform.zfs.exists(layout.jails_dataset(cfg)):
            await self.platform.zfs.create(layout.jails_dataset(cfg), parents=True)

    async def _template(self) -> None:
        try:
            snap = await current_snapshot(self.platform.zfs, self.cfg)
            self.say(f"worker template: {snap}")
        except FarmError:
            rc = await template_command(self.cfg, self.runner, "build", None, self.say)
            if rc:
                raise FarmError("building the worker template failed (see above)") from None

    async def _master(self, state: UpState) -> None:
        basedir = self.master_dir
        if self._master_pid() is not None:
            self.say(f"master already running (pid {self._master_pid()}) in {basedir}")
            return
        # A master killed with SIGKILL leaves its pid file; buildbot refuses to start over it.
        (basedir / "twistd.pid").unlink(missing_ok=True)
        if not (basedir / "buildbot.tac").exists():
            (
                await self.runner.run(
                    Cmd(
                        (
                            _bin("buildbot"),
                            "create-master",
                            "--quiet",
                            "--relocatable",
                            str(basedir),
                        ),
                        timeout=300,
                    )
                )
            ).check()
        state.master_dir = str(basedir)
        state.save(self.state_path)
        # twistd would daemonize the master with umask 077; the bulk logs it receives and the
        # repository generations it publishes are served by nginx's unprivileged workers.
        tac = basedir / "buildbot.tac"
        tac.write_text(tac.read_text().replace("umask = None", "umask = 0o022"))
        (basedir / "master.cfg").write_text(self.master_cfg)
        shutil.copyfile(self.farm_toml, basedir / "farm.toml")
        (
            await self.runner.run(
                Cmd((_bin("buildbot"), "upgrade-master", str(basedir)), timeout=300)
            )
        ).check()
        t = time.monotonic()
        start = await self.runner.run(Cmd((_bin("buildbot"), "start", str(basedir)), timeout=120))
        if not start.ok:
            log = (
                (basedir / "twistd.log").read_text(errors="replace")[-3000:]
                if (basedir / "twistd.log").exists()
                else ""
            )
            raise FarmError(f"the master did not start: {start.out.strip()}\n{log}")
        await self._wait_api()
        self.say(
            f"master started in {time.monotonic() - t:.1f} s (pid {self._master_pid()}); "
            f"web UI on http://{self.cfg.web.bind}:{self.cfg.web.port}/ "
            f"(public URL {self.cfg.web.url})"
        )

    def _master_pid(self) -> int | None:
        try:
            pid = int((self.master_dir / "twistd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if zfsfuse.pid_alive(pid) else None

    async def _get(self, path: str) -> Any:
        response = await treq.get(f"{self.api}/{path}", timeout=10, persistent=False)
        if response.code != 200:
            raise FarmError(f"GET {path}: HTTP {response.code}")
        return await response.json()

    async def rpc(self, path: str, method: str, **params: Any) -> Any:
        """A JSON-RPC control call on the REST API (cancel a request, stop a build...)."""
        body = {"jsonrpc": "2.0", "method": method, "id": 1, "params": params}
        response = await treq.post(f"{self.api}/{path}", json=body, timeout=30, persistent=False)
        return await response.json()

    async def raw_log(self, logid: int) -> str:
        response = await treq.get(f"{self.api}/logs/{logid}/raw", timeout=10, persistent=False)
        text: str = await response.text()
        return text

    async def _wait_api(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._get("builders")
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise FarmError(f"the master's API at {self.api} does not answer: {e}") from e
            await task.deferLater(self.clock, 0.3, lambda: None)

    async def force(
        self,
        builder: str,
        reason: str,
        scheduler: str = "force",
        props: dict[str, str] | None = None,
    ) -> int:
        """Force a build through the REST API; the build request id."""
        params = {
            "builderNames": [builder],
            "reason": reason,
            "username": "jailfarm <jailfarm@jailfarm.invalid>",
            **(props or {}),
        }
        body = {"jsonrpc": "2.0", "method": "force", "id": 1, "params": params}
        response = await treq.post(
            f"{self.api}/forceschedulers/{scheduler}", json=body, timeout=30, persistent=False
        )
        answer = await response.json()
        if "error" in answer:
            raise FarmError(f"force {builder}: {answer['error'].get('message')}")
        _, requests = answer["result"]
        return int(next(iter(requests.values())))

    async def wait_build(self, request_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            builds = (await self._get(f"buildrequests/{request_id}/builds"))["builds"]
            request = (await self._get(f"buildrequests/{request_id}"))["buildrequests"][0]
            if builds and builds[-1]["complete"]:
                return dict(builds[-1])
            if request["complete"] and not builds:
                raise FarmError(
                    f"build request {request_id} ended without a build "
                    f"(results {request['results']})"
                )
            await task.deferLater(self.clock, 0.5, lambda: None)
        raise FarmError(f"build request {request_id} did not finish within {timeout:.0f} s")

    async def _first_build(self) -> int:
        """The farm's main job on the demo: a poudriere bulk of the first jail, tree and set,
        in a fresh worker jail; prints the steps and the per-port results."""
        cfg = self.cfg
        builder = bulk_builder_name(cfg.poudriere_jails[0], cfg.trees[0], cfg.sets[0])
        t = time.monotonic()
        request = await self.force(builder, "jailfarm up: first bulk", "force-bulk")
        self.say(f"forced {builder} (build request {request}); waiting for a worker jail")
        build = await self.wait_build(request, cfg.workers.attach_timeout + 900)
        steps = (await self._get(f"builds/{build['buildid']}/steps"))["steps"]
        for step in steps:
            self.say(f"  step {step['name']}: {step['state_string']}")
            if step["name"] == "poudriere-bulk":
                for log in (await self._get(f"steps/{step['stepid']}/logs"))["logs"]:
                    if log["name"] == "ports":
                        for line in (await self.raw_log(log["logid"])).splitlines():
                            self.say(f"    | {line}")
        ok = build["results"] == 0
        verdict = "succeeded" if ok else "FAILED: " + build["state_string"]
        self.say(f"build {build['buildid']} {verdict} in {time.monotonic() - t:.1f} s")
        if ok:
            ok = await self._show_repository(
                Target(cfg.poudriere_jails[0].name, cfg.trees[0].name, cfg.sets[0].name)
            )
        return 0 if ok else 1

    async def _show_repository(self, target: Target) -> bool:
        """The generation the build published, fetched back through nginx and verified as
        the pkg client would (signature, sizes, checksums)."""
        cfg, repo = self.cfg, target.mastername
        url = f"{self._nginx().site.url}packages/{repo}/"
        argv = [_bin("jailfarm"), "repo", "verify", url]
        if cfg.signing.key_file:
            argv += ["--pubkey", public_key_file(cfg.signing.key_file)]
        else:
            self.say(f"repository {repo} is signed by a command: verify it with its key")
            return True
        result = await self.runner.run(Cmd(tuple(argv), timeout=300))
        for line in (result.out + result.err).strip().splitlines():
            self.say(f"  {line}")
        self.say(f"repository {repo}: {url} " + ("verified" if result.ok else "NOT verified"))
        return result.ok

    async def _ports_trees(self, state: UpState) -> None:
        """Make each ports tree whose URL is a missing local repository from the demo tree
        shipped in examples/ports (the demo farm's `file://<state_dir>/src/ports.git`)."""
        for tree in self.cfg.trees:
            path = local_tree_path(tree.url)
            if path is None or Path(path).exists():
                continue
            if not DEMO_TREE.is_dir():
                raise FarmError(
                    f"ports tree {tree.name}: {path} does not exist, and there is no "
                    f"demo tree at {DEMO_TREE} to make it from"
                )
            await self._seed(Path(path), tree.branch)
            state.seeded_trees.append(path)
            state.save(self.state_path)
            self.say(f"ports tree {tree.name}: made {path} (branch {tree.branch}) from {DEMO_TREE}")

    async def _seed(self, repo: Path, branch: str) -> None:
        work = Path(tempfile.mkdtemp(prefix="jf-seed-"))
        try:
            shutil.copytree(
                DEMO_TREE,
                work / "ports",
                ignore=shutil.ignore_patterns("work", "distfiles", "__pycache__"),
            )
            git = (
                "git",
                "-C",
                str(work / "ports"),
                "-c",
                "user.name=jailfarm",
                "-c",
                "user.email=jailfarm@jailfarm.invalid",
            )
            repo.parent.mkdir(parents=True, exist_ok=True)
            for cmd in (
                ("git", "init", "-q", "--bare", f"--initial-branch={branch}", str(repo)),
                ("git", "init", "-q", f"--initial-branch={branch}", str(work / "ports")),
                (*git, "add", "-A"),
                (*git, "commit", "-q", "-m", "The jailfarm demo ports tree"),
                (*git, "push", "-q", str(repo), f"HEAD:refs/heads/{branch}"),
            ):
                (await self.runner.run(Cmd(cmd, timeout=120))).check()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ status

    async def status(self) -> int:
        pid = self._master_pid()
        self.say(
            f"master: {'running, pid ' + str(pid) if pid else 'not running'} ({self.master_dir})"
        )
        now = time.time()
        for host, platform in host_platforms(self.cfg, self.runner, self.clock).items():
            clones = [
                d
                for d in await platform.zfs.list(
                    layout.jails_dataset(self.cfg), layout.LEASE_PROPERTIES, depth=1
                )
                if d.name != layout.jails_dataset(self.cfg) and d.type == "filesystem"
            ]
            alive = {j.name for j in await platform.jails.list()}
            self.say(f"jail host {host}: {len(clones)} worker jail(s)")
            for d in clones:
                jail = d.name.rsplit("/", 1)[1]
                expires = int(d.user.get(layout.EXPIRES, "0") or 0)
                self.say(
                    f"  {jail:<12} build {d.user.get(layout.BUILD, '?'):<6} "
                    f"{'running' if jail in alive else 'no jail'}  lease "
                    f"{'expired' if expires < now else f'{expires - now:.0f} s left'}  "
                    f"{d.used // (1 << 20)} MiB written"
                )
        if pid:
            builds = (await self._get("builds?order=-buildid&limit=5"))["builds"]
            self.say(f"last builds ({len(builds)}):")
            for b in builds:
                self.say(f"  #{b['buildid']} builder {b['builderid']}: {b['state_string']}")
        return 0

    # ------------------------------------------------------------------ down

    async def _stop_master(self, pid: int) -> None:
        """`buildbot stop`, which waits only 10 s; a master still tearing down worker jails may
        need longer, so wait for the PID, and only then kill that PID (the one `up` started)."""
        await self.runner.run(Cmd((_bin("buildbot"), "stop", str(self.master_dir)), timeout=120))
        for _ in range(600):
            if not zfsfuse.pid_alive(pid):
                self.say(f"stopped the master (pid {pid})")
                return
            await task.deferLater(self.clock, 0.1, lambda: None)
        os.kill(pid, signal.SIGKILL)
        self.say(f"the master (pid {pid}) did not stop within 60 s: killed it")

    async def down(self) -> int:
        state = UpState.load(self.state_path)
        pid = self._master_pid()
        if pid is not None:
            await self._stop_master(pid)
        if state.nginx_prefix:
            if await self._nginx().stop():
                self.say("stopped nginx")
            shutil.rmtree(state.nginx_prefix, ignore_errors=True)
        if await zfsfuse.pool_exists(self.runner, self.cfg.zfs.pool):
            await reap_command(self.cfg, self.runner, False, True, self.say)
            if state.pool_created:
                image = Path(self.cfg.zfs.pool_file or os.path.join(self.cfg.state_dir, "pool.img"))
                await zfsfuse.destroy_pool(self.runner, self.cfg.zfs.pool, image, self.clock)
                self.say(f"destroyed pool {self.cfg.zfs.pool} and {image}")
            elif state.root_created and self.cfg.zfs.root != self.cfg.zfs.pool:
                await Zfs(self.runner, self.cfg.zfs.pool, self.clock).destroy(
                    self.cfg.zfs.root, recursive=True
                )
                self.say(f"destroyed {self.cfg.zfs.root} and everything below it")
        if state.master_dir:
            shutil.rmtree(state.master_dir, ignore_errors=True)
            self.say(f"removed the master directory {state.master_dir}")
        for made in reversed(state.made_dirs):
            shutil.rmtree(made, ignore_errors=True)
            self.say(f"removed {made}")
        if state.signing_key:
            for key in (state.signing_key, public_key_file(state.signing_key)):
                Path(key).unlink(missing_ok=True)
            _remove_if_empty(Path(state.signing_key).parent)
            self.say(f"removed the signing key {state.signing_key}")
        for tree in state.seeded_trees:
            shutil.rmtree(tree, ignore_errors=True)
            self.say(f"removed the demo ports tree repository {tree}")
            _remove_if_empty(Path(tree).parent)
        if state.daemon_pidfile:
            daemon = zfsfuse.ZfsFuse(
                self.runner, Path(state.daemon_pidfile), self.clock, started=True
            )
            await daemon.stop()
            self.say("stopped the zfs-fuse daemon")
        self.state_path.unlink(missing_ok=True)
        shutil.rmtree(os.path.join(self.cfg.state_dir, "run", "jails"), ignore_errors=True)
        _remove_if_empty(Path(self.cfg.state_dir) / "run")
        return 0
