"""`jailfarm repo`: verify, list, roll back, diff and publish signed pkg repositories (adapter).

`verify` needs no farm.toml; the others read `publish.root`, `publish.keep` and `signing` from
it. Output is written for people and build logs. Exit codes as for every jailfarm command: 0
success, 1 the command failed (`jailfarm repo <action>: message` on stderr), 2 bad usage or
config.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailfarm.config import load_farm
from jailfarm.errors import ConfigError, FarmError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Coroutine, Sequence

    from jailfarm.config import FarmConfig
    from jailfarm.poudriere.generations import Change, Generation, RepoDiff
    from jailfarm.poudriere.pkgsign import Signer

DEFAULT_CONFIG = "farm.toml"
_GEN = re.compile(r"g?([1-9][0-9]*)")
_INFO = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
# A first publish of a big repository would list every package; a build log needs a summary.
_MAX_LINES = 200


class UsageError(FarmError, ValueError):
    """A command-line argument is malformed (exit code 2)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `repo` and its actions to the jailfarm command line."""
    repo = sub.add_parser("repo", help="signed pkg repositories: verify | list | rollback | diff")
    actions = repo.add_subparsers(dest="repo_command", required=True)
    verify = actions.add_parser("verify", help="check a repository as the pkg client does")
    verify.add_argument("where", metavar="DIR|URL", help="repository directory or http(s) URL")
    trust = verify.add_mutually_exclusive_group(required=True)
    trust.add_argument("--pubkey", metavar="FILE", help="public key PEM (signature_type pubkey)")
    trust.add_argument("--fingerprints", metavar="DIR", help="directory with trusted/ and revoked/")
    texts = {
        "list": "generations of each repository, * marks current",
        "rollback": "point current at an older generation (default: the one before)",
        "diff": "packages added, removed, upgraded, downgraded between two generations",
        "publish": "publish a packages directory as a new signed generation",
    }
    for name, text in texts.items():
        sp = actions.add_parser(name, help=text)
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="farm.toml to use")
        sp.add_argument("repo", nargs="?" if name == "list" else None, help="repository name")
        if name == "rollback":
            sp.add_argument("generation", nargs="?", help="gN or N (default: before current)")
        if name == "diff":
            sp.add_argument("a", nargs="?", help="older generation (default: before current)")
            sp.add_argument("b", nargs="?", help="newer generation (default: current)")
        if name == "publish":
            sp.add_argument("source", help="packages directory (packages/<mastername>/.latest)")
            sp.add_argument(
                "--info",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="build information recorded in the generation (repeatable)",
            )
            sp.add_argument(
                "--fingerprints", metavar="DIR", help="also check the signer's key is trusted here"
            )


def run(args: argparse.Namespace) -> int:
    """Run `jailfarm repo <action>`; the exit code."""
    action = args.repo_command
    try:
        if action == "verify":
            return _verify(args)
        cfg = load_farm(args.config)
        if action == "publish":
            os.umask(0o022)  # a repository is public: pkg clients fetch it through nginx
            return _react(lambda: _publish(cfg, args), action)
        return HANDLERS[action](cfg, args)
    except (ConfigError, UsageError) as e:
        print(f"jailfarm repo {action}: {e}", file=sys.stderr)
        return 2
    except FarmError as e:
        print(f"jailfarm repo {action}: {e}", file=sys.stderr)
        return 1


def _react(fn: Callable[[], Coroutine[Any, Any, int]], action: str) -> int:
    # A signing command runs through LocalRunner, which needs the reactor running.
    from twisted.internet import defer, task

    code = {"rc": 1}

    async def go() -> None:
        try:
            code["rc"] = await fn()
        except FarmError as e:
            print(f"jailfarm repo {action}: {e}", file=sys.stderr)

    try:
        task.react(lambda _reactor: defer.ensureDeferred(go()))
    except SystemExit:
        pass
    return code["rc"]


def _verify(args: argparse.Namespace) -> int:
    from jailfarm.poudriere.repocheck import DirReader, RepoReader, RepositoryError, Trust, verify
    from jailfarm.poudriere.repofetch import HttpReader

    where: str = args.where
    reader: RepoReader
    if re.match(r"https?://", where):
        reader = HttpReader(where)
    elif Path(where).is_dir():
        reader = DirReader(Path(where))
    else:
        raise UsageError(f"{where} is neither a directory nor an http(s) URL")
    if args.pubkey:
        trust = Trust(_public_key(Path(args.pubkey)))
    else:
        if not Path(args.fingerprints, "trusted").is_dir():
            raise UsageError(f"{args.fingerprints} has no trusted/ directory")
        trust = Trust.from_fingerprints(Path(args.fingerprints))
    try:
        count = verify(reader, trust)
    except RepositoryError as e:
        print(f"jailfarm repo verify: {where}: {e}", file=sys.stderr)
        for problem in e.problems[1:50]:
            print(f"  also: {problem}", file=sys.stderr)
        return 1
    mode = "pubkey" if args.pubkey else "fingerprints"
    print(f"{where}: ok: catalogue signature verified ({mode}), {count} packages match")
    return 0


def _public_key(path: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        pem = path.read_bytes()
        load_pem_public_key(pem)
    except OSError as e:
        raise UsageError(f"cannot read the public key {path}: {e.strerror}") from None
    except ValueError:
        raise UsageError(f"{path} is not a PEM public key (openssl rsa -pubout)") from None
    return pem


def _number(text: str) -> int:
    m = _GEN.fullmatch(text)
    if not m:
        raise UsageError(f"{text!r} is not a generation: expected gN or N, such as g3")
    return int(m[1])


def _line(g: Generation) -> str:
    info = " ".join(f"{k}={v}" for k, v in sorted(g.info.items()))
    mark = "*" if g.current else " "
    return f"  {mark} {g.name:<6} {g.created}  {g.packages:>6} packages  {info}".rstrip()


def _list(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.poudriere.generations import generations, repositories

    root = Path(cfg.publish.root)
    names = [args.repo] if args.repo else repositories(root)
    if not names:
        print(f"no repositories under {root}")
    for name in names:
        print(name)
        for g in reversed(generations(root, name)):
            print(_line(g))
    return 0


def _rollback(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.poudriere.generations import generations, rollback

    root, to = Path(cfg.publish.root), _number(args.generation) if args.generation else None
    before = next((g for g in generations(root, args.repo) if g.current), None)
    now = rollback(root, args.repo, to)
    was = f" (was {before.name})" if before else ""
    print(f"repo {args.repo}: current -> {now.name}{was}")
    return 0


def _versions(c: Change) -> str:
    if c.old is None or c.new is None or c.old == c.new:
        return str(c.new or c.old)
    return f"{c.old} -> {c.new}"


def _diff_lines(repo: str, d: RepoDiff, limit: int | None = None) -> list[str]:
    counts = (
        f"{len(d.added)} added, {len(d.removed)} removed, {len(d.upgraded)} upgraded, "
        f"{len(d.downgraded)} downgraded, {len(d.rebuilt)} rebuilt, {d.unchanged} unchanged"
    )
    lines = [f"repo {repo}: g{d.a} -> g{d.b}: {counts}"]
    for kind in ("added", "removed", "upgraded", "downgraded", "rebuilt"):
        lines += [f"  {kind:<10} {c.name} {_versions(c)}" for c in getattr(d, kind)]
    if limit is not None and len(lines) > limit + 1:
        more = len(lines) - 1 - limit
        lines[limit + 1 :] = [f"  ... and {more} more (jailfarm repo diff {repo} {d.a} {d.b})"]
    return lines


def _diff(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.poudriere.generations import diff, generations

    root = Path(cfg.publish.root)
    if (args.a is None) != (args.b is None):
        raise UsageError("give both generations A and B, or neither (previous vs current)")
    if args.a is None:
        a, b = _default_pair(args.repo, generations(root, args.repo))
    else:
        a, b = _number(args.a), _number(args.b)
    print("\n".join(_diff_lines(args.repo, diff(root, args.repo, a, b))))
    return 0


def _default_pair(repo: str, gens: Sequence[Generation]) -> tuple[int, int]:
    from jailfarm.poudriere.generations import GenerationError

    current = next((g.number for g in gens if g.current), None)
    older = [g.number for g in gens if current is not None and g.number < current]
    if current is None or not older:
        raise GenerationError(f"{repo}: no generation before the current one to compare with")
    return older[-1], current


def _signer(cfg: FarmConfig) -> Signer:
    from jailfarm.poudriere.pkgsign import CommandSigner, KeyFileSigner
    from jailfarm.runner import LocalRunner

    if cfg.signing.command:
        return CommandSigner(LocalRunner(), cfg.signing.command)
    if cfg.signing.key_file:
        return KeyFileSigner(Path(cfg.signing.key_file))
    raise UsageError("farm.toml sets neither signing.key_file nor signing.command")


def _pkg_repo(cfg: FarmConfig) -> Callable[[Path], Coroutine[Any, Any, None]]:
    """`publish.catalogue = "pkg"`: FreeBSD's `pkg repo` writes and signs the catalogues."""
    from jailfarm.poudriere.genbuild import pkg_repo_cmd
    from jailfarm.runner import LocalRunner

    async def write(directory: Path) -> None:
        cmd = pkg_repo_cmd(directory, cfg.signing.key_file, cfg.signing.command)
        (await LocalRunner().run(cmd)).check()

    return write


