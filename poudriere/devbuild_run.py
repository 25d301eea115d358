"""Gathering port metadata and building ports for `jailfarm-poudriere` (shell: runs bmake,
writes packages and the build's files). See devbuilder.py for the command line and the honest
limits of the dev host's clean build environments.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, TYPE_CHECKING

from jailfarm.errors import FarmError
from jailfarm.host.linux import python_dirs
from jailfarm.poudriere import devbuild_graph as graph
from jailfarm.poudriere import devbuild_layout as layout
from jailfarm.poudriere import devbuild_sandbox as sandbox
from jailfarm.poudriere.commands import Target, check_buildname, packages_dir

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


class Fatal(FarmError):
    """poudriere's `err N msg`: print the message, exit N."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


# poudriere runs builds in a wiped environment (§0); make variables come from make.conf.
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", "LC_ALL": "C"}
_QUERY = (
    "PKGNAME",
    "IGNORE",
    "ALL_BUILD_DEPENDS_ORIGINS",
    "ALL_RUN_DEPENDS_ORIGINS",
    "COMMENT",
    "MAINTAINER",
    "WWW",
    "LICENSE",
    "CATEGORIES",
    "PREFIX",
    "DESCR",
)


def bmake_argv(tree: Path, origin: str, *args: str) -> list[str]:
    """`bmake -m <tree>/Mk -C <tree>/<origin> args...` (examples/ports/README.md)."""
    return ["bmake", "-m", str(tree / "Mk"), "-C", str(tree / origin), *args]


