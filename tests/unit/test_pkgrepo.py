"""The pkg repository: catalogue entries and archives, pkg's RSA signature (checked with real
openssl), the signing_command protocol, and writing and verifying repositories in tmp_path
(shared/spec/pkg-repository.md; fixtures: tests/fixtures/pkgrepo/README.md)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.internet import defer

from jailfarm.cmd import Cmd, Result
from jailfarm.errors import CommandFailed, UnsafeOperation
from jailfarm.poudriere.catalogue import read_record
from jailfarm.poudriere.pkgfile import (
    BadPackage,
    PackageMeta,
    file_sum,
    read_package,
    sum_matches,
    to_json,
    write_package,
)
from jailfarm.poudriere.pkgrepo import (
    META_CONF,
    RepositoryError,
    catalogue_entry,
    check_repository,
    find_packages,
    pack_catalogue,
    render_data,
    render_packagesite,
    unpack_catalogue,
    verify_repository,
    write_repository,
)
from jailfarm.poudriere.pkgsign import (
    CommandSigner,
    KeyFileSigner,
    SigningError,
    catalogue_digest,
    fingerprint_file,
    parse_fingerprint_file,
    parse_signing_command_output,
    public_key_pem,
    rsa_signature,
    sign_with_command,
    verify_rsa,
)
from jailfarm.runner import FakeRunner
from tests.support import HELLO, resolve, rsa_key_pem

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pkgrepo"
MTIME = 1_700_000_000
WORLD = PackageMeta(**{**HELLO.__dict__, "name": "world", "origin": "misc/world"})


@pytest.fixture(scope="module")
def key() -> bytes:
    return rsa_key_pem()


@pytest.fixture(scope="module")
def other_key() -> bytes:
    return rsa_key_pem()


def make_pkg(repo: Path, meta: PackageMeta, text: bytes, sub: str = "All") -> Path:
    stage = repo.parent / f"stage-{meta.name}-{len(text)}"
    (stage / "usr/local/share").mkdir(parents=True, exist_ok=True)
    (stage / "usr/local/share" / meta.name).write_bytes(text)
    os.utime(stage / "usr/local/share" / meta.name, (MTIME, MTIME))
    (repo / sub).mkdir(parents=True, exist_ok=True)
    return write_package(repo / sub / meta.filename, meta, stage, [f"share/{meta.name}"]).path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_pkg(root, HELLO, b"Hello from jailfarm!\n")
    make_pkg(root, WORLD, b"World!\n")
    return root


def members(blob: bytes) -> list[tarfile.TarInfo]:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return tar.getmembers()


def key_file(tmp_path: Path, pem: bytes, name: str = "k.key") -> Path:
    path = tmp_path / name
    path.write_bytes(pem)
    return path


class CatalogueTests:
    def test_meta_conf_is_the_spec_text(self) -> None:
        assert (FIXTURES / "meta.conf").read_text() == META_CONF
        assert len(META_CONF.encode()) == 168

    def test_entry_has_repo_fields_in_pkg_key_order(self, repo: Path) -> None:
        path = repo / "All/hello-1.0.pkg"
        full, _ = read_package(path)
        entry = catalogue_entry(full, "All/hello-1.0.pkg", path.read_bytes())
        assert list(entry)[:15] == [
            *("name", "origin", "version", "comment", "maintainer", "www", "abi", "arch"),
            *("prefix", "sum", "flatsize", "path", "repopath", "pkgsize", "desc"),
        ]
        assert "files" not in entry
        assert entry["pkgsize"] == path.stat().st_size
        assert entry["sum"].startswith("2$") and entry["flatsize"] == 21

    def test_data_is_one_json_line_and_packagesite_one_object_per_line(self) -> None:
        entries = [{"name": "b", "path": "b.pkg"}, {"name": "a", "path": "a.pkg"}]
        data = render_data(entries)
        assert data.count(b"\n") == 1
        assert data.startswith(b'{"groups":[],"expired_packages":[],"packages":[{"name":"a"')
        lines = render_packagesite(entries).splitlines()
        assert [json.loads(line)["name"] for line in lines] == ["a", "b"]

    @pytest.mark.parametrize(
        ("signature", "names"),
        [
            (None, ["data"]),
            (b"sig\0", ["signature", "data"]),
            ((b"sig", b"pem"), ["data.sig", "data.pub", "data"]),
        ],
    )
    def test_archive_member_order_and_metadata(self, signature: Any, names: list[str]) -> None:
        got = members(pack_catalogue("data", b"{}\n", signature))
        assert [m.name for m in got] == names
        assert {(m.mode, m.uname, m.gname, m.uid, m.gid, m.mtime) for m in got} == {
            (0o644, "root", "wheel", 0, 0, 0)
        }

    def test_find_packages_skips_dot_dirs_latest_and_catalogues(self, repo: Path) -> None:
        make_pkg(repo, WORLD, b"x", sub="Latest")
        make_pkg(repo, WORLD, b"y", sub=".hidden")
        (repo / "data.pkg").write_bytes(b"")
        assert [p.relative_to(repo).as_posix() for p in find_packages(repo)] == [
            "All/hello-1.0.pkg",
            "All/world-1.0.pkg",
        ]


class SignatureTests:
    def test_openssl_verifies_the_signature_over_the_hex_digest(
        self, key: bytes, tmp_path: Path
    ) -> None:
        catalogue = b'{"groups":[],"expired_packages":[],"packages":[]}\n'
        sig = rsa_signature(catalogue, key)
        assert sig.endswith(b"\0") and len(sig) == 257
        (tmp_path / "sig").write_bytes(sig[:-1])
        (tmp_path / "k.pub").write_bytes(public_key_pem(key))
        (tmp_path / "msg").write_bytes(hashlib.sha256(catalogue).hexdigest().encode())
        argv = ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "k.pub")]
        argv += ["-signature", str(tmp_path / "sig"), str(tmp_path / "msg")]
        done = subprocess.run(argv, capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
        assert b"Verified OK" in done.stdout

    def test_verify_rejects_other_key_and_other_content(self, key: bytes, other_key: bytes) -> None:
        sig = rsa_signature(b"data", key)
        assert verify_rsa(b"data", sig, public_key_pem(key))
        assert not verify_rsa(b"data", sig, public_key_pem(other_key))
        assert not verify_rsa(b"datA", sig, public_key_pem(key))
        assert not verify_rsa(b"data", sig, b"not a key")

    def test_fingerprint_file_round_trip(self) -> None:
        text = fingerprint_file(b"PEM\n")
        assert text.startswith('function: "sha256"\n')
        assert parse_fingerprint_file(text) == hashlib.sha256(b"PEM\n").hexdigest()
        assert parse_fingerprint_file('function: "sha1"\nfingerprint: "ab"\n') is None


class SigningCommandTests:
    def test_parses_signature_with_newlines_and_cert(self) -> None:
        out = b"SIGNATURE\nab\ncd\nCERT\n-----BEGIN-----\nxyz\n-----END-----\nEND\n"
        assert parse_signing_command_output(out) == (
            b"ab\ncd",
            b"-----BEGIN-----\nxyz\n-----END-----\n",
        )

    @pytest.mark.parametrize(
        ("out", "why"),
        [
            (b"", "wrote nothing"),
            (b"SIGNATURE\nab\nCERT\npem\n", "without an END"),
            (b"SIGNATURE\n\nCERT\npem\nEND\n", "empty signature"),
            (b"SIGNATURE\nab\nEND\n", "lacks a SIGNATURE or CERT"),
            (b"SIGNATURE\nab\nCERT\nEND\n", "empty CERT"),
        ],
    )
    def test_rejects_bad_output(self, out: bytes, why: str) -> None:
        with pytest.raises(SigningError, match=why):
            parse_signing_command_output(out)

    def test_sends_digest_line_and_fails_on_non_zero_exit(self) -> None:
        runner = FakeRunner().expect("sign", rc=1, stderr="no key")
        with pytest.raises(CommandFailed, match="no key"):
            resolve(sign_with_command(runner, ["sign"], "ab" * 32))
        assert runner.calls[0].stdin == b"ab" * 32 + b"\n"

    def test_real_signing_script_output_verifies(self, key: bytes, tmp_path: Path) -> None:
        pub = public_key_pem(key)
        (tmp_path / "k.pub").write_bytes(pub)
        digest = catalogue_digest(b"catalogue")
        argv = [
            "sh",
            str(FIXTURES / "sign.sh"),
            str(key_file(tmp_path, key)),
            str(tmp_path / "k.pub"),
        ]
        done = subprocess.run(argv, input=f"{digest}\n".encode(), capture_output=True, check=True)
        sig, cert = parse_signing_command_output(done.stdout)
        assert cert == pub and len(sig) == 256
        assert verify_rsa(b"catalogue", sig, cert)


def write_pubkey_repo(repo: Path, key: bytes) -> None:
    resolve(write_repository(repo, signer=KeyFileSigner(key_file(repo.parent, key))))


class RepositoryTests:
    def test_round_trip_pubkey(self, repo: Path, key: bytes) -> None:
        info = resolve(write_repository(repo, signer=KeyFileSigner(key_file(repo.parent, key))))
        assert info.paths == ("All/hello-1.0.pkg", "All/world-1.0.pkg")
        assert (repo / "meta").read_text() == (repo / "meta.conf").read_text() == META_CONF
        stamp = (repo / "meta.conf").stat().st_mtime_ns
        assert {(repo / a).stat().st_mtime_ns for a in ("data.pkg", "packagesite.pkg")} == {stamp}
        assert [m.name for m in members((repo / "data.pkg").read_bytes())] == ["signature", "data"]
        assert unpack_catalogue((repo / "data.pkg").read_bytes())["data"] == info.data
        verify_repository(repo, pubkey_pem=public_key_pem(key))
        assert not [p for p in repo.iterdir() if p.name.endswith(".tmp")]

    def test_same_input_gives_same_bytes(self, tmp_path: Path, key: bytes) -> None:
        blobs = []
        for name in ("a", "b"):
            root = tmp_path / name / "repo"
            make_pkg(root, HELLO, b"Hello\n")
            write_pubkey_repo(root, key)
            blobs.append([(root / a).read_bytes() for a in ("data.pkg", "packagesite.pkg")])
        assert blobs[0] == blobs[1]

    def test_wrong_key_is_rejected(self, repo: Path, key: bytes, other_key: bytes) -> None:
        write_pubkey_repo(repo, key)
        with pytest.raises(RepositoryError, match=r"^data\.pkg: signature verification failure"):
            verify_repository(repo, pubkey_pem=public_key_pem(other_key))

    def test_tampered_catalogue_is_rejected(self, repo: Path, key: bytes) -> None:
        write_pubkey_repo(repo, key)
        got = unpack_catalogue((repo / "data.pkg").read_bytes())
        forged = got["data"].replace(b"Tiny test package", b"Tiny evil package")
        (repo / "data.pkg").write_bytes(pack_catalogue("data", forged, got["signature"]))
        with pytest.raises(RepositoryError, match=r"data\.pkg: signature verification failure"):
            verify_repository(repo, pubkey_pem=public_key_pem(key))

    def test_swapped_package_is_rejected(self, repo: Path, key: bytes) -> None:
        write_pubkey_repo(repo, key)
        hello = repo / "All/hello-1.0.pkg"
        hello.write_bytes((repo / "All/world-1.0.pkg").read_bytes())
        with pytest.raises(RepositoryError, match=r"^All/hello-1\.0\.pkg: (size|checksum)"):
            verify_repository(repo, pubkey_pem=public_key_pem(key))

    def test_same_size_tampering_is_a_checksum_mismatch(self, repo: Path, key: bytes) -> None:
        write_pubkey_repo(repo, key)
        hello = repo / "All/hello-1.0.pkg"
        blob = bytearray(hello.read_bytes())
        blob[-1] ^= 0xFF
        hello.write_bytes(bytes(blob))
        with pytest.raises(RepositoryError, match=r"^All/hello-1\.0\.pkg: checksum mismatch$"):
            verify_repository(repo, pubkey_pem=public_key_pem(key))

    def test_truncated_package_is_rejected_with_sizes(self, repo: Path, key: bytes) -> None:
        write_pubkey_repo(repo, key)
        pkg = repo / "All/world-1.0.pkg"
        size = pkg.stat().st_size
        pkg.write_bytes(pkg.read_bytes()[:-4])
        problems = check_repository(repo, pubkey_pem=public_key_pem(key))
        assert problems == [f"All/world-1.0.pkg: size {size - 4} != {size} in the catalogue"]

    def test_unsigned_and_missing(self, repo: Path, key: bytes) -> None:
        resolve(write_repository(repo))
        (repo / "packagesite.pkg").unlink()
        with pytest.raises(RepositoryError, match=r"data\.pkg: not signed"):
            verify_repository(repo, pubkey_pem=public_key_pem(key))

    def test_broken_package_is_named_and_nothing_is_written(self, repo: Path) -> None:
        pkg = repo / "All/world-1.0.pkg"
        pkg.write_bytes(pkg.read_bytes()[:-10])
        with pytest.raises(BadPackage, match=r"world-1\.0\.pkg: truncated"):
            resolve(write_repository(repo))
        assert not (repo / "data.pkg").exists()

    def test_explicit_package_list_must_be_inside_outdir(self, repo: Path, tmp_path: Path) -> None:
        outside = make_pkg(tmp_path / "elsewhere", HELLO, b"x")
        with pytest.raises(UnsafeOperation, match="not inside"):
            resolve(write_repository(repo, [outside]))
        info = resolve(write_repository(repo, [repo / "All/world-1.0.pkg"]))
        assert info.paths == ("All/world-1.0.pkg",)


@dataclass
class FakeSigningCommand:
    """A Runner that answers like fixtures/pkgrepo/sign.sh: signs the digest line on stdin."""

    key: bytes
    calls: list[Cmd] = field(default_factory=list)

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        self.calls.append(cmd)
        private = serialization.load_pem_private_key(self.key, password=None)
        assert isinstance(private, rsa.RSAPrivateKey) and cmd.stdin is not None
        sig = private.sign(cmd.stdin.rstrip(b"\n"), padding.PKCS1v15(), hashes.SHA256())
        out = b"SIGNATURE\n" + sig + b"\nCERT\n" + public_key_pem(self.key) + b"END\n"
        return defer.succeed(Result(cmd, 0, out))


class FingerprintRepositoryTests:
    def write(self, repo: Path, key: bytes) -> bytes:
        runner = FakeSigningCommand(key)
        resolve(write_repository(repo, signer=CommandSigner(runner, ["sign", "--batch"])))
        assert [c.argv for c in runner.calls] == [("sign", "--batch")] * 2
        return public_key_pem(key)

    def keys_dir(self, tmp_path: Path, trusted: bytes | None, revoked: bytes | None) -> Path:
        root = tmp_path / "keys"
        for kind, pub in (("trusted", trusted), ("revoked", revoked)):
            (root / kind).mkdir(parents=True)
            if pub is not None:
                (root / kind / "jailfarm").write_text(fingerprint_file(pub))
        return root

    def test_trusted_key_verifies(self, repo: Path, key: bytes, tmp_path: Path) -> None:
        pub = self.write(repo, key)
        names = [m.name for m in members((repo / "data.pkg").read_bytes())]
        assert names == ["data.sig", "data.pub", "data"]
        verify_repository(repo, fingerprints_dir=self.keys_dir(tmp_path, pub, None))

    def test_untrusted_key(self, repo: Path, key: bytes, other_key: bytes, tmp_path: Path) -> None:
        self.write(repo, key)
        keys = self.keys_dir(tmp_path, public_key_pem(other_key), None)
        with pytest.raises(RepositoryError, match=r"data\.pkg: No trusted public keys found"):
            verify_repository(repo, fingerprints_dir=keys)

    def test_revoked_key(self, repo: Path, key: bytes, tmp_path: Path) -> None:
        pub = self.write(repo, key)
        with pytest.raises(RepositoryError, match="certificates has been revoked"):
            verify_repository(repo, fingerprints_dir=self.keys_dir(tmp_path, pub, pub))


def cached_line(cache: Path, name: str) -> str:
    return next(line for line in cache.read_text().split("\n") if f"\t{name}\t" in line)


def rewrite_cache(cache: Path, old: str, new: str) -> None:
    """Edit cached entries and re-seal the file, as if the cache had recorded `new`."""
    header, _, body = cache.read_text().partition("\n")
    body = body.replace(old, new)
    digest = hashlib.sha256(body.encode()).hexdigest()
    cache.write_text(f"{header.rsplit(' ', 1)[0]} {digest}\n{body}")


class CatalogueCacheTests:
    """The cache is keyed by content: reused for identical bytes (no unpack), never for
    other bytes, whatever their size and mtime. A marker planted in the cached entry shows
    which way each entry came."""

    def write(self, repo: Path, cache: Path) -> list[dict[str, Any]]:
        resolve(write_repository(repo, cache=cache))
        data = unpack_catalogue((repo / "data.pkg").read_bytes())["data"]
        packages: list[dict[str, Any]] = json.loads(data)["packages"]
        return packages

    def test_identical_bytes_reuse_the_cached_entry(self, repo: Path, tmp_path: Path) -> None:
        cache = tmp_path / "cache.tsv"
        first = self.write(repo, cache)
        assert cached_line(cache, "hello").count("\t") == 6
        rewrite_cache(cache, "Tiny test package", "Cached test package")
        again = self.write(repo, cache)
        assert {e["comment"] for e in again} == {"Cached test package"}
        assert [e["sum"] for e in again] == [e["sum"] for e in first]

    def test_other_bytes_of_the_same_size_and_mtime_get_a_fresh_entry(
        self, repo: Path, tmp_path: Path
    ) -> None:
        cache = tmp_path / "cache.tsv"
        self.write(repo, cache)
        rewrite_cache(cache, "Tiny test package", "Cached test package")
        hello = repo / "All/hello-1.0.pkg"
        old = hello.read_bytes()
        stat = hello.stat()
        for last in b"?.,;:-+#=_":  # other payload bytes until the package has the same size
            make_pkg(repo, HELLO, b"Hello from jailfarm" + bytes([last]) + b"\n")
            if hello.stat().st_size == len(old):
                break
        os.utime(hello, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert hello.stat().st_size == len(old) and hello.read_bytes() != old
        entries = {e["name"]: e for e in self.write(repo, cache)}
        assert entries["hello"]["comment"] == "Tiny test package"
        assert sum_matches(entries["hello"]["sum"], hello.read_bytes())
        assert entries["world"]["comment"] == "Cached test package"

    def test_a_damaged_cache_is_ignored(self, repo: Path, tmp_path: Path) -> None:
        cache = tmp_path / "cache.tsv"
        self.write(repo, cache)
        cache.write_text(cache.read_text().replace("Tiny test package", "Damaged"))
        assert {e["comment"] for e in self.write(repo, cache)} == {"Tiny test package"}

    def test_a_record_renders_exactly_the_catalogue_entry(self, repo: Path) -> None:
        path = repo / "All/hello-1.0.pkg"
        record, blob, cached = read_record(path, {})
        full, _ = read_package(path)
        assert not cached and blob == path.read_bytes()
        expected = to_json(catalogue_entry(full, "All/x y~2$ü.pkg", blob)).decode()
        assert record.line("All/x y~2$ü.pkg") == expected
        assert record.hashed_name == f"hello-1.0~{file_sum(blob)[:10]}.pkg"


class HashedRepositoryTests:
    def test_hash_and_symlink_move_packages_like_pkg_repo(self, repo: Path, key: bytes) -> None:
        signer = KeyFileSigner(key_file(repo.parent, key))
        info = resolve(write_repository(repo, signer=signer, hashed=True, symlink=True))
        assert [p.split("~")[0] for p in info.paths] == [
            "All/Hashed/hello-1.0",
            "All/Hashed/world-1.0",
        ]
        link = repo / "All/hello-1.0.pkg"
        assert os.readlink(link) == info.paths[0].removeprefix("All/")
        verify_repository(repo, pubkey_pem=public_key_pem(key))
        again = resolve(write_repository(repo, signer=signer, hashed=True, symlink=True))
        assert again.paths == info.paths  # the links are not packages of their own

    def test_find_packages_skips_links_into_the_repository(self, repo: Path) -> None:
        os.symlink("hello-1.0.pkg", repo / "All/alias-1.0.pkg")
        os.symlink("missing.pkg", repo / "All/dead-1.0.pkg")
        outside = make_pkg(repo.parent / "elsewhere", WORLD, b"far")
        os.symlink(outside, repo / "All/far-1.0.pkg")
        names = [p.name for p in find_packages(repo)]
        assert names == ["far-1.0.pkg", "hello-1.0.pkg", "world-1.0.pkg"]


PKG = PackageMeta(**{**HELLO.__dict__, "name": "pkg", "origin": "ports-mgmt/pkg"})


class BootstrapTests:
    @pytest.fixture
    def with_pkg(self, repo: Path) -> Path:
        make_pkg(repo, PackageMeta(**{**PKG.__dict__, "version": "1.20.9"}), b"old pkg")
        make_pkg(repo, PackageMeta(**{**PKG.__dict__, "version": "1.21.3"}), b"pkg")
        return repo

    def test_newest_pkg_is_linked_and_signed(self, with_pkg: Path, key: bytes) -> None:
        write_pubkey_repo(with_pkg, key)
        latest = with_pkg / "Latest/pkg.pkg"
        assert os.readlink(latest) == "../All/pkg-1.21.3.pkg"
        sig = (with_pkg / "Latest/pkg.pkg.pubkeysig").read_bytes()
        assert len(sig) == 256  # raw, as openssl dgst -sign writes it: no NUL
        assert verify_rsa(latest.read_bytes(), sig, public_key_pem(key), strip_nul=False)
        verify_repository(with_pkg, pubkey_pem=public_key_pem(key))

    def test_signing_command_writes_the_sig_and_drops_a_stale_pubkeysig(
        self, with_pkg: Path, key: bytes, tmp_path: Path
    ) -> None:
        write_pubkey_repo(with_pkg, key)
        runner = FakeSigningCommand(key)
        resolve(write_repository(with_pkg, signer=CommandSigner(runner, ["sign"])))
        assert len(runner.calls) == 3
        assert not (with_pkg / "Latest/pkg.pkg.pubkeysig").exists()
        raw = (with_pkg / "Latest/pkg.pkg.sig").read_bytes()
        assert raw.startswith(b"SIGNATURE\n") and raw.endswith(b"\nEND\n")
        keys = FingerprintRepositoryTests().keys_dir(tmp_path, public_key_pem(key), None)
        verify_repository(with_pkg, fingerprints_dir=keys)

    @pytest.mark.parametrize("damage", ["signature", "package", "missing"])
    def test_a_bad_bootstrap_signature_is_named(
        self, with_pkg: Path, key: bytes, damage: str
    ) -> None:
        write_pubkey_repo(with_pkg, key)
        sig = with_pkg / "Latest/pkg.pkg.pubkeysig"
        if damage == "signature":
            sig.write_bytes(bytes(256))
        elif damage == "missing":
            sig.unlink()
        else:
            os.unlink(with_pkg / "Latest/pkg.pkg")
            os.symlink("../All/pkg-1.20.9.pkg", with_pkg / "Latest/pkg.pkg")
        why = "not signed" if damage == "missing" else "signature verification failure"
        with pytest.raises(RepositoryError, match=rf"^Latest/pkg\.pkg: {why}"):
            verify_repository(with_pkg, pubkey_pem=public_key_pem(key))


class VerificationTests:
    """What the client rejects, each named in the first line of the message."""

    def test_missing_meta_conf_and_missing_package(self, repo: Path, key: bytes) -> None:
        write_pubkey_repo(repo, key)
        (repo / "meta.conf").unlink()
        (repo / "All/world-1.0.pkg").unlink()
        assert check_repository(repo, pubkey_pem=public_key_pem(key)) == [
            "meta.conf: missing",
            "All/world-1.0.pkg: missing",
        ]

    def test_packagesite_is_checked_too(self, repo: Path, key: bytes, other_key: bytes) -> None:
        write_pubkey_repo(repo, key)
        got = unpack_catalogue((repo / "packagesite.pkg").read_bytes())
        forged = rsa_signature(got["packagesite.yaml"], other_key)
        blob = pack_catalogue("packagesite.yaml", got["packagesite.yaml"], forged)
        (repo / "packagesite.pkg").write_bytes(blob)
        with pytest.raises(RepositoryError, match=r"^packagesite\.pkg: signature verification"):
            verify_repository(repo, pubkey_pem=public_key_pem(key))

    def test_a_corrupt_catalogue_archive_is_unreadable(self, repo: Path, key: bytes) -> None:
        write_pubkey_repo(repo, key)
        (repo / "data.pkg").write_bytes((repo / "data.pkg").read_bytes()[:-5])
        with pytest.raises(RepositoryError, match=r"^data\.pkg: unreadable catalogue: trunc"):
            verify_repository(repo, pubkey_pem=public_key_pem(key))
