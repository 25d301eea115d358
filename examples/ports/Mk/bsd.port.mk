# bsd.port.mk -- the framework of the demo ports tree.
#
# A small subset of FreeBSD's /usr/ports/Mk/bsd.port.mk for bmake and POSIX sh. A port's
# Makefile sets PORTNAME, PORTVERSION, ... and ends with `.include <bsd.port.mk>`. Run it as
# FreeBSD's make is run, with the tree's Mk/ as the system include directory:
#
#   bmake -m <tree>/Mk -C <tree>/<category>/<port> [VAR=value ...] <target>
#   bmake -m <tree>/Mk -C <tree>/<category>/<port> -V PKGNAME -V IGNORE ...
#
# Phases, in FreeBSD's order (each one runs the phases before it unless they are done;
# extract..stage leave a cookie in WRKDIR, as FreeBSD does, so each runs once):
#
#   fetch checksum extract patch configure build stage   (+ check-plist package install)
#   and the dependency checks pkg-depends fetch-depends extract-depends patch-depends
#   build-depends lib-depends run-depends that poudriere runs as phases of their own.
#
# Deliberate differences from FreeBSD (see examples/ports/README.md):
#   * Dependencies are never built or installed here. The *-depends targets only check that
#     each one is present under LOCALBASE (or on PATH) and fail otherwise: the builder
#     installs them first, as poudriere does with USE_PACKAGE_DEPENDS.
#   * Sources are local files: MASTER_SITES defaults to file://<port>/src/ and fetch copies.
#   * PREFIX does not follow LOCALBASE: LOCALBASE is where dependencies are found (a build
#     root's usr/local), PREFIX is where the package installs (/usr/local).
#   * `package` runs no pkg-create; the builder packs STAGEDIR itself (TMPPLIST lists it).
#   * `install` copies the staged files into DESTDIR${PREFIX} and refuses an empty DESTDIR
#     unless INSTALL_TO_SYSTEM=yes.

# FreeBSD: `make` alone in a port directory builds and stages it.
.MAIN: all
# Phases and their pre-/do-/post- hooks run one after another even under `make -jN` (FreeBSD
# orders them with .ORDER; -jN still reaches a distribution's own Makefile via MAKEFLAGS).
.NOTPARALLEL:

# ---------------------------------------------------------------------------------------
# Required variables (FreeBSD refuses a port without them, too).
.for _v in PORTNAME PORTVERSION CATEGORIES COMMENT MAINTAINER
.  if !defined(${_v}) || empty(${_v})
.    error ${.CURDIR}: ${_v} is not set
.  endif
.endfor

# ---------------------------------------------------------------------------------------
# Names. PKGNAME = ${PKGNAMEPREFIX}${PORTNAME}${PKGNAMESUFFIX}-${PKGVERSION}, where
# PKGVERSION is PORTVERSION[_PORTREVISION][,PORTEPOCH] and a revision or epoch of 0 is
# left out (FreeBSD: bsd.port.mk "PKGVERSION").
PORTSDIR?=	${.CURDIR:H:H}
PORTREVISION?=	0
PORTEPOCH?=	0
.if ${PORTREVISION} != 0
_SUF1=		_${PORTREVISION}
.endif
.if ${PORTEPOCH} != 0
_SUF2=		,${PORTEPOCH}
.endif
PKGVERSION=	${PORTVERSION}${_SUF1}${_SUF2}
PKGBASE?=	${PKGNAMEPREFIX}${PORTNAME}${PKGNAMESUFFIX}
PKGNAME=	${PKGBASE}-${PKGVERSION}
DISTNAME?=	${PORTNAME}-${PORTVERSION}
# The origin is the port's place in the tree: <category dir>/<port dir>. (FreeBSD builds it
# from the first CATEGORY and the directory name; the directory is what builders use.)
PKGORIGIN?=	${.CURDIR:H:T}/${.CURDIR:T}
PKGCATEGORY?=	${CATEGORIES:[1]}

