"""Repository generations in tmp_path: publish from real packages (pkgfile.write_package), list,
roll back, diff with pkg's version order, prune with the pool, failed signing leaves what is
served untouched, concurrent publishes take turns, the signed bootstrap package."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jailfarm.errors import InvalidName
from jailfarm.poudriere.genbuild import pkg_repo_cmd
from jailfarm.poudriere.generations import (
    Change,
    GenerationError,
    PublishError,
    diff,
    generations,
    prune,
    publish,
    rollback,
)
from jailfarm.poudriere.pkgfile import PackageMeta, write_package
from jailfarm.poudriere.pkgrepo import unpack_catalogue, write_repository
from jailfarm.poudriere.pkgsign import (
    CommandSigner,
    KeyFileSigner,
    fingerprint_file,
    parse_signing_command_output,
    public_key_pem,
    verify_rsa,
)
from jailfarm.poudriere.pkgversion import version_cmp
from jailfarm.poudriere.repocheck import check_repository, verify_repository
from jailfarm.runner import FakeRunner
from tests.support import resolve, rsa_key_pem
from tests.unit.test_pkgrepo import FakeSigningCommand, rewrite_cache

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jailfarm.poudriere.generations import Generation
    from jailfarm.poudriere.pkgsign import Signature, Signer

MTIME = 1_700_000_000


@pytest.fixture(scope="module")
def key() -> bytes:
    return rsa_key_pem()


@pytest.fixture
def signer(tmp_path: Path, key: bytes) -> KeyFileSigner:
    path = tmp_path / "keys" / "repo.key"
    path.parent.mkdir()
    path.write_bytes(key)
    return KeyFileSigner(path)


def add(src: Path, name: str, version: str, text: bytes = b"") -> Path:
    """Write the package name-version into src/All (replacing other versions of name)."""
    meta = PackageMeta(
        name=name,
        origin=f"misc/{name}",
        version=version,
        comment=f"The {name} package",
        desc=f"{name} for tests.",
        maintainer="test@example.org",
        www="https://example.org/",
        abi="FreeBSD:14:amd64",
    )
    stage = src.parent / f"stage-{name}"
    (stage / "usr/local/share").mkdir(parents=True, exist_ok=True)
    payload = stage / "usr/local/share" / name
    payload.write_bytes(text or f"{name} {version}\n".encode())
    os.utime(payload, (MTIME, MTIME))
    (src / "All").mkdir(parents=True, exist_ok=True)
    for old in (src / "All").glob(f"{name}-*.pkg"):
        old.unlink()
    return write_package(src / "All" / meta.filename, meta, stage, [f"share/{name}"]).path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A poudriere-like packages directory: packages/<mastername>/.latest/All/*.pkg."""
    latest = tmp_path / "packages" / "141amd64-default" / ".latest"
    add(latest, "hello", "1.0")
    add(latest, "world", "2.0")
    add(latest, "pkg", "1.21.3")
    return latest


def go(root: Path, src: Path, signer: Signer, keep: int = 3, **info: str) -> Generation:
    return resolve(publish(root, "main", src, signer, keep, info))


def snapshot(base: Path) -> dict[str, object]:
    """Everything a client can see through `current`, plus the pool, byte for byte."""
    seen: dict[str, object] = {"current": os.readlink(base / "current")}
    for top in (base / "current", base / ".pool"):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                path = Path(dirpath, name)
                key = str(path.relative_to(base))
                if path.is_symlink():
                    seen[key] = ("link", os.readlink(path))
                elif path.is_file():
                    seen[key] = path.read_bytes()
    return seen


def catalogue(gen: Path) -> list[dict[str, object]]:
    data = unpack_catalogue((gen / "data.pkg").read_bytes())["data"]
    packages: list[dict[str, object]] = json.loads(data)["packages"]
    return packages


