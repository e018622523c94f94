"""Fetch a dataset archive into ``$LCER_HOME/data/NAME/raw/``, verified, never half-written.

The archive comes from ``$LCER_MIRROR/<archive name>`` when ``LCER_MIRROR`` is set
(``http://``, ``https://`` or ``file://``), else from the registry's official URL. It is
streamed to a temporary file beside its final place, checked (archive integrity and
content sha256), then renamed; network errors, timeouts and 5xx answers are retried a
bounded number of times with exponential back-off.

Knobs (environment, for slow links and for tests, see :mod:`lcer_core.settings`):
``LCER_DOWNLOAD_TIMEOUT`` (seconds per connect/read, default 60), ``LCER_DOWNLOAD_ATTEMPTS``
(default 3), ``LCER_DOWNLOAD_BACKOFF`` (seconds before the first retry, doubled each time,
default 1).

Whatever the mirror sends is hostile until verified: a download is capped at
``LCER_MAX_DOWNLOAD_BYTES`` (default 1 GiB; the largest real archive, ML 1M's zip, is
5.9 MB), checked against the declared ``Content-Length`` before the body is read and
counted while it streams; a member is read in chunks, capped at ``LCER_MAX_MEMBER_BYTES``
(default 256 MiB, ten times the largest real member, ML 1M's 24.6 MB ``ratings.dat``;
twice that for all members of one archive together), checked against the size the zip
declares before reading and counted while decompressing (bz2 and gz in a stream too); a
zip may list at most 10,000 entries, and only stored or deflated members are read (what the
real archives hold; zipfile decompresses a whole bzip2 or LZMA block per read, unbounded). Every digest (of the download, of each member) is
computed while the bytes stream past.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import shutil
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
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
from lcer_core.fsio import atomic_file, home_error
from lcer_core.paths import mirror_base
from lcer_core.settings import MAX_DOWNLOAD_BYTES, MAX_MEMBER_BYTES, settings

from .registry import DatasetSpec

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_ZIP_ENTRIES",
    "ArchiveLimits",
    "archive_limits",
    "ArchiveContents",
    "FetchedArchive",
    "DownloadSettings",
    "download_settings",
    "source_url",
    "download",
    "fetch",
    "fetch_archive",
    "verify_archive",
    "read_members",
    "extract_members",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 16
#: Most entries a zip may list (the real archives hold 4 to 23).
MAX_ZIP_ENTRIES = 10_000
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


@dataclass(frozen=True)
class ArchiveLimits:
    """Byte caps of a download and of the members read out of an archive."""

    download_bytes: int = MAX_DOWNLOAD_BYTES
    member_bytes: int = MAX_MEMBER_BYTES
    zip_entries: int = MAX_ZIP_ENTRIES

    @property
    def total_bytes(self) -> int:
        """Cap of all members read from one archive together: twice one member's."""
        return 2 * self.member_bytes


def archive_limits() -> ArchiveLimits:
    """The caps from ``LCER_MAX_DOWNLOAD_BYTES`` and ``LCER_MAX_MEMBER_BYTES``, else the defaults."""
    env = settings()
    return ArchiveLimits(download_bytes=env.max_download_bytes, member_bytes=env.max_member_bytes)


def download_settings(
    timeout: float | None = None, attempts: int | None = None, backoff: float | None = None
) -> DownloadSettings:
    """Settings from the arguments, else the environment, else the defaults."""
    env = settings()
    return DownloadSettings(
        timeout=env.download_timeout if timeout is None else timeout,
        attempts=env.download_attempts if attempts is None else attempts,
        backoff=env.download_backoff if backoff is None else backoff,
    )


def source_url(spec: DatasetSpec) -> str:
    """Where ``spec``'s archive is fetched from: the mirror if set, else the official URL."""
    base = mirror_base()
    if base is not None:
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
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ArchiveContents:
    """The members read out of an archive, by base name: content (if kept), sha256, size."""

    data: dict[str, bytes] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, data: bytes | None, digest: str, size: int) -> None:
        """Record member ``name`` as read: its sha256 and size, and its content if kept."""
        self.sha256[name], self.size[name] = digest, size
        if data is not None:
            self.data[name] = data


