"""`jailfarm up | down | status` on the Linux development host (adapter).

`up` is `jailfarm provision apply` plus a first build: it applies the plan of
`linuxdev.plan_linuxdev` (the zfs-fuse daemon, the file-backed pool, the worker template, a
Buildbot master in `<state_dir>/master` running a copy of farm.toml, the repository signing
key and nginx in front of it all) until a new plan is empty, waits for the master's API, then
forces a bulk on a jail worker.
What `up` created is recorded in `<state_dir>/up.json`, so `down` removes exactly that and
stops only the processes `up` started (by their PIDs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import treq
from twisted.internet import task

from jailfarm.cmd import Cmd, program
from jailfarm.errors import FarmError
from jailfarm.host import zfsfuse
from jailfarm.host.platform import host_platforms, make_platform
from jailfarm.host.zfs import Zfs
from jailfarm.master.config import bulk_builder_name
from jailfarm.poudriere.commands import Target
from jailfarm.provision import linuxdev
from jailfarm.provision.linuxdev import public_key_file
from jailfarm.provision.nginx import NginxProcess, site_from_config
from jailfarm.workers import layout
from jailfarm.workers.reaper import reap_command

if TYPE_CHECKING:
    from collections.abc import Callable

    from jailfarm.config import FarmConfig
    from jailfarm.provision.plan import Step
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

    def record(self, step: Step) -> None:
        """Note what `step` (of `linuxdev.plan_linuxdev`) is about to create."""
        kind = step.name.split("-")[0]
        if step.name == "zfs-fuse":
            self.daemon_pidfile = step.creates[0]
        elif step.name == "pool":
            self.pool_created = True
        elif step.name == "datasets":
            self.root_created = self.root_created or bool(step.creates)
        elif step.name.startswith("ports-tree-"):
            self.seeded_trees += [p for p in step.creates if p not in self.seeded_trees]
        elif step.name == "repository-directories":
            self.made_dirs += [p for p in step.creates if p not in self.made_dirs]
        elif step.name == "signing-key" and step.creates:
            self.signing_key = step.creates[0]
        elif kind == "master" and step.creates:
            self.master_dir = step.creates[0]
        elif kind == "nginx" and step.creates:
            self.nginx_prefix = step.creates[0]

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

    def context(self) -> linuxdev.Context:
        """This installation's side of the plan: farm.toml, the master.cfg to run, where the
        buildbot and jailfarm scripts are, the demo tree."""
        return linuxdev.Context(
            farm_toml_path=self.farm_toml,
            farm_toml=Path(self.farm_toml).read_text(),
            master_cfg=self.master_cfg,
            bin_dir=os.path.dirname(sys.executable),
            ids=f"{os.getuid()}:{os.getgid()}",
            demo_tree=str(DEMO_TREE) if DEMO_TREE.is_dir() else None,
        )

    async def apply(self) -> int:
        """Bring this host to what farm.toml describes with the provisioning model
        (`linuxdev.plan_linuxdev`), recording in up.json what each step creates before it
        runs, so `down` removes it even after a failure half-way; the number of steps run."""
        state = UpState.load(self.state_path)

        def record(step: Step) -> None:
            state.record(step)
            state.save(self.state_path)

        return await linuxdev.converge(
            self.cfg, self.context(), self.runner, self.say, before_step=record
        )

    async def up(self, first_build: bool = True) -> int:
        t = time.monotonic()
        started = await self.apply()
        await self._wait_api()
        pid = self._master_pid()
        self.say(
            f"master {'up' if started else 'already running'} (pid {pid}) in "
            f"{time.monotonic() - t:.1f} s; web UI on http://{self.cfg.web.bind}:"
            f"{self.cfg.web.port}/ (public URL {self.cfg.web.url})"
        )
        nginx = self._nginx()
        self.say(
            f"nginx (pid {nginx.running_pid()}) on {nginx.site.url}: /buildbot/ (web UI), "
            "/packages/ (signed repositories), /data/ (bulk logs)"
        )
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

    def _nginx(self) -> NginxProcess:
        return NginxProcess(self.runner, site_from_config(self.cfg), self.clock)

    async def _master(self, state: UpState | None = None) -> None:
        """Start the master again if it is not running (the rest of the host is checked too,
        and only what is missing is done), then wait for its API."""
        await self.apply()
        await self._wait_api()

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
                    log = self.master_dir / "twistd.log"
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise FarmError(
                        f"the master's API at {self.api} does not answer: {e}\n{tail}"
                    ) from e
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
        argv = [program("jailfarm"), "repo", "verify", url]
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
        await self.runner.run(Cmd((program("buildbot"), "stop", str(self.master_dir)), timeout=120))
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
