"""The value types of farm.toml and the table reader that records every problem instead of
stopping at the first (pure).

A converter takes a raw TOML value and returns the typed value or raises `ValueError` whose
message names the bad value and what is expected; `Table` prefixes the key path. Secret-bearing
values (database URLs, password hashes) are masked in every message.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import ipaddress
import posixpath
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from jailfarm import names
from jailfarm.errors import ConfigError

T = TypeVar("T")
Conv = Callable[[object], T]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"([0-9]+)\s*([KMGT]?)", re.IGNORECASE)
_SIZE_EXPECTED = 'expected bytes or a number with K, M, G or T (e.g. "2G")'
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The password part of scheme://user:password@host, up to the *last* '@' (over-masking is safe).
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):.*@")


def kind(value: object) -> str:
    """The TOML type name of a parsed value, for messages."""
    for typ, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string")):
        if isinstance(value, typ):
            return name
    if isinstance(value, list):
        return "array"
    return "table" if isinstance(value, Mapping) else "date-time"


def show(value: object) -> str:
    """`value` as a short literal for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def wrong_type(value: object, expected: str) -> ValueError:
    return ValueError(f"expected {expected}, got {kind(value)} {show(value)}")


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`."""
    return _URL_PASSWORD.sub(r"\1:***@", url)


def text(value: object) -> str:
    """A string without control characters (newlines would split generated config files)."""
    if not isinstance(value, str):
        raise wrong_type(value, "a string")
    if _CONTROL.search(value):
        raise ValueError(f"{show(value)} contains a control character; expected printable text")
    return value


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise wrong_type(value, "true or false")
    return value


def integer(lo: int, hi: int | None = None) -> Conv[int]:
    """An integer converter for `lo <= n <= hi` (booleans and floats are refused)."""
    expected = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"

    def conv(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type(value, expected)
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"{value} is out of range; expected {expected}")
        return value

    return conv


PORT = integer(1, 65535)


def choice(*options: str) -> Conv[str]:
    expected = "one of " + ", ".join(repr(o) for o in options)

    def conv(value: object) -> str:
        if text(value) not in options:
            raise ValueError(f"{show(value)} is not a valid choice; expected {expected}")
        return str(value)

    return conv


def name_of(rule: names.NameRule) -> Conv[str]:
    """A converter from a names.NameRule (its InvalidName is a ValueError)."""
    return rule.check


def matching(pattern: re.Pattern[str], expected: str) -> Conv[str]:
    def conv(value: object) -> str:
        if not pattern.fullmatch(text(value)):
            raise ValueError(f"{show(value)} is not valid; expected {expected}")
        return str(value)

    return conv


def _size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{show(value)} is not a size; {_SIZE_EXPECTED}")
    return int(match[1]) * _UNITS[match[2].upper()]


def size(minimum: int = 0) -> Conv[int]:
    """A size converter: bytes (int) or "512M", "2G", ... (powers of 1024), at least `minimum`."""

    def conv(value: object) -> int:
        n = _size(value)
        if n < minimum:
            raise ValueError(
                f"{show(value)} is too small; expected at least {format_size(minimum)}"
            )
        return n

    return conv


def parse_size(value: str | int) -> int:
    """Bytes from an int or a string such as "512M", "2G" or "1T" (K/M/G/T are powers of 1024,
    case-insensitive; no fractions). Raises `ConfigError` naming the value otherwise."""
    try:
        return _size(value)
    except ValueError as exc:
        raise ConfigError("size", [str(exc)]) from None


def format_size(n: int) -> str:
    """The shortest exact spelling of `n` bytes that `parse_size` reads back ("2G", "1536K")."""
    for unit in "TGMK":
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def abs_path(value: object) -> str:
    """An absolute, normalised path without whitespace or '..' that is not '/' itself
    (destructive plans work below these paths)."""
    path = text(value)
    if not path.startswith("/"):
        raise ValueError(
            f"{show(value)} is not an absolute path; expected a path starting with '/'"
        )
    if any(c.isspace() for c in path) or ".." in path.split("/"):
        raise ValueError(
            f"{show(value)} contains whitespace or '..'; expected a plain absolute path"
        )
    norm = posixpath.normpath(path)
    if norm in ("/", "//"):
        raise ValueError(f"{show(value)} is the root directory; expected a directory below '/'")
    return norm


# What a path written into nginx.conf may hold: nginx reads whitespace, ';', '{', '}', quotes,
# '#' and backslashes as syntax, and '$' as the start of a variable.
_NGINX_PATH = re.compile(r"[A-Za-z0-9._/+@:,=~-]+")
NGINX_PATH_TEXT = "an absolute path of letters, digits and '._/+@:,=~-'"


def nginx_path(value: object) -> str:
    """An `abs_path` that can be written into nginx.conf as it is."""
    path = abs_path(value)
    if not _NGINX_PATH.fullmatch(path):
        bad = "".join(sorted({c for c in path if not _NGINX_PATH.fullmatch(c)}))
        raise ValueError(
            f"{show(value)} contains {bad!r}, which nginx's configuration cannot carry; "
            f"expected {NGINX_PATH_TEXT}"
        )
    return path


def is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def ip_address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(text(value)))
    except ValueError:
        raise ValueError(
            f"{show(value)} is not an IP address; expected e.g. '127.0.0.1' or '::1'"
        ) from None


def web_url(value: object) -> str:
    """A public http(s) base URL ending with '/' (buildbotURL needs the trailing slash)."""
    url = text(value)
    expected = "an http:// or https:// URL ending with '/', e.g. 'https://ci.example.org/buildbot/'"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not url.endswith("/"):
        raise ValueError(f"{show(mask_url(url))} is not valid; expected {expected}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(
            f"{show(mask_url(url))} has credentials, a query or a fragment; expected {expected}"
        )
    return url


@dataclass
class Report:
    """Problems found so far, and the key paths that failed (cross-checks skip those)."""

    problems: list[str] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")
        self.bad.add(key)

    def ok(self, *keys: str) -> bool:
        """True if no key in `keys`, nor anything below one of them, has failed."""
        return not any(b == k or b.startswith((k + ".", k + "[")) for k in keys for b in self.bad)


class Table:
    """One TOML table being read. Getters record a problem and return the default on a bad
    value; `done()` reports the keys no getter asked for."""

    def __init__(self, data: object, path: str, report: Report) -> None:
        self.path, self.report = path, report
        self.seen: dict[str, None] = {}  # insertion-ordered: schema order in messages
        self.forbidden: set[str] = set()
        self.data: Mapping[str, object] = {}
        if isinstance(data, Mapping):
            self.data = data
        else:
            report.add(path, str(wrong_type(data, "a table")))

    def key(self, k: str) -> str:
        """The dotted path of key `k`, quoted as TOML would need it."""
        bare = k if _BARE_KEY.fullmatch(k) else '"' + k.replace('"', '\\"') + '"'
        return f"{self.path}.{bare}" if self.path else bare

    def has(self, k: str) -> bool:
        return k in self.data

    def get(self, k: str, conv: Conv[T], default: T) -> T:
        self.seen[k] = None
        if k not in self.data:
            return default
        try:
            return conv(self.data[k])
        except ValueError as exc:
            self.report.add(self.key(k), str(exc))
            return default

    def need(self, k: str, conv: Conv[T], placeholder: T, expected: str) -> T:
        """Like `get`, but a missing key is a problem."""
        if k not in self.data:
            self.seen[k] = None
            self.report.add(self.key(k), f"missing; expected {expected}")
            return placeholder
        return self.get(k, conv, placeholder)

    def items(self, k: str, conv: Conv[T], default: tuple[T, ...]) -> tuple[T, ...]:
        """An array of values; each bad item is reported with its index."""
        value = self.get(k, _array, None)
        if value is None:
            return default
        out = []
        for i, item in enumerate(value):
            try:
                out.append(conv(item))
            except ValueError as exc:
                self.report.add(f"{self.key(k)}[{i}]", str(exc))
        return tuple(out)

    def table(self, k: str) -> Table:
        self.seen[k] = None
        return Table(self.data.get(k, {}), self.key(k), self.report)

    def tables(self, k: str) -> list[Table] | None:
        """An array of tables (`[[k]]`), or None when absent."""
        self.seen[k] = None
        if k not in self.data:
            return None
        value = self.data[k]
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.report.add(self.key(k), str(wrong_type(value, f"an array of tables ([[{k}]])")))
            return []
        return [Table(v, f"{self.key(k)}[{i}]", self.report) for i, v in enumerate(value)]

    def forbid(self, k: str, why: str) -> None:
        """Report key `k` if present: it is known, but not allowed here."""
        if k in self.data:
            self.forbidden.add(k)
            self.report.add(self.key(k), f"{show(self.data[k])} {why}")

    def done(self) -> None:
        known = list(self.seen)
        for k in self.data:
            if k not in self.seen and k not in self.forbidden:
                close = difflib.get_close_matches(k, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                listed = ", ".join(known) or "none"
                self.report.add(self.key(k), f"unknown key; {hint}known keys here: {listed}")


def _array(value: object) -> list[object]:
    if not isinstance(value, list):
        raise wrong_type(value, "an array")
    return value


_LOWER = re.compile(r"[a-z][a-z0-9_-]*")
_LOWER_TEXT = "a lowercase letter, then lowercase letters, digits, '_' or '-', at most 32 long"
FARM_NAME = names.NameRule("farm", _LOWER, 32, _LOWER_TEXT)
HOST_LABEL = names.NameRule("jail host", _LOWER, 32, _LOWER_TEXT)
# Every jail the farm makes is named <prefix><suffix>, and names.JAIL allows 11 characters: a
# prefix of at most 4 leaves at least 7 for the suffix.
PREFIX = names.NameRule(
    "prefix",
    re.compile(r"[a-z][a-z0-9]*"),
    4,
    "a lowercase letter, then lowercase letters or digits, at most 4 characters",
)
# zpool(8): a pool name starts with a letter and may not begin with a vdev type word.
POOL = names.NameRule(
    "pool",
    re.compile(r"(?!mirror|raidz|draid|spare|log$|c[0-9])[A-Za-z][A-Za-z0-9_.:-]*"),
    200,
    "a letter, then letters, digits, '_', '.', ':' or '-'; not 'log', and not starting with "
    "'mirror', 'raidz', 'draid', 'spare' or 'c' and a digit (zpool reserves them)",
)
RELEASE = re.compile(
    r"[1-9][0-9]?\.[0-9]-(RELEASE(-p[0-9]+)?|STABLE|CURRENT|PRERELEASE|(ALPHA|BETA|RC)[0-9]+)"
)
RELEASE_TEXT = "a FreeBSD version such as '14.1-RELEASE', '13.3-RELEASE-p4' or '15.0-CURRENT'"
release = matching(RELEASE, RELEASE_TEXT)
package = matching(re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]*"), "a pkg package name")
# pkg runs a signing_command through `sh -c`: words keep to characters no shell reinterprets.
signer_word = matching(re.compile(r"[A-Za-z0-9@%+=:,./_-]+"), "letters, digits or '@%+=:,./_-'")
MAKE_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\+?")
# TARGET_ARCH (what pkg ABIs use) -> TARGET.TARGET_ARCH (what `poudriere jail -a` wants).
ARCHES = {
    "amd64": "amd64",
    "i386": "i386",
    "aarch64": "arm64.aarch64",
    "armv7": "arm.armv7",
    "powerpc64": "powerpc.powerpc64",
    "powerpc64le": "powerpc.powerpc64le",
    "riscv64": "riscv.riscv64",
}


def arch(value: object) -> str:
    """A TARGET_ARCH; the TARGET.TARGET_ARCH spelling (arm64.aarch64) is accepted too."""
    name = text(value)
    for target_arch, long in ARCHES.items():
        if name in (target_arch, long, f"{target_arch}.{target_arch}"):
            return target_arch
    known = ", ".join(ARCHES)
    raise ValueError(f"{show(value)} is not a supported arch; expected one of {known}")


_GIT_URL = re.compile(r"(https?|ssh|git|file)://\S+|[\w.-]+@[\w.-]+:\S+|/\S*")
_GIT_TEXT = "an https://, ssh://, git:// or file:/// URL, user@host:path or an absolute path"


def git_url(value: object) -> str:
    """A git remote; never an option-like word or a `ext::` helper, never with a password."""
    url = text(value)
    parts = urlsplit(url) if "://" in url else None
    # file:/// must have no host; every other scheme needs one.
    if not _GIT_URL.fullmatch(url) or (parts and bool(parts.netloc) == (parts.scheme == "file")):
        raise ValueError(f"{show(mask_url(url))} is not a git URL; expected {_GIT_TEXT}")
    if parts and parts.password is not None:
        raise ValueError(
            f"{show(mask_url(url))} carries a password, which would show in logs; expected a URL"
            " without one (use an SSH key or a git credential helper)"
        )
    return url


_PG = "postgresql+psycopg2://USER:PASSWORD@HOST[:PORT]/DATABASE"
_DB_TEXT = f"sqlite:///PATH (relative to the master directory; sqlite:////ABS/PATH) or {_PG}"


def database_url(value: object) -> str:
    """An SQLAlchemy URL for the master: SQLite, or PostgreSQL with the driver spelled out."""
    if not isinstance(value, str):
        raise ValueError(f"expected a database URL, got {kind(value)}")
    url, masked = text(value), show(mask_url(value))
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3 (buildbot-4.3.md, 1.3).
        raise ValueError(
            f"{masked} names no driver, and SQLAlchemy 2.1 would pick psycopg 3, which jailfarm"
            f" does not install; expected {_PG}"
        )
    if scheme == "sqlite" and len(rest) > 1 and rest.startswith("/"):
        return url
    if scheme == "postgresql+psycopg2":
        parts = urlsplit(url)
        try:
            if parts.hostname and len(parts.path) > 1 and parts.port != 0:
                return url
        except ValueError:  # urlsplit's .port on a non-numeric or out-of-range port
            pass
    raise ValueError(f"{masked} is not a supported database URL; expected {_DB_TEXT}")


PBKDF2_ITERATIONS = 600_000
PBKDF2_MIN_ITERATIONS = 100_000
_PBKDF2 = re.compile(r"pbkdf2_sha256\$([0-9]+)\$([A-Za-z0-9_./+-]+)\$([A-Za-z0-9+/]{43}=)")
HASH_TEXT = "pbkdf2_sha256$ITERATIONS$SALT$HASH (see jailfarm.config.hash_password)"


def password_hash(value: object) -> str:
    """A recognised password hash; the value itself never appears in a message."""
    if not isinstance(value, str):
        raise ValueError(f"expected a password hash, {HASH_TEXT}; got {kind(value)}")
    m = _PBKDF2.fullmatch(value)
    if m and int(m[1]) >= PBKDF2_MIN_ITERATIONS:
        return value
    if m:
        raise ValueError(f"{m[1]} iterations; expected at least {PBKDF2_MIN_ITERATIONS}")
    what = "an unsupported hash" if "$" in value else "a plaintext password, which is refused"
    raise ValueError(f"the value (not shown) looks like {what}; expected {HASH_TEXT}")


def hash_password(
    password: str, salt: str | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """A `pbkdf2_sha256$ITERATIONS$SALT$HASH` string for web.users: PBKDF2-HMAC-SHA256 with a
    base64 digest, the Django format, so Django-made hashes work too. A random salt is drawn
    unless one is given; a salt with characters outside `[A-Za-z0-9_./+-]` is a ValueError."""
    salt = secrets.token_urlsafe(16) if salt is None else salt
    if not re.fullmatch(r"[A-Za-z0-9_./+-]+", salt):
        raise ValueError("salt must be letters, digits or '_./+-'")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (a `hash_password` string); constant-time."""
    m = _PBKDF2.fullmatch(encoded)
    if not m:
        return False
    return hmac.compare_digest(hash_password(password, m[2], int(m[1])), encoded)


NIGHTLY_TEXT = "a time of day 'HH:MM' (24-hour, the master's local time), or '' for none"
nightly_time = matching(re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]|"), NIGHTLY_TEXT)


# ---- [provision] (jailfarm provision on FreeBSD) ----------------------------------------------

# An interface name fits IFNAMSIZ (16 with the NUL); ifconfig(8) names are a letter, then
# letters, digits, '_' or '.' (vlan units such as em0.100).
INTERFACE = names.NameRule(
    "interface",
    re.compile(r"[a-z][a-z0-9_.]*"),
    15,
    "an interface name such as 'em0' or 'igb1' (lowercase letters, digits, '_' or '.')",
)


def ipv4_address(value: object) -> str:
    """An IPv4 address (jail addresses: ip4.addr, rc.conf ifconfig_*)."""
    try:
        return str(ipaddress.IPv4Address(text(value)))
    except ValueError:
        expected = "expected e.g. '10.87.0.2'"
        raise ValueError(f"{show(value)} is not an IPv4 address; {expected}") from None


def ipv4_network(value: object) -> str:
    """An IPv4 network in CIDR form with the host bits zero, /8 to /29 (room for the host,
    the master and nginx)."""
    expected = "an IPv4 network such as '10.87.0.0/24' (/8 to /29, host bits zero)"
    try:
        net = ipaddress.IPv4Network(text(value), strict=True)
    except ValueError:
        raise ValueError(f"{show(value)} is not valid; expected {expected}") from None
    if not 8 <= net.prefixlen <= 29 or "/" not in str(value):
        raise ValueError(f"{show(value)} is not valid; expected {expected}")
    return str(net)


def size_or_percent(lo: int, hi: int) -> Conv[tuple[int | None, int | None]]:
    """A size (bytes, "40G") or a share of the pool ("20%", lo..hi): (bytes, None) or
    (None, percent)."""

    def conv(value: object) -> tuple[int | None, int | None]:
        if isinstance(value, str) and value.strip().endswith("%"):
            number = value.strip()[:-1]
            if not number.isdigit() or not lo <= int(number) <= hi:
                raise ValueError(
                    f"{show(value)} is not a share of the pool; expected '{lo}%' to '{hi}%'"
                )
            return None, int(number)
        return size()(value), None

    return conv
