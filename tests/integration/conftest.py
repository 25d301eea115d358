"""Integration fixtures: the real zfs-fuse daemon of the Linux dev host.

The daemon is a host-wide singleton (it serves /run/zfs/zfs_socket). If one already answers,
the tests use it and leave it alone; otherwise this session starts one and stops it by the PID
it wrote. Each test makes and destroys its own file-backed pool (see tests/integration/host.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


def _answers() -> bool:
    cmd = ["zpool", "list", "-H", "-o", "name"]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session", autouse=True)
def zfs_daemon() -> Iterator[None]:
    if os.geteuid() != 0 or not shutil.which("zfs-fuse"):
        pytest.fail("integration tests need root and zfs-fuse: run `bash install.sh` first")
    if _answers():
        yield
        return
    piddir = Path(tempfile.mkdtemp(prefix="jf-zfsd-"))
    pidfile = piddir / "zfs-fuse.pid"
    # A daemon that is still shutting down (someone else's) holds the lock for a few seconds.
    for _ in range(30):
        if subprocess.run(["zfs-fuse", "--pidfile", str(pidfile)], check=False).returncode == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail("zfs-fuse does not start (is another daemon holding /run/lock/zfs?)")
    for _ in range(100):
        if _answers():
            break
        time.sleep(0.1)
    else:
        pytest.fail("zfs-fuse started but does not answer")
    pid = int(pidfile.read_text())
    try:
        yield
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(piddir, ignore_errors=True)
