"""Consumer jails: the pkg repository config that lets a jail install from the farm's signed
repository, and the commands that install it into a jail from the host.

Pure: names, URLs, the rendered config, the file tree and the apply plan. The adapter at the
end (`register`, `run`) reads key files, writes `--out` trees and hands the plan to a `Runner`.
Facts: shared/spec/pkg-repository.md ("Using a real pkg client"; "The signature") and
shared/spec/freebsd-jails-zfs.md (f.113, f.115, f.117, j.18, gotchas 32-33).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jailfarm.cmd import Cmd
from jailfarm.errors import FarmError
from jailfarm.names import NameRule
from jailfarm.poudriere.commands import Target
from jailfarm.poudriere.pkgsign import SigningError, fingerprint_file, public_key_pem

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from jailfarm.cmd import Result
    from jailfarm.config import FarmConfig, PoudriereJail
    from jailfarm.runner import Runner

SignatureType = Literal["pubkey", "fingerprints"]

# pkg-repository.md: "priority: 10 (higher priority wins over the official `FreeBSD`
# repository, priority 0)"; f.113: other jails use both, the farm's repository first.
DEFAULT_PRIORITY = 10
MAX_PRIORITY = 1_000_000
# ${PREFIX}/etc/pkg/repos/ is one of pkg's default REPOS_DIR entries (pkg-repository.md).
REPOS_DIR = "/usr/local/etc/pkg/repos"
SSL_DIR = "/usr/local/etc/ssl"  # the spec's pubkey example: /usr/local/etc/ssl/jailfarm.pub
KEYS_DIR = "/usr/local/etc/pkg/keys"  # the spec's fingerprints example: .../pkg/keys/jailfarm
DIR_MODE, FILE_MODE = 0o755, 0o644
# devfs_ruleset 4 (devfsrules_jail) is the jail default (jails spec b.75): pkg gets /dev/null
# without every host device appearing in the offline tree.
DEVFS_RULESET = 4

# A UCL key and a file name (<name>.conf, <name>.pub): letters, digits, '_'.
REPO_NAME = NameRule(
    "pkg repository",
    re.compile(r"[A-Za-z][A-Za-z0-9_]*"),
    64,
    "a letter, then letters, digits or '_' (a UCL key and a file name)",
)
# Any existing jail, not only the farm's own (names.JAIL budgets vnet interface names).
# A name of digits only would be read as a jid, and '.' separates hierarchical jails.
CONSUMER_JAIL = NameRule(
    "jail",
    re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*"),
    128,
    "a letter or '_', then letters, digits, '_' or '-'; '.' only between such parts",
)
_PATH = re.compile(r"(/[A-Za-z0-9_+@,=-][A-Za-z0-9_.+@,=-]*)+")
# Goes into a UCL double-quoted string: no quote, backslash or '$' (pkg registers ${ABI} as a
# UCL variable), and no '@': credentials do not belong in a world-readable file.
_URL = re.compile(r"[A-Za-z0-9._~:/+,=%-]+")
_ABI = re.compile(r"FreeBSD:([0-9]+):[a-z0-9_]+")
# pkg update may exit 0 although it rejected the catalogue (pkg-repository.md, "Exit-status
# caveat"): these stderr lines are the rejections of its error table.
_REJECTED = (
    "Invalid signature",
    "No trusted",
    "has been revoked",
    "signature verification failure",
)


class ConsumerError(FarmError, ValueError):
    """A consumer config cannot be made or installed; the message says what to change."""


@dataclass(frozen=True)
class ConsumerFile:
    """One file of the consumer's tree: an absolute path inside the consumer's root."""

    path: str
    content: bytes
    mode: int = FILE_MODE


@dataclass(frozen=True)
class ConsumerFiles:
    """What a consumer needs: directories (parents first) and files, the key before the repo
    config (last), so a config never names a key that is not there yet."""

    name: str
    url: str
    dirs: tuple[str, ...]
    files: tuple[ConsumerFile, ...]

    @property
    def conf(self) -> ConsumerFile:
        return self.files[-1]


@dataclass(frozen=True)
class ApplyPlan:
    """Commands installing `ConsumerFiles` into a jail. `abi_query` (running jails) prints the
    jail's ABI, which must equal the repository's; `unmount` runs whenever `mount` ran."""

    abi_query: Cmd | None
    install: tuple[Cmd, ...]
    mount: Cmd | None
    update: Cmd
    unmount: Cmd | None

    def commands(self) -> list[Cmd]:
        steps = (self.abi_query, *self.install, self.mount, self.update, self.unmount)
        return [c for c in steps if c is not None]


def repositories(cfg: FarmConfig) -> dict[str, PoudriereJail]:
    """Every repository the farm publishes, by poudriere MASTERNAME (`<jail>-<tree>-<set>`,
    as the bulk step passes `-z <set>`; `<jail>-<tree>` without a set), with its jail."""
    repos: dict[str, PoudriereJail] = {}
    for jail in cfg.poudriere_jails:
        for tree in cfg.trees:
            repos[Target(jail.name, tree.name).mastername] = jail
            for pset in cfg.sets:
                repos[Target(jail.name, tree.name, pset.name).mastername] = jail
    return repos


def pick_repository(cfg: FarmConfig, repo: str | None) -> tuple[str, PoudriereJail]:
    """The named repository, or the farm's only one; else ConsumerError listing the choices."""
    known = repositories(cfg)
    built = [
        Target(j.name, t.name, s.name).mastername
        for j in cfg.poudriere_jails
        for t in cfg.trees
        for s in cfg.sets
    ]
    if repo is None:
        if len(built) == 1:
            return built[0], known[built[0]]
        raise ConsumerError(
            f"the farm publishes {len(built)} repositories; choose one with "
            f"--repo: {', '.join(built)}"
        )
    if repo not in known:
        raise ConsumerError(
            f"unknown repository {repo!r}; this farm publishes: {', '.join(built)} "
            "(<poudriere jail>-<tree>-<set>)"
        )
    return repo, known[repo]


