"""Weights by URL: an ``http(s)://`` checkpoint is downloaded once into a cache folder and read from there.

The cache is ``$FASTINST_CACHE/weights`` (default ``~/.cache/fastinst/weights``, or under
``$XDG_CACHE_HOME``). A URL's file is ``<name>.<hash of the URL><suffix>`` there. A download goes to
``<file>.partial``: a broken transfer is resumed with an HTTP Range request where the server allows it
(else restarted), and the file takes its final name only when complete and verified, so a complete-looking
file is always a complete one. The sha256 checked is, first found: the ``sha256`` argument, a
``#sha256=<hex>`` URL fragment, or torch hub's ``<name>-<hex>.<ext>`` hash prefix in the file name (8 or
more hex digits, not all decimal). Every failure is a one-line :class:`DownloadError`
(``fastinst.checkpoint`` reports it as a ``CheckpointError``)
naming the URL.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm


class DownloadError(ValueError):
    """A weights URL cannot be fetched or verified; the message names the URL and the problem in one line."""


ATTEMPTS = 5  # requests per download before a truncated transfer is an error
TIMEOUT_S = 60.0  # socket timeout of each connect and read
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{8,64}")
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")


def is_url(path: object) -> bool:
    """True for an ``http://`` or ``https://`` string."""
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$FASTINST_CACHE/weights``, default ``~/.cache/fastinst/weights``."""
    root = os.environ.get("FASTINST_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                    "fastinst")
    return Path(root).expanduser() / "weights"


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(path: str | Path, sha256: str | None = None) -> Path:
    """The local file of the weights ``path``: a URL is fetched (see :func:`fetch`); a local file is
    checked against ``sha256`` when given."""
    if is_url(path):
        return fetch(str(path), sha256)
    path = Path(path)
    if sha256 is not None and path.is_file():
        error = _sha256_error(path, str(path), _hex(sha256, str(path)))
        if error:
            raise DownloadError(error)
    return path


def fetch(url: str, sha256: str | None = None, *, progress: bool = True) -> Path:
    """The cached file of ``url``, downloaded first when absent (a progress bar on stderr unless
    ``progress`` is false). A cached file that fails the expected sha256 is downloaded again."""
    base, fragment = url.partition("#")[::2]
    expected = _hex(sha256, base) if sha256 is not None else _fragment_hash(fragment, url) or _name_hash(base)
    dest = cache_dir() / cache_name(base)
    if dest.is_file():
        if expected is None or file_sha256(dest).startswith(expected):
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    _download(base, partial, progress)
    if expected is not None and (error := _sha256_error(partial, base, expected)):
        partial.unlink()
        raise DownloadError(error)
    os.replace(partial, dest)
    return dest


def cache_name(url: str) -> str:
    """The cache file name of ``url`` (no fragment): its file name plus 8 hex digits of the URL's sha256."""
    name = re.sub(r"[^\w.+-]", "_", unquote(PurePosixPath(urlsplit(url).path).name)) or "weights"
    return f"{Path(name).stem}.{hashlib.sha256(url.encode()).hexdigest()[:8]}{Path(name).suffix}"


def _hex(value: str, what: str) -> str:
    if not _HEX.fullmatch(value.lower()):
        raise DownloadError(f"{what}: sha256 must be 8 to 64 hex digits, not {value!r}")
    return value.lower()


def _fragment_hash(fragment: str, url: str) -> str | None:
    if not fragment:
        return None
    key, _, value = fragment.partition("=")
    if key != "sha256":
        raise DownloadError(f"{url}: the only URL fragment understood is #sha256=<hex>")
    return _hex(value, url)


def _name_hash(url: str) -> str | None:
    """torch hub's convention: ``name-<sha256 prefix>.ext``; an all-decimal run (a date, a version) is not one."""
    match = _NAME_HASH.search(PurePosixPath(urlsplit(url).path).name)
    return match[1] if match and not match[1].isdecimal() else None


def _sha256_error(path: Path, what: str, expected: str) -> str | None:
    """The one-line error naming ``what`` when the sha256 of ``path`` does not start with ``expected``."""
    actual = file_sha256(path)
    return None if actual.startswith(expected) else f"{what}: sha256 mismatch: expected {expected}, got {actual}"


def _download(url: str, partial: Path, progress: bool) -> None:
    """Complete ``partial`` from ``url`` in at most :data:`ATTEMPTS` requests, each resuming where the
    previous one broke off."""
    expected: int | None = None
    for _ in range(ATTEMPTS):
        have = partial.stat().st_size if partial.is_file() else 0
        try:
            expected = _transfer(url, partial, have, progress)
        except HTTPError as exc:
            exc.close()
            if exc.code == 416 and have:  # Range Not Satisfiable: the partial file is stale
                partial.unlink()
                continue
            raise DownloadError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from None
        except URLError as exc:
            raise DownloadError(f"{url}: cannot download ({exc.reason})") from None
        except (ValueError, http.client.InvalidURL) as exc:
            raise DownloadError(f"{url}: not a valid URL ({exc})") from None
        except (OSError, http.client.HTTPException):  # connection lost mid-transfer: resume
            continue
        size = partial.stat().st_size
        if expected is None or size == expected:
            return
        if size > expected:
            partial.unlink()
    size = partial.stat().st_size if partial.is_file() else 0
    raise DownloadError(f"{url}: download incomplete after {ATTEMPTS} attempts "
                          f"({size} of {expected if expected is not None else 'unknown'} bytes)")


def _transfer(url: str, partial: Path, have: int, progress: bool) -> int | None:
    """One request: the rest of ``url`` after the ``have`` bytes of ``partial`` (all of it when the server
    ignores the Range); returns the full size the server announced, if any."""
    headers = {"User-Agent": "fastinst", **({"Range": f"bytes={have}-"} if have else {})}
    with urlopen(Request(url, headers=headers), timeout=TIMEOUT_S) as response:
        start = have if response.status == 206 else 0
        expected = _announced_size(response, start)
        with open(partial, "r+b" if start else "wb") as f, \
                tqdm(total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=partial.name.removesuffix(".partial"), file=sys.stderr, disable=not progress) as bar:
            f.seek(start)
            f.truncate()
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    return expected


def _announced_size(response: http.client.HTTPResponse, start: int) -> int | None:
    """The whole file's size from ``Content-Range`` (a 206) or ``start`` + ``Content-Length``."""
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    if response.status == 206 and total.isdecimal():
        return int(total)
    length = response.headers.get("Content-Length", "")
    return start + int(length) if length.isdecimal() else None
