"""jailfarm: a CI build farm for FreeBSD packages.

The shared core: farm configuration, the command seam, host platforms and the CLI.
"""