def _zip_member(zf: zipfile.ZipFile, base: str) -> str | None:
    """Path of the member whose base name is ``base`` (any folder; macOS resource forks skipped)."""
    hits = [
        n
        for n in zf.namelist()
        if not n.endswith("/") and n.rsplit("/", 1)[-1] == base and not n.startswith("__MACOSX/")
    ]
    return min(hits, key=len) if hits else None


_MEMBER_CAP = "the cap per member (LCER_MAX_MEMBER_BYTES)"
_TOTAL_CAP = "the cap for all members of an archive (twice LCER_MAX_MEMBER_BYTES)"


class _Budget:
    """Counts the bytes read out of one archive against the per-member and total caps."""

    def __init__(self, label: str, limits: ArchiveLimits) -> None:
        self.label, self.limits, self.total = label, limits, 0

    def check_declared(self, member: str, size: int) -> None:
        """Refuse a member whose declared size is over a cap, before reading it."""
        cap, total_cap = self.limits.member_bytes, self.limits.total_bytes
        if size > cap:
            raise DataFormatError(
                f"{self.label}: {member} declares {size:,} bytes uncompressed, more than "
                f"{cap:,}, {_MEMBER_CAP}; not read"
            )
        self.total += size
        if self.total > total_cap:
            raise DataFormatError(
                f"{self.label}: the members to read declare {self.total:,} bytes together, "
                f"more than {total_cap:,}, {_TOTAL_CAP}; not read"
            )

    def stream(self, member: str, fh: IO[bytes], keep: bool) -> tuple[bytes | None, str, int]:
        """Read ``fh`` in chunks, hashing as it goes; (content if ``keep``, sha256, size)."""
        cap = self.limits.member_bytes
        h, parts, n = hashlib.sha256(), [], 0
        while chunk := fh.read(_CHUNK):
            n += len(chunk)
            if n > cap:
                raise DataFormatError(
                    f"{self.label}: {member} expands to more than {cap:,} bytes, {_MEMBER_CAP}; "
                    "stopped reading it"
                )
            h.update(chunk)
            if keep:
                parts.append(chunk)
        return (b"".join(parts) if keep else None), h.hexdigest(), n


def _check_digest(spec: DatasetSpec, name: str, got: str, where: str) -> None:
    want = spec.checksums.get(name)
    if want is not None and got != want:
        raise ChecksumMismatchError(
            f"checksum mismatch for {name}{where}: expected sha256 {want}, got {got}"
        )


#: Most bytes a zip's central directory may take (10,000 entries of 400 bytes): ZipFile
#: parses it whole into memory, and its entry count alone may lie.
_MAX_CENTRAL_DIRECTORY = 4_000_000


