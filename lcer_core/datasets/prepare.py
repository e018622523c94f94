"""``prepare``: download (or take from the mirror), parse, filter, split, persist; idempotent.

The prepared files are written into a temporary folder beside their place, then renamed
into ``$LCER_HOME/data/NAME/`` one by one with ``meta.json`` last: its presence means the
folder is complete (see :mod:`lcer_core.datasets.prepared`). A failure leaves nothing
half-written, and a dataset folder this call created is removed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lcer_core import __version__
from lcer_core.errors import InvalidParameterError, LcerHomeError
from lcer_core.fsio import ensure_writable, home_error, io_reason, parquet_bytes
from lcer_core.paths import dataset_dir, lcer_home

from .download import DownloadSettings, fetch, sha256_file
from .parse import GivenSplit, RawInteractions, read_raw
from .prepared import PARTS
from .preprocess import SPLITS, TEST_PROP, SplitResult, from_given_split, split_mult_vae
from .registry import DEFAULT_SEED, DatasetSpec, get_spec

__all__ = [
    "PrepareResult",
    "prepare",
    "prepare_dataset",
    "build",
    "write_prepared",
    "fingerprint",
    "dataset_lock",
    "check_seed",
]

log_ = logging.getLogger("lcer.datasets")
META = "meta.json"
TABLES = (*PARTS, "users", "items")


@dataclass(frozen=True)
class PrepareResult:
    """Where a prepared dataset lies, whether this call did the work, and its statistics."""

    name: str
    path: Path
    did_work: bool
    stats: dict[str, Any]
    seed: int


_lock_state = threading.local()
_thread_lock = threading.RLock()


@contextlib.contextmanager
def dataset_lock() -> Iterator[None]:
    """Serialise dataset preparation across processes (a flock on LCER_HOME); re-entrant."""
    with _thread_lock:
        depth = getattr(_lock_state, "depth", 0)
        if depth:
            _lock_state.depth = depth + 1
            try:
                yield
            finally:
                _lock_state.depth -= 1
            return
        home = lcer_home()
        try:
            home.mkdir(parents=True, exist_ok=True)
            fd = os.open(home, os.O_RDONLY)
        except OSError as exc:
            raise LcerHomeError(f"cannot use LCER_HOME {home}: {io_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _lock_state.depth = 1
            try:
                yield
            finally:
                _lock_state.depth = 0
        finally:
            os.close(fd)  # closing releases the flock


def check_seed(seed: int) -> None:
    """The split's seed must be one numpy's RandomState takes, and the CLI's other seeds too."""
    if not (isinstance(seed, int) and 0 <= seed < 2**31):
        raise InvalidParameterError(f"--seed must be an integer in [0, 2^31), got {seed}")


def fingerprint(result: SplitResult) -> str:
    """sha256 of the prepared content (every table as canonical CSV), independent of file encoding."""
    h = hashlib.sha256()
    tables = {**result.parts, "users": result.users, "items": result.items}
    for name in TABLES:
        h.update(f"# {name}\n".encode())
        h.update(tables[name].write_csv().encode())
    return h.hexdigest()


def _settings(
    spec: DatasetSpec, seed: int, heldout: int, split: str = "reference"
) -> dict[str, Any]:
    """What determines the prepared content: equal settings mean there is nothing to redo."""
    # the split is named only when it is not the reference protocol (older folders match)
    return ({"split": split} if split != "reference" else {}) | {
        "format": spec.raw_format,
        "seed": seed,
        "heldout_users": heldout,
        "threshold": spec.threshold,
        "min_user_interactions": spec.min_user_interactions,
        "test_prop": TEST_PROP,
        "checksums": dict(spec.checksums),
    }


def build(
    spec: DatasetSpec,
    raw: RawInteractions | GivenSplit,
    *,
    seed: int,
    heldout: int,
    split: str = "reference",
) -> SplitResult:
    """The prepared dataset in memory, from parsed raw data (no file is written)."""
    if isinstance(raw, GivenSplit):
        return from_given_split(spec.name, raw)
    return split_mult_vae(
        spec.name,
        raw.ratings,
        raw.items,
        threshold=spec.threshold,
        min_user_interactions=spec.min_user_interactions,
        heldout_users=heldout,
        seed=seed,
        split=split,
    )