def query_port(tree: Path, origin: str, make_vars: Sequence[str]) -> graph.PortInfo:
    """One `make -V` call with every variable the plan and the package need."""
    args = [a for name in _QUERY for a in ("-V", name)]
    r = subprocess.run(
        bmake_argv(tree, origin, *make_vars, *args),
        capture_output=True,
        text=True,
        env=_ENV,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    lines = r.stdout.split("\n")
    if r.returncode != 0 or len(lines) != len(_QUERY) + 1:
        raise Fatal(f"{origin}: make -V failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    v = dict(zip(_QUERY, lines, strict=False))
    descr = Path(v["DESCR"])
    return graph.PortInfo(
        origin,
        v["PKGNAME"],
        v["IGNORE"],
        tuple(v["ALL_BUILD_DEPENDS_ORIGINS"].split()),
        tuple(v["ALL_RUN_DEPENDS_ORIGINS"].split()),
        v["COMMENT"],
        v["MAINTAINER"],
        v["WWW"],
        tuple(v["LICENSE"].split()),
        tuple(v["CATEGORIES"].split()),
        v["PREFIX"] or "/usr/local",
        descr.read_text() if descr.is_file() else v["COMMENT"],
    )


def gather(
    tree: Path, listed: Sequence[str], make_vars: Sequence[str]
) -> dict[str, graph.PortInfo]:
    """`gatheringportvars`: query each listed port and, recursively, its dependencies."""
    ports: dict[str, graph.PortInfo] = {}
    todo = list(listed)
    while todo:
        origin = todo.pop()
        if origin in ports:
            continue
        if not (tree / origin / "Makefile").is_file():
            raise Fatal(f"Nonexistent origin {origin} (a dependency)")
        ports[origin] = query_port(tree, origin, make_vars)
        todo.extend(ports[origin].deps)
    return ports


_TRAPPED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _interrupted(signum: int, _frame: object) -> None:
    # One cleanup only: a second signal must not interrupt the first one's cleanup.
    for sig in _TRAPPED:
        signal.signal(sig, signal.SIG_IGN)
    raise _Interrupted(signum)


# How long make gets to exit after SIGTERM before its process group gets SIGKILL.
KILL_GRACE = 5.0


class _Makes:
    """The make processes builders run, each in its own session (so its process group holds
    make and every command it starts). `stop` kills the groups and refuses new ones: what
    poudriere's jail_stop does by removing the builder jails (§7)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def run(
        self,
        argv: Sequence[str],
        log: IO[str],
        pipe: tuple[int, int] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> int:
        """Run argv with output to log; with `pipe` (read, write), the child inherits the
        write end and each line it writes there goes to `on_line` as it comes."""
        with self._lock:
            if self.stopping:
                for fd in pipe or ():
                    os.close(fd)  # never handed to a child: the caller's pipe goes here
                return 1
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_ENV,
                start_new_session=True,
                pass_fds=pipe[1:] if pipe else (),
            )
            self._procs.add(proc)
        if pipe:
            os.close(pipe[1])
            with os.fdopen(pipe[0]) as lines:
                for line in lines:
                    if on_line:
                        on_line(line.strip())
        rc = proc.wait()  # interrupted by a signal, proc stays listed for stop()
        with self._lock:
            self._procs.discard(proc)
        return rc

    def stop(self) -> None:
        """SIGTERM every running group, then SIGKILL what is left after KILL_GRACE."""
        with self._lock:
            self.stopping = True
            procs = list(self._procs)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                _killpg(proc.pid, sig)
            deadline = time.monotonic() + KILL_GRACE
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.05)
        for proc in procs:  # make is gone; a child that left the group could remain
            _killpg(proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group has already exited: the race is harmless
        pass


class Bulk:
    """One bulk run: the state files, N builder threads (each running make processes in its
    own build root), and the commit of the repository."""

    def __init__(
        self,
        target: Target,
        buildname: str,
        data: Path,
        tree: Path,
        ports: Mapping[str, graph.PortInfo],
        plan: graph.Plan,
        builders: int,
        make_vars: Sequence[str],
        abi: str,
        existing: Mapping[str, frozenset[str]],
    ) -> None:
        self.target, self.tree, self.ports, self.plan = target, tree, ports, plan
        self.builders, self.make_vars, self.abi = builders, make_vars, abi
        self.keep = graph.packages_to_keep(ports, plan, existing)
        m = target.mastername
        self.d = layout.BuildDir(data / "logs" / "bulk" / m / check_buildname(buildname))
        self.pkgdir = Path(packages_dir(str(data), target))
        self.mnt = data / ".m" / m
        self.ref = self.mnt / "ref"  # the reference build root (devbuild_sandbox)
        self.binds = python_dirs()  # the Python the build root runs
        self.makes = _Makes()
        self.t0 = time.monotonic()
        queued = len(plan.tobuild) + len(plan.ignored) + len(plan.skipped)
        self.counts = dict.fromkeys(("built", "failed", "inspected", "fetched"), 0)
        self.counts |= {"queued": queued, "tobuild": len(plan.tobuild)}
        self.counts |= {"skipped": len(plan.skipped), "ignored": len(plan.ignored)}

    def say(self, msg: str) -> None:
        t = int(time.monotonic() - self.t0)
        print(f"[{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}] {msg}", flush=True)

    def run(self, jail_version: str, keep_old: int) -> int:
        """Build, commit, and return poudriere's exit status: (failed + skipped) mod 256."""
        if self.d.path.exists():
            raise Fatal(f"build {self.d.path.name} exists: the dev builder cannot resume it")
        pidfile = self.mnt / ".pid"
        if pidfile.is_file() and Path(f"/proc/{pidfile.read_text().strip()}").exists():
            raise Fatal(f"jail already running: {self.target.mastername}")
        self.mnt.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{os.getpid()}\n")
        # poudriere traps TERM/INT/HUP: it cleans up, records `stopped:SIG<NAME>:`, then
        # dies by the signal (§1.3). Running make process groups are killed (_Makes.stop).
        handlers = {sig: signal.signal(sig, _interrupted) for sig in _TRAPPED}
        signum = rc = 0
        try:
            rc = self.body(jail_version, keep_old)
        except _Interrupted as e:
            signum = e.signum
            self._stopped(f"stopped:{signal.Signals(signum).name}:")
        except BaseException as e:
            self._stopped(f"stopped:crashed:err:{type(e).__name__} {e}".replace("\n", " "))
            raise
        finally:
            self.makes.stop()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.mnt, ignore_errors=True)
        if signum:  # die by the signal, after the cleanup
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            raise SystemExit(128 + signum)
        # jail_stop prefixes the last status with `stopped:` (`stopped:done:` after a bulk).
        last = (self.d.path / ".poudriere.status").read_text().strip()
        self.d.status(f"stopped:{last}")
        self.d.bset("ended", str(int(time.time())))
        self.update_json()
        self.d.update_index()
        return rc

    def body(self, jail_version: str, keep_old: int) -> int:
        """The work between setup and cleanup; returns the exit status: for a bulk,
        (failed + skipped) mod 256 (§1.3)."""
        self.prepare()
        self.build_all()
        self.commit(jail_version, keep_old)
        return (self.counts["failed"] + self.counts["skipped"]) % 256

    def _stopped(self, status: str) -> None:
        if self.d.path.is_dir():
            self.d.status(status)
            self.d.bset("ended", str(int(time.time())))
            self.update_json()

    def port_line(self, origin: str, *rest: str) -> str:
        return " ".join((origin, self.ports[origin].pkgname, *rest))

    def prepare(self) -> None:
        t, plan = self.target, self.plan
        names = {"mastername": t.mastername, "jailname": t.jail, "ptname": t.tree}
        names |= {"setname": t.set_name or "", "buildname": self.d.path.name}
        self.d.create(names, self.builders)
        layout.relink(self.d.path.parent / "latest", self.d.path.name)
        layout.relink(self.d.path / "packages_root", str(self.pkgdir))
        for status in ("gatheringportvars:", "computingdeps:", "sanity:"):
            self.d.status(status)
        queued = []
        for origin, reason in plan.ignored.items():
            self.d.badd("ports.ignored", self.port_line(origin, reason))
            queued.append(self.port_line(origin, reason))
            self.say(f"Ignoring {origin} | {self.ports[origin].pkgname}: {reason}")
        for origin, cause in plan.skipped.items():
            self.d.badd("ports.skipped", self.port_line(origin, self.ports[cause].pkgname))
            queued.append(self.port_line(origin, self.ports[cause].pkgname))
        tobuild = [self.port_line(o, plan.rdep.get(o, "listed")) for o in plan.tobuild]
        self.d.write_list("ports.tobuild", tobuild)
        self.d.write_list("ports.queued", sorted([*queued, *tobuild]))
        if plan.kept:
            self.say(f"Keeping {len(plan.kept)} up-to-date packages: {' '.join(plan.kept)}")
        self.building = layout.stash_packages(self.pkgdir, self.keep)
        sandbox.make_reference(self.ref)
        self.d.status("building:")
        self.d.status("parallel_build:")
        self.update_json()
        self.say(f"Building {len(plan.tobuild)} packages using up to {self.builders} builders")

    def update_json(self) -> None:
        self.d.update_json(self.counts, self.t0)

    def build_all(self) -> None:
        sched = graph.Scheduler(self.ports, self.plan.tobuild)
        free = [f"{n:02d}" for n in range(1, self.builders + 1)]
        for builder in free:
            self.d.status("idle:", builder)
        running: dict[Future[tuple[str, int]], tuple[str, str]] = {}
        pool = ThreadPoolExecutor(self.builders, thread_name_prefix="builder")
        try:
            while not sched.finished:
                for origin in sched.ready()[: len(free)]:
                    builder = free.pop(0)
                    sched.start(origin)
                    self.say(f"[{builder}] Building {origin} | {self.ports[origin].pkgname}")
                    running[pool.submit(self.build_port, origin, builder)] = (origin, builder)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    origin, builder = running.pop(future)
                    free = sorted([*free, builder])
                    self.d.status("idle:", builder)
                    self.record(sched, origin, builder, *future.result())
                self.update_json()
        except BaseException:
            self.makes.stop()  # else the builders would finish their ports first
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for builder in free:
            self.d.status("done:", builder)

    def record(
        self, sched: graph.Scheduler, origin: str, builder: str, phase: str, elapsed: int
    ) -> None:
        pkgname = self.ports[origin].pkgname
        spent = f"[{elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}]"
        if not phase:
            sched.done(origin)
            self.d.badd("ports.built", self.port_line(origin, str(elapsed)))
            self.d.link_log("built", pkgname)
            self.counts["built"] += 1
            self.say(f"[{builder}] {spent} Finished {origin} | {pkgname}: Success")
            return
        # errortype: the last phase seen, as without processonelog.awk's labels (§4.2 quirk 4)
        self.d.badd("ports.failed", self.port_line(origin, phase, phase, str(elapsed)))
        self.d.link_log("errors", pkgname)
        self.counts["failed"] += 1
        self.say(f"[{builder}] {spent} Finished {origin} | {pkgname}: Failed: {phase}")
        for skipped in sched.failed(origin):
            self.d.badd("ports.skipped", self.port_line(skipped, pkgname))
            self.counts["skipped"] += 1
            why = f"Dependent port {origin} | {pkgname} failed"
            self.say(f"[{builder}] Skipping {skipped} | {self.ports[skipped].pkgname}: {why}")

    def build_port(
        self, origin: str, builder: str, extra_vars: Sequence[str] = ()
    ) -> tuple[str, int]:
        """Build one port in a clean build root of its own (devbuild_sandbox: an overlay over
        the reference root `.m/<M>/ref`, mounted at `.m/<M>/<builder>` in a nested
        namespace; builder "" is testport's, whose phases go to the top-level status); returns
        (failed phase or "", elapsed seconds)."""
        port, start = self.ports[origin], time.monotonic()
        scratch = self.mnt / (builder or "tp")
        scratch.mkdir(exist_ok=True)
        read, write = os.pipe()
        job = sandbox.Job(
            ref=str(self.ref),
            scratch=str(scratch),
            tree=str(self.tree),
            packages=str(self.building),
            hostname=f"{self.target.mastername}-job-{builder or 'ref'}"[:64],
            origin=origin,
            pkgname=port.pkgname,
            installs=tuple(
                f"{self.ports[d].pkgname}.pkg" for d in graph.install_set(self.ports, origin)
            ),
            make_vars=(*self.make_vars, *extra_vars),
            phases=graph.PHASES,
            meta=graph.package_meta(self.ports, origin, self.abi),
            binds=self.binds,
            package_dir=self.package_dir(origin),
            status_fd=write,
        )
        job_file = self.mnt / f".job-{builder or 'tp'}"
        sandbox.write_job(job, job_file)
        result = {"failed": graph.PHASES[0]}

        def on_line(line: str) -> None:
            word, _, phase = line.partition(" ")
            if word == "phase":
                now = int(time.monotonic())
                self.d.status(f"{phase}:{origin}:{port.pkgname}:{int(start)}:{now}", builder)
            elif word in ("ok", "failed"):
                result["failed"] = phase

        with self.d.log_path(port.pkgname).open("w") as log:
            log.write(f"build started at {time.ctime()}\nport directory: /usr/ports/{origin}\n")
            log.write(f"package name: {port.pkgname}\nbuilding for: {self.abi}\n")
            log.write(f"maintained by: {port.maintainer}\nBuilder Id: {builder}\n")
            log.flush()
            rc = self.makes.run(sandbox.argv(job_file), log, (read, write), on_line)
            failed = result["failed"] if rc != 0 else ""
            if rc != 0 and not failed:
                failed = graph.PHASES[0]
                log.write(f"Error: the build root exited with status {rc}\n")
            end = f"build of {origin} | {port.pkgname} ended at {time.ctime()}\n"
            log.write(end + ("!!! build failure encountered !!!\n" if failed else ""))
        job_file.unlink(missing_ok=True)
        return failed, int(time.monotonic() - start)

    def package_dir(self, origin: str) -> str:
        """Where the build root writes the package: `.building/All`, committed later."""
        return f"{sandbox.PACKAGES}/All"

    def commit(self, jail_version: str, keep_old: int) -> None:
        for status in ("stopping_jobs:", "updating_stats:", "committing:"):
            self.d.status(status)
        layout.relink(self.d.path.parent / "latest-done", self.d.path.name)
        layout.commit_packages(self.pkgdir, self.d.path.name, jail_version, keep_old)
        layout.relink(self.d.path / "packages", str(self.pkgdir / ".latest"))
        self.d.status("done:")
