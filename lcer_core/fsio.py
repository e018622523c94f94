"""Writing under LCER_HOME: whole files or none, and one clear line when the disk is full.

Every file the package writes goes through :func:`atomic_file` (or the ``write_*_atomic``
helpers built on it): a temporary file in the same folder, flushed and fsynced, then moved
onto the target with ``os.replace``, so a reader sees the old file or the new one, never half of
one, and a failed write leaves neither the file nor the temporary behind. A target that exists
must be a regular file (a device, a FIFO or a folder is refused, never replaced) and keeps its
permission bits (a 0600 file stays 0600). Every ``OSError``
goes through :func:`home_error`, so a full disk, a read-only mount or a missing permission
reads the same everywhere: ``cannot write PATH: REASON``. Parquet and torch objects are
serialised to bytes first (:func:`parquet_bytes`), because their writers report a failed
file write as an opaque format error.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import polars as pl

from lcer_core.errors import LcerHomeError

__all__ = [
    "TMP_PREFIX",
    "home_error",
    "io_reason",
    "parquet_bytes",
    "ensure_writable",
    "target_mode",
    "atomic_file",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "write_parquet_atomic",
]

#: Prefix of the temporary files of :func:`atomic_file` (what a leftover check looks for).
TMP_PREFIX = ".tmp-"

_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file size limit is reached",
}  # Read-only file system, Permission denied: the system's words say it already


def io_reason(exc: BaseException) -> str:
    """The reason of an I/O failure on one line, e.g. ``the disk is full (No space left on device)``."""
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        hint = _HINTS.get(exc.errno or 0)
        return f"{hint} ({text})" if hint else text
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def home_error(path: Path | str, exc: BaseException) -> LcerHomeError:
    """The one-line error for a write to ``path`` that failed with ``exc``."""
    return LcerHomeError(f"cannot write {path}: {io_reason(exc)}")


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and check that a file can be made in it, before long work that ends
    by writing there (a read-only home fails in a second, not after the training)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise home_error(folder, exc) from None


def parquet_bytes(frame: pl.DataFrame, metadata: Mapping[str, str] | None = None) -> bytes:
    """``frame`` (and key-value ``metadata``) as Parquet bytes, for a plain file write whose
    failure is a real ``OSError``."""
    buf = io.BytesIO()
    frame.write_parquet(buf, metadata=dict(metadata) if metadata else None)
    return buf.getvalue()


def file_mode() -> int:
    """The mode a plain ``open`` would give a new file (``mkstemp`` makes it owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def target_mode(path: Path) -> int | None:
    """The permission bits of the regular file ``path`` (None if it does not exist); anything
    else there (a device such as /dev/null, a FIFO, a folder) is a one-line error, not replaced."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise home_error(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise LcerHomeError(f"cannot write {path}: it is {kind}, not a regular file")
    return stat.S_IMODE(st.st_mode)


@contextlib.contextmanager
def atomic_file(
    path: Path | str, *, parents: bool = True, suffix: str | None = None
) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into: renamed onto ``path`` (after flush
    and fsync) when the block ends, removed if it raises. ``fh.name`` is the temporary path
    (to check the content before it is published). Any ``OSError`` is :func:`home_error`;
    ``parents=False`` refuses a folder that does not exist instead of creating it; ``suffix``
    ends the temporary's name (default: ``path``'s own). An existing ``path`` must be a
    regular file, and its mode is kept (:func:`target_mode`)."""
    path = Path(path)
    mode = target_mode(path)
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        tail = path.suffix if suffix is None else suffix
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=tail)
    except OSError as exc:
        raise home_error(path, exc) from None
    published = False
    try:
        os.close(fd)
        os.chmod(tmp, file_mode() if mode is None else mode)
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        published = True
    except OSError as exc:
        raise home_error(path, exc) from None
    finally:
        if not published:
            Path(tmp).unlink(missing_ok=True)


def write_bytes_atomic(path: Path | str, data: bytes | memoryview, *, parents: bool = True) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_file`: the file is complete or absent."""
    with atomic_file(path, parents=parents) as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: Path | str, text: str, *, parents: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), parents=parents)


def write_json_atomic(path: Path | str, payload: Any, *, indent: int | None = 2) -> Path:
    """Write ``payload`` as JSON (and a final newline) to ``path``, atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, default=str) + "\n")


def write_parquet_atomic(
    frame: pl.DataFrame, path: Path | str, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``frame`` (and key-value ``metadata``) as Parquet to ``path``, atomically."""
    buf = io.BytesIO()  # written by us: a full disk is then an OSError, not a format error
    frame.write_parquet(buf, metadata=dict(metadata) if metadata else None)
    return write_bytes_atomic(path, buf.getbuffer())
