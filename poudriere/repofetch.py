"""Reading a published repository over HTTP(S), for `repocheck.check` (shell: network).

The client's view: files are fetched by their catalogue path below the repository URL, and an
HTTP error other than "not found" is a failure of its own, named with the URL.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from jailfarm.errors import FarmError

_MISSING = (404, 410)


class FetchError(FarmError):
    """A repository file could not be fetched (HTTP error, unreachable host, timeout)."""


@dataclass(frozen=True)
class HttpReader:
    """The repository whose base URL (`meta.conf`'s directory) is `base`."""

    base: str
    timeout: float = 60.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise FetchError(f"{self.base!r} is not an http:// or https:// URL")
        object.__setattr__(self, "base", self.base.rstrip("/") + "/")

    def name(self, rel: str) -> str:
        # Catalogue paths hold '~' and '$' (`pkg repo --hash`): legal in a URL path as they are.
        return self.base + urllib.parse.quote(rel, safe="/~$+,@=")

    def read(self, rel: str) -> bytes | None:
        url = self.name(rel)
        request = urllib.request.Request(url, headers={"User-Agent": "jailfarm-repo-verify"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as e:
            if e.code in _MISSING:
                return None
            raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise FetchError(f"{url}: cannot fetch: {e.reason}") from None
        except (TimeoutError, OSError) as e:
            raise FetchError(f"{url}: cannot fetch: {e}") from None

    def size(self, rel: str) -> int | None:
        body = self.read(rel)
        return None if body is None else len(body)
