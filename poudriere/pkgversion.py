"""pkg's version ordering (`pkg version -t`), for telling upgrades from downgrades (pure).

Follows `pkg_version_cmp()` in libpkg/pkg_version.c: a version is
`PORTVERSION[_PORTREVISION][,PORTEPOCH]`; PORTEPOCH outranks PORTVERSION, which outranks
PORTREVISION. PORTVERSION is split into components, each a number, a letter (or one of the
special words pl/alpha/beta/pre/rc) and a patch level; missing components count as 0.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

# strtoll() clamps; keep the same ordering for absurdly long digit runs.
_LLONG_MAX = 2**63 - 1
# Special words and the letter value they sort as ("pl" before any letter).
_STAGES = (("pl", 0), ("alpha", 1), ("beta", 2), ("pre", 16), ("rc", 18))


class _Component(NamedTuple):
    number: int
    letter: int
    patch: int


def _alpha(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _digits(s: str, pos: int) -> tuple[int, int]:
    """strtoll(): the number starting at `pos` (clamped) and the index after it."""
    end = pos
    while end < len(s) and s[end].isascii() and s[end].isdigit():
        end += 1
    return min(int(s[pos:end]), _LLONG_MAX), end


def _leading_number(s: str) -> int:
    """strtoul() on what follows '_' or ',': leading digits, 0 if there are none."""
    end = 0
    while end < len(s) and s[end].isascii() and s[end].isdigit():
        end += 1
    return int(s[:end]) if end else 0


def _split(version: str) -> tuple[str, int, int, int]:
    """(string, end of PORTVERSION in it, epoch, revision), like split_version(): the
    revision follows the last '_', the epoch the last ',' after it."""
    start = version.rfind("-") + 1  # a whole pkgname is accepted, as pkg does
    s = version[start:]
    under = s.rfind("_")
    revision = _leading_number(s[under + 1 :]) if under >= 0 else 0
    comma = s.rfind(",", under + 1 if under >= 0 else 0)
    epoch = _leading_number(s[comma + 1 :]) if comma >= 0 else 0
    end = under if under >= 0 else (comma if comma >= 0 else len(s))
    return s, end, epoch, revision


def _stage(s: str, pos: int) -> tuple[str, int] | None:
    for word, value in _STAGES:
        tail = pos + len(word)
        if s[pos:tail].lower() == word and not (tail < len(s) and _alpha(s[tail])):
            return word, value
    return None


def _letter(s: str, pos: int, has_stage: bool) -> tuple[int, int, bool]:
    """The letter part of a component at `pos` (an ASCII letter): (letter value, index after
    it, whether a patch level follows)."""
    stage = _stage(s, pos) if pos + 1 < len(s) and _alpha(s[pos + 1]) else None
    if stage is None:
        letter = ord(s[pos].lower()) - ord("a") + 1  # the first letter; the rest are skipped
        pos += 1
        while pos < len(s) and _alpha(s[pos]):
            pos += 1
        return letter, pos, True
    if has_stage:
        return stage[1], pos + len(stage[0]), True
    # A special word right after a number starts a new component ("10alpha" = "10.a").
    return 0, pos, False


def _component(s: str, pos: int) -> tuple[_Component, int]:
    """get_component(): the next number-letter-patch triple and the index after it and any
    separators that follow."""
    has_stage = False
    if pos < len(s) and s[pos].isascii() and s[pos].isdigit():
        number, pos = _digits(s, pos)
    elif pos < len(s) and s[pos] == "*":
        number = -2  # '*' sorts below everything, and swallows up to the next '+'
        while pos < len(s) and s[pos] != "+":
            pos += 1
    else:
        number, has_stage = -1, True
    letter = patch = 0
    if pos < len(s) and _alpha(s[pos]):
        letter, pos, has_patch = _letter(s, pos, has_stage)
        if has_patch and pos < len(s) and s[pos].isascii() and s[pos].isdigit():
            patch, pos = _digits(s, pos)
        elif has_patch:
            patch = -1
    while pos < len(s) and not (s[pos].isascii() and s[pos].isalnum()) and s[pos] not in "+*":
        pos += 1
    return _Component(number, letter, patch), pos


def _cmp(a: tuple[int, ...] | int, b: tuple[int, ...] | int) -> int:
    if isinstance(a, int) and isinstance(b, int):
        return (a > b) - (a < b)
    assert isinstance(a, tuple) and isinstance(b, tuple)
    return (a > b) - (a < b)


def version_cmp(a: str, b: str) -> int:
    """-1, 0 or 1 as version `a` is older than, the same as or newer than `b`, in pkg's
    order: `1.0_1 > 1.0`, `2.0 < 1.0,1`, `1.0a > 1.0 > 1.0alpha1`, `1.10 > 1.9`."""
    s1, end1, epoch1, rev1 = _split(a)
    s2, end2, epoch2, rev2 = _split(b)
    if epoch1 != epoch2:
        return _cmp(epoch1, epoch2)
    if s1[:end1].lower() != s2[:end2].lower():
        p1 = p2 = 0
        while p1 < end1 or p2 < end2:
            block1, block2 = not (p1 < end1 and s1[p1] != "+"), not (p2 < end2 and s2[p2] != "+")
            c1 = c2 = _Component(0, 0, 0)
            if not block1:
                c1, p1 = _component(s1, p1)
            if not block2:
                c2, p2 = _component(s2, p2)
            if block1 and block2:
                # Both at a '+' (or the end): step over it and compare what follows.
                p1, p2 = p1 + (p1 < end1), p2 + (p2 < end2)
            elif c1 != c2:
                return _cmp(c1, c2)
    return _cmp(rev1, rev2)


version_key = functools.cmp_to_key(version_cmp)