def consumer_name(repo: str) -> str:
    """The consumer-side repository name for a MASTERNAME: `jailfarm_` + the name with each
    '-' made '_' (REPO_NAME has no '-'), e.g. jailfarm_141amd64_default_default."""
    return check_repo_name("jailfarm_" + repo.replace("-", "_"))


def check_repo_name(name: str) -> str:
    REPO_NAME.check(name)
    if name.lower() == "freebsd":
        raise ConsumerError(
            f"repository name {name!r} is the official repository's: a config under that name "
            "overrides its settings (as `FreeBSD: { enabled: no }` does); choose another --name"
        )
    return name


def check_url(url: str, what: str = "--url") -> str:
    """An http(s):// or file:// URL without a trailing '/', safe inside a UCL string."""
    if url.startswith("pkg+"):
        raise ConsumerError(
            f"{what} {url!r}: pkg+ means an SRV mirror lookup ('pkg+:// implies SRV mirror "
            "type'); give a plain http:// or https:// URL"
        )
    parts = urlsplit(url)
    if (
        not _URL.fullmatch(url)
        or parts.scheme not in ("http", "https", "file")
        or (parts.scheme != "file" and not parts.hostname)
        or parts.query
        or parts.fragment
    ):
        raise ConsumerError(
            f"{what} {url!r} is not usable; expected an http://, https:// or file:// URL "
            "made of letters, digits and '._~:/+,=%-', e.g. http://pkg.example.org"
        )
    return url.rstrip("/")


def base_url(web_url: str) -> str:
    """The farm's web address from `web.url`: scheme, host and port, no path
    (http://localhost:8080/buildbot/ -> http://localhost:8080)."""
    parts = urlsplit(web_url)
    return check_url(f"{parts.scheme}://{parts.netloc}", "web.url")


def repo_url(base: str, repo: str) -> str:
    """Where nginx serves a repository: <base>/packages/<MASTERNAME>. pkg appends
    /meta.conf, /data.pkg ... itself, so there is no trailing '/'."""
    return f"{check_url(base)}/packages/{repo}"


def check_priority(priority: int) -> int:
    if not 0 < priority <= MAX_PRIORITY:
        raise ConsumerError(
            f"priority {priority} is not above the official FreeBSD repository's 0; expected "
            f"1 to {MAX_PRIORITY} (default {DEFAULT_PRIORITY})"
        )
    return priority


def check_root(path: str) -> str:
    """An offline root: absolute, no '.'/'..' components, not '/' (the host itself)."""
    clean = path.rstrip("/")
    if not clean or not _PATH.fullmatch(clean) or len(clean) > 1024:
        raise ConsumerError(
            f"offline root {path!r} is not usable; expected an absolute path other than '/', "
            "made of letters, digits and '_+@,=-.', no '.' or '..' components"
        )
    return clean