# Flavors: none of the demo ports has any. FLAVOR=x for an unknown x is an error, as in
# FreeBSD, so a builder asking for origin@flavor hears about a bad flavor at once.
FLAVORS?=
FLAVOR?=
.if !empty(FLAVOR) && empty(FLAVORS:M${FLAVOR})
.  error ${PKGORIGIN}: Unknown flavor '${FLAVOR}', possible flavors: ${FLAVORS}.
.endif

# ---------------------------------------------------------------------------------------
# Directories (FreeBSD names and defaults, except PREFIX, see above).
LOCALBASE?=	/usr/local
PREFIX?=	/usr/local
WRKDIRPREFIX?=
WRKDIR?=	${WRKDIRPREFIX}${.CURDIR}/work
WRKSRC?=	${WRKDIR}/${DISTNAME}
STAGEDIR?=	${WRKDIR}/stage
DESTDIR?=
DISTDIR?=	${PORTSDIR}/distfiles
# FreeBSD's DIST_SUBDIR defaults to empty. Our distfiles are plain source files with
# common names (hello.c), so each port keeps them in a subdirectory of its own.
DIST_SUBDIR?=	${PORTNAME}
_DISTDIR=	${DISTDIR}/${DIST_SUBDIR}
.if empty(DIST_SUBDIR)
_DISTKEY_PREFIX=
.else
_DISTKEY_PREFIX=	${DIST_SUBDIR}/
.endif
DISTFILES?=
MASTER_SITES?=	file://${.CURDIR}/src/
FILESDIR?=	${.CURDIR}/files
PATCHDIR?=	${.CURDIR}/files
DISTINFO_FILE?=	${.CURDIR}/distinfo
DESCR?=		${.CURDIR}/pkg-descr
PLIST?=		${.CURDIR}/pkg-plist
# The port's plist after PLIST_SUB, written by stage (FreeBSD: TMPPLIST, generate-plist).
TMPPLIST?=	${WRKDIR}/.PLIST.mktmp
MTREE_FILE?=	${PORTSDIR}/Templates/BSD.local.dist

# ---------------------------------------------------------------------------------------
# Tools and flags. As with FreeBSD's USES=localbase, headers and libraries are looked up in
# LOCALBASE, so a dependency installed into a build root's usr/local is found.
CPPFLAGS+=	-I${LOCALBASE}/include
LDFLAGS+=	-L${LOCALBASE}/lib
SETENV?=	env
ECHO_MSG?=	echo
MKDIR?=		mkdir -p
SHA256?=	sha256sum
PATCH?=		patch
PATCH_ARGS?=	-d ${WRKSRC} -E -p0 -s
INSTALL?=	install
INSTALL_PROGRAM?=	${INSTALL} -m 555
INSTALL_SCRIPT?=	${INSTALL} -m 555
INSTALL_LIB?=		${INSTALL} -m 444
INSTALL_DATA?=		${INSTALL} -m 444
# The default do-build/do-install run the distribution's own Makefile (FreeBSD: MAKE_CMD,
# MAKE_ENV, MAKE_ARGS, ALL_TARGET, INSTALL_TARGET; DESTDIR points at STAGEDIR).
MAKE_CMD?=	${MAKE}
MAKE_ENV+=	CC=${CC:Q} CFLAGS=${CFLAGS:Q} CPPFLAGS=${CPPFLAGS:Q} LDFLAGS=${LDFLAGS:Q} \
		PREFIX=${PREFIX:Q} LOCALBASE=${LOCALBASE:Q}
MAKE_ARGS+=	PREFIX=${PREFIX}
ALL_TARGET?=	all
INSTALL_TARGET?=	install

# Programs installed by dependencies are found first (FreeBSD puts LOCALBASE/bin on PATH).
PATH:=		${LOCALBASE}/sbin:${LOCALBASE}/bin:${PATH}
.export PATH

