"""`jailfarm repo` as users and build steps run it: the console script against a temp farm.toml
(examples/farm.toml with its own state_dir, publish.root and an openssl-made key), and
`repo verify` over HTTP from a server started here on a free loopback port."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from jailfarm.poudriere.pkgsign import fingerprint_file
from tests.unit.test_generations import add

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
JAILFARM = str(Path(sys.executable).with_name("jailfarm"))
SIGN_SH = ROOT / "tests" / "fixtures" / "pkgrepo" / "sign.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JAILFARM, "repo", *args], capture_output=True, text=True, timeout=120, check=False
    )


class Farm:
    """A farm.toml made from examples/farm.toml, with everything under one temp directory."""

    def __init__(self, top: Path, signing: str | None = None) -> None:
        self.top = top
        self.key, self.pub = top / "keys" / "repo.key", top / "keys" / "repo.pub"
        self.key.parent.mkdir()
        subprocess.run(["openssl", "genrsa", "-out", str(self.key), "2048"], check=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(self.key), "-pubout", "-out", str(self.pub)],
            check=True,
            capture_output=True,
        )
        self.root = top / "repo"
        text = (ROOT / "examples" / "farm.toml").read_text()
        signing = signing or f'key_file = "{self.key}"'
        for old, new in (
            ('state_dir = "/var/lib/jailfarm"', f'state_dir = "{top / "state"}"'),
            ('root = "/var/lib/jailfarm/repo"', f'root = "{self.root}"'),
            ('key_file = "/var/lib/jailfarm/keys/repo.key"', signing),
        ):
            assert old in text, old
            text = text.replace(old, new)
        self.config = top / "farm.toml"
        self.config.write_text(text)
        self.src = top / "packages" / "141amd64-default" / ".latest"
        add(self.src, "hello", "1.0")
        add(self.src, "pkg", "1.21.3")

    def repo(self, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run(action, "-c", str(self.config), *args)


@pytest.fixture
def farm(tmp_path: Path) -> Farm:
    return Farm(tmp_path)


def test_publish_list_diff_and_rollback(farm: Farm) -> None:
    first = farm.repo("publish", "main", str(farm.src), "--info", "build=41")
    assert first.returncode == 0, first.stderr
    assert "repo main: published g1: 2 packages" in first.stdout
    add(farm.src, "hello", "1.10")
    add(farm.src, "extra", "0.1")
    second = farm.repo("publish", "main", str(farm.src), "--info", "build=42", "--info", "ref=a b")
    assert second.returncode == 0, second.stderr
    assert "repo main: current -> g2 (was g1)" in second.stdout
    assert "g1 -> g2: 1 added, 0 removed, 1 upgraded, 0 downgraded, 0 rebuilt, 1 unchanged" in (
        second.stdout
    )
    assert "  upgraded   hello 1.0 -> 1.10\n" in second.stdout

    listed = farm.repo("list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "main"
    assert lines[1].startswith("  * g2 ") and lines[1].endswith("build=42 ref=a b")
    assert lines[2].startswith("    g1 ") and "2 packages" in lines[2]

    back = farm.repo("diff", "main", "g2", "1")
    assert "  removed    extra 0.1" in back.stdout
    assert "  downgraded hello 1.10 -> 1.0" in back.stdout

    rolled = farm.repo("rollback", "main")
    assert (rolled.returncode, rolled.stdout) == (0, "repo main: current -> g1 (was g2)\n")
    assert os.readlink(farm.root / "main" / "current") == "g1"
    again = farm.repo("rollback", "main")
    assert again.returncode == 1
    assert again.stderr == (
        "jailfarm repo rollback: nothing to roll back to: g1 is the oldest kept generation "
        "of main\n"
    )
    verified = run("verify", str(farm.root / "main" / "current"), "--pubkey", str(farm.pub))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.endswith("ok: catalogue signature verified (pubkey), 2 packages match\n")


def test_usage_and_config_errors_exit_2(farm: Farm, tmp_path: Path) -> None:
    missing = run("list", "-c", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    bad = farm.repo("rollback", "main", "latest")
    assert bad.returncode == 2 and "'latest' is not a generation" in bad.stderr
    no_trust = run("verify", str(tmp_path))
    assert no_trust.returncode == 2 and "--pubkey" in no_trust.stderr


@pytest.mark.parametrize(
    ("command", "why"),
    [("/bin/false", r"/bin/false exited 1"), ("/bin/true", "signing command wrote nothing")],
    ids=["fails", "silent"],
)
def test_a_failing_signing_command_leaves_current_alone(
    tmp_path: Path, command: str, why: str
) -> None:
    good = Farm(tmp_path)
    assert good.repo("publish", "main", str(good.src)).returncode == 0
    before = {p: p.read_bytes() for p in (good.root / "main" / "current").rglob("*") if p.is_file()}
    broken = good.config.read_text().replace(f'key_file = "{good.key}"', f'command = ["{command}"]')
    good.config.write_text(broken)
    add(good.src, "hello", "2.0")
    result = good.repo("publish", "main", str(good.src))
    assert result.returncode == 1
    assert result.stderr.startswith("jailfarm repo publish: main: publish failed, still serving g1")
    assert why in result.stderr
    assert os.readlink(good.root / "main" / "current") == "g1"
    after = {p: p.read_bytes() for p in (good.root / "main" / "current").rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in (good.root / "main").iterdir() if p.name.startswith("g")) == [
        "g1"
    ]


def test_signing_command_and_fingerprints(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    farm = Farm(
        tmp_path,
        signing=f'command = ["sh", "{SIGN_SH}", "{keys / "repo.key"}", "{keys / "repo.pub"}"]',
    )
    trusted = tmp_path / "fingerprints" / "trusted"
    trusted.mkdir(parents=True)
    (trusted / "jailfarm").write_text(fingerprint_file(farm.pub.read_bytes()))
    published = farm.repo("publish", "main", str(farm.src), "--fingerprints", str(trusted.parent))
    assert published.returncode == 0, published.stderr
    current = farm.root / "main" / "current"
    assert (current / "Latest" / "pkg.pkg.sig").read_bytes().startswith(b"SIGNATURE\n")
    ok = run("verify", str(current), "--fingerprints", str(trusted.parent))
    assert ok.returncode == 0, ok.stderr
    (trusted / "jailfarm").unlink()
    untrusted = run("verify", str(current), "--fingerprints", str(trusted.parent))
    assert untrusted.returncode == 1
    assert "data.pkg: No trusted public keys found" in untrusted.stderr


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; paths in `fail` answer 500, as a broken proxy would."""

    fail: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        if self.path in self.fail:
            self.send_error(500, "Internal Server Error")
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(farm: Farm, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The published generation copied to a served directory: (base URL, directory)."""
    assert farm.repo("publish", "main", str(farm.src)).returncode == 0
    www = tmp_path / "www" / "main"
    shutil.copytree(farm.root / "main" / "current", www, symlinks=True)
    Handler.fail = set()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www.parent))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/main/", www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_verify_over_http(farm: Farm, served: tuple[str, Path]) -> None:
    url, www = served
    ok = run("verify", url, "--pubkey", str(farm.pub))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"{url}: ok: catalogue signature verified (pubkey), 2 packages match\n"

    hashed = next((www / "All" / "Hashed").glob("hello-*.pkg"))
    blob = bytearray(hashed.read_bytes())
    blob[-1] ^= 0xFF
    hashed.write_bytes(bytes(blob))
    tampered = run("verify", url, "--pubkey", str(farm.pub))
    assert tampered.returncode == 1
    first = tampered.stderr.splitlines()[0]
    assert first.startswith(f"jailfarm repo verify: {url}: {url}All/Hashed/hello-1.0~2$")
    assert first.endswith(".pkg: checksum mismatch")

    hashed.unlink()
    gone = run("verify", url, "--pubkey", str(farm.pub))
    assert gone.returncode == 1 and gone.stderr.rstrip().endswith(".pkg: missing")

    Handler.fail = {"/main/data.pkg"}
    error = run("verify", url, "--pubkey", str(farm.pub))
    assert error.returncode == 1
    assert error.stderr == f"jailfarm repo verify: {url}data.pkg: HTTP 500 Internal Server Error\n"


def test_verify_with_the_wrong_key_names_the_catalogue(farm: Farm, tmp_path: Path) -> None:
    assert farm.repo("publish", "main", str(farm.src)).returncode == 0
    other = tmp_path / "other.key"
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True)
    pub = tmp_path / "other.pub"
    subprocess.run(
        ["openssl", "rsa", "-in", str(other), "-pubout", "-out", str(pub)],
        check=True,
        capture_output=True,
    )
    wrong = run("verify", str(farm.root / "main" / "current"), "--pubkey", str(pub))
    assert wrong.returncode == 1
    assert ": data.pkg: signature verification failure" in wrong.stderr.splitlines()[0]
