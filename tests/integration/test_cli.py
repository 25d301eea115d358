"""The `jailfarm` console script as users run it: config check, doctor, the smoke job."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JAILFARM = str(Path(sys.executable).with_name("jailfarm"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JAILFARM, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_config_check_accepts_the_example_and_lists_every_error_of_a_broken_file(
    tmp_path: Path,
) -> None:
    ok = run("config", "check", str(ROOT / "examples" / "farm.toml"))
    assert ok.returncode == 0, ok.stderr
    assert "ok (linux-dev farm 'demo'" in ok.stdout
    broken = tmp_path / "farm.toml"
    broken.write_text(
        '[farm]\nplatform = "solaris"\nprefix = "-x"\n'
        '[zfs]\npool = "tank"\nroot = "other/farm"\nreserve = "12Q"\n'
        '[[trees]]\nname = "a-b"\nurl = "x"\nbranch = "main; rm -rf /"\n'
    )
    bad = run("config", "check", str(broken))
    assert bad.returncode == 2
    for key in (
        "farm.platform",
        "farm.prefix",
        "zfs.root",
        "zfs.reserve",
        "trees[0].name",
        "trees[0].branch",
    ):
        assert key in bad.stderr, (key, bad.stderr)
    assert "'12Q'" in bad.stderr


def test_doctor_passes_on_a_host_set_up_by_install_sh() -> None:
    result = run("doctor", "-c", str(ROOT / "examples" / "farm.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    assert "[ok  ] namespaces" in result.stdout


@pytest.fixture
def smoke_config(tmp_path: Path) -> Path:
    tag = secrets.token_hex(3)
    cfg = tmp_path / "farm.toml"
    cfg.write_text(
        (ROOT / "examples" / "farm.toml")
        .read_text()
        .replace('pool = "jailfarm"', f'pool = "jfs{tag}"')
        .replace('root = "jailfarm/demo"', f'root = "jfs{tag}/demo"')
        .replace("/var/lib/jailfarm", str(tmp_path / "state"))
        .replace('mountpoint = "/jf"', f'mountpoint = "/tmp/jfs{tag}"')
    )
    yield cfg
    shutil.rmtree(f"/tmp/jfs{tag}", ignore_errors=True)


def test_smoke_runs_a_jail_cycle_and_leaves_nothing(smoke_config: Path) -> None:
    pool = smoke_config.read_text().split('pool = "')[1].split('"')[0]
    result = run("smoke", "-c", str(smoke_config))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in (
        "pool " + pool + " created",
        "cloned ",
        "jail jfsmoke started",
        "hostname -> jfsmoke.jailfarm",
        "nested jail inside jfsmoke: hostname b01",
        "verified: no clone",
        "smoke: OK",
    ):
        assert line in out, (line, out)
    pools = subprocess.run(
        ["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert pool not in pools
    assert not (smoke_config.parent / "state" / "pool.img").exists()