def _meta(
    spec: DatasetSpec,
    result: SplitResult,
    seed: int,
    heldout: int,
    archive: Path,
    split: str = "reference",
) -> dict[str, Any]:
    return {
        "dataset": spec.name,
        "stats": result.stats,
        "seed": seed,
        "heldout_users": heldout,
        "fingerprint": fingerprint(result),
        "settings": _settings(spec, seed, heldout, split),
        "source": {
            "format": spec.raw_format,
            "archive": spec.archive,
            "url": spec.url,
            "archive_sha256": sha256_file(archive),
        },
        "table1_paper": None
        if spec.table1 is None
        else {
            "users": spec.table1.users,
            "items": spec.table1.items,
            "interactions": spec.table1.interactions,
            "density_pct": spec.table1.density_pct,
        },
        "protocol": "mult-vae (Liang et al. 2018): rating > threshold, users >= min, N/N held-out users, 80/20 fold-in",
        "lcer_version": __version__,
        "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_prepared(folder: Path, result: SplitResult, meta: dict[str, Any]) -> None:
    """Write the layout of :mod:`lcer_core.datasets.prepared` into ``folder``; ``meta.json`` last."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=folder))
    except OSError as exc:
        raise home_error(folder, exc) from None
    try:
        tables = {**result.parts, "users": result.users, "items": result.items}
        for name in TABLES:
            # Through bytes: a full disk is then an OSError, not an opaque Parquet error.
            (tmp / f"{name}.parquet").write_bytes(parquet_bytes(tables[name]))
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        (folder / META).unlink(missing_ok=True)  # from here on the folder reads as incomplete
        for name in TABLES:
            os.replace(tmp / f"{name}.parquet", folder / f"{name}.parquet")
        os.replace(tmp / META, folder / META)
    except OSError as exc:
        raise home_error(folder, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None


def _load_raw(spec: DatasetSpec, archive: Path) -> RawInteractions | GivenSplit:
    if spec.raw_format == "custom":
        from .custom import read_custom

        return read_custom(spec)
    return read_raw(spec, archive)


def prepare_dataset(
    name: str,
    *,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    heldout: int | None = None,
    progress: bool | None = None,
    settings: DownloadSettings | None = None,
    log: Callable[[str], None] | None = None,
    split: str = "reference",
) -> PrepareResult:
    """Prepare ``name`` unless it already is with the same settings; say which happened.

    ``split``: ``"reference"`` (Mult-VAE's protocol) or ``"authors-notebook"`` (the LCER
    authors' notebook as it ran; see :mod:`lcer_core.datasets.preprocess`)."""
    say = log or log_.info
    check_seed(seed)
    if split not in SPLITS:
        raise InvalidParameterError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    spec = get_spec(name)
    n_heldout = spec.heldout_users if heldout is None else heldout
    if n_heldout < 1:
        raise InvalidParameterError(f"--heldout must be >= 1, got {n_heldout}")
    folder = dataset_dir(name)
    with dataset_lock():
        meta = _read_meta(folder)
        if (
            not force
            and meta is not None
            and meta.get("settings") == _settings(spec, seed, n_heldout, split)
        ):
            say(f"{name} is already prepared (seed {seed}) in {folder}: nothing to do")
            return PrepareResult(name, folder, False, dict(meta["stats"]), seed)
        existed = folder.exists()
        try:
            ensure_writable(folder)  # before the download and the parsing
            archive = fetch(spec, progress=progress, settings=settings)
            raw = _load_raw(spec, archive)
            result = build(spec, raw, seed=seed, heldout=n_heldout, split=split)
            meta = _meta(spec, result, seed, n_heldout, archive, split)
            write_prepared(folder, result, meta)
        except BaseException:
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
            raise
    say(f"prepared {name} in {folder}")
    return PrepareResult(name, folder, True, dict(result.stats), seed)


def prepare(
    name: str, *, seed: int = DEFAULT_SEED, force: bool = False, heldout: int | None = None
) -> Path:
    """Download, filter and split dataset ``name`` into ``$LCER_HOME/data/NAME``; its folder."""
    return prepare_dataset(name, seed=seed, force=force, heldout=heldout).path
