"""Fetch a dataset archive into ``$LCER_HOME/data/NAME/raw/``, verified, never half-written.

The archive comes from ``$LCER_MIRROR/<archive name>`` when ``LCER_MIRROR`` is set
(``http://``, ``https://`` or ``file://``), else from the registry's official URL. It is
streamed to a temporary file beside its final place, checked (archive integrity and
content sha256), then renamed; network errors, timeouts and 5xx answers are retried a
bounded number of times with exponential back-off.

Knobs (environment, for slow links and for tests): ``LCER_DOWNLOAD_TIMEOUT`` (seconds per
connect/read, default 60), ``LCER_DOWNLOAD_ATTEMPTS`` (default 3), ``LCER_DOWNLOAD_BACKOFF``
(seconds before the first retry, doubled each time, default 1).
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from lcer_core.errors import (
    ChecksumMismatchError,
    DataFormatError,
    DownloadError,
    InvalidParameterError,
    LcerHomeError,
    MissingDataError,
)
from lcer_core.fsio import home_error
from lcer_core.paths import mirror_base

from .registry import DatasetSpec

__all__ = [
    "DownloadSettings",
    "download_settings",
    "source_url",
    "download",
    "fetch",
    "verify_archive",
    "extract_members",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 16
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadSettings:
    """Timeout (s), attempts and first back-off (s) of a download."""

    __slots__ = ("timeout", "attempts", "backoff")

    def __init__(self, timeout: float = 60.0, attempts: int = 3, backoff: float = 1.0) -> None:
        if not timeout > 0:
            raise InvalidParameterError(f"download timeout must be > 0 s, got {timeout}")
        if attempts < 1:
            raise InvalidParameterError(f"download attempts must be >= 1, got {attempts}")
        if backoff < 0:
            raise InvalidParameterError(f"download back-off must be >= 0 s, got {backoff}")
        self.timeout, self.attempts, self.backoff = float(timeout), int(attempts), float(backoff)


def _env_number(var: str, default: float, cast: Callable[[str], float]) -> float:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise InvalidParameterError(f"{var} must be a number, got {raw!r}") from None


def download_settings(
    timeout: float | None = None, attempts: int | None = None, backoff: float | None = None
) -> DownloadSettings:
    """Settings from the arguments, else the environment, else the defaults."""
    return DownloadSettings(
        timeout=timeout
        if timeout is not None
        else _env_number("LCER_DOWNLOAD_TIMEOUT", 60.0, float),
        attempts=attempts
        if attempts is not None
        else int(_env_number("LCER_DOWNLOAD_ATTEMPTS", 3, int)),
        backoff=backoff
        if backoff is not None
        else _env_number("LCER_DOWNLOAD_BACKOFF", 1.0, float),
    )


def source_url(spec: DatasetSpec) -> str:
    """Where ``spec``'s archive is fetched from: the mirror if set, else the official URL."""
    base = mirror_base()
    if base is not None:
        if not base.startswith(("http://", "https://", "file://")):
            raise InvalidParameterError(
                f"LCER_MIRROR must start with http://, https:// or file://, got {base!r}"
            )
        return f"{base}/{spec.archive}"
    if spec.url is None:
        where = f" from {spec.homepage}" if spec.homepage else ""
        raise DownloadError(
            f"{spec.name} is a manual download: get {spec.archive}{where} and put it at "
            f"{spec.archive_path()} (or set LCER_MIRROR to a folder or URL that holds it)"
        )
    return spec.url


# --------------------------------------------------------------------------- verification


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _zip_member(zf: zipfile.ZipFile, base: str) -> str | None:
    """Path of the member whose base name is ``base`` (any folder; macOS resource forks skipped)."""
    hits = [
        n
        for n in zf.namelist()
        if not n.endswith("/") and n.rsplit("/", 1)[-1] == base and not n.startswith("__MACOSX/")
    ]
    return min(hits, key=len) if hits else None


