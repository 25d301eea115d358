"""`JailLatentWorker`: a Buildbot latent worker whose instance is a jail cloned from ZFS
(adapter; the life cycle is in `lifecycle.py`, the pure parts in `workerplan.py`).

start_instance: space guard -> `zfs clone <template>@<current>` with the lease properties ->
the worker's buildbot.tac (random password, mode 0600, never the signing key) written into the
clone -> the jail started with the worker profile -> buildbot-worker started inside as the
unprivileged `buildbot` user. Buildbot then waits `attach_timeout` for it to connect; if it
does not, the attempt fails (RETRY, with the reason in the UI) and stop_instance tears it down.
stop_instance: remove the jail (grace period, then forced), destroy the clone (busy retries),
verify nothing is left. One build per jail: `build_wait_timeout=0`, `max_builds=1`.
Infrastructure failures become `LatentWorkerFailedToSubstantiate` (the request is retried);
buildbot-spec §2.1.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from buildbot.interfaces import LatentWorkerFailedToSubstantiate
from buildbot.util.twisted import async_to_deferred
from buildbot.worker import AbstractLatentWorker

from jailfarm.config import load_farm
from jailfarm.errors import FarmError
from jailfarm.host.base import WORKER_USER
from jailfarm.host.platform import host_platforms
from jailfarm.runner import LocalRunner
from jailfarm.workers import workerplan
from jailfarm.workers.lifecycle import start_worker_jail, teardown_worker_jail

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig
    from jailfarm.host.platform import HostPlatform


class JailLatentWorker(AbstractLatentWorker):  # type: ignore[misc]  # buildbot is untyped
    """A worker jail per build on jail host `host`, configured by the farm.toml at `farm_toml`.

    The worker name is also the jail's name and the clone's last component, so a worker can
    only ever have one jail; concurrency comes from several worker names (one per slot).
    """

    def checkConfig(
        self,
        name: str,
        farm_toml: str,
        host: str,
        master_host: str = "127.0.0.1",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("build_wait_timeout", 0)
        kwargs.setdefault("max_builds", 1)
        super().checkConfig(name, None, **kwargs)

    @async_to_deferred
    async def reconfigService(
        self,
        name: str,
        farm_toml: str,
        host: str,
        master_host: str = "127.0.0.1",
        **kwargs: Any,
    ) -> None:
        self.cfg: FarmConfig = load_farm(farm_toml)
        kwargs.setdefault("build_wait_timeout", 0)
        kwargs.setdefault("max_builds", 1)
        # check_instance enforces attach_timeout with the worker's own log as the reason;
        # buildbot's missing timer (a bare TimeoutError) is only the backstop behind it.
        kwargs.setdefault("missing_timeout", self.cfg.workers.attach_timeout + 30)
        kwargs.setdefault("check_instance_interval", 2)
        self.host = host
        self.master_host = master_host
        runner = LocalRunner(reactor=self.master.reactor)
        self.platform: HostPlatform = host_platforms(self.cfg, runner, self.master.reactor)[host]
        await super().reconfigService(name, self.getRandomPass(), **kwargs)

    # ------------------------------------------------------------------ start

    @async_to_deferred
    async def start_instance(self, build: Any) -> bool:
        try:
            await start_worker_jail(
                self.platform,
                self.cfg,
                self.name,
                self.host,
                (self.master_host, self._pb_port()),
                self.password,
                getattr(build, "buildid", None),
                time.time(),
            )
        except FarmError as e:
            raise LatentWorkerFailedToSubstantiate(self.name, str(e)) from e
        self._attach_deadline = time.monotonic() + self.cfg.workers.attach_timeout
        return True

    def _pb_port(self) -> int:
        try:
            return int(self.registration.getPBPort())
        except Exception:  # not registered yet (tests): the configured port
            return self.cfg.workers.pb_port

    @async_to_deferred
    async def check_instance(self) -> tuple[bool, str]:
        """Polled until the worker attaches: is buildbot-worker still running in the jail, and
        is it within workers.attach_timeout? Either failure ends the attempt with the worker's
        own log as the reason (shown in the build's worker_preparation step)."""
        result = await self.platform.jails.exec(
            self.name, workerplan.worker_alive_argv(), user=WORKER_USER, timeout=30
        )
        if result.ok and time.monotonic() < getattr(self, "_attach_deadline", float("inf")):
            return True, ""
        log = await self.platform.jails.exec(self.name, workerplan.worker_log_argv(), timeout=30)
        what = (
            f"buildbot-worker did not attach within workers.attach_timeout "
            f"({self.cfg.workers.attach_timeout} s) to {self.master_host}:{self._pb_port()}"
            if result.ok
            else "buildbot-worker is not running"
        )
        return False, f"{what}; its twistd.log ends:\n{log.out[-1500:]}"

    # ------------------------------------------------------------------ stop

    @async_to_deferred
    async def stop_instance(self, fast: bool = False) -> bool:
        await teardown_worker_jail(self.platform, self.cfg, self.name, fast)
        # A fresh password for the next instance of this worker (not while substantiated:
        # buildbot-spec 2.4), registered before anyone could use it.
        self.password = self._generate_random_password()
        if self.registration is not None:
            await self.registration.update(self, self.master.config)
        return True
