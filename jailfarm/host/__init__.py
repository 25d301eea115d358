"""Host platforms: ZFS and jail operations for FreeBSD and for the Linux development host."""