def _zip_directory(path: Path) -> tuple[int, int] | None:
    """(entries, central directory bytes) as the zip's end record declares them, if it can be told."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # a future Python without it: ZipFile's own checks remain
        return None
    with open(path, "rb") as fh:
        rec = end_record(fh)
    if not rec:
        return None
    return int(rec[zipfile._ECD_ENTRIES_TOTAL]), int(rec[zipfile._ECD_SIZE])


#: The zip compression methods read: the real archives' (every member of ML 100K and ML 1M is
#: deflated). zipfile inflates deflate to the size asked for, but decompresses a whole bzip2 or
#: LZMA block (or zstd frame) per read, with no limit on its output.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def _check_method(label: str, info: zipfile.ZipInfo) -> None:
    """Refuse a member compressed with a method other than stored or deflate, before reading it."""
    method = info.compress_type
    if method not in _ZIP_METHODS:
        name = getattr(zipfile, "compressor_names", {}).get(method, "an unknown method")
        raise DataFormatError(
            f"{label}: {info.filename} is compressed with {name} (zip method {method}); only "
            f"{' and '.join(_ZIP_METHODS.values())} members are read, as in the real archives; not read"
        )


def _read_zip(
    spec: DatasetSpec,
    path: Path,
    wanted: list[tuple[str, bool]],
    keep: bool,
    limits: ArchiveLimits,
    out: ArchiveContents,
) -> None:
    label = spec.archive
    directory = _zip_directory(path)
    if directory is not None:
        entries, size = directory
        if entries > limits.zip_entries or size > _MAX_CENTRAL_DIRECTORY:
            raise DataFormatError(
                f"{label} lists {entries:,} entries in {size:,} bytes, more than the "
                f"{limits.zip_entries:,} entries (or {_MAX_CENTRAL_DIRECTORY:,} bytes) allowed; not read"
            )
    budget = _Budget(label, limits)
    with zipfile.ZipFile(path) as zf:
        if len(zf.infolist()) > limits.zip_entries:
            raise DataFormatError(
                f"{label} lists more than {limits.zip_entries:,} entries; not read"
            )
        found: list[tuple[str, zipfile.ZipInfo]] = []
        for name, required in wanted:
            member = _zip_member(zf, name)
            if member is None:
                if required:
                    raise DataFormatError(
                        f"{label} does not contain {name} (members: {', '.join(zf.namelist()[:10])})"
                    )
                continue
            info = zf.getinfo(member)
            _check_method(label, info)
            budget.check_declared(member, info.file_size)
            found.append((name, info))
        for name, info in found:
            with zf.open(info) as fh:
                data, digest, size = budget.stream(info.filename, fh, keep)
            _check_digest(spec, name, digest, f" in {label}")
            out.add(name, data, digest, size)


def _read_single(
    spec: DatasetSpec,
    path: Path,
    wanted: list[tuple[str, bool]],
    keep: bool,
    limits: ArchiveLimits,
    out: ArchiveContents,
) -> None:
    """A one-file archive (``.bz2``, ``.gz``): every wanted name is its content."""
    opener = bz2.open if spec.archive.endswith(".bz2") else gzip.open
    member = spec.archive.rsplit(".", 1)[0]
    with opener(path, "rb") as fh:
        data, digest, size = _Budget(spec.archive, limits).stream(member, fh, keep)
    for name, _ in wanted:
        _check_digest(spec, name, digest, f" in {spec.archive}")
        out.add(name, data, digest, size)


def read_members(
    spec: DatasetSpec,
    path: Path,
    names: tuple[str, ...] | None = None,
    optional: tuple[str, ...] | None = None,
    *,
    keep: bool = True,
    limits: ArchiveLimits | None = None,
) -> ArchiveContents:
    """Read the archive's files ``names`` (default: the spec's) and ``optional`` ones if present.

    Each member is streamed under the caps of ``limits`` (default: :func:`archive_limits`),
    hashed as it is read and checked against the registry's sha256 where one is known
    (:class:`ChecksumMismatchError` naming the member and both digests). A corrupt or
    truncated archive, a missing file, or a member over a cap raises
    :class:`DataFormatError`. ``keep=False`` only verifies (nothing is held in memory).
    """
    names = spec.files if names is None else names
    optional = spec.optional_files if optional is None else optional
    wanted = [(n, True) for n in names] + [(n, False) for n in optional if n not in names]
    limits = limits or archive_limits()
    out = ArchiveContents()
    label = spec.archive  # not the temporary file's name
    if spec.raw_format == "custom":  # the user's own files, copied by them: no cap
        mine = ArchiveLimits(download_bytes=1 << 62, member_bytes=1 << 61)
        for name, required in wanted:
            file = path.parent / name
            if not required and not file.is_file():
                continue
            with open(file, "rb") as fh:
                data, digest, size = _Budget(name, mine).stream(name, fh, keep)
            _check_digest(spec, name, digest, "")
            out.sha256[name], out.size[name] = digest, size
            if data is not None:
                out.data[name] = data
        return out
    single = spec.archive.endswith((".bz2", ".gz"))
    try:
        if single:
            _read_single(spec, path, wanted, keep, limits, out)
        else:
            _read_zip(spec, path, wanted, keep, limits, out)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        kind = spec.archive.rsplit(".", 1)[-1] if single else "zip"
        raise DataFormatError(
            f"{label} is not a valid {kind} archive (corrupt or truncated: {exc})"
        ) from None
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
        raise DataFormatError(f"{label} cannot be read: {exc}") from None
    return out


def extract_members(
    spec: DatasetSpec, path: Path, names: tuple[str, ...] | None = None
) -> dict[str, bytes]:
    """The content of the archive's files named ``names`` (default: the spec's), by base name.

    Read under the caps and checked against the known digests (see :func:`read_members`).
    """
    return read_members(spec, path, names, optional=()).data


def verify_archive(spec: DatasetSpec, path: Path) -> dict[str, str]:
    """Check the archive opens, holds the spec's files, within the caps, with the registered
    sha256 where one is known; the sha256 of every member read, by base name."""
    return read_members(spec, path, keep=False).sha256


# --------------------------------------------------------------------------- transfer


class _Retryable(Exception):
    """A failure worth another attempt (network error, timeout, 5xx)."""


class _Final(Exception):
    """A failure no retry will fix (404, missing file)."""


class _Sink:
    """Where the downloaded bytes go: counted against the cap and hashed as they are written."""

    def __init__(self, out: IO[bytes], cap: int, url: str) -> None:
        self.out, self.cap, self.url = out, cap, url
        self.n, self.hash = 0, hashlib.sha256()

    def check_declared(self, size: int) -> None:
        """Refuse a download whose announced size is over the cap, before reading its body."""
        if size > self.cap:
            raise self._too_big(f"announces {size:,} bytes, more")

    def write(self, chunk: bytes) -> None:
        self.n += len(chunk)
        if self.n > self.cap:
            raise self._too_big("sent more")
        self.hash.update(chunk)
        self.out.write(chunk)  # a failed write is LCER_HOME's problem: no retry

    def _too_big(self, what: str) -> DataFormatError:
        return DataFormatError(
            f"{self.url} {what} than the cap of {self.cap:,} bytes per download "
            "(LCER_MAX_DOWNLOAD_BYTES); not downloaded"
        )


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


def _fetch_http(url: str, sink: _Sink, settings: DownloadSettings, advance) -> None:
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(settings.timeout), follow_redirects=True) as client,
            client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp,
        ):
            if resp.status_code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {resp.status_code} {resp.reason_phrase}")
            if resp.status_code >= 400:
                raise _Final(f"HTTP {resp.status_code} {resp.reason_phrase}")
            encoding = resp.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                # Decoding would expand the body outside the cap (a zstd chunk can hold GBs).
                raise _Final(f"the server sent {encoding!r}-encoded content; only identity is read")
            length = resp.headers.get("content-length", "").strip()
            total = int(length) if length.isdigit() else None
            if total is not None:
                sink.check_declared(total)
            for chunk in resp.iter_raw(_CHUNK):
                sink.write(chunk)
                advance(len(chunk), total)
            if total is not None and sink.n < total:
                raise _Retryable(
                    f"the server closed the connection mid-file ({sink.n} of {total} bytes)"
                )
    except httpx.HTTPError as exc:
        raise _Retryable(_reason(exc, settings.timeout)) from None


def _fetch_file(url: str, sink: _Sink, advance) -> None:
    src = Path(unquote(urlparse(url).path))
    if not src.is_file():
        raise _Final(f"no such file {src}")
    try:
        total = src.stat().st_size
        fh = open(src, "rb")  # noqa: SIM115  (closed below; only its opening is retried)
    except OSError as exc:
        raise _Retryable(f"cannot read {src}: {exc}") from None
    with fh:
        sink.check_declared(total)
        while True:
            try:
                chunk = fh.read(_CHUNK)
            except OSError as exc:
                raise _Retryable(f"cannot read {src}: {exc}") from None
            if not chunk:
                break
            sink.write(chunk)
            advance(len(chunk), total)


def _home_error(path: Path, exc: OSError) -> LcerHomeError:
    return home_error(path, exc)


def download(
    url: str,
    dest: Path,
    *,
    verify: Callable[[Path], object] | None = None,
    settings: DownloadSettings | None = None,
    progress: bool | None = None,
    limits: ArchiveLimits | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` through a temporary file; ``verify`` runs before the rename.

    Retries network errors, timeouts and 5xx answers (``settings.attempts`` in all, with
    exponential back-off); a 4xx answer is final, and so is a body over the download cap
    (:class:`DataFormatError`). On any failure no file is left behind.
    """
    _download(url, dest, verify=verify, settings=settings, progress=progress, limits=limits)
    return dest


