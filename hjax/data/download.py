"""One file over HTTP(S), resumable and checked: what every dataset and weights fetch uses.

- The bytes go to ``<dest>.part``; an interrupted transfer (a dropped connection, a short
  body, a timeout, HTTP 5xx / 429) is retried with exponential backoff, asking only for the
  missing bytes (``Range: bytes=<have>-``: a 206 answer appends, a 200 answer starts over).
  A later run resumes the same ``.part`` file.
- The file is renamed to ``dest`` only once its size (Content-Length) and, when known, its
  sha256 (or a prefix of it, torch hub's rule) hold; a wrong checksum deletes the ``.part``
  file, so nothing that looks complete is left and the next run downloads afresh.
- Google Drive answers a large file's link with an HTML page asking to confirm (the virus
  scan warning); :func:`drive_confirm_url` reads the confirmation form (or the older cookie
  token) from that page and the download goes on. Done here with the standard library rather
  than with gdown, which exists for exactly this: one step is not worth a new dependency,
  and errors stay ours (one line, the URL, the manual route).
- ``mirror``: :func:`source_url` replaces a source's URL with ``<mirror>/<file name>`` (a lab
  copy, a proxy; the tests' local server).

Failures raise :class:`FetchError` with one line naming the URL and the reason; callers add
the manual route (``--from_archive``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html
import http.client
import http.cookiejar
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

MIRROR_ENV_VAR = "HJAX_MIRROR"
RETRIES = 4            # retries after the first try
BACKOFF_S = 1.0        # waits 1, 2, 4, 8 s between tries (tests set 0)
TIMEOUT_S = 60.0
CHUNK = 1 << 20
# Answers after which another try cannot help.
_PERMANENT = {400, 401, 403, 404, 410, 451}

Progress = Callable[[str, int, "int | None", int, float], None]
"""progress(name, bytes done, bytes total or None, bytes present before this run, seconds)."""


class FetchError(RuntimeError):
    """A download, archive or verification that failed for good (one line)."""


class _Retry(Exception):
    """A failure another try may cure (the reason, in a few words)."""


class Source(NamedTuple):
    file: str                          # the file's name (downloads/, the mirror, --from_archive)
    url: str | None                    # None: only through a mirror or --from_archive
    sha256: str | None = None          # the whole digest, when published
    sha256_prefix: str | None = None   # torch hub's rule: the hex after the last '-' of file
    drive: bool = False                # a Google Drive link (confirmation page possible)


def mirror_from_env(mirror: str | None) -> str | None:
    """``mirror``, else $HJAX_MIRROR, else None (the sources' own URLs)."""
    value = mirror if mirror else os.environ.get(MIRROR_ENV_VAR)
    return value.rstrip("/") if value else None


def source_url(source: Source, mirror: str | None) -> str | None:
    """Where ``source`` is fetched from: ``<mirror>/<file>`` with a mirror, else its URL."""
    if mirror:
        return f"{mirror}/{urllib.parse.quote(source.file)}"
    return source.url


@contextlib.contextmanager
def file_lock(path: Path, log: Callable[[str], None] | None = None):
    """Holds an exclusive lock on ``<path>.lock`` (created beside it): two processes fetching
    the same file (parallel jobs with ``--pretrained=imagenet``, two ``fetch_data`` runs) take
    turns instead of writing one ``.part`` file together."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"{path.name}: another process is fetching it; waiting")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_digest(path: Path, source: Source) -> str:
    """The file's sha256; raises FetchError when it contradicts ``source``'s."""
    found = sha256_file(path)
    if source.sha256 and found != source.sha256:
        raise FetchError(f"{source.file} has sha256 {found}, expected {source.sha256}")
    if source.sha256_prefix and not found.startswith(source.sha256_prefix):
        raise FetchError(f"{source.file} has sha256 {found}, which does not start with "
                         f"{source.sha256_prefix} (torch hub's rule for its name)")
    return found


# ----------------------------------------------------------------------------- Google Drive

_FORM = re.compile(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"', re.S)
_INPUT = re.compile(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', re.S)
_HREF = re.compile(r'href="(/uc\?export=download[^"]*confirm=[^"]+)"')


def drive_confirm_url(page: str, url: str, cookies) -> str:
    """The URL that answers Google Drive's confirmation page ``page`` (got from ``url``).

    Three forms have been served: a form ``download-form`` with hidden inputs (now), a link
    with ``confirm=<token>`` (before 2023), a ``download_warning*`` cookie whose value is the
    token. A page with none of them (quota exceeded, access blocked) raises FetchError with
    what the page says: another try would get the same page."""
    form = _FORM.search(page)
    if form:
        fields = {html.unescape(k): html.unescape(v) for k, v in _INPUT.findall(page)}
        action = html.unescape(form.group(1))
        return f"{action}?{urllib.parse.urlencode(fields)}"
    link = _HREF.search(page)
    if link:
        return urllib.parse.urljoin(url, html.unescape(link.group(1)))
    for cookie in cookies:
        if cookie.name.startswith("download_warning"):
            sep = "&" if "?" in url else "?"
            return f"{url}{sep}confirm={urllib.parse.quote(cookie.value)}"
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    if re.search(r"too many users|quota", text, re.I):
        raise FetchError(f"{url}: Google Drive refuses the download: its download quota for "
                         "this file is exceeded (try again in a day, or use a copy)")
    raise FetchError(f"{url}: Google Drive answered with a page, not the file "
                     f"({text[:100] or 'empty page'})")


# ----------------------------------------------------------------------------- the transfer

def _opener():
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)), jar


def _content_range_total(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _one_try(url: str, part: Path, name: str, progress: Progress | None, drive: bool,
             opener, jar, timeout: float) -> str | None:
    """One request; returns a URL to follow (Drive's confirmation) or None when ``part`` is
    whole. Raises _Retry (try again) or FetchError (give up)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "hjax-fetch/1", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:          # nothing left to send: whole, or another file
            if _content_range_total(e.headers.get("Content-Range")) == have:
                return None
            part.unlink()
            raise _Retry("the server refused to resume (HTTP 416); starting over") from None
        reason = f"HTTP {e.code} {e.reason}".strip()
        if e.code in _PERMANENT:
            raise FetchError(f"{url}: {reason}") from None
        raise _Retry(reason) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise _Retry(" ".join(str(reason).split()) or type(e).__name__) from None
    with resp:
        if drive and resp.headers.get_content_type() == "text/html":
            page = resp.read(1 << 20).decode("utf-8", "replace")
            return drive_confirm_url(page, url, jar)
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            start = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range") or "")
            if not start or int(start.group(1)) != have:
                part.unlink()
                raise _Retry("the server resumed at the wrong offset; starting over")
            mode, done = "ab", have
        else:                                # 200: the whole file again
            mode, done, have = "wb", 0, 0
        total = done + int(length) if length is not None else None
        t0 = time.monotonic()
        try:
            with open(part, mode) as f:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(name, done, total, have, time.monotonic() - t0)
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and e.errno is not None and not isinstance(
                    e, (ConnectionError, socket.timeout)):
                raise FetchError(f"cannot write {part}: {e.strerror}") from None
            raise _Retry(f"connection lost after {done:,} bytes "
                         f"({type(e).__name__})") from None
        if total is not None and done < total:
            raise _Retry(f"body cut short at {done:,} of {total:,} bytes")
    return None


def download(source: Source, dest: Path, *, url: str | None = None,
             progress: Progress | None = None, retries: int | None = None,
             timeout: float | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Fetches ``source`` (from ``url``, default its own) to ``dest``, resuming
    ``<dest>.part``; returns ``dest`` once its size and checksum hold.

    Raises FetchError naming the URL and the reason when every try failed, or at once for an
    answer another try cannot change (404, 403, a Drive quota page, a wrong checksum)."""
    url = url or source.url
    if not url:
        raise FetchError(f"{source.file} has no public URL; give a mirror that holds it")
    retries = RETRIES if retries is None else retries
    timeout = TIMEOUT_S if timeout is None else timeout
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener, jar = _opener()
    target, reason, hops = url, "", 0
    for attempt in range(retries + 1):
        if attempt:
            wait = BACKOFF_S * 2 ** (attempt - 1)
            if log:
                log(f"{source.file}: {reason}; try {attempt + 1} of {retries + 1} "
                    f"in {wait:g} s")
            time.sleep(wait)
        try:
            follow = _one_try(target, part, source.file, progress, source.drive, opener, jar,
                              timeout)
            while follow is not None and hops < 3:      # Drive's confirmation step(s)
                hops += 1
                target = follow
                follow = _one_try(target, part, source.file, progress, source.drive, opener,
                                  jar, timeout)
            if follow is not None:
                raise FetchError(f"{url}: Google Drive kept asking for confirmation")
            break
        except _Retry as e:
            reason = str(e)
    else:
        raise FetchError(f"{url}: {reason} (after {retries + 1} tries)")
    try:
        check_digest(part, source)
    except FetchError:
        part.unlink(missing_ok=True)      # a wrong file is never resumed
        raise
    os.replace(part, dest)
    return dest


def format_progress(name: str, done: int, total: int | None, before: int,
                    seconds: float) -> str:
    """``name  12.0 / 180.0 MB  6.1 MB/s  ETA 0:00:27`` (rate over this run's bytes; kB for
    files under a megabyte)."""
    unit, scale = ("MB", 1e6) if (total or done) >= 1e6 else ("kB", 1e3)
    rate = (done - before) / seconds if seconds > 0 else 0.0
    size = (f"{done / scale:.1f} / {total / scale:.1f} {unit}" if total
            else f"{done / scale:.1f} {unit}")
    eta = ""
    if total and rate > 0:
        left = int((total - done) / rate)
        eta = f"  ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
    return f"{name}  {size}  {rate / 1e6:.1f} MB/s{eta}"