# Substitutions applied to pkg-plist/PLIST_FILES: %%PREFIX%% etc. (FreeBSD: PLIST_SUB).
PLIST_SUB+=	PREFIX=${PREFIX} LOCALBASE=${LOCALBASE} PORTNAME=${PORTNAME} \
		PORTVERSION=${PORTVERSION}
_PLIST_SED=	${PLIST_SUB:C,^([^=]*)=(.*),-e 's|%%\1%%|\2|g',}

# ---------------------------------------------------------------------------------------
# IGNORE and BROKEN. A port with IGNORE set fails every build target (below). poudriere
# reads `make -V IGNORE` to list the port as ignored without trying to build it. BROKEN
# becomes IGNORE unless TRYBROKEN is set (FreeBSD: bsd.port.mk "BROKEN").
.if defined(BROKEN) && !empty(BROKEN) && !defined(TRYBROKEN)
IGNORE?=	is marked as broken: ${BROKEN}
.endif

# ---------------------------------------------------------------------------------------
# Dependencies, in FreeBSD syntax: `<what>:<origin>[:<target>]`, where <what> is
#   LIB_DEPENDS           a library file name (libjf.so) looked up in ${LOCALBASE}/lib;
#   the other *_DEPENDS   an absolute path (tested with -e) or a program (found on PATH).
# <origin> is `category/port[@flavor]` (an old-style ${PORTSDIR}/ prefix is accepted).
#
# For builders, each list is also given as origins, sorted and unique, one `-V` each:
#   PKG_ FETCH_ EXTRACT_ PATCH_ BUILD_ LIB_ RUN_DEPENDS_ORIGINS
#   ALL_BUILD_DEPENDS_ORIGINS   needed before building (PKG FETCH EXTRACT PATCH BUILD LIB)
#   ALL_RUN_DEPENDS_ORIGINS     needed when the package is installed (LIB RUN)
#   ALL_DEPENDS_ORIGINS         both (what poudriere installs into the builder's jail)
# (poudriere itself asks for `-V '${_PDEPS:C,([^:]*):([^:]*):?.*,\2,:C,^${PORTSDIR}/,,:O:u}'`;
# that expression works here too.)
_DEPEND_TYPES=	PKG FETCH EXTRACT PATCH BUILD LIB RUN
.for _t in ${_DEPEND_TYPES}
${_t}_DEPENDS?=
${_t}_DEPENDS_ORIGINS=	${${_t}_DEPENDS:C,^[^:]*:([^:]*).*,\1,:S,^${PORTSDIR}/,,:O:u}
.endfor
ALL_BUILD_DEPENDS_ORIGINS=	${PKG_DEPENDS_ORIGINS} ${FETCH_DEPENDS_ORIGINS} \
	${EXTRACT_DEPENDS_ORIGINS} ${PATCH_DEPENDS_ORIGINS} ${BUILD_DEPENDS_ORIGINS} \
	${LIB_DEPENDS_ORIGINS}
ALL_BUILD_DEPENDS_ORIGINS:=	${ALL_BUILD_DEPENDS_ORIGINS:O:u}
ALL_RUN_DEPENDS_ORIGINS=	${LIB_DEPENDS_ORIGINS} ${RUN_DEPENDS_ORIGINS}
ALL_RUN_DEPENDS_ORIGINS:=	${ALL_RUN_DEPENDS_ORIGINS:O:u}
ALL_DEPENDS_ORIGINS=	${ALL_BUILD_DEPENDS_ORIGINS} ${ALL_RUN_DEPENDS_ORIGINS}
ALL_DEPENDS_ORIGINS:=	${ALL_DEPENDS_ORIGINS:O:u}

