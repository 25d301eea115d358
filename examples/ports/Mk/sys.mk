# sys.mk -- bmake's "system rules" for the demo ports tree.
#
# FreeBSD's make reads /usr/share/mk/sys.mk before every Makefile. bmake run as
#   bmake -m <tree>/Mk ...
# looks for sys.mk only in the -m directories, so the tree ships this small one.
# It keeps only what the ports framework relies on.

# FreeBSD's `make -V VAR` prints the expanded value; bmake prints the raw value unless
# this is set. With it, `bmake -V PKGNAME` prints `jf-hello-1.0_1`, not
# `${PKGNAMEPREFIX}${PORTNAME}...`.
.MAKE.EXPAND_VARIABLES=	yes

# No implicit suffix rules: every port says how it is built (do-build) or ships its own
# portable Makefile. Clearing them also keeps `make -V` queries fast.
.SUFFIXES:

# Defaults that FreeBSD's sys.mk provides and the framework uses.
CC?=		cc
CFLAGS?=	-O2 -pipe
AR?=		ar
