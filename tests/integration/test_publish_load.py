"""Issue #5 end to end: signed repository generations published under load behind the real nginx
(Debian's /usr/sbin/nginx on a free loopback port, stopped by its PID), and failed publishes
that leave what nginx serves byte for byte.

Packages are real (pkgfile.write_package). The HTTP client is plain blocking `http.client` in
a thread of its own; nginx is a separate process, so a publish that holds the reactor thread
(hashing, signing with a key file) holds up neither the client nor the server.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from twisted.internet import defer, task
from twisted.trial import unittest

from jailfarm.host.zfsfuse import pid_alive
from jailfarm.poudriere.catalogue import META_CONF, unpack_catalogue
from jailfarm.poudriere.generations import PublishError, diff, generations, publish
from jailfarm.poudriere.pkgfile import PackageMeta, sum_matches, write_package
from jailfarm.poudriere.pkgsign import CommandSigner, KeyFileSigner, public_key_pem, verify_rsa
from jailfarm.provision.nginx import NginxProcess, NginxSite
from jailfarm.runner import LocalRunner
from tests.integration.host import nginx_site
from tests.support import deferred_test, rsa_key_pem

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from twisted.internet.interfaces import IReactorTime

    from jailfarm.poudriere.pkgsign import Signer

REPO = "141amd64-default"
PUBLISHES = 20
KEEP = 3
MTIME = 1_700_000_000
# Each generation, against the one before: three packages rebuilt with the same name and
# version but other bytes (`same-a`, `same-b` and `big`, 256 KiB, so a swap can come while
# nginx is still sending it), two bumped (`tool`; `util` with a PORTEPOCH), `rot<N-1>` removed
# and `rot<N>` added, and four unchanged (`pkg` for the bootstrap). Hashed file names then
# hold '~', '$', '+' and ',', all of which the client sends unencoded, as pkg does.
UNCHANGED = (("pkg", "1.21.3"), ("base", "1.0"), ("libsigc++", "2.12.1"), ("keepme", "5.0"))
REBUILT = ("same-a", "same-b", "big")
BIG = 256 * 1024

# A catalogue's identity: its (name, version, sum) triples.
Listing = frozenset[tuple[str, str, str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def package(src: Path, stage: Path, name: str, version: str, payload: bytes) -> Listing:
    """Write the real package name-version into src/All from a stage of one file; its entry
    as a catalogue must list it."""
    meta = PackageMeta(
        name=name,
        origin=f"misc/{name}",
        version=version,
        comment=f"The {name} package",
        desc=f"{name} for the publish load test.",
        maintainer="test@example.org",
        www="https://example.org/",
        abi="FreeBSD:14:amd64",
    )
    staged = stage / name / "usr/local/share" / name
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(payload)
    os.utime(staged, (MTIME, MTIME))
    (src / "All").mkdir(parents=True, exist_ok=True)
    info = write_package(src / "All" / meta.filename, meta, stage / name, [f"share/{name}"])
    return frozenset({(name, version, info.pkg_sum)})


def make_source(work: Path, n: int) -> tuple[Path, Listing]:
    """Generation n's packages directory (a new one per publish, as poudriere's .latest is
    per bulk) and the catalogue it must publish; see UNCHANGED and REBUILT for what changes."""
    src, stage = work / "src" / f"g{n}", work / "stage" / f"g{n}"
    listing: Listing = frozenset()
    for name, version in UNCHANGED:
        listing |= package(src, stage, name, version, f"{name} {version}\n".encode())
    for name in REBUILT:
        body = f"{name} 1.0 built for generation {n}\n".encode()
        if name == "big":  # incompressible, so the package is as big as its payload
            body = hashlib.shake_256(body).digest(BIG)
        listing |= package(src, stage, name, "1.0", body)
    listing |= package(src, stage, "tool", f"1.{n}", b"tool\n")
    listing |= package(src, stage, "util", f"3.0.{n}_1,1", b"util\n")
    listing |= package(src, stage, f"rot{n}", "1.0", f"rot{n}\n".encode())
    return src, listing


def packages_of(data_pkg: bytes, pubkey: bytes) -> list[dict[str, object]]:
    """The package list of a pubkey-signed data.pkg; AssertionError if the signature does not
    verify as the pkg client checks it."""
    members = unpack_catalogue(data_pkg)
    assert verify_rsa(members["data"], members["signature"], pubkey), "data.pkg: bad signature"
    entries: list[dict[str, object]] = json.loads(members["data"])["packages"]
    return entries


class HttpError(Exception):
    """nginx answered something other than 200."""


def fetch(conn: http.client.HTTPConnection, path: str) -> bytes:
    """GET path on a kept-alive connection (http.client reopens it when nginx closes it); the
    body of a 200, else HttpError."""
    conn.request("GET", path)
    answer = conn.getresponse()
    body = answer.read()
    if answer.status != 200:
        raise HttpError(f"GET {path}: HTTP {answer.status}")
    return body


@dataclass
class ClientLoop:
    """A pkg-like client fetching meta.conf, data.pkg and every package data.pkg lists, by its
    repopath, over and over until `stop` is set. Every answer must be a 200; data.pkg must be
    signed and list exactly the packages of one published generation (`expected`); every
    package must have the size and sum its catalogue gives. Failures go to `errors`; the loop
    carries on with a new connection. `keepalive`: one connection for everything, else one
    per request."""

    port: int
    pubkey: bytes
    expected: dict[Listing, int]
    current: Path  # <root>/<repo>/current, read to tell which iterations a swap interrupted
    keepalive: bool = True
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    iterations: int = 0  # complete and correct ones
    requests: int = 0
    seen: dict[int, int] = field(default_factory=dict)  # generation -> iterations that saw it
    interrupted: int = 0  # iterations whose catalogue was replaced before they ended
    spans: list[tuple[float, float]] = field(default_factory=list)  # monotonic, per iteration

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop.is_set():
                try:
                    self.iterate(conn)
                except Exception as e:  # recorded, asserted empty by the test
                    self.errors.append(f"iteration {self.iterations + 1}: {e!r}")
                    conn.close()
        finally:
            conn.close()

    def get(self, conn: http.client.HTTPConnection, path: str) -> bytes:
        self.requests += 1
        try:
            return fetch(conn, f"/packages/{REPO}/{path}")
        finally:
            if not self.keepalive:
                conn.close()  # the next request opens a new one

    def iterate(self, conn: http.client.HTTPConnection) -> None:
        start = time.monotonic()
        if (meta := self.get(conn, "meta.conf")) != META_CONF.encode():
            raise AssertionError(f"meta.conf: unexpected {meta[:80]!r}")
        entries = packages_of(self.get(conn, "data.pkg"), self.pubkey)
        listing = frozenset((str(e["name"]), str(e["version"]), str(e["sum"])) for e in entries)
        number = self.expected.get(listing)
        if number is None:
            names = sorted(f"{n}-{v}" for n, v, _ in listing)
            raise AssertionError(f"data.pkg lists no published generation's packages: {names}")
        for entry in entries:
            body = self.get(conn, str(entry["repopath"]))
            if len(body) != entry["pkgsize"] or not sum_matches(str(entry["sum"]), body):
                raise AssertionError(
                    f"g{number} {entry['repopath']}: {len(body)} bytes that do not match the "
                    f"catalogue's size {entry['pkgsize']} and sum"
                )
        self.interrupted += os.readlink(self.current) != f"g{number}"
        self.seen[number] = self.seen.get(number, 0) + 1
        self.spans.append((start, time.monotonic()))
        self.iterations += 1


def served(port: int, paths: list[str]) -> dict[str, bytes]:
    """What nginx serves at each /packages/<repo>/<path>, with a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return {path: fetch(conn, f"/packages/{REPO}/{path}") for path in paths}
    finally:
        conn.close()


