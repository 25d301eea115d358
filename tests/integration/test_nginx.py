"""The farm's nginx for real: Debian's /usr/sbin/nginx on 127.0.0.1 and a free port, started
by `NginxProcess` with the configuration `render_nginx_conf` writes, and stopped by its PID
(checked gone in /proc). Repository generations are laid out by hand as
poudriere/generations.py makes them; the Buildbot behind /buildbot/ is a real, bare master.

nginx and the master are separate processes, so the plain blocking HTTP client used here
cannot hold up anything the test's reactor is doing.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from jailfarm.cmd import Cmd
from jailfarm.errors import FarmError
from jailfarm.host.zfsfuse import pid_alive
from jailfarm.provision.nginx import NginxProcess, NginxSite
from jailfarm.runner import LocalRunner
from tests.integration.host import nginx_site
from tests.support import deferred_test

BUILDBOT = str(Path(sys.executable).with_name("buildbot"))
REPO = "141amd64-default"

MASTER_CFG = """\
from buildbot.plugins import schedulers, steps, util, worker
c = BuildmasterConfig = {{}}
c["workers"] = [worker.Worker("w", "never-connects")]
f = util.BuildFactory([steps.ShellCommand(command=["true"])])
c["builders"] = [util.BuilderConfig(name="b", workernames=["w"], factory=f)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["b"])]
c["protocols"] = {{"pb": {{"port": "tcp:{pb}:interface=127.0.0.1"}}}}
c["buildbotNetUsageData"] = None
c["buildbotURL"] = "{url}buildbot/"
c["www"] = {{"port": "tcp:{www}:interface=127.0.0.1", "plugins": {{}}}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def get(
    site: NginxSite,
    path: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Response:
    """One GET, the path sent exactly as given, redirects not followed."""
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", site.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        answer = conn.getresponse()
        return Response(
            answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        )
    finally:
        conn.close()


class NginxTestCase(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        # nginx's workers run as www-data: everything they serve must be world-readable.
        self.work = Path(tempfile.mkdtemp(prefix="jfng-"))
        self.work.chmod(0o755)
        self.addCleanup(shutil.rmtree, self.work, True)
        self.repo = self.work / "repo" / REPO
        self.pool = self.repo / ".pool"
        self.pool.mkdir(parents=True)
        self.logs = self.work / "logs" / "bulk"
        self.logs.mkdir(parents=True)
        self.base = nginx_site(self.work, self.work / "repo", self.logs, free_port())

    # ------------------------------------------------------------ repository layout

    def generation(self, n: int, packages: dict[str, bytes]) -> dict[str, str]:
        """`<repo>/g<n>` as poudriere/generations.py lays it out; name-version -> hashed file
        name. Each package is in `.pool` and hard-linked into the generation."""
        g = self.repo / f"g{n}"
        (g / "All" / "Hashed").mkdir(parents=True)
        (g / "Latest").mkdir()
        (g / "meta.conf").write_text(f"version = 2;\n# generation {n}\n")
        for name in ("data.pkg", "packagesite.pkg"):
            (g / name).write_text(f"{name} of generation {n}\n")
        hashed = {}
        for name_version, body in packages.items():
            file = f"{name_version}~{hashlib.sha256(body).hexdigest()[:10]}.pkg"
            (self.pool / file).write_bytes(body)
            os.link(self.pool / file, g / "All" / "Hashed" / file)
            (g / "All" / f"{name_version}.pkg").symlink_to(f"Hashed/{file}")
            hashed[name_version] = file
        return hashed

    def swap(self, n: int) -> None:
        """Point `current` at g<n> with one rename(2), as the publisher does."""
        tmp = self.repo / ".current.tmp"
        tmp.symlink_to(f"g{n}")
        tmp.replace(self.repo / "current")

    # ------------------------------------------------------------ processes

    async def serve(self, **changes: Any) -> NginxProcess:
        """Start nginx for `self.base` with `changes`; it is stopped (and checked gone) at
        cleanup."""
        proc = NginxProcess(LocalRunner(), replace(self.base, **changes))
        pid = await proc.start()
        self.assertEqual(Path(proc.site.pid_file).read_text().strip(), str(pid))
        self.addCleanup(lambda: defer.ensureDeferred(self.stopped(proc, pid)))
        return proc

    async def stopped(self, proc: NginxProcess, pid: int) -> None:
        workers = proc.workers()
        self.assertTrue(workers, "nginx has no worker processes")
        await proc.stop()
        self.assertFalse(pid_alive(pid))
        self.assertEqual([w for w in workers if pid_alive(w)], [])
        self.assertFalse(Path(proc.site.pid_file).exists())

    def htpasswd(self) -> str:
        apr1 = subprocess.run(
            ["openssl", "passwd", "-apr1", "s3cret"], capture_output=True, text=True, check=True
        ).stdout.strip()
        path = self.work / "htpasswd"
        path.write_text(f"ops:{apr1}\nviewer:{{PLAIN}}plain-pw\n")
        return str(path)


class PackagesTests(NginxTestCase):
    @deferred_test
    async def test_current_generation_with_autoindex_and_a_swap_on_the_next_request(
        self,
    ) -> None:
        old = self.generation(1, {"foo-1.0": b"foo 1.0 package"})
        self.swap(1)
        site = (await self.serve()).site
        self.assertEqual(get(site, "/packages").status, 301)
        self.assertEqual(get(site, "/packages").headers["location"], "/packages/")
        index = get(site, "/packages/")
        self.assertEqual((index.status, index.headers["content-type"]), (200, "text/html"))
        self.assertIn(f'<a href="{REPO}/">', index.text)
        self.assertEqual(get(site, f"/packages/{REPO}").headers["location"], f"/packages/{REPO}/")
        listing = get(site, f"/packages/{REPO}/").text
        for name in ("meta.conf", "packagesite.pkg", "data.pkg", "All/", "Latest/"):
            self.assertIn(f'<a href="{name}">', listing)
        self.assertNotIn(".pool", listing)
        self.assertIn('<a href="foo-1.0.pkg">', get(site, f"/packages/{REPO}/All/").text)
        self.assertIn("generation 1", get(site, f"/packages/{REPO}/meta.conf").text)
        # All/<name>.pkg is a symlink into Hashed/: followed.
        self.assertEqual(get(site, f"/packages/{REPO}/All/foo-1.0.pkg").body, b"foo 1.0 package")

        new = self.generation(2, {"foo-1.1": b"foo 1.1 package"})
        self.swap(2)
        self.assertIn("generation 2", get(site, f"/packages/{REPO}/meta.conf").text)
        self.assertEqual(get(site, f"/packages/{REPO}/All/foo-1.1.pkg").status, 200)
        self.assertEqual(get(site, f"/packages/{REPO}/All/foo-1.0.pkg").status, 404)
        # A client holding generation 1's catalogue still gets its package (from .pool) ...
        hashed_old = f"/packages/{REPO}/All/Hashed/{old['foo-1.0']}"
        self.assertEqual(get(site, hashed_old).body, b"foo 1.0 package")
        hashed_new = f"/packages/{REPO}/All/Hashed/{new['foo-1.1']}"
        self.assertEqual(get(site, hashed_new).body, b"foo 1.1 package")
        # ... until no kept generation names it and the pool lets it go.
        shutil.rmtree(self.repo / "g1")
        (self.pool / old["foo-1.0"]).unlink()
        self.assertEqual(get(site, hashed_old).status, 404)

    @deferred_test
    async def test_dot_entries_are_never_served(self) -> None:
        hashed = self.generation(1, {"foo-1.0": b"foo"})["foo-1.0"]
        self.swap(1)
        (self.repo / ".lock").write_text("lock\n")
        (self.repo / ".catalogue-cache.tsv").write_text("secret\n")
        (self.repo / ".g2.tmp").mkdir()
        (self.repo / ".g2.tmp" / "meta.conf").write_text("half-written\n")
        (self.work / "repo" / ".lock").write_text("lock\n")
        (self.repo / "g1" / ".generation.json").write_text('{"hidden": 1}\n')
        site = (await self.serve()).site
        for path in (
            f"/packages/{REPO}/.pool/",
            f"/packages/{REPO}/.pool/{hashed}",
            f"/packages/{REPO}/.lock",
            f"/packages/{REPO}/.catalogue-cache.tsv",
            f"/packages/{REPO}/.g2.tmp/",
            f"/packages/{REPO}/.g2.tmp/meta.conf",
            f"/packages/{REPO}/.generation.json",
            "/packages/.lock",
            f"/packages/{REPO}/All/../../{REPO}/.lock",
            f"/packages/{REPO}/%2elock",
            f"/packages/{REPO}/All/..%2f.lock",
            f"/packages/{REPO}/current/meta.conf",
            f"/packages/{REPO}/g1/meta.conf",
            "/packages/-x/",
        ):
            answer = get(site, path)
            self.assertIn(answer.status, (403, 404), path)
            for secret in ("lock", "secret", "half-written", "hidden"):
                self.assertNotIn(secret, answer.text, path)
        self.assertEqual(get(site, f"/packages/{REPO}/All/Hashed/{hashed}").status, 200)


class LogsAndIndexTests(NginxTestCase):
    @deferred_test
    async def test_bulk_logs_at_data_with_their_data_json(self) -> None:
        build = self.logs / "141amd64-default" / "2026-01-01_00h00m00s"
        (build / "logs" / "errors").mkdir(parents=True)
        (build / ".data.json").write_text('{"buildname": "2026-01-01_00h00m00s"}')
        (build / ".poudriere.ports.built").write_text("devel/foo foo-1.0\n")
        (build / "logs" / "foo-1.0.log").write_text("build started at ...\n")
        (build / "logs" / "errors" / "foo-1.0.log").symlink_to("../foo-1.0.log")
        (self.logs / "141amd64-default" / "latest").symlink_to(build.name)
        (self.logs / ".data.json").write_text('{"masternames": {}}')
        (self.work / "logs" / "secret").write_text("outside the logs\n")
        site = (await self.serve()).site
        self.assertEqual(get(site, "/data").headers["location"], "/data/")
        self.assertIn('<a href="141amd64-default/">', get(site, "/data/").text)
        top = get(site, "/data/.data.json")
        self.assertEqual((top.status, top.headers["content-type"]), (200, "application/json"))
        self.assertEqual(json.loads(top.body), {"masternames": {}})
        latest = get(site, "/data/141amd64-default/latest/.data.json")
        self.assertEqual(json.loads(latest.body)["buildname"], build.name)
        log = get(site, f"/data/141amd64-default/{build.name}/logs/errors/foo-1.0.log")
        self.assertEqual(log.headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(log.text, "build started at ...\n")
        state = get(site, f"/data/141amd64-default/{build.name}/.poudriere.ports.built")
        self.assertEqual(state.text, "devel/foo foo-1.0\n")
        for path in ("/data/../secret", "/data../secret", "/data/..%2fsecret"):
            self.assertNotIn("outside the logs", get(site, path).text, path)

    @deferred_test
    async def test_index_page_links_the_parts(self) -> None:
        page = get((await self.serve()).site, "/")
        self.assertEqual(page.status, 200)
        for link in ('href="buildbot/"', 'href="packages/"', 'href="data/"'):
            self.assertIn(link, page.text)
        self.assertIn("Poudriere's own status pages are FreeBSD-only", page.text)


class ProtectionTests(NginxTestCase):
    @deferred_test
    async def test_basic_auth_guards_the_ui_and_logs_and_packages_when_asked(self) -> None:
        self.generation(1, {"foo-1.0": b"foo"})
        self.swap(1)
        proc = await self.serve(htpasswd=self.htpasswd())
        site = proc.site
        for path in ("/", "/data/", "/buildbot/", "/buildbot/api/v2/builders"):
            answer = get(site, path)
            self.assertEqual(answer.status, 401, path)
            self.assertEqual(answer.headers["www-authenticate"], 'Basic realm="jailfarm"')
        self.assertEqual(get(site, "/data/", basic("ops", "wrong")).status, 401)
        self.assertEqual(get(site, "/data/", basic("ops", "s3cret")).status, 200)  # $apr1$
        self.assertEqual(get(site, "/", basic("viewer", "plain-pw")).status, 200)  # {PLAIN}
        # pkg clients fetch without a login unless protect_packages is set.
        self.assertEqual(get(site, f"/packages/{REPO}/meta.conf").status, 200)
        self.assertEqual(get(site, "/packages/").status, 200)

        pid = proc.running_pid()
        closed = NginxProcess(LocalRunner(), replace(site, protect_packages=True))
        self.assertEqual(await closed.reload(), pid)
        self.assertEqual(get(site, f"/packages/{REPO}/meta.conf").status, 401)
        answer = get(site, f"/packages/{REPO}/meta.conf", basic("ops", "s3cret"))
        self.assertEqual(answer.status, 200)

    @deferred_test
    async def test_tls_with_a_self_signed_certificate(self) -> None:
        cert, key = self.work / "tls.crt", self.work / "tls.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            capture_output=True,
            check=True,
        )
        site = (await self.serve(tls_cert=str(cert), tls_key=str(key))).site
        self.assertTrue(site.url.startswith("https://127.0.0.1:"))
        context = ssl.create_default_context(cafile=str(cert))
        page = get(site, "/", context=context)
        self.assertEqual(page.status, 200)
        self.assertIn("FreeBSD-only", page.text)
        self.assertEqual(get(site, "/packages/", context=context).status, 200)
        # Plain HTTP on the TLS port is refused by nginx.
        self.assertEqual(get(site, "/").status, 400)


class FailureTests(NginxTestCase):
    @deferred_test
    async def test_a_configuration_nginx_rejects_is_reported_with_its_message(self) -> None:
        missing = self.work / "missing.crt"
        proc = NginxProcess(
            LocalRunner(), replace(self.base, tls_cert=str(missing), tls_key=str(missing))
        )
        with self.assertRaises(FarmError) as info:
            await proc.start()
        message = str(info.exception)
        self.assertIn(f"nginx rejects {proc.site.conf_file}.new", message)
        self.assertIn(f'cannot load certificate "{missing}"', message)  # nginx's own words
        self.assertIsNone(proc.running_pid())
        self.assertFalse(Path(proc.site.conf_file).exists())

    @deferred_test
    async def test_a_rejected_reload_keeps_the_running_configuration(self) -> None:
        proc = await self.serve()
        before = Path(proc.site.conf_file).read_text()
        missing = str(self.work / "missing.crt")
        bad = NginxProcess(LocalRunner(), replace(proc.site, tls_cert=missing, tls_key=missing))
        with self.assertRaises(FarmError):
            await bad.reload()
        self.assertEqual(Path(proc.site.conf_file).read_text(), before)
        self.assertEqual(get(proc.site, "/").status, 200)

    @deferred_test
    async def test_a_port_in_use_is_reported(self) -> None:
        proc = await self.serve()
        other = self.work / "other"
        second = NginxProcess(
            LocalRunner(),
            replace(
                proc.site,
                prefix=str(other),
                pid_file=f"{other}/nginx.pid",
                html_root=f"{other}/html",
                error_log=f"{other}/error.log",
                access_log=f"{other}/access.log",
            ),
        )
        with self.assertRaises(FarmError) as info:
            await second.start()
        self.assertIn("Address already in use", str(info.exception))
        self.assertIsNone(second.running_pid())

    @deferred_test
    async def test_starting_twice_is_refused_and_ensure_running_reloads(self) -> None:
        proc = await self.serve()
        pid = proc.running_pid()
        with self.assertRaises(FarmError) as info:
            await proc.start()
        self.assertIn(f"already running (pid {pid}", str(info.exception))
        self.assertEqual(await proc.ensure_running(), pid)


class BuildbotTests(NginxTestCase):
    timeout = 180

    async def master(self, url: str) -> None:
        """A bare Buildbot master (one builder, a worker that never connects) with its UI on
        `self.base.buildbot_port`; stopped by its PID at cleanup."""
        basedir = self.work / "master"
        runner = LocalRunner()
        create = (BUILDBOT, "create-master", "--quiet", "--relocatable", str(basedir))
        (await runner.run(Cmd(create, timeout=120))).check()
        cfg = MASTER_CFG.format(pb=free_port(), www=self.base.buildbot_port, url=url)
        (basedir / "master.cfg").write_text(cfg)
        start = await runner.run(Cmd((BUILDBOT, "start", str(basedir)), timeout=120))
        log = basedir / "twistd.log"
        self.assertTrue(start.ok, log.read_text() if log.exists() else start.out)
        pid = int((basedir / "twistd.pid").read_text())
        self.addCleanup(lambda: defer.ensureDeferred(self.stop_master(pid)))

    async def stop_master(self, pid: int) -> None:
        from twisted.internet import reactor

        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if not pid_alive(pid):
                return
            await task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"the master (pid {pid}) did not stop")

    @deferred_test
    async def test_ui_api_websocket_and_server_sent_events_through_nginx(self) -> None:
        url = f"http://127.0.0.1:{self.base.port}/"
        await self.master(url)
        site = (await self.serve()).site
        self.assertEqual(get(site, "/buildbot").headers["location"], "/buildbot/")
        ui = get(site, "/buildbot/")
        self.assertEqual((ui.status, ui.headers["content-type"]), (200, "text/html"))
        self.assertIn("buildbot", ui.text.lower())
        builders = json.loads(get(site, "/buildbot/api/v2/builders").body)["builders"]
        self.assertEqual([b["name"] for b in builders], ["b"])

        status, reply = websocket_ping(site)
        self.assertEqual(status, "HTTP/1.1 101 Switching Protocols")
        self.assertEqual(json.loads(reply), {"msg": "pong", "code": 200, "_id": 1})

        headers, event = first_event(site)
        self.assertIn("content-type: text/event-stream", headers.lower())
        self.assertTrue(event.startswith("event: handshake\ndata: "), event)

        # With basic auth the upgrade needs the login like everything else.
        protected = NginxProcess(LocalRunner(), replace(site, htpasswd=self.htpasswd()))
        await protected.reload()
        self.assertEqual(websocket_ping(site)[0], "HTTP/1.1 401 Unauthorized")
        status, reply = websocket_ping(site, basic("ops", "s3cret"))
        self.assertEqual(status, "HTTP/1.1 101 Switching Protocols")
        self.assertEqual(json.loads(reply)["msg"], "pong")


def _read_head(sock: socket.socket) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode(), rest


def websocket_ping(site: NginxSite, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """Upgrade /buildbot/ws (RFC 6455), send Buildbot's `ping` command in a masked text frame
    and read one frame back; (status line, reply text or "")."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(
            f"GET /buildbot/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
        )
        head, rest = _read_head(sock)
        status = head.split("\r\n")[0]
        if " 101 " not in status:
            return status, ""
        payload = json.dumps({"cmd": "ping", "_id": 1}).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
            rest += sock.recv(4096)
        assert rest[0] == 0x81, rest  # FIN + text frame, unmasked from the server
        return status, rest[2 : 2 + (rest[1] & 0x7F)].decode()


def first_event(site: NginxSite, wait: float = 5.0) -> tuple[str, str]:
    """Open /buildbot/sse/listen and read until the first event arrives while the stream
    stays open: with proxy_buffering on, nginx would hold it back (measured: nothing within
    3 s). (response head, first event)."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=wait) as sock:
        sock.sendall(b"GET /buildbot/sse/listen HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, body = _read_head(sock)
        chunked = "transfer-encoding: chunked" in head.lower()
        deadline = time.monotonic() + wait
        while b"\n\n" not in _unchunk(body, chunked) and time.monotonic() < deadline:
            body += sock.recv(4096)
        return head, _unchunk(body, chunked).decode().split("\n\n")[0] + "\n"


def _unchunk(body: bytes, chunked: bool) -> bytes:
    """The data of a (chunked) body read so far; an incomplete last chunk as far as it goes."""
    if not chunked:
        return body
    out = b""
    while b"\r\n" in body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2 :]
    return out
