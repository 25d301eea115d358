"""nginx in front of the farm: the site description, the nginx.conf renderer (pure) and
`NginxProcess`, which runs nginx on the Linux development host (shell).

What is served (freebsd-jails-zfs.md h.134 and the "nginx config generator" of its design
section; buildbot-4.3.md "Behind nginx at a sub-path"): the signed repositories at /packages/,
poudriere's status pages at /, the bulk logs at /data/ and the Buildbot UI at /buildbot/. On
FreeBSD nginx runs in a jail of its own (h.136) under rc(8); there `render_nginx_conf` writes
/usr/local/etc/nginx/nginx.conf and `NginxProcess`, which reads /proc, is not used.
"""

from __future__ import annotations

import html
import ipaddress
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import endpoints, protocol, task

from jailfarm.cmd import Cmd
from jailfarm.errors import ConfigError, FarmError
from jailfarm.host.zfsfuse import pid_alive

if TYPE_CHECKING:
    from jailfarm.config import FarmConfig
    from jailfarm.runner import Runner

FREEBSD_MIME_TYPES = "/usr/local/etc/nginx/mime.types"
DEBIAN_MIME_TYPES = "/etc/nginx/mime.types"
POUDRIERE_HTML = "/usr/local/share/poudriere/html"  # poudriere's web front end (h.134)
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# A path nginx.conf can carry unquoted: nginx reads whitespace, ';', '{', '}', quotes, '#' and
# backslashes as syntax, and '$' starts a variable.
_PATH = re.compile(r"(/[A-Za-z0-9._+@:,=~-]+)+")
_SERVER_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?|_")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# A repository directory under the publish root; never a dot entry.
_REPO = r"[A-Za-z0-9_][A-Za-z0-9_.+:-]*"