def _download(
    url: str,
    dest: Path,
    *,
    verify: Callable[[Path], object] | None,
    settings: DownloadSettings | None,
    progress: bool | None,
    limits: ArchiveLimits | None,
) -> str:
    """:func:`download`; the sha256 of the bytes received, computed as they streamed."""
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise InvalidParameterError(
            f"cannot download {url!r}: only http://, https:// and file:// URLs"
        )
    settings = settings or download_settings()
    cap = (limits or archive_limits()).download_bytes
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _home_error(dest.parent, exc) from None
    last = ""
    for attempt in range(1, settings.attempts + 1):
        try:
            with (
                atomic_file(dest, suffix=".part") as out,
                _progress_bar(progress, f"{dest.name}") as advance,
            ):
                sink = _Sink(out, cap, url)
                if scheme == "file":
                    _fetch_file(url, sink, advance)
                else:
                    _fetch_http(url, sink, settings, advance)
                if verify is not None:
                    out.flush()
                    verify(Path(out.name))  # before the rename: a bad archive is never published
            return sink.hash.hexdigest()
        except _Retryable as exc:
            last = str(exc)
        except _Final as exc:
            raise DownloadError(f"cannot download {url}: {exc}") from None
        if attempt < settings.attempts:
            time.sleep(settings.backoff * 2 ** (attempt - 1))
    raise DownloadError(f"cannot download {url} after {settings.attempts} attempts: {last}")