def render_repo_conf(
    name: str,
    url: str,
    signature_type: SignatureType,
    key_path: str,
    priority: int = DEFAULT_PRIORITY,
    comment: tuple[str, ...] = (),
) -> str:
    """The repository file `<REPOS_DIR>/<name>.conf` (UCL), keys as pkg-repository.md gives
    them, laid out like /etc/pkg/FreeBSD.conf. `mirror_type: "none"`: the url is fetched as
    is (libpkg add_repo(): anything but "srv" or "http" is NOMIRROR). `key_path`: the pubkey
    file, or the fingerprints directory holding trusted/ and revoked/."""
    check_repo_name(name)
    check_url(url)
    if not _PATH.fullmatch(key_path):
        raise ConsumerError(f"key path {key_path!r} is not an absolute path")
    if any("\n" in line for line in comment):
        raise ConsumerError("a config comment line may not contain a newline")
    key = "pubkey" if signature_type == "pubkey" else "fingerprints"
    lines = [f"# {line}" for line in comment]
    lines += [
        f"{name}: {{",
        f'  url: "{url}",',
        '  mirror_type: "none",',
        f'  signature_type: "{signature_type}",',
        f'  {key}: "{key_path}",',
        "  enabled: yes,",
        f"  priority: {check_priority(priority)}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def public_key(data: bytes, source: str) -> bytes:
    """`data` unchanged if it is an RSA public key PEM, else ConsumerError. Unchanged matters
    in fingerprints mode: the client hashes the CERT bytes exactly as the signer sent them."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY-----" in data:
            raise ConsumerError(
                f"{source} is a private key; give its public key "
                "(openssl rsa -in KEY -pubout), which is all a consumer may see"
            ) from None
        raise ConsumerError(
            f"{source} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConsumerError(f"{source} is not an RSA key; pkg's repository signatures are RSA")
    return data


def _spki(pub: bytes) -> bytes:
    # A pubkey file is a `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) PEM, as
    # `openssl rsa -pubout` writes it (pkg-repository.md error table); PKCS#1 is converted.
    key = serialization.load_pem_public_key(pub)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_bytes(serialization.Encoding.PEM, spki)


def public_key_of(private_pem: bytes, source: str) -> bytes:
    """The public key PEM of the RSA private key in `private_pem` (signing.key_file)."""
    try:
        return public_key_pem(private_pem)
    except SigningError:
        raise ConsumerError(f"{source} is not an RSA key; pkg's signatures are RSA") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConsumerError(
            f"{source} is not an unencrypted PEM private key; pass --pubkey FILE with the "
            "repository's public key instead"
        ) from None


def consumer_files(
    name: str,
    url: str,
    signature_type: SignatureType,
    pub: bytes,
    priority: int = DEFAULT_PRIORITY,
    comment: tuple[str, ...] = (),
) -> ConsumerFiles:
    """The consumer's tree for public key `pub`: pubkey mode gets `<SSL_DIR>/<name>.pub`;
    fingerprints mode gets `<KEYS_DIR>/<name>/trusted/<name>` (sha256 of `pub`, as the client
    computes it from the `.pub` member) and an empty `revoked/`."""
    check_repo_name(name)
    if signature_type == "pubkey":
        key_path = f"{SSL_DIR}/{name}.pub"
        dirs: tuple[str, ...] = (REPOS_DIR, SSL_DIR)
        key = ConsumerFile(key_path, pub)
    else:
        key_path = f"{KEYS_DIR}/{name}"
        dirs = (REPOS_DIR, f"{key_path}/trusted", f"{key_path}/revoked")
        key = ConsumerFile(f"{key_path}/trusted/{name}", fingerprint_file(pub).encode())
    conf = render_repo_conf(name, url, signature_type, key_path, priority, comment)
    files = (key, ConsumerFile(f"{REPOS_DIR}/{name}.conf", conf.encode()))
    return ConsumerFiles(name, url, dirs, files)


def osversion(abi: str) -> int:
    """pkg's own guess for an ABI's OSVERSION, <major>00000 (pkg-repository.md: 'guessing
    the OSVERSION as: 1400000'); passing it keeps that warning away."""
    m = _ABI.fullmatch(abi)
    if not m:
        raise ConsumerError(f"invalid ABI {abi!r}: expected FreeBSD:<major>:<arch>")
    return int(m[1]) * 100_000


def apply_plan(
    jail: str | None, files: ConsumerFiles, offline_root: str | None, abi: str
) -> ApplyPlan:
    """Install `files` into a running jail, or into the tree of a stopped one, then fetch the
    catalogue to prove the config, key and URL work.

    Running jail: files are written inside it with jexec(8), so any symlink in the jail's
    tree resolves inside the jail, never on the host; then `pkg -j` (host pkg, the jail's
    config and keys: spec f.115). FreeBSD's install(1) refuses a non-regular source such as
    /dev/stdin, hence tee(1) with the content on stdin.
    Offline root: nothing runs in it (it may be another release or arch), so files are
    written from the host after refusing symlinks on their paths; then `pkg -c ROOT` with
    `-o ABI=` (spec f.117, j.18, gotcha 32), under a devfs mounted for /dev/null and
    unmounted after."""
    osversion(abi)
    if offline_root is None:
        if jail is None:
            raise ConsumerError("give --jail NAME (a running jail) or --offline-root DIR")
        return _online(CONSUMER_JAIL.check(jail), files)
    if jail is not None:
        CONSUMER_JAIL.check(jail)
    return _offline(check_root(offline_root), files, abi)


def _writes(prefix: tuple[str, ...], root: str, files: ConsumerFiles) -> list[Cmd]:
    owner = ("-o", "root", "-g", "wheel", "-m", f"{DIR_MODE:04o}")
    cmds = [Cmd((*prefix, "install", "-d", *owner, *(root + d for d in files.dirs)))]
    cmds += [Cmd((*prefix, "tee", root + f.path), stdin=f.content) for f in files.files]
    # tee keeps the mode of a file that already exists.
    for mode in sorted({f.mode for f in files.files}):
        paths = [root + f.path for f in files.files if f.mode == mode]
        cmds.append(Cmd((*prefix, "chmod", f"{mode:04o}", *paths)))
    return cmds


def _online(jail: str, files: ConsumerFiles) -> ApplyPlan:
    return ApplyPlan(
        abi_query=Cmd(("pkg", "-j", jail, "config", "ABI")),
        install=tuple(_writes(("jexec", jail), "", files)),
        mount=None,
        update=Cmd(("pkg", "-j", jail, "update", "-f", "-r", files.name)),
        unmount=None,
    )


def _ancestors(paths: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for path in paths:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            seen.setdefault("/" + "/".join(parts[:i]))
    return list(seen)


def _offline(root: str, files: ConsumerFiles, abi: str) -> ApplyPlan:
    targets = _ancestors([*files.dirs, *(f.path for f in files.files), "/dev"])
    guard: list[str] = ["test"]
    for path in targets:
        guard += [*(["-a"] if len(guard) > 1 else []), "!", "-h", root + path]
    dev = f"{root}/dev"
    pkg = ("pkg", "-c", root, "-o", f"ABI={abi}", "-o", f"OSVERSION={osversion(abi)}")
    return ApplyPlan(
        abi_query=None,
        install=(Cmd(tuple(guard)), *_writes((), root, files)),
        mount=Cmd(("mount", "-t", "devfs", "-o", f"ruleset={DEVFS_RULESET}", "devfs", dev)),
        update=Cmd((*pkg, "update", "-f", "-r", files.name)),
        unmount=Cmd(("umount", dev)),
    )


def check_update(result: Result, name: str) -> None:
    """Raise unless `pkg update` loaded the catalogue: a non-zero exit, or exit 0 with one of
    the client's rejection messages on stderr (the spec's exit-status caveat)."""
    result.check()
    rejected = [line for line in result.err.splitlines() if any(m in line for m in _REJECTED)]
    if rejected:
        raise ConsumerError(
            f"pkg rejected repository {name} although it exited 0: {' / '.join(rejected)}"
        )


# --- adapter: argparse, key files, the --out tree, running the plan -----------------------

COMMANDS = ("consumer-config", "consumer")
_HINT = "; or pass --pubkey FILE with the repository's public key"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="farm.toml", help="farm.toml to use")
    p.add_argument("--repo", help="repository (MASTERNAME) to consume; default: the only one")
    p.add_argument("--name", help="consumer-side repository name (default jailfarm_<repo>)")
    p.add_argument(
        "--url",
        help="the farm's web address (default: from web.url); the "
        "repository is URL/packages/<repo>",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=DEFAULT_PRIORITY,
        help=f"repository priority, above the official repository's 0 (default {DEFAULT_PRIORITY})",
    )
    p.add_argument(
        "--pubkey",
        help="the repository's public key PEM (required with "
        "signing.command: exactly what the signing command prints after CERT)",
    )


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private API
    """Add `consumer-config` and `consumer apply` to the `jailfarm` subcommands."""
    cfg = sub.add_parser(
        "consumer-config",
        help="print the pkg repository config for jails that install from this farm",
    )
    _common(cfg)
    cfg.add_argument("--out", help="write the whole tree (config and key) below this directory")
    consumer = sub.add_parser("consumer", help="consumer jails: apply the repository config")
    actions = consumer.add_subparsers(dest="consumer_command", required=True)
    apply = actions.add_parser(
        "apply",
        help="install the config and key into a jail (FreeBSD host) and fetch the catalogue",
    )
    _common(apply)
    apply.add_argument("--jail", help="a running jail (pkg -j)")
    apply.add_argument("--offline-root", help="the root of a stopped jail or template (pkg -c)")
    apply.add_argument("--dry-run", action="store_true", help="print the commands only")


def _read(path: str, what: str, hint: str = "") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConsumerError(f"cannot read {what} {path}: {e.strerror}{hint}") from None


def files_for(cfg: FarmConfig, args: argparse.Namespace) -> tuple[ConsumerFiles, str]:
    """The consumer files `args` ask for, and the repository's ABI."""
    repo, jail = pick_repository(cfg, args.repo)
    name = check_repo_name(args.name) if args.name else consumer_name(repo)
    url = repo_url(args.url if args.url else base_url(cfg.web.url), repo)
    if cfg.signing.command:
        if not args.pubkey:
            raise ConsumerError(
                "signing.command is set (fingerprints mode): give --pubkey FILE, the public "
                "key exactly as the signing command prints it after CERT"
            )
        kind: SignatureType = "fingerprints"
        pub = public_key(_read(args.pubkey, "--pubkey"), args.pubkey)
    elif args.pubkey:
        kind, pub = "pubkey", _spki(public_key(_read(args.pubkey, "--pubkey"), args.pubkey))
    elif cfg.signing.key_file:
        source = f"signing.key_file {cfg.signing.key_file}"
        kind, pub = (
            "pubkey",
            public_key_of(_read(cfg.signing.key_file, "signing.key_file", _HINT), source),
        )
    else:
        raise ConsumerError("the farm has no signing key; set [signing] in farm.toml")
    comment = (
        f"jailfarm farm {cfg.name!r}: repository {repo} ({jail.abi}), {kind} signatures.",
        "Its priority puts it above the official FreeBSD repository (priority 0).",
    )
    return consumer_files(name, url, kind, pub, check_priority(args.priority), comment), jail.abi


def write_tree(out: Path, files: ConsumerFiles) -> list[Path]:
    """Write the consumer's tree below `out`; the paths written."""
    for d in files.dirs:
        (out / d.lstrip("/")).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    written = []
    for f in files.files:
        path = out / f.path.lstrip("/")
        path.write_bytes(f.content)
        path.chmod(f.mode)
        written.append(path)
    return written


def show(cmd: Cmd) -> str:
    """A command for a dry run; stdin shown by size."""
    return f"{cmd}  < {len(cmd.stdin)} bytes" if cmd.stdin is not None else str(cmd)


async def run(
    cfg: FarmConfig,
    args: argparse.Namespace,
    runner: Runner | None = None,
    say: Callable[[str], None] = print,
    host_os: str | None = None,
) -> int:
    """The `consumer-config` and `consumer apply` commands. `host_os` (default sys.platform)
    decides whether apply may run here; `--dry-run` prints the plan anywhere."""
    files, abi = files_for(cfg, args)
    if args.command == "consumer-config":
        if args.out:
            for path in write_tree(Path(args.out), files):
                say(f"wrote {path}")
        else:
            say(files.conf.content.decode().rstrip("\n"))
        return 0
    plan = apply_plan(args.jail, files, args.offline_root, abi)
    if args.dry_run:
        for cmd in plan.commands():
            say(show(cmd))
        return 0
    if not (host_os or sys.platform).startswith("freebsd"):
        raise ConsumerError(
            "consumer apply needs a FreeBSD host (jexec, pkg -j/-c, devfs); run it on the "
            "jail's host, or add --dry-run to see the commands"
        )
    if runner is None:
        from jailfarm.runner import LocalRunner

        runner = LocalRunner()
    await _execute(runner, plan, files, abi)
    target = f"jail {args.jail}" if args.offline_root is None else args.offline_root
    say(f"{target}: repository {files.name} ({files.url}) installed, catalogue fetched")
    return 0


async def _execute(runner: Runner, plan: ApplyPlan, files: ConsumerFiles, abi: str) -> None:
    if plan.abi_query is not None:
        got = (await runner.run(plan.abi_query)).check().out.strip()
        if got != abi:
            raise ConsumerError(
                f"the jail's ABI is {got}, but repository {files.name} holds {abi} packages; "
                "choose the matching --repo"
            )
    for cmd in plan.install:
        (await runner.run(cmd)).check()
    if plan.mount is not None:
        (await runner.run(plan.mount)).check()
    try:
        check_update(await runner.run(plan.update), files.name)
    finally:
        if plan.unmount is not None:
            (await runner.run(plan.unmount)).check()