def _info(pairs: Sequence[str]) -> dict[str, str]:
    info = {}
    for pair in pairs:
        m = _INFO.fullmatch(pair)
        if not m:
            raise UsageError(f"--info {pair!r}: expected KEY=VALUE, such as build=42")
        info[m[1]] = m[2]
    return info


async def _publish(cfg: FarmConfig, args: argparse.Namespace) -> int:
    from jailfarm.poudriere.generations import diff, generations, publish

    root, repo = Path(cfg.publish.root), args.repo
    info, signer = _info(args.info), _signer(cfg)
    fingerprints = Path(args.fingerprints) if args.fingerprints else None
    print(f"repo {repo}: publishing {args.source}", flush=True)
    start = time.monotonic()
    g = await publish(
        root,
        repo,
        Path(args.source),
        signer,
        cfg.publish.keep,
        info,
        fingerprints,
        catalogue=_pkg_repo(cfg) if cfg.publish.catalogue == "pkg" else None,
    )
    took = time.monotonic() - start
    was = f" (was g{g.previous})" if g.previous else ""
    print(f"repo {repo}: published {g.name}: {g.packages} packages in {took:.1f} s")
    print(f"repo {repo}: current -> {g.name}{was}, at {g.path}")
    kept = [x.name for x in generations(root, repo)]
    if g.previous is not None and (g.path.parent / f"g{g.previous}").is_dir():
        print("\n".join(_diff_lines(repo, diff(root, repo, g.previous, g.number), _MAX_LINES)))
    else:
        print(f"repo {repo}: first kept generation, nothing to compare with")
    print(f"repo {repo}: keeping {', '.join(kept)}", flush=True)
    return 0


HANDLERS: dict[str, Callable[[FarmConfig, argparse.Namespace], int]] = {
    "list": _list,
    "rollback": _rollback,
    "diff": _diff,
}
