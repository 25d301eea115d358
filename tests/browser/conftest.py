"""Browser tests run a whole farm, so they need what the integration tests need: the dev
host's zfs-fuse daemon (tests/integration/conftest.py) and, for the browser, Debian's
chromium and chromium-driver (install.sh installs both)."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.conftest import zfs_daemon

__all__ = ["browser_binaries", "zfs_daemon"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="session", autouse=True)
def browser_binaries() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(
                f"browser tests need {path} (Debian's chromium, chromium-driver): "
                "run `bash install.sh` first"
            )