class PublishTests:
    def test_three_publishes_make_three_verified_generations(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner, key: bytes
    ) -> None:
        root = tmp_path / "repo"
        g1 = go(root, src, signer, build="1")
        add(src, "hello", "1.1")
        g2 = go(root, src, signer, build="2")
        (src / "All" / "world-2.0.pkg").unlink()
        g3 = go(root, src, signer, build="3")
        assert [(g.number, g.packages, g.previous) for g in (g1, g2, g3)] == [
            (1, 3, None),
            (2, 3, 1),
            (3, 2, 2),
        ]
        listed = generations(root, "main")
        assert [(g.name, g.current, dict(g.info)) for g in listed] == [
            ("g1", False, {"build": "1"}),
            ("g2", False, {"build": "2"}),
            ("g3", True, {"build": "3"}),
        ]
        assert listed[0].created.endswith("Z")
        assert os.readlink(root / "main" / "current") == "g3"
        for g in listed:
            verify_repository(g.path, pubkey_pem=public_key_pem(key))
        assert not list((root / "main").glob(".g*.tmp"))

    def test_layout_is_pkg_repo_hash_symlink_with_hard_links_into_the_pool(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        g = go(tmp_path / "repo", src, signer)
        entries = {e["name"]: e for e in catalogue(g.path)}
        hello = entries["hello"]
        path = str(hello["path"])
        assert path == hello["repopath"]
        assert path.startswith("All/Hashed/hello-1.0~2$") and path.endswith(".pkg")
        assert len(Path(path).stem.split("~")[1]) == 10  # pkg's %z: 10 characters of the sum
        assert os.readlink(g.path / "All" / "hello-1.0.pkg") == path.removeprefix("All/")
        pooled = g.path.parent / ".pool" / Path(path).name
        assert os.stat(pooled).st_ino == os.stat(g.path / path).st_ino
        assert (g.path / "meta.conf").read_text() == (g.path / "meta").read_text()
        meta = json.loads((g.path / ".generation.json").read_text())
        assert (meta["number"], meta["packages"], meta["signature_type"]) == (1, 3, "pubkey")

    def test_a_republish_reuses_unchanged_links_and_cache_entries(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        root = tmp_path / "repo"
        g1 = go(root, src, signer)
        cache = root / "main" / ".catalogue-cache.tsv"
        # Plant a marker in the cached entry of world: a republish that unpacked world again
        # would not show it.
        rewrite_cache(cache, "The world package", "Cached world")
        add(src, "hello", "1.1")
        g2 = go(root, src, signer)
        comments = {e["name"]: e["comment"] for e in catalogue(g2.path)}
        assert comments == {
            "hello": "The hello package",
            "pkg": "The pkg package",
            "world": "Cached world",
        }
        # The unchanged All/world-2.0.pkg symlink is the same inode: linked, not recreated.
        same = [os.lstat(g / "All" / "world-2.0.pkg").st_ino for g in (g1.path, g2.path)]
        assert same[0] == same[1]
        assert os.readlink(g2.path / "All" / "world-2.0.pkg").startswith("Hashed/world-2.0~")
        assert not (g2.path / "All" / "hello-1.0.pkg").exists()

    def test_bootstrap_pkg_is_linked_and_its_signature_verifies_with_openssl(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner, key: bytes
    ) -> None:
        g = go(tmp_path / "repo", src, signer)
        latest = g.path / "Latest" / "pkg.pkg"
        assert os.readlink(latest) == "../All/pkg-1.21.3.pkg"
        assert latest.read_bytes() == (src / "All" / "pkg-1.21.3.pkg").read_bytes()
        # What poudriere does: echo -n $(sha256 -q pkg.pkg) | openssl dgst -sha256 -sign key
        (tmp_path / "msg").write_text(hashlib.sha256(latest.read_bytes()).hexdigest())
        (tmp_path / "k.pub").write_bytes(public_key_pem(key))
        argv = ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "k.pub"), "-signature"]
        argv += [str(latest) + ".pubkeysig", str(tmp_path / "msg")]
        done = subprocess.run(argv, capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
        assert not (g.path / "Latest" / "pkg.pkg.sig").exists()

    def test_no_bootstrap_without_a_pkg_package(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        (src / "All" / "pkg-1.21.3.pkg").unlink()
        g = go(tmp_path / "repo", src, signer)
        assert not (g.path / "Latest").exists()

    def test_signing_command_publishes_a_sig_and_checks_fingerprints(
        self, tmp_path: Path, src: Path, key: bytes, signer: KeyFileSigner
    ) -> None:
        runner = FakeSigningCommand(key)
        command = CommandSigner(runner, ["sign"])
        g = resolve(publish(tmp_path / "repo", "main", src, command, 3))
        assert len(runner.calls) == 3  # data, packagesite, Latest/pkg.pkg
        sig, cert = parse_signing_command_output((g.path / "Latest/pkg.pkg.sig").read_bytes())
        assert cert == public_key_pem(key)
        assert verify_rsa((g.path / "Latest/pkg.pkg").read_bytes(), sig, cert, strip_nul=False)
        keys = tmp_path / "fingerprints"
        (keys / "trusted").mkdir(parents=True)
        (keys / "trusted" / "repo").write_text(fingerprint_file(cert))
        verify_repository(g.path, fingerprints_dir=keys)
        # A fingerprints directory that does not trust the signer's key stops the publish.
        (keys / "trusted" / "repo").write_text(fingerprint_file(b"another key"))
        with pytest.raises(PublishError, match="No trusted public keys found"):
            resolve(publish(tmp_path / "repo", "main", src, command, 3, None, keys))

    def test_refuses_bad_names_empty_sources_and_duplicates(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        for bad in ("../x", ".hidden", "-x", "a/b", "x" * 65, ""):
            with pytest.raises(InvalidName):
                resolve(publish(tmp_path / "repo", bad, src, signer, 3))
        (tmp_path / "empty").mkdir()
        with pytest.raises(PublishError, match=r"no packages under .*empty"):
            go(tmp_path / "repo", tmp_path / "empty", signer)
        copy = src / "All" / "sub"
        copy.mkdir()
        (copy / "hello-1.0.pkg").write_bytes((src / "All" / "hello-1.0.pkg").read_bytes())
        with pytest.raises(PublishError, match=r"are both hello-1\.0"):
            go(tmp_path / "repo", src, signer)
        assert not (tmp_path / "repo" / "main" / "current").exists()

    def test_a_broken_package_is_named_and_nothing_changes(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        root = tmp_path / "repo"
        go(root, src, signer)
        before = snapshot(root / "main")
        add(src, "hello", "1.1")
        broken = src / "All" / "hello-1.1.pkg"
        broken.write_bytes(broken.read_bytes()[:-8])
        with pytest.raises(PublishError, match=r"still serving g1: .*hello-1\.1\.pkg: truncated"):
            go(root, src, signer)
        assert snapshot(root / "main") == before


class FakeSigner:
    """A signer that answers every catalogue with the same signature (`answer`)."""

    def __init__(self, answer: Signature) -> None:
        self.answer = answer

    async def sign(self, catalogue: bytes) -> Signature:
        return self.answer


class FailedSigningTests:
    @pytest.fixture
    def served(self, tmp_path: Path, src: Path, signer: KeyFileSigner) -> Path:
        go(tmp_path / "repo", src, signer)
        add(src, "hello", "1.1")
        return tmp_path / "repo" / "main"

    @pytest.mark.parametrize(
        ("runner", "why"),
        [
            (FakeRunner().expect("sign", rc=1, stderr="key store unreachable"), "unreachable"),
            (FakeRunner().expect("sign", rc=0, stdout=b""), "signing command wrote nothing"),
            (
                FakeRunner().expect("sign", stdout=b"SIGNATURE\nxx\nCERT\npem\n"),
                "without an END",
            ),
        ],
        ids=["command-fails", "silent", "truncated"],
    )
    def test_signing_command_failure_leaves_current_byte_identical(
        self, served: Path, src: Path, runner: FakeRunner, why: str
    ) -> None:
        before = snapshot(served)
        with pytest.raises(PublishError, match=f"still serving g1: .*{why}"):
            resolve(publish(served.parent, "main", src, CommandSigner(runner, ["sign"]), 3))
        assert snapshot(served) == before
        assert sorted(p.name for p in served.iterdir()) == [
            ".catalogue-cache.tsv",
            ".lock",
            ".pool",
            "current",
            "g1",
        ]

    @pytest.mark.parametrize("answer", [b"", b"\0" * 257, (b"sig", b"not a key")])
    def test_a_signature_that_does_not_verify_is_never_served(
        self, served: Path, src: Path, answer: Signature, key: bytes
    ) -> None:
        before = snapshot(served)
        bad = FakeSigner(answer)
        with pytest.raises(PublishError, match=r"data\.pkg: signature verification failure"):
            resolve(publish(served.parent, "main", src, bad, 3, pubkey=public_key_pem(key)))
        assert snapshot(served) == before
        assert not list(served.glob(".g*"))


class PkgRepoCatalogueTests:
    """`publish.catalogue = "pkg"`: FreeBSD's `pkg repo` writes the catalogues of the laid-out
    generation (poudriere.md §5.2). There is no pkg here, so a writer with pkg repo's walk
    (files under the directory, symlinks and dot directories skipped) stands in for it; the
    generation is verified the same way whoever wrote it."""

    def test_the_argv_is_pkg_repos(self) -> None:
        d = Path("/r/main/.g3.tmp")
        assert pkg_repo_cmd(d, "/k/repo.key").argv == ("pkg", "repo", str(d), "/k/repo.key")
        signing = pkg_repo_cmd(d, None, ["ssh", "signer", "sign"]).argv
        assert signing == ("pkg", "repo", str(d), "signing_command:", "ssh", "signer", "sign")
        with pytest.raises(ValueError, match="exactly one"):
            pkg_repo_cmd(d, "/k/repo.key", ["sign"])

    def test_its_catalogue_is_verified_and_published(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        async def pkg_repo(directory: Path) -> None:
            await write_repository(directory, signer=signer)

        g = resolve(publish(tmp_path / "repo", "main", src, signer, 3, catalogue=pkg_repo))
        paths = sorted(str(p["repopath"]) for p in catalogue(g.path))
        assert len(paths) == 3 and all(p.startswith("All/Hashed/") for p in paths)
        verify_repository(g.path, signer.public_key())

    def test_a_catalogue_signed_with_another_key_is_never_served(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner, key: bytes
    ) -> None:
        go(tmp_path / "repo", src, signer)
        served = tmp_path / "repo" / "main"
        before = snapshot(served)
        other = tmp_path / "other.key"
        other.write_bytes(rsa_key_pem())

        async def wrong_key(directory: Path) -> None:
            await write_repository(directory, signer=KeyFileSigner(other))

        add(src, "hello", "1.1")
        with pytest.raises(PublishError, match="signature verification failure"):
            resolve(publish(served.parent, "main", src, signer, 3, catalogue=wrong_key))
        assert snapshot(served) == before and not list(served.glob(".g*"))


class RollbackTests:
    @pytest.fixture
    def three(self, tmp_path: Path, src: Path, signer: KeyFileSigner) -> Path:
        root = tmp_path / "repo"
        for version in ("1.0", "1.1", "1.2"):
            add(src, "hello", version)
            go(root, src, signer)
        return root

    def test_default_is_the_one_before_current(self, three: Path) -> None:
        assert rollback(three, "main").name == "g2"
        assert os.readlink(three / "main" / "current") == "g2"
        assert rollback(three, "main").name == "g1"
        with pytest.raises(GenerationError, match="nothing to roll back to: g1 is the oldest"):
            rollback(three, "main")
        assert rollback(three, "main", 3).current

    def test_unknown_or_current_generation_is_refused(self, three: Path) -> None:
        with pytest.raises(GenerationError, match=r"unknown generation g7 .*g1, g2, g3"):
            rollback(three, "main", 7)
        with pytest.raises(GenerationError, match="g3 is already the current generation"):
            rollback(three, "main", 3)
        with pytest.raises(GenerationError, match="no repository 'other'"):
            rollback(three, "other")

    def test_publish_after_rollback_numbers_on_and_prunes_around_current(
        self, three: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        rollback(three, "main", 1)
        assert prune(three, "main", 1) == [2]  # g3 is newest, g1 current: both stay
        assert [g.name for g in generations(three, "main")] == ["g1", "g3"]
        g = go(three, src, signer, keep=2)
        assert (g.name, g.previous) == ("g4", 1)
        assert [g.name for g in generations(three, "main")] == ["g3", "g4"]


class PruneTests:
    def test_keeps_n_generations_and_only_the_pool_files_they_use(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        root = tmp_path / "repo"
        for version in ("1.0", "1.1", "1.2", "1.3"):
            add(src, "hello", version)
            go(root, src, signer, keep=2)
        base = root / "main"
        assert [g.name for g in generations(root, "main")] == ["g3", "g4"]
        used = {p.name for g in ("g3", "g4") for p in (base / g / "All" / "Hashed").iterdir()}
        assert {p.name for p in (base / ".pool").iterdir()} == used
        assert sorted(n.split("~")[0] for n in used if n.startswith("hello")) == [
            "hello-1.2",
            "hello-1.3",
        ]
        for g in ("g3", "g4"):
            assert (
                check_repository(base / g, pubkey_pem=public_key_pem(signer.path.read_bytes()))
                == []
            )


class ConcurrencyTests:
    def test_a_publish_waits_for_the_lock(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        base = tmp_path / "repo" / "main"
        base.mkdir(parents=True)
        done: list[Generation] = []
        with open(base / ".lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            worker = threading.Thread(
                target=lambda: done.append(go(tmp_path / "repo", src, signer))
            )
            worker.start()
            time.sleep(0.5)
            assert worker.is_alive() and not done
            assert not list(base.glob("*g1*"))
        worker.join(30)
        assert [g.name for g in done] == ["g1"]

    def test_concurrent_publishes_each_get_a_complete_generation(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner, key: bytes
    ) -> None:
        other = tmp_path / "other"
        add(other, "solo", "3.0")
        results: list[Generation] = []
        errors: list[BaseException] = []

        def run(source: Path) -> None:
            try:
                results.append(go(tmp_path / "repo", source, signer))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(s,)) for s in (src, other, src, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert sorted(g.number for g in results) == [1, 2, 3, 4]
        gens = {g.number: g for g in generations(tmp_path / "repo", "main")}
        assert sorted(gens) == [2, 3, 4]
        for g in gens.values():
            verify_repository(g.path, pubkey_pem=public_key_pem(key))
            assert {str(e["name"]) for e in catalogue(g.path)} in (
                {"hello", "world", "pkg"},
                {"solo"},
            )


class DiffTests:
    def test_added_removed_upgraded_downgraded_rebuilt(
        self, tmp_path: Path, src: Path, signer: KeyFileSigner
    ) -> None:
        root = tmp_path / "repo"
        add(src, "epoch", "2.0")
        add(src, "rev", "1.0_1")
        add(src, "dotted", "1.9")
        add(src, "alpha", "1.0")
        go(root, src, signer)
        (src / "All" / "world-2.0.pkg").unlink()
        add(src, "new", "0.1")
        add(src, "epoch", "1.0,1")  # PORTEPOCH wins over the version
        add(src, "rev", "1.0_2")  # PORTREVISION
        add(src, "dotted", "1.10")  # numeric, not lexical
        add(src, "alpha", "1.0.a")  # 1.0.a < 1.0: a downgrade
        add(src, "hello", "1.0", b"rebuilt with other bytes\n")
        go(root, src, signer)
        d = diff(root, "main", 1, 2)
        assert d.added == (Change("new", None, "0.1"),)
        assert d.removed == (Change("world", "2.0", None),)
        assert d.upgraded == (
            Change("dotted", "1.9", "1.10"),
            Change("epoch", "2.0", "1.0,1"),
            Change("rev", "1.0_1", "1.0_2"),
        )
        assert d.downgraded == (Change("alpha", "1.0", "1.0.a"),)
        assert d.rebuilt == (Change("hello", "1.0", "1.0"),)
        assert d.unchanged == 1  # pkg
        back = diff(root, "main", 2, 1)
        assert [c.name for c in back.downgraded] == ["dotted", "epoch", "rev"]
        with pytest.raises(GenerationError, match="unknown generation g9"):
            diff(root, "main", 1, 9)


class VersionOrderTests:
    """pkg_version_cmp() (libpkg/pkg_version.c): the examples its comments give, and
    `pkg version -t` cases from pkg's tests/frontend/version.sh."""

    @pytest.mark.parametrize(
        ("older", "newer"),
        [
            ("1", "2"),
            ("2", "1,1"),
            ("1.0", "1.0_1"),
            ("1.0_9", "1.0_10"),
            ("1.0_2", "1.1"),
            ("1.9", "1.10"),
            ("2.0", "1.0,1"),
            ("1.0_5", "1.0,1"),
            ("10", "10a"),
            ("10a", "10b"),
            ("a", "0"),
            ("10.a", "10"),
            ("10alpha", "10"),
            ("pl11", "alpha3"),
            ("alpha3", "0.1beta2"),
            ("0.1.b2", "0.1"),
            ("1.0beta1", "1.0pre1"),
            ("1.0pre1", "1.0rc1"),
            ("1.0rc1", "1.0"),
            ("2.*", "2pl1"),
            ("2pl1", "2alpha3"),
            ("2alpha3", "2.9f7"),
            ("2.9f7", "3.*"),
            ("1.0.1:2003.09.16", "1.0:2003.09.16"),
        ],
    )
    def test_order(self, older: str, newer: str) -> None:
        assert version_cmp(older, newer) == -1
        assert version_cmp(newer, older) == 1

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ("10", "10.0"),
            ("10", "10.0.0"),
            ("10alpha", "10.a"),
            ("0.1beta2", "0.1.b2"),
            ("1.d2", "1.dev2"),
            ("1.dev2", "1.Development2"),
            ("1.0:2003.09.16", "1.0.2003.09.16"),
            ("10..1", "10.1"),
            ("10a1b2", "10a1.b2"),
            ("2", "2"),
        ],
    )
    def test_equal(self, a: str, b: str) -> None:
        assert version_cmp(a, b) == 0


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() == before


def test_what_becomes_current_is_always_newer_for_if_modified_since(
    tmp_path: Path, src: Path, signer: KeyFileSigner
) -> None:
    """pkg updates with If-Modified-Since (the served data.pkg's Last-Modified, in seconds) and
    keeps its catalogue on a 304: a publish in the same second as the last one, and a rollback
    to an older generation, must each serve a strictly newer data.pkg."""

    def served() -> int:
        return int((tmp_path / "repo" / "main" / "current" / "data.pkg").stat().st_mtime)

    go(tmp_path / "repo", src, signer)
    first = served()
    add(src, "hello", "1.1")
    go(tmp_path / "repo", src, signer)  # well within the same second
    second = served()
    assert second > first
    rollback(tmp_path / "repo", "main")
    assert served() > second
    meta = tmp_path / "repo" / "main" / "current" / "meta.conf"
    assert int(meta.stat().st_mtime) == served()  # pkg stamps them alike