def extract_members(
    spec: DatasetSpec, path: Path, names: tuple[str, ...] | None = None
) -> dict[str, bytes]:
    """The content of the archive's files named ``names`` (default: the spec's), by base name.

    A corrupt or truncated archive, or a missing file, raises :class:`DataFormatError`.
    """
    names = spec.files if names is None else names
    label = spec.archive  # not the temporary file's name
    if spec.raw_format == "custom":
        return {n: (path.parent / n).read_bytes() for n in names}
    if spec.archive.endswith(".bz2"):
        try:
            data = bz2.decompress(path.read_bytes())
        except (OSError, EOFError, ValueError) as exc:
            raise DataFormatError(
                f"{label} is not a valid bz2 archive (corrupt or truncated: {exc})"
            ) from None
        return {n: data for n in names}
    try:
        with zipfile.ZipFile(path) as zf:
            out: dict[str, bytes] = {}
            for n in names:
                member = _zip_member(zf, n)
                if member is None:
                    raise DataFormatError(
                        f"{label} does not contain {n} (members: {', '.join(zf.namelist()[:10])})"
                    )
                out[n] = zf.read(member)
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise DataFormatError(
            f"{label} is not a valid zip archive (corrupt or truncated: {exc})"
        ) from None


def optional_member(spec: DatasetSpec, path: Path, name: str) -> bytes | None:
    """A file of a zip archive that may be absent (for example ``u.genre``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = _zip_member(zf, name)
            return zf.read(member) if member else None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataFormatError(f"{spec.archive} is not a valid zip archive ({exc})") from None


def verify_archive(spec: DatasetSpec, path: Path) -> None:
    """Check the archive opens, holds the spec's files, and their content has the registered sha256."""
    if spec.raw_format == "custom":
        for name, want in spec.checksums.items():
            got = sha256_file(path.parent / name)
            if got != want:
                raise ChecksumMismatchError(
                    f"checksum mismatch for {name}: expected sha256 {want}, got {got}"
                )
        return
    members = extract_members(spec, path)
    for name, want in spec.checksums.items():
        got = sha256_bytes(members[name])
        if got != want:
            raise ChecksumMismatchError(
                f"checksum mismatch for {name} in {spec.archive}: expected sha256 {want}, got {got}"
            )


# --------------------------------------------------------------------------- transfer


class _Retryable(Exception):
    """A failure worth another attempt (network error, timeout, 5xx)."""


class _Final(Exception):
    """A failure no retry will fix (404, missing file)."""


