# bsd.port.subdir.mk -- the top-level and category Makefiles of the demo ports tree.
#
# Mirrors FreeBSD's Mk/bsd.port.subdir.mk in the one way builders rely on: the tree is
# described by `SUBDIR += name` lines, one per line (poudriere's `bulk -a` reads them with
# awk from ${PORTSDIR}/Makefile and ${PORTSDIR}/<category>/Makefile), and
# `bmake -V SUBDIR` lists them.
#
# Target:
#   describe  one INDEX line per port below this directory (FreeBSD's `make index` input).

.MAIN: all

all:
	@echo "Nothing to build here; run a target in a port directory (category/port)."

describe: .PHONY
.for _sub in ${SUBDIR}
	@${MAKE} -C ${.CURDIR}/${_sub} describe
.endfor