@dataclass(frozen=True, kw_only=True)
class NginxSite:
    """Everything nginx.conf says, as checked values; construction raises `ConfigError`
    listing every bad one. Paths are absolute and made of letters, digits and `._+@:,=~-`;
    addresses are IP addresses. `publish_root` holds `<repo>/current -> g<N>` and
    `<repo>/.pool/`; `logs_root` is laid out as poudriere's logs/bulk; `html_root` is
    poudriere's front end, or (`static_index`) a directory `NginxProcess` writes a small index
    page into. `prefix` is nginx's `-p` directory and holds `nginx.conf`."""

    listen_address: str = "127.0.0.1"
    port: int = 8080
    server_name: str = "localhost"
    publish_root: str
    logs_root: str
    html_root: str
    static_index: bool = False
    buildbot_host: str = "127.0.0.1"
    buildbot_port: int = 8010
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd: str | None = None
    protect_packages: bool = False
    prefix: str
    pid_file: str
    temp_dir: str
    error_log: str
    access_log: str
    mime_types: str
    user: str | None = None
    worker_processes: int | None = None  # None: one per CPU ("auto")

    def __post_init__(self) -> None:
        problems = [*self._path_problems(), *self._value_problems()]
        if problems:
            raise ConfigError("nginx site", problems)

    def _path_problems(self) -> list[str]:
        paths = (
            *("publish_root", "logs_root", "html_root", "prefix", "pid_file", "temp_dir"),
            *("error_log", "access_log", "mime_types", "tls_cert", "tls_key", "htpasswd"),
        )
        problems = []
        for name in paths:
            value = getattr(self, name)
            if value is None and name in ("tls_cert", "tls_key", "htpasswd"):
                continue
            if not isinstance(value, str) or not _plain_path(value):
                problems.append(
                    f"{name}: {value!r} is not a plain absolute path; expected '/' and then "
                    "letters, digits and '._+@:,=~-', without '.' or '..' components"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls_cert, tls_key: expected both (TLS) or neither")
        if self.protect_packages and self.htpasswd is None:
            problems.append("protect_packages: expected an htpasswd file to check logins")
        return problems

    def _value_problems(self) -> list[str]:
        problems = [
            _address_problem(n, getattr(self, n)) for n in ("listen_address", "buildbot_host")
        ]
        for name in ("port", "buildbot_port"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
                problems.append(f"{name}: {value!r} is not a port; expected 1 to 65535")
        if not isinstance(self.server_name, str) or not _SERVER_NAME.fullmatch(self.server_name):
            problems.append(
                f"server_name: {self.server_name!r} is not valid; expected a lowercase host "
                "name such as 'ci.example.org', an IPv4 address or '_'"
            )
        if self.user is not None and not _USER.fullmatch(self.user):
            problems.append(f"user: {self.user!r} is not a user name; expected e.g. 'www'")
        workers = self.worker_processes
        if workers is not None and (isinstance(workers, bool) or not 0 < workers <= 256):
            problems.append(f"worker_processes: {workers!r}; expected 1 to 256, or None")
        return [p for p in problems if p]

    @property
    def conf_file(self) -> str:
        return f"{self.prefix}/nginx.conf"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def url(self) -> str:
        """The site's base URL as seen from this host (loopback for a wildcard listener)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_hostport(_local(self.listen_address), self.port)}/"


def _plain_path(value: str) -> bool:
    return bool(_PATH.fullmatch(value)) and not {".", ".."} & set(value.split("/"))


def _address_problem(name: str, value: object) -> str:
    try:
        if isinstance(value, str):
            ipaddress.ip_address(value)
            return ""
    except ValueError:
        pass
    return f"{name}: {value!r} is not an IP address; expected e.g. '127.0.0.1' or '::1'"


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _local(address: str) -> str:
    """Where this host reaches a listener on `address` (a wildcard means loopback)."""
    parsed = ipaddress.ip_address(address)
    if parsed.is_unspecified:
        return "::1" if parsed.version == 6 else "127.0.0.1"
    return address


def site_from_config(cfg: FarmConfig) -> NginxSite:
    """The site a farm serves. linux-dev keeps nginx's files in `<state_dir>/nginx` (conf, pid,
    logs, temp dirs and the generated index page) and uses Debian's mime.types; freebsd uses
    the nginx port's places and poudriere's own status pages."""
    n = cfg.nginx
    common: dict[str, Any] = {
        "listen_address": n.bind,
        "port": n.port,
        "server_name": n.server_name,
        "publish_root": cfg.publish.root,
        "logs_root": cfg.publish.logs or f"{cfg.state_dir}/logs/bulk",
        "buildbot_host": _local(cfg.web.bind),
        "buildbot_port": cfg.web.port,
        "tls_cert": n.tls_cert,
        "tls_key": n.tls_key,
        "htpasswd": n.htpasswd,
        "protect_packages": n.protect_packages,
    }
    if cfg.platform == "freebsd":
        return NginxSite(
            **common,
            html_root=POUDRIERE_HTML,
            prefix="/usr/local/etc/nginx",
            pid_file="/var/run/nginx.pid",
            temp_dir="/var/tmp/nginx",
            error_log="/var/log/nginx/error.log",
            access_log="/var/log/nginx/access.log",
            mime_types=FREEBSD_MIME_TYPES,
            user="www",
        )
    prefix = f"{cfg.state_dir}/nginx"
    return NginxSite(
        **common,
        html_root=f"{prefix}/html",
        static_index=True,
        prefix=prefix,
        pid_file=f"{prefix}/nginx.pid",
        temp_dir=f"{prefix}/tmp",
        error_log=f"{prefix}/logs/error.log",
        access_log=f"{prefix}/logs/access.log",
        mime_types=DEBIAN_MIME_TYPES,
        user="www-data",  # Debian's own nginx.conf runs its workers as www-data
        worker_processes=2,
    )


# ---------------------------------------------------------------------------- rendering


def render_nginx_conf(site: NginxSite) -> str:
    """A complete nginx.conf for `site`: main context, events and one http server."""
    main = []
    if site.user:
        main.append(f"user {site.user};")
    main += [
        f"worker_processes {site.worker_processes or 'auto'};",
        f"pid {site.pid_file};",
        f"error_log {site.error_log} warn;",
        "events { worker_connections 1024; }",
    ]
    return "\n".join(
        [
            "# Generated by jailfarm (provision/nginx.py) from farm.toml; edits are overwritten.",
            *main,
            "",
            "http {",
            *_indent(_http(site)),
            *_indent(["server {", *_indent(_server(site)), "}"]),
            "}",
            "",
        ]
    )


def _indent(lines: list[str]) -> list[str]:
    return [f"    {line}" if line else "" for line in lines]


def _http(site: NginxSite) -> list[str]:
    # jails spec g.130 (the S4 front end); the temp paths keep nginx off its compiled-in
    # /var/lib/nginx, so a farm's nginx touches nothing of the system's.
    lines = [
        f"include {site.mime_types};",
        "default_type application/octet-stream;",
        "sendfile on;",
        "keepalive_timeout 65;",
        "server_tokens off;",
        f"access_log {site.access_log};",
    ]
    lines += [f"{kind}_temp_path {site.temp_dir}/{kind};" for kind in TEMP_DIRS]
    # No open_file_cache (off by default): `current` is re-resolved on every request, so a
    # generation swap shows on the next one.
    return [*lines, ""]


def _server(site: NginxSite) -> list[str]:
    tls = " ssl" if site.tls else ""
    lines = [
        f"listen {_hostport(site.listen_address, site.port)}{tls};",
        f"server_name {site.server_name};",
        # Relative Location headers: redirects stay right behind port forwards and proxies.
        "absolute_redirect off;",
        "add_header X-Content-Type-Options nosniff always;",
    ]
    if site.tls:  # jails spec g.129: TLS in production
        lines += [
            f"ssl_certificate {site.tls_cert};",
            f"ssl_certificate_key {site.tls_key};",
            "ssl_protocols TLSv1.2 TLSv1.3;",
        ]
    if site.htpasswd:
        # Protected unless a location opts out (only /packages/ does, without
        # protect_packages): jails spec g.129 "no authorization by default", h.135.
        lines += ['auth_basic "jailfarm";', f"auth_basic_user_file {site.htpasswd};"]
    return [*lines, "", *_front_end(site), *_packages(site), *_logs(site), *_buildbot(site)]


def _front_end(site: NginxSite) -> list[str]:
    # jails spec h.134: `location / { root .../poudriere/html/; index index.html index.htm; }`
    return [
        "# poudriere's status pages (the dev host: an index page in their place)",
        "location / {",
        f"    root {site.html_root};",
        "    index index.html index.htm;",
        "}",
    ]


def _packages(site: NginxSite) -> list[str]:
    """jails spec h.134 `location /packages` (the pkg base URL) and design item 16: the
    generation `current` points at, plus `All/Hashed/` from the `.pool` store every kept
    generation refers to, so a client holding the previous catalogue still gets its packages
    after a swap. Dot entries (the .pool listing, .lock, the catalogue cache, .g<N>.tmp) never."""
    root = site.publish_root
    public = [] if site.protect_packages or not site.htpasswd else ["    auth_basic off;"]
    return [
        "# pkg repositories: <repo>/current, and All/Hashed/ from <repo>/.pool; no dot entries",
        "location = /packages { return 301 /packages/; }",
        "location = /packages/ {",
        f"    alias {root}/;",
        "    autoindex on;",
        *public,
        "}",
        "location /packages/ { return 404; }",
        "location ~ ^/packages/(.*/)?\\. { return 404; }",
        f'location ~ "^/packages/(?<jf_repo>{_REPO})/All/Hashed/(?<jf_file>[^/]+\\.pkg)$" {{',
        f"    alias {root}/$jf_repo/.pool/$jf_file;",
        *public,
        "}",
        f'location ~ "^/packages/(?<jf_repo>{_REPO})(?<jf_path>/.*)?$" {{',
        f"    alias {root}/$jf_repo/current$jf_path;",
        "    autoindex on;",
        *public,
        "}",
    ]


def _logs(site: NginxSite) -> list[str]:
    """jails spec h.134 `location /data { alias .../logs/bulk; autoindex on; }`, with both
    ends slashed: `location /data` + an unslashed alias would map /data../x outside the logs.
    The logs and poudriere's `.poudriere.*` files are text; `.data.json` is served (the front
    end reads it) and only hidden from listings."""
    return [
        "# poudriere's bulk logs and .data.json, read by its status pages",
        "location = /data { return 301 /data/; }",
        "location /data/ {",
        f"    alias {site.logs_root}/;",
        "    autoindex on;",
        "    default_type text/plain;",
        "    charset utf-8;",
        "}",
    ]


def _buildbot(site: NginxSite) -> list[str]:
    """buildbot-4.3.md "Behind nginx at a sub-path" and jails spec g.130 / gotcha 39."""
    upstream = f"http://{_hostport(site.buildbot_host, site.buildbot_port)}"
    return [
        "# the Buildbot UI, its server-sent events and its websocket",
        "location = /buildbot { return 301 /buildbot/; }",
        "location /buildbot/ {",
        f"    proxy_pass {upstream}/;",
        "}",
        "location /buildbot/sse/ {",
        "    proxy_buffering off;  # buffering holds the event stream back",
        # Not in the spec: an idle event stream would otherwise be cut after 60 s.
        "    proxy_read_timeout 6000s;",
        f"    proxy_pass {upstream}/sse/;",
        "}",
        "location /buildbot/ws {",
        "    proxy_http_version 1.1;",
        "    proxy_set_header Upgrade $http_upgrade;",
        '    proxy_set_header Connection "upgrade";',
        "    proxy_read_timeout 6000s;",
        f"    proxy_pass {upstream}/ws;",
        "}",
    ]


def render_index_html(site: NginxSite) -> str:
    """The page at / on the Linux development host, where poudriere's front end is absent."""
    name = html.escape(site.server_name)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>jailfarm on {name}</title></head>