@contextlib.contextmanager
def _progress_bar(
    enabled: bool | None, description: str
) -> Iterator[Callable[[int, int | None], None]]:
    """Yields ``advance(nbytes, total)``; draws a rich byte progress bar on a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def advance(n: int, total: int | None) -> None:
            bar.update(task, advance=n, total=total)

        yield advance


def _reason(exc: httpx.HTTPError, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {timeout:g} s ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server closed the connection mid-transfer ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _fetch_http(url: str, out, settings: DownloadSettings, advance) -> None:
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(settings.timeout), follow_redirects=True) as client,
            client.stream("GET", url) as resp,
        ):
            if resp.status_code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {resp.status_code} {resp.reason_phrase}")
            if resp.status_code >= 400:
                raise _Final(f"HTTP {resp.status_code} {resp.reason_phrase}")
            length = resp.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            for chunk in resp.iter_bytes(_CHUNK):
                out.write(chunk)
                advance(len(chunk), total)
            if (
                total is not None
                and "content-encoding" not in resp.headers
                and resp.num_bytes_downloaded < total
            ):
                raise _Retryable(
                    f"the server closed the connection mid-file ({resp.num_bytes_downloaded} of {total} bytes)"
                )
    except httpx.HTTPError as exc:
        raise _Retryable(_reason(exc, settings.timeout)) from None


def _fetch_file(url: str, out, advance) -> None:
    src = Path(unquote(urlparse(url).path))
    if not src.is_file():
        raise _Final(f"no such file {src}")
    try:
        total = src.stat().st_size
        fh = open(src, "rb")  # noqa: SIM115  (closed below; only its opening is retried)
    except OSError as exc:
        raise _Retryable(f"cannot read {src}: {exc}") from None
    with fh:
        while True:
            try:
                chunk = fh.read(_CHUNK)
            except OSError as exc:
                raise _Retryable(f"cannot read {src}: {exc}") from None
            if not chunk:
                break
            out.write(chunk)  # a failed write is LCER_HOME's problem: no retry
            advance(len(chunk), total)


def _file_mode() -> int:
    """The mode a plain ``open`` would give a new file (mkstemp makes it owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _home_error(path: Path, exc: OSError) -> LcerHomeError:
    return home_error(path, exc)


def download(
    url: str,
    dest: Path,
    *,
    verify: Callable[[Path], None] | None = None,
    settings: DownloadSettings | None = None,
    progress: bool | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` through a temporary file; ``verify`` runs before the rename.

    Retries network errors, timeouts and 5xx answers (``settings.attempts`` in all, with
    exponential back-off); a 4xx answer is final. On any failure no file is left behind.
    """
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise InvalidParameterError(
            f"cannot download {url!r}: only http://, https:// and file:// URLs"
        )
    settings = settings or download_settings()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _home_error(dest.parent, exc) from None
    last = ""
    for attempt in range(1, settings.attempts + 1):
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{dest.name}.", suffix=".part", dir=dest.parent
            )
            os.fchmod(fd, _file_mode())
        except OSError as exc:
            raise _home_error(dest.parent, exc) from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, _progress_bar(progress, f"{dest.name}") as advance:
                if scheme == "file":
                    _fetch_file(url, out, advance)
                else:
                    _fetch_http(url, out, settings, advance)
                out.flush()
                os.fsync(out.fileno())
            if verify is not None:
                verify(tmp)
            os.replace(tmp, dest)
            return dest
        except _Retryable as exc:
            last = str(exc)
        except _Final as exc:
            raise DownloadError(f"cannot download {url}: {exc}") from None
        except OSError as exc:
            raise _home_error(dest, exc) from None
        finally:
            tmp.unlink(missing_ok=True)
        if attempt < settings.attempts:
            time.sleep(settings.backoff * 2 ** (attempt - 1))
    raise DownloadError(f"cannot download {url} after {settings.attempts} attempts: {last}")


def fetch(
    spec: DatasetSpec,
    *,
    progress: bool | None = None,
    settings: DownloadSettings | None = None,
) -> Path:
    """The verified raw archive of ``spec`` under ``data/NAME/raw/``, downloaded if not there yet.

    An archive already there that fails verification is removed and the error raised.
    """
    path = spec.archive_path()
    if path.is_file():
        try:
            verify_archive(spec, path)
        except (DataFormatError, ChecksumMismatchError) as exc:
            if spec.raw_format != "custom":
                path.unlink(missing_ok=True)
                raise type(exc)(f"{exc} (removed {path}; run again to download it anew)") from None
            raise
        return path
    if spec.raw_format == "custom":
        raise MissingDataError(
            f"the data of {spec.name!r} is missing ({path}): register it again with "
            f"`lcer prepare {spec.name} --from FILE ... --force`"
        )
    try:
        return download(
            source_url(spec),
            path,
            verify=lambda tmp: verify_archive(spec, tmp),
            settings=settings,
            progress=progress,
        )
    except BaseException:
        _remove_empty_dirs(path.parent, stop=path.parent.parent.parent)
        raise


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and folder.is_dir():
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def copy_into(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary file and a rename (never half-written)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.fchmod(fd, _file_mode())
    except OSError as exc:
        raise _home_error(dest.parent, exc) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
            shutil.copyfileobj(fh, out, _CHUNK)
        os.replace(tmp, dest)
    except OSError as exc:
        raise _home_error(dest, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
