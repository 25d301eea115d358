"""Consumer jails: the rendered pkg repository config, the file tree, the apply plan for a
running jail and an offline root, bad input, and a round trip through the repository verifier
(facts: shared/spec/pkg-repository.md "Using a real pkg client", "The signature", "Exit-status
caveat"; shared/spec/freebsd-jails-zfs.md f.113, f.115, f.117, j.18, gotcha 32)."""

from __future__ import annotations

import argparse
import os
import re
import stat
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer

from jailfarm.cmd import Cmd, Result
from jailfarm.config import FarmConfig, parse_farm
from jailfarm.errors import CommandFailed, InvalidName
from jailfarm.poudriere.pkgfile import write_package
from jailfarm.poudriere.pkgrepo import check_repository, write_repository
from jailfarm.poudriere.pkgsign import (
    CommandSigner,
    KeyFileSigner,
    fingerprint,
    fingerprint_file,
    public_key_pem,
)
from jailfarm.provision.consumer import (
    ConsumerError,
    ConsumerFiles,
    apply_plan,
    consumer_files,
    register,
    render_repo_conf,
    run,
)
from jailfarm.runner import FakeRunner
from tests.support import HELLO, resolve, rsa_key_pem

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from jailfarm.provision.consumer import SignatureType

REPO = "141amd64-default-default"
NAME = "jailfarm_141amd64_default_default"
# pkg-repository.md, "Using a real pkg client": the consumer config it was checked with.
SPEC_PUBKEY_CONF = (
    'jailfarm: { url: "http://pkg.example/packages/<abi>/latest", signature_type: "pubkey", '
    'pubkey: "/usr/local/etc/ssl/jailfarm.pub", enabled: yes, priority: 10 }'
)


@pytest.fixture(scope="module")
def key() -> bytes:
    return rsa_key_pem()


@pytest.fixture(scope="module")
def other_key() -> bytes:
    return rsa_key_pem()


def farm(key_file: Path | None = None, command: bool = False, **extra: Any) -> FarmConfig:
    signing: dict[str, object] = {"command": ["/usr/local/bin/sign", "repo"]} if command else {}
    if key_file is not None:
        signing["key_file"] = str(key_file)
    data: dict[str, object] = {
        "farm": {"platform": "linux-dev", "name": "demo"},
        "zfs": {"pool": "jailfarm", "root": "jailfarm/demo"},
        "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
        "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
        "signing": signing,
        "web": {"url": "http://localhost:8080/buildbot/"},
        **extra,
    }
    return parse_farm(data)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jailfarm")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def run_cli(
    cfg: FarmConfig, *argv: str, runner: Any = None, host_os: str = "freebsd"
) -> tuple[int, list[str]]:
    lines: list[str] = []
    rc = resolve(run(cfg, parse(*argv), runner, lines.append, host_os))
    return rc, lines


def ucl_pairs(text: str) -> dict[str, str]:
    """`key: value` pairs of a one-level UCL object (enough to compare repo configs)."""
    return dict(re.findall(r'(\w+):\s*("[^"]*"|\w+)', text.split("{", 1)[1]))


@pytest.fixture
def key_file(tmp_path: Path, key: bytes) -> Path:
    path = tmp_path / "keys" / "repo.key"
    path.parent.mkdir()
    path.write_bytes(key)
    return path


