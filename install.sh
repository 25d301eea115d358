#!/usr/bin/env bash
# Installs what jailfarm needs on a Debian machine (run as root), idempotently:
#   apt: zfs-fuse (ZFS on the dev host), nginx, bmake, git, util-linux (unshare/nsenter/
#        setpriv for namespace jails), python3-venv; chromium and chromium-driver (with a
#        font) for the browser tests in tests/browser/ (Selenium drives them headless)
#   .venv: jailfarm with the pinned dependency set in constraints.txt
# Then run `.venv/bin/jailfarm ...` or `.venv/bin/pytest`.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (apt-get, zfs-fuse, namespaces and mounts need it)" >&2
    exit 1
fi

packages="zfs-fuse nginx bmake gcc libc6-dev patch git util-linux python3 python3-venv
    ca-certificates openssh-client openssh-server chromium chromium-driver fonts-dejavu-core"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install.sh: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: $python is older than 3.11; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.jailfarm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    log=$(mktemp)
    if ! .venv/bin/pip install -q -c constraints.txt -e '.[dev]' >"$log" 2>&1; then
        cat "$log" >&2
        echo "install.sh: pip install failed (log above)" >&2
        exit 1
    fi
    rm -f "$log"
    touch "$stamp"
fi
# The dev host's poudriere is jailfarm's poudriere-compatible builder (worker jails find it first
# on their PATH); the venv is the only place it is called poudriere.
ln -sf jailfarm-poudriere .venv/bin/poudriere
echo "install.sh: ready ($(.venv/bin/python --version), buildbot $(.venv/bin/python -c 'import buildbot; print(buildbot.version)'))"
