"""A thin jail root for the Linux development host: the few files a jail's own tree needs
(shell). Everything else (/usr, /bin, /lib, the Python environment) is bind-mounted read-only
from the host when the jail starts, the thin/base-jail pattern (jails spec i.140)."""

from __future__ import annotations

import os
from pathlib import Path

from jailfarm.host.base import WORKER_UID, WORKER_USER

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    f"{WORKER_USER}:x:{WORKER_UID}:{WORKER_UID}:buildbot worker:/home/{WORKER_USER}:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = f"root:x:0:\n{WORKER_USER}:x:{WORKER_UID}:\nnogroup:x:65534:\n"


def populate(root: Path, hostname: str = "template") -> None:
    """Write the thin root's own files into `root` (an empty dataset mountpoint)."""
    for d in (
        "etc",
        "root",
        "tmp",
        "var/tmp",
        "var/run",
        "var/log",
        "dev",
        "proc",
        f"home/{WORKER_USER}",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (root / d).chmod(0o1777)
    (root / "root").chmod(0o700)
    home = root / "home" / WORKER_USER
    os.chown(home, WORKER_UID, WORKER_UID)
    (root / "etc/passwd").write_text(_PASSWD)
    (root / "etc/group").write_text(_GROUP)
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    resolv = Path("/etc/resolv.conf")
    (root / "etc/resolv.conf").write_text(resolv.read_text() if resolv.exists() else "")
    (root / "etc/fstab").touch()  # some programs fail without one (jails spec a.1 #5)
    # The worker clones ports trees owned by root on the host (bind-mounted read-only); git
    # would refuse them as "dubious ownership" without this, and the jail is thrown away.
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[safe]\n\tdirectory = *\n")
    os.chown(gitconfig, WORKER_UID, WORKER_UID)