def tree(root: Path) -> dict[str, int]:
    """Every path below root with its permission bits (directories end in '/')."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
        found[rel] = stat.S_IMODE(path.stat().st_mode)
    return found


class RenderTests:
    def test_pubkey_config_golden(self) -> None:
        text = render_repo_conf(
            "jailfarm", "http://pkg.example/packages/r", "pubkey", "/usr/local/etc/ssl/jailfarm.pub"
        )
        assert text == (
            "jailfarm: {\n"
            '  url: "http://pkg.example/packages/r",\n'
            '  mirror_type: "none",\n'
            '  signature_type: "pubkey",\n'
            '  pubkey: "/usr/local/etc/ssl/jailfarm.pub",\n'
            "  enabled: yes,\n"
            "  priority: 10\n"
            "}\n"
        )

    def test_pubkey_config_has_every_key_and_value_of_the_spec_example(self) -> None:
        # Same keys and values as the config the spec checked against pkg, plus only
        # mirror_type (jails spec L: a key of pkg's repository files).
        spec = ucl_pairs(SPEC_PUBKEY_CONF)
        ours = ucl_pairs(
            render_repo_conf(
                "jailfarm",
                "http://pkg.example/packages/r",
                "pubkey",
                "/usr/local/etc/ssl/jailfarm.pub",
            )
        )
        assert ours.pop("mirror_type") == '"none"'
        assert ours.pop("url") == '"http://pkg.example/packages/r"'
        spec.pop("url")
        assert ours == spec

    def test_fingerprints_config_golden(self) -> None:
        # pkg-repository.md: signature_type "fingerprints", fingerprints: the directory that
        # holds trusted/ and revoked/ (its example: /usr/local/etc/pkg/keys/jailfarm).
        text = render_repo_conf(
            "jailfarm",
            "https://pkg.example/packages/r",
            "fingerprints",
            "/usr/local/etc/pkg/keys/jailfarm",
            priority=20,
            comment=("made by a test",),
        )
        assert text == (
            "# made by a test\n"
            "jailfarm: {\n"
            '  url: "https://pkg.example/packages/r",\n'
            '  mirror_type: "none",\n'
            '  signature_type: "fingerprints",\n'
            '  fingerprints: "/usr/local/etc/pkg/keys/jailfarm",\n'
            "  enabled: yes,\n"
            "  priority: 20\n"
            "}\n"
        )

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            # pkg-repository.md: pkg+http:// means an SRV lookup, "pkg+:// implies SRV".
            ("pkg+http://pkg.example/r", "implies SRV"),
            ('http://pkg.example/r",x', "not usable"),
            ("http://pkg.example/${ABI}", "not usable"),  # UCL/pkg would expand it
            ("ftp://pkg.example/r", "not usable"),
            ("http:///r", "not usable"),
            ("http://pkg.example/r?x=1", "not usable"),
            ("http://user:pw@pkg.example/r", "not usable"),  # 0644 file: no credentials
        ],
    )
    def test_bad_url(self, url: str, message: str) -> None:
        with pytest.raises(ConsumerError, match=re.escape(message)):
            render_repo_conf("jailfarm", url, "pubkey", "/usr/local/etc/ssl/jailfarm.pub")

    @pytest.mark.parametrize("priority", [0, -1, 10_000_000])
    def test_priority_must_beat_the_official_repository(self, priority: int) -> None:
        # pkg-repository.md: the official FreeBSD repository has priority 0.
        with pytest.raises(ConsumerError, match="above the official FreeBSD repository's 0"):
            render_repo_conf("j", "http://h", "pubkey", "/k.pub", priority=priority)

    @pytest.mark.parametrize("name", ["141x", "a-b", "a.b", "a b", "", "x" * 65])
    def test_bad_repository_name(self, name: str) -> None:
        with pytest.raises(InvalidName, match="pkg repository name"):
            render_repo_conf(name, "http://h", "pubkey", "/k.pub")

    def test_the_official_name_is_refused(self) -> None:
        with pytest.raises(ConsumerError, match="official repository"):
            render_repo_conf("FreeBSD", "http://h", "pubkey", "/k.pub")


class ConsumerConfigTests:
    def test_prints_the_config_with_defaults_from_the_farm(self, key_file: Path) -> None:
        rc, lines = run_cli(farm(key_file), "consumer-config")
        assert rc == 0
        text = "\n".join(lines)
        # web.url http://localhost:8080/buildbot/ -> nginx's /packages/<MASTERNAME>.
        assert ucl_pairs(text) == {
            "url": f'"http://localhost:8080/packages/{REPO}"',
            "mirror_type": '"none"',
            "signature_type": '"pubkey"',
            "pubkey": f'"/usr/local/etc/ssl/{NAME}.pub"',
            "enabled": "yes",
            "priority": "10",
        }
        assert text.startswith(
            f"# jailfarm farm 'demo': repository {REPO} (FreeBSD:14:amd64), pubkey signatures."
        )
        assert f"\n{NAME}: {{\n" in text

    def test_url_name_priority_and_set_less_mastername(self, key_file: Path) -> None:
        argv = ["consumer-config", "--repo", "141amd64-default", "--name", "farm", "--priority"]
        argv += ["50", "--url", "https://pkg.example.org/"]
        _, lines = run_cli(farm(key_file), *argv)
        pairs = ucl_pairs("\n".join(lines))
        assert pairs["url"] == '"https://pkg.example.org/packages/141amd64-default"'
        assert (pairs["pubkey"], pairs["priority"]) == ('"/usr/local/etc/ssl/farm.pub"', "50")

    def test_pubkey_tree(self, key_file: Path, key: bytes, tmp_path: Path) -> None:
        out = tmp_path / "out"
        _, lines = run_cli(farm(key_file), "consumer-config", "--out", str(out))
        assert tree(out) == {
            "usr/": 0o755,
            "usr/local/": 0o755,
            "usr/local/etc/": 0o755,
            "usr/local/etc/pkg/": 0o755,
            "usr/local/etc/pkg/repos/": 0o755,
            f"usr/local/etc/pkg/repos/{NAME}.conf": 0o644,
            "usr/local/etc/ssl/": 0o755,
            f"usr/local/etc/ssl/{NAME}.pub": 0o644,
        }
        # The consumer gets the public half only (jails spec j.15).
        pub = (out / f"usr/local/etc/ssl/{NAME}.pub").read_bytes()
        assert pub == public_key_pem(key) and b"PRIVATE" not in pub
        assert lines == [
            f"wrote {out}/usr/local/etc/ssl/{NAME}.pub",
            f"wrote {out}/usr/local/etc/pkg/repos/{NAME}.conf",
        ]

    def test_fingerprints_tree(self, key: bytes, tmp_path: Path) -> None:
        pub = tmp_path / "repo.pub"
        pub.write_bytes(public_key_pem(key))
        out = tmp_path / "out"
        run_cli(farm(command=True), "consumer-config", "--pubkey", str(pub), "--out", str(out))
        keys = f"usr/local/etc/pkg/keys/{NAME}"
        assert {p: m for p, m in tree(out).items() if p.startswith(keys)} == {
            f"{keys}/": 0o755,
            f"{keys}/revoked/": 0o755,
            f"{keys}/trusted/": 0o755,
            f"{keys}/trusted/{NAME}": 0o644,
        }
        # pkg-repository.md: trusted/ files hold function "sha256" and the sha256 hex of the
        # public key PEM.
        assert (out / keys / "trusted" / NAME).read_text() == (
            f'function: "sha256"\nfingerprint: "{fingerprint(public_key_pem(key))}"\n'
        )
        conf = (out / f"usr/local/etc/pkg/repos/{NAME}.conf").read_text()
        assert ucl_pairs(conf)["fingerprints"] == f'"/{keys}"'

    def test_pkcs1_public_key_becomes_a_public_key_pem(self, key: bytes, tmp_path: Path) -> None:
        pkcs1 = tmp_path / "k.pub"
        private = serialization.load_pem_private_key(key, password=None)
        pkcs1.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
            )
        )
        out = tmp_path / "out"
        run_cli(farm(), "consumer-config", "--pubkey", str(pkcs1), "--out", str(out))
        written = (out / f"usr/local/etc/ssl/{NAME}.pub").read_bytes()
        assert written == public_key_pem(key)


def files(kind: SignatureType = "pubkey") -> ConsumerFiles:
    return consumer_files(NAME, f"http://pkg.example/packages/{REPO}", kind, b"PUB\n")


def argvs(cmds: list[Cmd]) -> list[tuple[str, ...]]:
    return [c.argv for c in cmds]


class ApplyPlanTests:
    def test_running_jail(self) -> None:
        # jexec writes inside the jail; pkg -j runs the host's pkg with the jail's config
        # and keys (jails spec f.115); pkg update -f -r fetches this repository's catalogue.
        plan = apply_plan("web", files(), None, "FreeBSD:14:amd64")
        assert argvs(plan.commands()) == [
            ("pkg", "-j", "web", "config", "ABI"),
            *[("jexec", "web", "install", "-d", "-o", "root", "-g", "wheel", "-m", "0755",
               "/usr/local/etc/pkg/repos", "/usr/local/etc/ssl")],
            ("jexec", "web", "tee", f"/usr/local/etc/ssl/{NAME}.pub"),
            ("jexec", "web", "tee", f"/usr/local/etc/pkg/repos/{NAME}.conf"),
            ("jexec", "web", "chmod", "0644", f"/usr/local/etc/ssl/{NAME}.pub",
             f"/usr/local/etc/pkg/repos/{NAME}.conf"),
            ("pkg", "-j", "web", "update", "-f", "-r", NAME),
        ]  # fmt: skip
        stdin = {c.argv[-1]: c.stdin for c in plan.install if c.stdin is not None}
        assert stdin == {f.path: f.content for f in files().files}
        assert plan.mount is None and plan.unmount is None

    def test_offline_root(self) -> None:
        # pkg -c with -o ABI= for offline or cross-version trees, devfs mounted so /dev/null
        # exists (jails spec f.117, j.18); OSVERSION too (pkg-repository.md).
        plan = apply_plan(None, files("fingerprints"), "/jails/web/", "FreeBSD:13:aarch64")
        keys = f"/jails/web/usr/local/etc/pkg/keys/{NAME}"
        guarded = [
            "/usr", "/usr/local", "/usr/local/etc", "/usr/local/etc/pkg",
            "/usr/local/etc/pkg/repos", "/usr/local/etc/pkg/keys",
            f"/usr/local/etc/pkg/keys/{NAME}", f"/usr/local/etc/pkg/keys/{NAME}/trusted",
            f"/usr/local/etc/pkg/keys/{NAME}/revoked",
            f"/usr/local/etc/pkg/keys/{NAME}/trusted/{NAME}",
            f"/usr/local/etc/pkg/repos/{NAME}.conf", "/dev",
        ]  # fmt: skip
        guard = ["test"]
        for i, path in enumerate(guarded):
            guard += [*(["-a"] if i else []), "!", "-h", "/jails/web" + path]
        assert argvs(plan.commands()) == [
            tuple(guard),
            ("install", "-d", "-o", "root", "-g", "wheel", "-m", "0755",
             "/jails/web/usr/local/etc/pkg/repos", f"{keys}/trusted", f"{keys}/revoked"),
            ("tee", f"{keys}/trusted/{NAME}"),
            ("tee", f"/jails/web/usr/local/etc/pkg/repos/{NAME}.conf"),
            ("chmod", "0644", f"{keys}/trusted/{NAME}",
             f"/jails/web/usr/local/etc/pkg/repos/{NAME}.conf"),
            ("mount", "-t", "devfs", "-o", "ruleset=4", "devfs", "/jails/web/dev"),
            ("pkg", "-c", "/jails/web", "-o", "ABI=FreeBSD:13:aarch64",
             "-o", "OSVERSION=1300000", "update", "-f", "-r", NAME),
            ("umount", "/jails/web/dev"),
        ]  # fmt: skip
        assert plan.abi_query is None

    @pytest.mark.parametrize("jail", ["-f", "web;rm", "a/b", "1234", "a..b", "", "w b"])
    def test_bad_jail_name(self, jail: str) -> None:
        with pytest.raises(InvalidName, match="jail name"):
            apply_plan(jail, files(), None, "FreeBSD:14:amd64")

    @pytest.mark.parametrize("root", ["/", "jails/web", "/jails/../etc", "/jails/./w", "/a b"])
    def test_bad_offline_root(self, root: str) -> None:
        with pytest.raises(ConsumerError, match="offline root"):
            apply_plan(None, files(), root, "FreeBSD:14:amd64")

    def test_needs_a_jail_or_a_root(self) -> None:
        with pytest.raises(ConsumerError, match="--jail NAME"):
            apply_plan(None, files(), None, "FreeBSD:14:amd64")

    def test_bad_abi(self) -> None:
        with pytest.raises(ConsumerError, match="invalid ABI"):
            apply_plan("web", files(), None, "Linux:6:x86_64")


def online(runner: FakeRunner, abi: str = "FreeBSD:14:amd64") -> FakeRunner:
    runner.expect("pkg", "-j", "web", "config", "ABI", stdout=f"{abi}\n")
    return runner


def writes(
    runner: FakeRunner, prefix: tuple[str, ...] = ("jexec", "web"), root: str = ""
) -> FakeRunner:
    conf = f"{root}/usr/local/etc/pkg/repos/{NAME}.conf"
    pub = f"{root}/usr/local/etc/ssl/{NAME}.pub"
    runner.expect(*prefix, "install", "-d", "-o", "root", "-g", "wheel", "-m", "0755",
                  f"{root}/usr/local/etc/pkg/repos", f"{root}/usr/local/etc/ssl")  # fmt: skip
    runner.expect(*prefix, "tee", pub, check=lambda c: _has_stdin(c, b"-----BEGIN PUBLIC KEY"))
    runner.expect(*prefix, "tee", conf, check=lambda c: _has_stdin(c, f"{NAME}: {{".encode()))
    runner.expect(*prefix, "chmod", "0644", pub, conf)
    return runner


def _has_stdin(cmd: Cmd, text: bytes) -> None:
    assert cmd.stdin is not None and text in cmd.stdin


class ApplyTests:
    def test_running_jail(self, key_file: Path) -> None:
        runner = writes(online(FakeRunner()))
        runner.expect("pkg", "-j", "web", "update", "-f", "-r", NAME)
        rc, lines = run_cli(farm(key_file), "consumer", "apply", "--jail", "web", runner=runner)
        runner.assert_all_commands_ran()
        assert rc == 0
        assert lines == [
            f"jail web: repository {NAME} (http://localhost:8080/packages/{REPO}) installed, "
            "catalogue fetched"
        ]

    def test_wrong_abi_stops_before_writing(self, key_file: Path) -> None:
        runner = online(FakeRunner(), "FreeBSD:13:amd64")
        with pytest.raises(ConsumerError, match="ABI is FreeBSD:13:amd64, but repository"):
            run_cli(farm(key_file), "consumer", "apply", "--jail", "web", runner=runner)
        assert len(runner.calls) == 1

    def test_rejected_signature_fails_although_pkg_exits_0(self, key_file: Path) -> None:
        # pkg-repository.md, exit-status caveat: a rejected data.pkg falls back to
        # packagesite.pkg, which is "up to date", and pkg update -f exits 0.
        runner = writes(online(FakeRunner()))
        stderr = "pkg: Invalid signature, removing repository.\n"
        runner.expect("pkg", "-j", "web", "update", "-f", "-r", NAME, stderr=stderr)
        with pytest.raises(ConsumerError, match=r"rejected repository .* Invalid signature"):
            run_cli(farm(key_file), "consumer", "apply", "--jail", "web", runner=runner)

    def test_offline_root_unmounts_devfs_when_update_fails(self, key_file: Path) -> None:
        runner = FakeRunner()
        runner.expect("test", *_guard_words("/r"))
        writes(runner, (), "/r")
        runner.expect("mount", "-t", "devfs", "-o", "ruleset=4", "devfs", "/r/dev")
        runner.expect("pkg", "-c", "/r", "-o", "ABI=FreeBSD:14:amd64", "-o",
                      "OSVERSION=1400000", "update", "-f", "-r", NAME, rc=3,
                      stderr="pkg: Unable to update repository x")  # fmt: skip
        runner.expect("umount", "/r/dev")
        argv = ("consumer", "apply", "--offline-root", "/r")
        with pytest.raises(CommandFailed, match="Unable to update repository"):
            run_cli(farm(key_file), *argv, runner=runner)
        runner.assert_all_commands_ran()

    def test_refuses_on_a_host_that_is_not_freebsd(self, key_file: Path) -> None:
        with pytest.raises(ConsumerError, match=r"needs a FreeBSD host.*--dry-run"):
            run_cli(farm(key_file), "consumer", "apply", "--jail", "web", host_os="linux")

    def test_dry_run_prints_the_commands_anywhere(self, key_file: Path) -> None:
        argv = ("consumer", "apply", "--jail", "web", "--dry-run")
        rc, lines = run_cli(farm(key_file), *argv, runner=FakeRunner(), host_os="linux")
        assert rc == 0
        assert lines[0] == "pkg -j web config ABI"
        assert re.fullmatch(
            rf"jexec web tee /usr/local/etc/pkg/repos/{NAME}\.conf  < \d+ bytes", lines[3]
        )
        assert lines[-1] == f"pkg -j web update -f -r {NAME}"


def _guard_words(root: str) -> list[str]:
    paths = ["/usr", "/usr/local", "/usr/local/etc", "/usr/local/etc/pkg",
             "/usr/local/etc/pkg/repos", "/usr/local/etc/ssl", f"/usr/local/etc/ssl/{NAME}.pub",
             f"/usr/local/etc/pkg/repos/{NAME}.conf", "/dev"]  # fmt: skip
    words: list[str] = []
    for i, path in enumerate(paths):
        words += [*(["-a"] if i else []), "!", "-h", root + path]
    return words


class BadInputTests:
    def test_unknown_repository_lists_the_farms(self, key_file: Path) -> None:
        with pytest.raises(ConsumerError, match=f"unknown repository 'nope'.*publishes: {REPO}"):
            run_cli(farm(key_file), "consumer-config", "--repo", "nope")

    def test_several_repositories_need_repo(self, key_file: Path) -> None:
        cfg = farm(key_file, sets=[{"name": "default"}, {"name": "server"}])
        with pytest.raises(ConsumerError, match=f"choose one with --repo: {REPO}, 141amd64-"):
            run_cli(cfg, "consumer-config")

    def test_bad_jail_name_from_the_command_line(self, key_file: Path) -> None:
        with pytest.raises(InvalidName, match="invalid jail name"):
            run_cli(farm(key_file), "consumer", "apply", "--jail", "web;x", "--dry-run")

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"not a key\n", "is not an unencrypted PEM private key"),
            (
                ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                "is not an RSA key",
            ),
        ],
    )
    def test_signing_key_file_that_is_not_an_rsa_private_key(
        self, tmp_path: Path, content: bytes, message: str
    ) -> None:
        path = tmp_path / "bad.key"
        path.write_bytes(content)
        with pytest.raises(ConsumerError, match=f"signing.key_file {path} {message}"):
            run_cli(farm(path), "consumer-config")

    @pytest.mark.parametrize(
        ("kind", "message"),
        [
            ("garbage", r"is not a PEM public key \(-----BEGIN PUBLIC KEY-----\)"),
            ("private", "is a private key; give its public key"),
            ("ec", "is not an RSA key"),
        ],
    )
    def test_pubkey_that_is_not_an_rsa_public_key(
        self, tmp_path: Path, key: bytes, kind: str, message: str
    ) -> None:
        ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        content = {
            "garbage": b"-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n",
            "private": key,
            "ec": ec_pub.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        }[kind]
        path = tmp_path / "k.pub"
        path.write_bytes(content)
        with pytest.raises(ConsumerError, match=message):
            run_cli(farm(command=True), "consumer-config", "--pubkey", str(path))

    def test_fingerprints_mode_needs_the_public_key(self) -> None:
        with pytest.raises(ConsumerError, match=r"fingerprints mode.*--pubkey FILE"):
            run_cli(farm(command=True), "consumer-config")

    def test_unreadable_key_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConsumerError, match=r"cannot read signing.key_file .*missing.key"):
            run_cli(farm(tmp_path / "missing.key"), "consumer-config")

    def test_bad_url_and_name_from_the_command_line(self, key_file: Path) -> None:
        with pytest.raises(ConsumerError, match="implies SRV"):
            run_cli(farm(key_file), "consumer-config", "--url", "pkg+http://pkg.example")
        with pytest.raises(InvalidName, match="pkg repository name 'my-repo'"):
            run_cli(farm(key_file), "consumer-config", "--name", "my-repo")


class FakeSigningCommand:
    """A signing_command that signs with `key` and sends `cert` after CERT, byte for byte."""

    def __init__(self, key: bytes, cert: bytes) -> None:
        self.key, self.cert = key, cert

    def run(self, cmd: Cmd) -> defer.Deferred[Result]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        private = serialization.load_pem_private_key(self.key, password=None)
        assert isinstance(private, rsa.RSAPrivateKey) and cmd.stdin is not None
        sig = private.sign(cmd.stdin.rstrip(b"\n"), padding.PKCS1v15(), hashes.SHA256())
        return defer.succeed(
            Result(cmd, 0, b"SIGNATURE\n" + sig + b"\nCERT\n" + self.cert + b"END\n")
        )


def make_repository(root: Path) -> Path:
    stage = root.parent / "stage"
    (stage / "usr/local/share").mkdir(parents=True)
    (stage / "usr/local/share/hello").write_bytes(b"Hello from jailfarm!\n")
    os.utime(stage / "usr/local/share/hello", (1_700_000_000, 1_700_000_000))
    (root / "All").mkdir(parents=True)
    write_package(root / "All" / HELLO.filename, HELLO, stage, ["share/hello"])
    return root


def installed(out: Path, conf: Mapping[str, str], key: str) -> Path:
    """Where the consumer's config says its key is, inside the tree written at `out`."""
    return out / conf[key].strip('"').lstrip("/")


