"""The pkg package file: checksums against pkg's own test vectors, the legacy arch, metadata
validation, manifest shape, and writing/reading real .pkg files in tmp_path
(shared/spec/pkg-repository.md, "A package file"; fixtures: tests/fixtures/pkgfile/README.md)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from jailfarm.errors import InvalidName, UnsafeOperation
from jailfarm.poudriere.pkgfile import (
    BadPackage,
    PayloadFile,
    compact_manifest,
    file_sum,
    manifest,
    pkg_arch,
    pkg_base32,
    plist_paths,
    read_package,
    sum_matches,
    symlink_sum,
    to_json,
    unpack,
    write_package,
)
from tests.support import HELLO

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pkgfile"
VECTORS = json.loads((FIXTURES / "pkg_checksum_vectors.json").read_text())
HELLO_TEXT = b"Hello from jailfarm!\n"
MTIME = 1_700_000_000


def stage(root: Path, files: dict[str, bytes], mode: int = 0o644) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        os.utime(path, (MTIME, MTIME))
    return root


@pytest.fixture
def hello_stage(tmp_path: Path) -> Path:
    return stage(tmp_path / "stage", {"usr/local/share/hello/hello.txt": HELLO_TEXT})


def tar_zst(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(buf.getvalue())


def members_of(blob: bytes) -> list[tarfile.TarInfo]:
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        return tf.getmembers()


class ChecksumTests:
    def test_file_sum_matches_pkg_test_suite(self) -> None:
        vec = VECTORS["file_bar_newline"]
        assert file_sum(vec["content"].encode()) == "2$" + vec["blake2_base32"]

    def test_base32_of_32_bytes_matches_pkg_blake2s_vector(self) -> None:
        # 32 bytes leave a partial final digit, the branch 64-byte digests also take.
        vec = VECTORS["file_bar_newline"]
        assert (
            pkg_base32(hashlib.blake2s(vec["content"].encode()).digest()) == (vec["blake2s_base32"])
        )

    def test_symlink_sum_matches_pkg_test_suite(self) -> None:
        vec = VECTORS["symlink_to_foo"]
        assert symlink_sum(vec["target"]) == vec["generate_file_blake2_base32"]

    def test_absolute_symlink_sum_covers_trailing_nul(self) -> None:
        assert symlink_sum("/usr/local/lib/libx.so") == file_sum(b"usr/local/lib/libx.so\0")

    @pytest.mark.parametrize("kind", ["generate_file_sha256_hex", "generate_file_blake2_base32"])
    def test_sum_matches_accepts_pkg_forms(self, kind: str) -> None:
        vec = VECTORS["symlink_to_foo"]
        assert sum_matches(vec[kind], b"foo")
        assert not sum_matches(vec[kind], b"fob")

    def test_sum_matches_accepts_bare_sha256(self) -> None:
        vec = VECTORS["file_bar_newline"]
        assert sum_matches(vec["sha256_hex"], b"bar\n")

    def test_sum_matches_refuses_unknown_type(self) -> None:
        with pytest.raises(BadPackage, match="unsupported checksum type '7'"):
            sum_matches("7$abc", b"")

    @given(st.binary(max_size=200))
    def test_base32_is_lsb_first_zbase32(self, data: bytes) -> None:
        # Independent formulation: the input as one little-endian integer, 5 bits per digit.
        n, digits = int.from_bytes(data, "little"), -(-len(data) * 8 // 5)
        expected = "".join(
            "ybndrfg8ejkmcpqxot1uwisza345h769"[(n >> 5 * i) & 31] for i in range(digits)
        )
        assert pkg_base32(data) == expected


class ArchTests:
    @pytest.mark.parametrize(
        ("abi", "arch"),
        [
            ("FreeBSD:14:amd64", "freebsd:14:x86:64"),
            ("FreeBSD:13:i386", "freebsd:13:x86:32"),
            ("FreeBSD:14:aarch64", "freebsd:14:aarch64:64"),
            ("FreeBSD:14:armv7", "freebsd:14:armv7:32:el:eabi:hardfp"),
            ("FreeBSD:15:powerpc64", "freebsd:15:powerpc:64:eb"),
            ("FreeBSD:14:powerpc64le", "freebsd:14:powerpc:64:el"),
            ("FreeBSD:14:riscv64", "freebsd:14:riscv:64:hf"),
        ],
    )
    def test_legacy_arch(self, abi: str, arch: str) -> None:
        assert pkg_arch(abi) == arch

    @pytest.mark.parametrize("abi", ["FreeBSD:14:sparc64", "freebsd:14:amd64", "FreeBSD:x:amd64"])
    def test_unknown_abi_refused(self, abi: str) -> None:
        with pytest.raises(InvalidName, match="ABI"):
            pkg_arch(abi)


class PackageMetaTests:
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"name": "hel lo"}, "invalid package name"),
            ({"name": "-hello"}, "invalid package name"),
            ({"version": "1.0-rc1"}, "invalid package version"),
            ({"version": "1.0\n"}, "invalid package version"),
            ({"origin": "misc/hello@py311"}, "no @flavor"),
            ({"origin": "hello"}, "invalid port origin"),
            ({"comment": "two\nlines"}, "control characters"),
            ({"desc": "bell\a"}, "control characters"),
            ({"desc": "  "}, "must not be empty"),
            ({"maintainer": "a b@example.org"}, "whitespace"),
            ({"prefix": "usr/local"}, "normalised absolute"),
            ({"prefix": "/usr/local/"}, "normalised absolute"),
            ({"prefix": "/usr/../etc"}, "normalised absolute"),
            ({"abi": "FreeBSD:14:vax"}, "unknown arch"),
            ({"deps": {"libfoo": {"origin": "devel/libfoo"}}}, "exactly origin and version"),
            ({"deps": {"libfoo": {"origin": "devel/libfoo", "version": "1 2"}}}, "version"),
            ({"options": {"DOCS": "yes"}}, "'on' or 'off'"),
            ({"categories": ("misc", "bad cat")}, "invalid category"),
        ],
    )
    def test_invalid_metadata_refused(self, change: dict[str, Any], message: str) -> None:
        with pytest.raises(InvalidName, match=message):
            replace(HELLO, **change)

    def test_real_world_names_and_versions_accepted(self) -> None:
        meta = replace(HELLO, name="py311-libsigc++", version="2.4.0.a1_3,1")
        assert meta.filename == "py311-libsigc++-2.4.0.a1_3,1.pkg"
        assert meta.arch == "freebsd:14:x86:64"

    def test_deps_and_options_are_sorted_and_frozen(self) -> None:
        meta = replace(
            HELLO,
            deps={
                "zlib": {"origin": "archivers/zlib", "version": "1.3"},
                "a": {"origin": "misc/a", "version": "2"},
            },
            options={"X11": "off", "DOCS": "on"},
        )
        assert list(meta.deps) == ["a", "zlib"]
        assert list(meta.options) == ["DOCS", "X11"]
        with pytest.raises(TypeError):
            meta.deps["b"] = {}  # type: ignore[index]


class ManifestTests:
    FILE = PayloadFile("/usr/local/share/hello/hello.txt", file_sum(HELLO_TEXT), 0o644, MTIME, 21)

    def test_manifest_matches_golden(self) -> None:
        golden = (FIXTURES / "hello.MANIFEST.json").read_bytes().rstrip(b"\n")
        assert to_json(manifest(HELLO, [self.FILE])) == golden

    def test_manifest_has_the_spec_minimal_keys_in_pkg_order(self) -> None:
        got = manifest(HELLO, [self.FILE])
        assert list(got) == [
            "name", "origin", "version", "comment", "maintainer", "www", "abi", "arch",
            "prefix", "flatsize", "desc", "files",
        ]  # fmt: skip
        assert got["arch"] == "freebsd:14:x86:64"
        assert got["flatsize"] == len(HELLO_TEXT)
        assert got["files"] == {
            "/usr/local/share/hello/hello.txt": {
                "sum": file_sum(HELLO_TEXT),
                "uname": "root",
                "gname": "wheel",
                "perm": "0644",
                "mtime": MTIME,
            }
        }

    def test_compact_manifest_is_manifest_without_files(self) -> None:
        full = manifest(HELLO, [self.FILE])
        del full["files"]
        assert compact_manifest(HELLO, len(HELLO_TEXT)) == full

    def test_optional_fields_follow_pkg_emit_order(self) -> None:
        meta = replace(
            HELLO,
            deps={"gettext-runtime": {"origin": "devel/gettext-runtime", "version": "0.22.5"}},
            options={"NLS": "on"},
            categories=("misc",),
            licenses=("BSD2CLAUSE",),
        )
        assert list(compact_manifest(meta))[10:] == [
            "licenselogic", "licenses", "desc", "deps", "categories", "options",
        ]  # fmt: skip

    def test_perm_keeps_setuid_and_sticky_bits(self) -> None:
        files = [replace(self.FILE, perm=0o4755), replace(self.FILE, path="/usr/local/x", perm=0)]
        perms = [e["perm"] for e in manifest(HELLO, files)["files"].values()]
        assert perms == ["04755", "0000"]

    def test_desc_and_paths_are_url_encoded_like_pkg(self) -> None:
        meta = replace(HELLO, desc="100% café\n")
        got = manifest(meta, [replace(self.FILE, path="/usr/local/share/é")])
        assert got["desc"] == "100%25 caf%c3%a9"
        assert list(got["files"]) == ["/usr/local/share/%c3%a9"]


class PlistTests:
    def test_relative_and_absolute_entries_resolve_under_prefix(self) -> None:
        assert plist_paths("/usr/local", ["share/b", "/usr/local/bin/a"]) == [
            "/usr/local/bin/a",
            "/usr/local/share/b",
        ]

    @pytest.mark.parametrize(
        "entry",
        [
            "../etc/passwd",
            "share/../../etc/passwd",
            "/etc/passwd",
            "/usr/localevil/x",
            "/usr/local",
            "./share/x",
            "",
            "share/a\nb",
        ],
    )
    def test_entries_escaping_the_prefix_refused(self, entry: str) -> None:
        with pytest.raises(UnsafeOperation, match="plist entry"):
            plist_paths("/usr/local", [entry])

    def test_duplicate_entries_refused(self) -> None:
        with pytest.raises(UnsafeOperation, match="listed twice"):
            plist_paths("/usr/local", ["share/x", "/usr/local/share/x"])


class WritePackageTests:
    def test_round_trip(self, tmp_path: Path, hello_stage: Path) -> None:
        out = tmp_path / HELLO.filename
        info = write_package(out, HELLO, hello_stage, ["share/hello/hello.txt"])
        got, files = read_package(out)
        assert got == manifest(HELLO, files)
        assert files == [ManifestTests.FILE]
        blob = out.read_bytes()
        assert (info.size, info.sha256, info.flatsize) == (
            len(blob),
            hashlib.sha256(blob).hexdigest(),
            len(HELLO_TEXT),
        )
        assert info.pkg_sum == file_sum(blob)
        assert sum_matches(info.pkg_sum, blob) and sum_matches(info.sha256, blob)
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def test_same_inputs_give_same_bytes(self, tmp_path: Path, hello_stage: Path) -> None:
        plist = ["share/hello/hello.txt"]
        a = write_package(tmp_path / "a.pkg", HELLO, hello_stage, plist)
        b = write_package(tmp_path / "b.pkg", HELLO, hello_stage, list(reversed(plist)))
        assert a.path.read_bytes() == b.path.read_bytes()

    def test_member_order_owners_and_modes(self, tmp_path: Path) -> None:
        root = stage(tmp_path / "stage", {"usr/local/share/z": b"z", "usr/local/bin/a": b"#!"})
        (root / "usr/local/bin/a").chmod(0o755)
        info = write_package(tmp_path / "p.pkg", HELLO, root, ["share/z", "bin/a"])
        members = members_of(info.path.read_bytes())
        assert [m.name for m in members] == [
            "+COMPACT_MANIFEST",
            "+MANIFEST",
            "/usr/local/bin/a",
            "/usr/local/share/z",
        ]
        assert {(m.uname, m.gname, m.uid, m.gid) for m in members} == {("root", "wheel", 0, 0)}
        assert [m.mode for m in members] == [0o644, 0o644, 0o755, 0o644]
        assert {m.mtime for m in members} == {MTIME}

    def test_one_zstd_frame_without_content_checksum(
        self, tmp_path: Path, hello_stage: Path
    ) -> None:
        blob = write_package(tmp_path / "p.pkg", HELLO, hello_stage, ["share/hello/hello.txt"])
        params = zstandard.get_frame_parameters(blob.path.read_bytes())
        assert not params.has_checksum
        assert params.content_size > 0

    def test_symlink_payload_round_trips(self, tmp_path: Path, hello_stage: Path) -> None:
        link = hello_stage / "usr/local/share/hello/link"
        link.symlink_to("hello.txt")
        info = write_package(
            tmp_path / "p.pkg", HELLO, hello_stage, ["share/hello/hello.txt", "share/hello/link"]
        )
        _, files = read_package(info.path)
        assert files[1].link == "hello.txt" and files[1].sum == symlink_sum("hello.txt")

    def test_staged_directory_symlink_escaping_the_stage_refused(self, tmp_path: Path) -> None:
        outside = stage(tmp_path / "outside", {"secret": b"s"})
        (tmp_path / "stage/usr/local").mkdir(parents=True)
        (tmp_path / "stage/usr/local/share").symlink_to(outside)
        with pytest.raises(UnsafeOperation, match="escapes"):
            write_package(tmp_path / "p.pkg", HELLO, tmp_path / "stage", ["share/secret"])
        assert not (tmp_path / "p.pkg").exists()

    def test_plist_traversal_refused_before_writing(
        self, tmp_path: Path, hello_stage: Path
    ) -> None:
        with pytest.raises(UnsafeOperation, match="outside the prefix"):
            write_package(tmp_path / "p.pkg", HELLO, hello_stage, ["/etc/passwd"])
        assert list(tmp_path.iterdir()) == [hello_stage]


class ReadPackageTests:
    @pytest.fixture
    def blob(self, tmp_path: Path, hello_stage: Path) -> bytes:
        info = write_package(tmp_path / "p.pkg", HELLO, hello_stage, ["share/hello/hello.txt"])
        return info.path.read_bytes()

    def parts(self, blob: bytes) -> tuple[bytes, bytes]:
        tar = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            handles = [tf.extractfile(n) for n in ("+COMPACT_MANIFEST", "+MANIFEST")]
            compact, full = (h.read() if h else b"" for h in handles)
        return compact, full

    def test_truncated_file_refused(self, tmp_path: Path, blob: bytes) -> None:
        (tmp_path / "cut.pkg").write_bytes(blob[: len(blob) // 2])
        with pytest.raises(BadPackage, match="truncated archive"):
            read_package(tmp_path / "cut.pkg")

    def test_trailing_garbage_refused(self, blob: bytes) -> None:
        with pytest.raises(BadPackage, match="trailing data"):
            unpack(blob + b"junk")

    def test_not_zstd_refused(self) -> None:
        with pytest.raises(BadPackage, match="corrupt zstd"):
            unpack(b"this is not a package")

    def test_wrong_member_order_refused(self, blob: bytes) -> None:
        compact, full = self.parts(blob)
        swapped = tar_zst([("+MANIFEST", full), ("+COMPACT_MANIFEST", compact)])
        with pytest.raises(BadPackage, match="wrong member order"):
            unpack(swapped)

    def test_payload_checksum_mismatch_names_the_file(self, blob: bytes) -> None:
        compact, full = self.parts(blob)
        tampered = tar_zst(
            [
                ("+COMPACT_MANIFEST", compact),
                ("+MANIFEST", full),
                ("/usr/local/share/hello/hello.txt", b"Hello from mallory!\n"),
            ]
        )
        with pytest.raises(BadPackage, match="checksum mismatch for /usr/local/share/hello/hello"):
            unpack(tampered)

    def test_payload_missing_from_archive_refused(self, blob: bytes) -> None:
        compact, full = self.parts(blob)
        with pytest.raises(BadPackage, match="missing from the archive"):
            unpack(tar_zst([("+COMPACT_MANIFEST", compact), ("+MANIFEST", full)]))

    def test_unlisted_payload_refused(self, blob: bytes) -> None:
        compact, full = self.parts(blob)
        extra = ("/usr/local/bin/evil", b"x")
        body = [("+COMPACT_MANIFEST", compact), ("+MANIFEST", full), extra]
        with pytest.raises(BadPackage, match="/usr/local/bin/evil is not in"):
            unpack(tar_zst(body))

    def test_compact_manifest_disagreeing_with_manifest_refused(self, blob: bytes) -> None:
        _, full = self.parts(blob)
        compact = to_json({**json.loads(full), "version": "6.6.6"})
        with pytest.raises(BadPackage, match="does not match"):
            unpack(tar_zst([("+COMPACT_MANIFEST", compact), ("+MANIFEST", full)]))

    @pytest.mark.parametrize("where", ["second header", "payload data", "end blocks"])
    def test_truncated_tar_inside_a_good_frame_refused(self, blob: bytes, where: str) -> None:
        tar = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        last = members_of(blob)[-1]
        cut = {
            "second header": 1024 + 100,
            "payload data": last.offset_data + 5,
            "end blocks": last.offset_data + 512 + 100,
        }[where]
        with pytest.raises(BadPackage, match="truncated archive"):
            unpack(zstandard.ZstdCompressor().compress(tar[:cut]))

    def test_symlink_retargeted_after_packing_refused(
        self, tmp_path: Path, hello_stage: Path
    ) -> None:
        (hello_stage / "usr/local/share/hello/link").symlink_to("hello.txt")
        plist = ["share/hello/hello.txt", "share/hello/link"]
        blob = write_package(tmp_path / "p.pkg", HELLO, hello_stage, plist).path.read_bytes()
        tar = bytearray(zstandard.ZstdDecompressor().decompressobj().decompress(blob))
        link = members_of(blob)[-1]
        info = tarfile.TarInfo(link.name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, "/etc/passwd", link.mode
        tar[link.offset : link.offset + 512] = info.tobuf(tarfile.USTAR_FORMAT)
        with pytest.raises(BadPackage, match="checksum mismatch for /usr/local/share/hello/link"):
            unpack(zstandard.ZstdCompressor().compress(bytes(tar)))


def test_package_meta_survives_pickling_and_is_validated_again() -> None:
    """The dev builder hands the manifest to the port's build root as a pickle."""
    import pickle

    meta = replace(
        HELLO,
        deps={"libjf": {"origin": "devel/libjf", "version": "1.2.0"}},
        options={"DOCS": "off"},
    )
    back = pickle.loads(pickle.dumps(meta))
    assert back == meta and compact_manifest(back) == compact_manifest(meta)
    forged = pickle.dumps(meta).replace(b"misc/hello", b"misc/he lo")
    with pytest.raises(InvalidName):
        pickle.loads(forged)