# ---------------------------------------------------------------------------------------
# Cookies: a phase that finished leaves one in WRKDIR (FreeBSD: EXTRACT_COOKIE etc.).
# They are tested when the Makefile is read, so a finished phase is a no-op next time.
_COOKIE_SUFX=	${PORTNAME}.${PREFIX:S/\//_/g}
EXTRACT_COOKIE?=	${WRKDIR}/.extract_done.${_COOKIE_SUFX}
PATCH_COOKIE?=		${WRKDIR}/.patch_done.${_COOKIE_SUFX}
CONFIGURE_COOKIE?=	${WRKDIR}/.configure_done.${_COOKIE_SUFX}
BUILD_COOKIE?=		${WRKDIR}/.build_done.${_COOKIE_SUFX}
STAGE_COOKIE?=		${WRKDIR}/.stage_done.${_COOKIE_SUFX}

_BUILD_TARGETS=	fetch checksum extract patch configure build stage check-plist \
		package install all makesum \
		pkg-depends fetch-depends extract-depends patch-depends build-depends \
		lib-depends run-depends depends
.PHONY: ${_BUILD_TARGETS} clean describe generate-plist stage-dir

clean:
	@${ECHO_MSG} "===>  Cleaning for ${PKGNAME}"
	@rm -rf ${WRKDIR}

# One line in FreeBSD's INDEX format (FreeBSD: `make describe`):
# pkgname|portdir|prefix|comment|descr|maintainer|categories|extract-deps|patch-deps|
# fetch-deps|build-deps|run-deps|www
describe:
	@echo "${PKGNAME}|${.CURDIR}|${PREFIX}|${COMMENT}|${DESCR}|${MAINTAINER}|${CATEGORIES}|${EXTRACT_DEPENDS_ORIGINS:@o@${PORTSDIR}/${o}@}|${PATCH_DEPENDS_ORIGINS:@o@${PORTSDIR}/${o}@}|${FETCH_DEPENDS_ORIGINS:@o@${PORTSDIR}/${o}@}|${ALL_BUILD_DEPENDS_ORIGINS:@o@${PORTSDIR}/${o}@}|${ALL_RUN_DEPENDS_ORIGINS:@o@${PORTSDIR}/${o}@}|${WWW}"

.if defined(IGNORE) && !empty(IGNORE)
# ---------------------------------------------------------------------------------------
# An IGNOREd port: every build target fails at once (FreeBSD: "ignore-message").
.  for _target in ${_BUILD_TARGETS}
${_target}:
	@${ECHO_MSG} "===>  ${PKGNAME} is marked as IGNORE: "${IGNORE:Q} >&2
	@false
.  endfor

.else
# ---------------------------------------------------------------------------------------
# Dependency checks. FreeBSD would build a missing dependency here; this tree leaves that
# to the builder and fails with the origin to install. NO_DEPENDS=yes skips the checks.
.  for _t in ${_DEPEND_TYPES}
${_t:tl}-depends:
.    if !defined(NO_DEPENDS) && !empty(${_t}_DEPENDS)
	@for _dep in ${${_t}_DEPENDS}; do \
	    _what=$${_dep%%:*}; _origin=$${_dep#*:}; _origin=$${_origin%%:*}; _found=; \
	    if [ "${_t}" = LIB ]; then \
	        _kind="shared library"; [ -e "${LOCALBASE}/lib/$$_what" ] && _found=yes; \
	    else case $$_what in \
	        /*) _kind=file; [ -e "$$_what" ] && _found=yes;; \
	        *) _kind=executable; command -v "$$_what" >/dev/null 2>&1 && _found=yes;; \
	    esac; fi; \
	    if [ -n "$$_found" ]; then \
	        ${ECHO_MSG} "===>   ${PKGNAME} depends on $$_kind: $$_what - found"; \
	    else \
	        ${ECHO_MSG} "===>   ${PKGNAME} depends on $$_kind: $$_what - not found" >&2; \
	        ${ECHO_MSG} "===>   Install $$_origin under LOCALBASE=${LOCALBASE} first (this tree does not build dependencies)" >&2; \
	        exit 1; \
	    fi; \
	done
.    endif
.  endfor
depends: pkg-depends fetch-depends extract-depends patch-depends build-depends \
	lib-depends run-depends

# Default pre-/do-/post- hooks: a port overrides any of them by defining the target.
.  for _phase in extract patch configure build install
.    for _hook in pre post
.      if !target(${_hook}-${_phase})
${_hook}-${_phase}: .PHONY
.      endif
.    endfor
.  endfor

# ---------------------------------------------------------------------------------------
# fetch: copy each distfile from a file:// MASTER_SITES entry into DISTDIR/DIST_SUBDIR,
# unless it is there already (FreeBSD: do-fetch; no network here).
fetch: fetch-depends
.  if !empty(DISTFILES)
	@${MKDIR} ${_DISTDIR}
	@for _f in ${DISTFILES}; do \
	    [ -f ${_DISTDIR}/$$_f ] && continue; \
	    ${ECHO_MSG} "=> $$_f doesn't seem to exist in ${_DISTDIR}."; \
	    _ok=; for _site in ${MASTER_SITES}; do \
	        case $$_site in file://*) ;; *) continue;; esac; \
	        _src=$${_site#file://}; \
	        if [ -f "$$_src/$$_f" ]; then \
	            ${ECHO_MSG} "=> Attempting to fetch $$_site$$_f"; \
	            cp "$$_src/$$_f" ${_DISTDIR}/$$_f && _ok=yes && break; \
	        fi; \
	    done; \
	    if [ -z "$$_ok" ]; then \
	        ${ECHO_MSG} "=> Couldn't fetch it - please try to retrieve this port manually into ${_DISTDIR} and try again." >&2; \
	        exit 1; \
	    fi; \
	done
.  endif

# checksum: every distfile must match its SHA256 and SIZE lines in distinfo
# (FreeBSD: do-checksum; the keys are DIST_SUBDIR/file, as in FreeBSD).
checksum: fetch
.  if !empty(DISTFILES)
	@[ -f ${DISTINFO_FILE} ] || { ${ECHO_MSG} "=> No checksum file (${DISTINFO_FILE})." >&2; exit 1; }
	@for _f in ${DISTFILES}; do \
	    _key=${_DISTKEY_PREFIX}$$_f; \
	    _want=`awk -F ' = ' -v k="SHA256 ($$_key)" '$$1 == k { print $$2 }' ${DISTINFO_FILE}`; \
	    _size=`awk -F ' = ' -v k="SIZE ($$_key)" '$$1 == k { print $$2 }' ${DISTINFO_FILE}`; \
	    if [ -z "$$_want" ]; then \
	        ${ECHO_MSG} "=> No SHA256 checksum recorded for $$_key." >&2; exit 1; \
	    fi; \
	    _got=`${SHA256} < ${_DISTDIR}/$$_f | awk '{ print $$1 }'`; \
	    _gotsize=`wc -c < ${_DISTDIR}/$$_f | tr -d ' '`; \
	    if [ "$$_got" != "$$_want" ]; then \
	        ${ECHO_MSG} "=> SHA256 Checksum mismatch for $$_key." >&2; exit 1; \
	    fi; \
	    if [ -n "$$_size" ] && [ "$$_gotsize" != "$$_size" ]; then \
	        ${ECHO_MSG} "=> Size mismatch for $$_key: $$_gotsize bytes, distinfo says $$_size." >&2; exit 1; \
	    fi; \
	    ${ECHO_MSG} "=> SHA256 Checksum OK for $$_key."; \
	done
.  endif

# makesum: (re)write distinfo from the distfiles (FreeBSD: makesum). Maintainers only.
makesum: fetch
	@{ echo "TIMESTAMP = `date +%s`"; \
	for _f in ${DISTFILES}; do \
	    _key=${_DISTKEY_PREFIX}$$_f; \
	    echo "SHA256 ($$_key) = `${SHA256} < ${_DISTDIR}/$$_f | awk '{ print $$1 }'`"; \
	    echo "SIZE ($$_key) = `wc -c < ${_DISTDIR}/$$_f | tr -d ' '`"; \
	done; } > ${DISTINFO_FILE}

# extract: a tarball is unpacked into WRKDIR, a plain file copied into WRKSRC.
.  if !target(do-extract)
do-extract: .PHONY
	@${MKDIR} ${WRKSRC}
	@for _f in ${DISTFILES}; do \
	    case $$_f in \
	        *.tar|*.tar.*|*.tgz) tar -xf ${_DISTDIR}/$$_f -C ${WRKDIR};; \
	        *) cp ${_DISTDIR}/$$_f ${WRKSRC}/;; \
	    esac; \
	done
.  endif
.  if exists(${EXTRACT_COOKIE})
extract:
.  else
extract: checksum extract-depends
	@${ECHO_MSG} "===>  Extracting for ${PKGNAME}"
	@${MKDIR} ${WRKDIR}
	@${MAKE} -C ${.CURDIR} pre-extract do-extract post-extract
	@touch ${EXTRACT_COOKIE}
.  endif

# patch: apply ${PATCHDIR}/patch-* in name order with -p0 from WRKSRC (FreeBSD:
# do-patch, "Applying FreeBSD patches").
.  if !target(do-patch)
do-patch: .PHONY
	@for _p in ${PATCHDIR}/patch-*; do \
	    [ -f "$$_p" ] || continue; \
	    ${ECHO_MSG} "===>  Applying FreeBSD patches for ${PKGNAME} from ${PATCHDIR}: $${_p##*/}"; \
	    ${PATCH} ${PATCH_ARGS} < $$_p || exit 1; \
	done
.  endif
.  if exists(${PATCH_COOKIE})
patch:
.  else
patch: extract patch-depends
	@${ECHO_MSG} "===>  Patching for ${PKGNAME}"
	@${MAKE} -C ${.CURDIR} pre-patch do-patch post-patch
	@touch ${PATCH_COOKIE}
.  endif

# configure: only what the port defines (FreeBSD would also run GNU configure etc.).
# Build and library dependencies are checked first, as in FreeBSD's _CONFIGURE_SEQ.
.  if !target(do-configure)
do-configure: .PHONY
.  endif
.  if exists(${CONFIGURE_COOKIE})
configure:
.  else
configure: patch build-depends lib-depends
	@${ECHO_MSG} "===>  Configuring for ${PKGNAME}"
	@${MAKE} -C ${.CURDIR} pre-configure do-configure post-configure
	@touch ${CONFIGURE_COOKIE}
.  endif

# build: the port's do-build, or the distribution's Makefile, or nothing with NO_BUILD.
.  if !target(do-build)
do-build: .PHONY
.    if !defined(NO_BUILD)
	@cd ${WRKSRC} && ${SETENV} ${MAKE_ENV} ${MAKE_CMD} ${MAKE_ARGS} ${ALL_TARGET}
.    endif
.  endif
.  if exists(${BUILD_COOKIE})
build:
.  else
build: configure
	@${ECHO_MSG} "===>  Building for ${PKGNAME}"
	@${MAKE} -C ${.CURDIR} pre-build do-build post-build
	@touch ${BUILD_COOKIE}
.  endif

# stage: install into ${STAGEDIR}${PREFIX}. Run dependencies are checked first, the
# standard directories are made from Templates/BSD.local.dist (FreeBSD: stage-dir, from
# the mtree file), the plist is generated, then pre-/do-/post-install.
stage-dir:
	@${MKDIR} ${STAGEDIR}${PREFIX}
	@grep -v '^#' ${MTREE_FILE} | while read -r _d; do \
	    [ -n "$$_d" ] && ${MKDIR} ${STAGEDIR}${PREFIX}/$$_d; \
	done; true

generate-plist:
	@${MKDIR} ${WRKDIR}
	@{ for _f in ${PLIST_FILES}; do echo "$$_f"; done; \
	   if [ -f ${PLIST} ]; then cat ${PLIST}; fi; } \
	 | sed ${_PLIST_SED} > ${TMPPLIST}

.  if !target(do-install)
do-install: .PHONY
.    if !defined(NO_INSTALL)
	@cd ${WRKSRC} && ${SETENV} ${MAKE_ENV} ${MAKE_CMD} ${MAKE_ARGS} DESTDIR=${STAGEDIR} \
	    ${INSTALL_TARGET}
.    endif
.  endif
.  if exists(${STAGE_COOKIE})
stage:
.  else
stage: build run-depends
	@${ECHO_MSG} "===>  Staging for ${PKGNAME}"
	@${MAKE} -C ${.CURDIR} stage-dir generate-plist pre-install do-install post-install
	@touch ${STAGE_COOKIE}
.  endif

# check-plist: the files under STAGEDIR must be exactly the plist's entries (FreeBSD:
# check-plist, "Orphaned" = staged but not listed, "Missing" = listed but not staged).
# Entries are relative to PREFIX; lines starting with @ (@comment, @dir, ...) are skipped.
check-plist: stage
	@${ECHO_MSG} "====> Checking for pkg-plist issues (check-plist)"
	@cd ${STAGEDIR} && find . \( -type f -o -type l \) | sed -e 's|^\.||' \
	    -e 's|^${PREFIX}/||' | LC_ALL=C sort > ${WRKDIR}/.staged-plist
	@grep -v '^@' ${TMPPLIST} | sed -e '/^$$/d' -e 's|^${PREFIX}/||' | LC_ALL=C sort -u \
	    > ${WRKDIR}/.expected-plist
	@_bad=; \
	${ECHO_MSG} "===> Checking for items in STAGEDIR missing from pkg-plist"; \
	for _f in `LC_ALL=C comm -23 ${WRKDIR}/.staged-plist ${WRKDIR}/.expected-plist`; do \
	    ${ECHO_MSG} "Error: Orphaned: $$_f" >&2; _bad=yes; \
	done; \
	${ECHO_MSG} "===> Checking for items in pkg-plist which are not in STAGEDIR"; \
	for _f in `LC_ALL=C comm -13 ${WRKDIR}/.staged-plist ${WRKDIR}/.expected-plist`; do \
	    ${ECHO_MSG} "Error: Missing: $$_f" >&2; _bad=yes; \
	done; \
	if [ -n "$$_bad" ]; then \
	    ${ECHO_MSG} "===> Error: Plist issues found." >&2; exit 1; \
	fi; \
	${ECHO_MSG} "===> No pkg-plist issues found (check-plist)"

# package: FreeBSD runs pkg-create here. This tree leaves packing to the builder: it packs
# the files listed in TMPPLIST from ${STAGEDIR}${PREFIX} with the metadata from -V
# (PKGNAME PKGORIGIN COMMENT MAINTAINER WWW PREFIX DESCR ALL_RUN_DEPENDS_ORIGINS ...).
package: stage
	@${ECHO_MSG} "===>  ${PKGNAME} is staged in ${STAGEDIR}${PREFIX}; the builder packs it (files: ${TMPPLIST})"

# install: copy the staged files into ${DESTDIR}${PREFIX} (FreeBSD installs the package;
# with DESTDIR it installs into that chroot). An empty DESTDIR means this very system.
install: stage
.    if empty(DESTDIR) && !defined(INSTALL_TO_SYSTEM)
	@${ECHO_MSG} "===>  Refusing to install ${PKGNAME} into ${PREFIX} of this host: set DESTDIR=<root> (or INSTALL_TO_SYSTEM=yes)" >&2
	@false
.    else
	@${ECHO_MSG} "===>  Installing ${PKGNAME} into ${DESTDIR}${PREFIX}"
	@${MKDIR} ${DESTDIR}${PREFIX}
	@cd ${STAGEDIR}${PREFIX} && tar -cf - . | (cd ${DESTDIR}${PREFIX} && tar -xpf -)
.    endif

all: stage
.endif