class RoundTripTests:
    """The rendered tree, read back through its own config, verifies a repository signed by
    the farm's key exactly as the pkg client checks it, and rejects another key's."""

    def test_fingerprints_tree_trusts_the_signing_command(
        self, tmp_path: Path, key: bytes, other_key: bytes
    ) -> None:
        # The signer sends a PKCS#1 PEM: the client hashes the CERT bytes as sent, so the
        # trusted file must be made from those bytes, not a re-encoded key.
        private = serialization.load_pem_private_key(key, password=None)
        cert = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
        repo = make_repository(tmp_path / "repo")
        signer = CommandSigner(FakeSigningCommand(key, cert), ["/usr/local/bin/sign", "repo"])
        resolve(write_repository(repo, signer=signer))
        for name, pub in (("ours", cert), ("theirs", public_key_pem(other_key))):
            (tmp_path / f"{name}.pub").write_bytes(pub)
            out = tmp_path / name
            argv = ["consumer-config", "--pubkey", str(tmp_path / f"{name}.pub")]
            run_cli(farm(command=True), *argv, "--out", str(out))
            conf = ucl_pairs((out / f"usr/local/etc/pkg/repos/{NAME}.conf").read_text())
            keys = installed(out, conf, "fingerprints")
            assert (keys / "trusted" / NAME).read_text() == fingerprint_file(pub)
            problems = check_repository(repo, fingerprints_dir=keys)
            expected = [] if name == "ours" else ["data.pkg: No trusted public keys found"]
            assert problems == expected

    def test_pubkey_tree_verifies_the_key_file_signature(
        self, tmp_path: Path, key_file: Path, other_key: bytes
    ) -> None:
        repo = make_repository(tmp_path / "repo")
        resolve(write_repository(repo, signer=KeyFileSigner(key_file)))
        out = tmp_path / "out"
        run_cli(farm(key_file), "consumer-config", "--out", str(out))
        conf = ucl_pairs((out / f"usr/local/etc/pkg/repos/{NAME}.conf").read_text())
        pub = installed(out, conf, "pubkey").read_bytes()
        assert check_repository(repo, pubkey_pem=pub) == []
        other = tmp_path / "other.key"
        other.write_bytes(other_key)
        resolve(write_repository(repo, signer=KeyFileSigner(other)))
        assert check_repository(repo, pubkey_pem=pub) == [
            "data.pkg: signature verification failure"
        ]
