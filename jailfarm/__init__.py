"""jailfarm: a CI build farm for FreeBSD packages (shared core: config, command seam, host platforms, CLI)."""