<body>
<h1>jailfarm on {name}</h1>
<ul>
<li><a href="buildbot/">Buildbot</a>: builds, their steps and logs</li>
<li><a href="packages/">Packages</a>: the signed pkg repositories</li>
<li><a href="data/">Bulk logs</a>: poudriere-style logs and .data.json of each bulk</li>
</ul>
<p>Poudriere's own status pages are FreeBSD-only; this Linux development host serves this
page in their place.</p>
</body>
</html>
"""


# ---------------------------------------------------------------------------- the process


class _Probe(protocol.Protocol):
    """Connects and hangs up: `answering` needs no more than an accepted connection."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class _ProbeFactory(protocol.Factory):
    protocol = _Probe


@dataclass
class NginxProcess:
    """The farm's nginx on the Linux development host, known by the PID in `site.pid_file`
    (the farm's own file, so never the system's nginx). Every start and reload first runs
    `nginx -t`; a rejected configuration raises `FarmError` with nginx's own message."""

    runner: Runner
    site: NginxSite
    clock: Any = None
    binary: str = "/usr/sbin/nginx"

    def __post_init__(self) -> None:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor

    def _argv(self, *extra: str, conf: str | None = None) -> tuple[str, ...]:
        conf = conf or self.site.conf_file
        return (self.binary, *extra, "-c", conf, "-p", self.site.prefix)

    async def configure(self) -> None:
        """Make the directories nginx writes to and the index page, then install nginx.conf:
        written beside the old one, checked with `nginx -t`, renamed over it. A configuration
        nginx rejects never replaces the one in place."""
        site = self.site
        dirs = (site.prefix, site.temp_dir, *(os.path.dirname(p) for p in _files(site)))
        for d in (*dirs, *((site.html_root,) if site.static_index else ())):
            Path(d).mkdir(parents=True, exist_ok=True)
        if site.static_index:
            _write(Path(site.html_root) / "index.html", render_index_html(site))
        candidate = Path(f"{site.conf_file}.new")
        _write(candidate, render_nginx_conf(site))
        try:
            await self.check(str(candidate))
        except FarmError:
            candidate.unlink(missing_ok=True)
            raise
        candidate.rename(site.conf_file)

    async def check(self, conf: str | None = None) -> None:
        """`nginx -t` on `conf` (default: the installed nginx.conf); `FarmError` carrying
        nginx's message if it is rejected."""
        result = await self.runner.run(Cmd(self._argv("-t", "-q", conf=conf), timeout=60))
        if not result.ok:
            raise FarmError(
                f"nginx rejects {conf or self.site.conf_file}: {(result.err or result.out).strip()}"
            )

    def running_pid(self) -> int | None:
        """The PID in the pid file, if that process is alive and is nginx."""
        try:
            pid = int(Path(self.site.pid_file).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and _comm(pid) == "nginx" else None

    async def start(self, timeout: float = 15.0) -> int:
        """Write, check and start nginx, wait until it accepts connections; its PID."""
        if (pid := self.running_pid()) is not None:
            raise FarmError(f"nginx is already running (pid {pid}, {self.site.pid_file})")
        await self.configure()
        result = await self.runner.run(Cmd(self._argv(), timeout=60))
        if not result.ok:
            raise FarmError(f"nginx did not start: {(result.err or result.out).strip()}")
        for _ in range(int(timeout / 0.05)):
            pid = self.running_pid()
            if pid is not None and await self.answering():
                return pid
            await task.deferLater(self.clock, 0.05, lambda: None)
        raise FarmError(
            f"nginx started but does not answer on {self.site.url} within {timeout}s; "
            f"see {self.site.error_log}"
        )

    async def ensure_running(self) -> int:
        """Start nginx, or reload the one running with the configuration of `site`."""
        if self.running_pid() is None:
            return await self.start()
        return await self.reload()

    async def answering(self) -> bool:
        """Whether nginx accepts a TCP connection on its address and port."""
        address = _local(self.site.listen_address)
        kind = endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
        endpoint = kind(self.clock, address, self.site.port, timeout=2)
        try:
            await endpoint.connect(_ProbeFactory())
        except Exception:  # refused, unreachable or timed out: not answering
            return False
        return True

    def workers(self) -> set[int]:
        """The worker processes of the running nginx that accept connections (not those
        finishing old ones after a reload); empty if it is not running."""
        pid = self.running_pid()
        if pid is None:
            return set()
        # nginx retitles a worker told to stop (ngx_worker_process_cycle) just before it
        # closes its listening sockets.
        return {c for c in _children(pid) if _cmdline(c) == "nginx: worker process"}

    async def reload(self, timeout: float = 15.0) -> int:
        """Write and check the configuration, then SIGHUP the master; returns once only workers
        started with the new configuration accept connections (old ones may still finish
        theirs, a websocket for hours)."""
        pid = self.running_pid()
        if pid is None:
            raise FarmError(f"nginx is not running (no live pid in {self.site.pid_file})")
        await self.configure()
        before = _children(pid)
        os.kill(pid, signal.SIGHUP)
        for _ in range(int(timeout / 0.05)):
            accepting = self.workers()
            if accepting and not accepting & before:
                return pid
            await task.deferLater(self.clock, 0.05, lambda: None)
        raise FarmError(f"nginx (pid {pid}) did not reload within {timeout}s; see its error log")

    async def stop(self, timeout: float = 15.0) -> bool:
        """Stop nginx by the PID in its pid file (SIGTERM, nginx's fast shutdown) and wait until
        it is gone; False if it was not running."""
        pid = self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        for _ in range(int(timeout / 0.05)):
            if not pid_alive(pid):
                return True
            await task.deferLater(self.clock, 0.05, lambda: None)
        raise FarmError(f"nginx (pid {pid}) did not stop within {timeout}s")


def _files(site: NginxSite) -> tuple[str, ...]:
    return (site.pid_file, site.error_log, site.access_log)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.rename(path)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().strip()
    except OSError:
        return ""


def _children(pid: int) -> set[int]:
    """Live children of `pid` (nginx's workers), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found