def on_disk(base: Path) -> dict[str, object]:
    """Every name under <root>/<repo> with what it holds (bytes, a link target, or a
    directory mark), except the lock file and the catalogue cache, which a failed publish may
    rewrite."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            key = str(path.relative_to(base))
            if key in (".lock", ".catalogue-cache.tsv"):
                continue
            if path.is_symlink():
                out[key] = ("link", os.readlink(path))
            elif path.is_dir():
                out[key] = "dir"
            else:
                out[key] = path.read_bytes()
    return out


class PublishLoadTestCase(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        # Public files, as `jailfarm repo publish` makes them: nginx's workers run as www-data.
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        self.work = Path(tempfile.mkdtemp(prefix="jfpl-"))
        self.work.chmod(0o755)
        self.addCleanup(shutil.rmtree, self.work, True)
        self.root = self.work / "repo"
        self.base = self.root / REPO
        key = self.work / "keys" / "repo.key"
        key.parent.mkdir(mode=0o700)
        key.write_bytes(rsa_key_pem())
        self.signer = KeyFileSigner(key)
        self.pubkey = public_key_pem(key.read_bytes())

    async def serve(self) -> NginxSite:
        """nginx serving self.root at /packages/; stopped by its PID, checked gone, at
        cleanup."""
        site = nginx_site(self.work, self.root, self.work / "logs", free_port())
        (self.work / "logs").mkdir()
        proc = NginxProcess(LocalRunner(), site)
        pid = await proc.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.stopped(proc, pid)))
        return site

    async def stopped(self, proc: NginxProcess, pid: int) -> None:
        await proc.stop()
        self.assertFalse(pid_alive(pid))

    async def publish(self, source: Path, signer: Signer | None = None) -> int:
        gen = await publish(self.root, REPO, source, signer or self.signer, KEEP)
        return gen.number

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.base.glob(".g*.tmp"))


async def until(ready: Callable[[], bool], limit: float) -> bool:
    """Wait without blocking the reactor until ready() or `limit` seconds; ready()."""
    from twisted.internet import reactor

    clock = cast("IReactorTime", reactor)
    deadline = time.monotonic() + limit
    while not ready() and time.monotonic() < deadline:
        await task.deferLater(clock, 0.001, lambda: None)
    return ready()


def overlap(spans: list[tuple[float, float]], during: tuple[float, float]) -> int:
    """How many of the (start, end) spans overlap the span `during`."""
    return sum(1 for a, b in spans if a < during[1] and b > during[0])


def reached(loops: list[ClientLoop], iterations: list[int]) -> bool:
    return all(loop.iterations >= n for loop, n in zip(loops, iterations, strict=True))


class PublishUnderLoadTests(PublishLoadTestCase):
    @deferred_test
    async def test_twenty_publishes_under_client_loops_serve_no_error_and_no_mixed_catalogue(
        self,
    ) -> None:
        made = [make_source(self.work, n) for n in range(1, PUBLISHES + 1)]
        expected = {listing: n for n, (_, listing) in enumerate(made, 1)}
        self.assertEqual(len(expected), PUBLISHES)  # every generation's catalogue differs
        self.assertEqual(await self.publish(made[0][0]), 1)
        site = await self.serve()

        loops = [
            ClientLoop(site.port, self.pubkey, expected, self.base / "current", keepalive=k)
            for k in (True, False)
        ]
        clients = [
            threading.Thread(target=loop.run, name=f"pkg-client-{i}")
            for i, loop in enumerate(loops)
        ]
        for client in clients:
            client.start()
        publishing: list[tuple[float, float]] = []
        try:
            for n, (source, _) in enumerate(made, 1):
                if n > 1:
                    start = time.monotonic()
                    self.assertEqual(await self.publish(source), n)
                    publishing.append((start, time.monotonic()))
                # Two more iterations each: the second starts after this swap and ends before
                # the next publish begins, so every client sees every generation.
                done = [loop.iterations + 2 for loop in loops]
                progressed = await until(functools.partial(reached, loops, done), 20)
                self.assertTrue(progressed, [loop.errors[:3] for loop in loops])
        finally:
            for loop in loops:
                loop.stop.set()
            for client in clients:
                client.join(30)
        self.assertEqual([c for c in clients if c.is_alive()], [])

        for loop in loops:
            stats = (
                f"keepalive={loop.keepalive}: {loop.iterations} iterations, {loop.requests} "
                f"requests, {loop.interrupted} interrupted by a swap"
            )
            self.assertEqual(loop.errors, [], stats)
            self.assertEqual(sorted(loop.seen), list(range(1, PUBLISHES + 1)), stats)
            # Every publish ran while an iteration was under way, and swaps landed mid-way.
            self.assertTrue(all(overlap(loop.spans, p) for p in publishing), stats)
            self.assertGreaterEqual(loop.iterations, 2 * PUBLISHES, stats)
            self.assertGreaterEqual(loop.interrupted, 5, stats)

        # The test's premise: each publish rebuilt, bumped, removed and added packages.
        change = diff(self.root, REPO, PUBLISHES - 1, PUBLISHES)
        self.assertEqual([c.name for c in change.rebuilt], sorted(REBUILT))
        self.assertEqual([c.name for c in change.upgraded], ["tool", "util"])
        self.assertEqual([c.name for c in change.removed], [f"rot{PUBLISHES - 1}"])
        self.assertEqual([c.name for c in change.added], [f"rot{PUBLISHES}"])
        self.assertEqual(change.unchanged, len(UNCHANGED))

        # What is served at the end is g20, byte for byte.
        last = self.base / f"g{PUBLISHES}"
        names = ["meta.conf", "data.pkg", "packagesite.pkg"]
        self.assertEqual(served(site.port, names), {n: (last / n).read_bytes() for n in names})
        kept = [g.number for g in generations(self.root, REPO)]
        self.assertEqual(kept, list(range(PUBLISHES - KEEP + 1, PUBLISHES + 1)))
        self.assertEqual(os.readlink(self.base / "current"), f"g{PUBLISHES}")
        self.assertEqual(self.leftovers(), [])


SIGNERS = {
    # Each reads the digest first, as a real signer does, so the runner's write never fails.
    "fails": "cat >/dev/null; echo 'key store unreachable' >&2; exit 1\n",
    "silent": "cat >/dev/null; exit 0\n",
}


class FailedPublishTests(PublishLoadTestCase):
    def command_signer(self, kind: str) -> CommandSigner:
        script = self.work / f"sign-{kind}.sh"
        script.write_text(SIGNERS[kind])
        return CommandSigner(LocalRunner(), ["/bin/sh", str(script)])

    def broken(self, good: Path, kind: str) -> Path:
        """A copy of the packages directory `good` with one package truncated or garbage."""
        src = self.work / "src" / kind
        shutil.copytree(good, src)
        pkg = src / "All" / "same-a-1.0.pkg"
        blob = pkg.read_bytes()
        pkg.write_bytes(blob[: len(blob) // 2] if kind == "truncated" else os.urandom(len(blob)))
        return src

    def everything_served(self, port: int) -> dict[str, bytes]:
        """meta.conf, data.pkg, packagesite.pkg, the bootstrap, and every package of every
        kept generation's catalogue (a client may hold any of them), over HTTP."""
        paths = ["meta.conf", "meta", "data.pkg", "packagesite.pkg"]
        paths += ["Latest/pkg.pkg", "Latest/pkg.pkg.pubkeysig"]
        for g in generations(self.root, REPO):
            entries = packages_of((g.path / "data.pkg").read_bytes(), self.pubkey)
            paths += [str(e["repopath"]) for e in entries]
            if g.current:  # and the unhashed names, which follow current
                paths += [f"All/{e['name']}-{e['version']}.pkg" for e in entries]
        return served(port, sorted(set(paths)))

    def attempts(self, good: Path) -> Iterator[tuple[str, Path, Signer, str]]:
        """(case, source, signer, what the error must say); every source differs from what is
        served, so each attempt gets as far as adding new files to the pool."""
        yield "fails", good, self.command_signer("fails"), "key store unreachable"
        yield "silent", good, self.command_signer("silent"), "signing command wrote nothing"
        truncated = r"All/same-a-1\.0\.pkg: truncated archive"
        yield "truncated", self.broken(good, "truncated"), self.signer, truncated
        garbage = r"All/same-a-1\.0\.pkg: corrupt zstd data"
        yield "garbage", self.broken(good, "garbage"), self.signer, garbage

    @deferred_test
    async def test_failed_signers_and_broken_packages_leave_the_served_bytes(self) -> None:
        made = [make_source(self.work, n)[0] for n in (1, 2, 3)]
        self.assertEqual([await self.publish(made[0]), await self.publish(made[1])], [1, 2])
        site = await self.serve()
        before = self.everything_served(site.port)
        self.assertGreater(len(before), 20)
        disk = on_disk(self.base)

        for case, source, signer, why in self.attempts(made[2]):
            with self.assertRaises(PublishError, msg=case) as info:
                await self.publish(source, signer)
            self.assertRegex(str(info.exception), f"^{REPO}: publish failed, still serving g2: ")
            self.assertRegex(str(info.exception), why)
            self.assertEqual(self.everything_served(site.port), before, case)
            self.assertEqual(on_disk(self.base), disk, case)  # no new pool file, no temp dir
            self.assertEqual(os.readlink(self.base / "current"), "g2", case)
            self.assertEqual(self.leftovers(), [], case)

        # Nothing is wedged: the next good publish is g3 and is what nginx serves.
        self.assertEqual(await self.publish(made[2]), 3)
        now = served(site.port, ["data.pkg"])["data.pkg"]
        self.assertEqual(now, (self.base / "g3" / "data.pkg").read_bytes())
        self.assertNotEqual(now, before["data.pkg"])