@dataclass(frozen=True)
class FetchedArchive:
    """A verified raw archive: where it lies, the sha256 of its bytes and of each member read."""

    path: Path
    sha256: str
    members: dict[str, str]


def fetch(
    spec: DatasetSpec,
    *,
    progress: bool | None = None,
    settings: DownloadSettings | None = None,
) -> Path:
    """The verified raw archive of ``spec`` under ``data/NAME/raw/``, downloaded if not there yet.

    An archive already there that fails verification is removed and the error raised.
    """
    return fetch_archive(spec, progress=progress, settings=settings).path


def fetch_archive(
    spec: DatasetSpec,
    *,
    progress: bool | None = None,
    settings: DownloadSettings | None = None,
) -> FetchedArchive:
    """:func:`fetch`, with the digests of the archive and of its members (what traces a result)."""
    path = spec.archive_path()
    if path.is_file():
        try:
            members = verify_archive(spec, path)
        except (DataFormatError, ChecksumMismatchError) as exc:
            if spec.raw_format != "custom":
                path.unlink(missing_ok=True)
                raise type(exc)(f"{exc} (removed {path}; run again to download it anew)") from None
            raise
        return FetchedArchive(path, sha256_file(path), members)
    if spec.raw_format == "custom":
        raise MissingDataError(
            f"the data of {spec.name!r} is missing ({path}): register it again with "
            f"`lcer prepare {spec.name} --from FILE ... --force`"
        )
    verified: dict[str, str] = {}
    try:
        digest = _download(
            source_url(spec),
            path,
            verify=lambda tmp: verified.update(verify_archive(spec, tmp)),
            settings=settings,
            progress=progress,
            limits=None,
        )
    except BaseException:
        _remove_empty_dirs(path.parent, stop=path.parent.parent.parent)
        raise
    return FetchedArchive(path, digest, verified)


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
    with atomic_file(dest, suffix=".part") as out, open(src, "rb") as fh:
        shutil.copyfileobj(fh, out, _CHUNK)
