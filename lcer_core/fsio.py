"""Writing under LCER_HOME: one clear line when the disk is full, read-only or not ours.

Every write of the package funnels its ``OSError`` through :func:`home_error`, so a full
disk, a read-only mount or a missing permission reads the same everywhere:
``cannot write PATH: REASON``. Parquet goes through :func:`parquet_bytes`, because the
Parquet writer reports a failed write as an opaque format error.
"""

from __future__ import annotations

import errno
import io
import tempfile
from pathlib import Path

import polars as pl

from lcer_core.errors import LcerHomeError

__all__ = ["home_error", "io_reason", "parquet_bytes", "ensure_writable"]

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


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """``frame`` as Parquet bytes, for a plain file write whose failure is a real ``OSError``."""
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()
