"""Bring your own interactions: register a CSV or Parquet file as a dataset.

``lcer prepare NAME --from FILE --user-col C --item-col C [--rating-col C --threshold T]
[--items FILE --item-id-col C --title-col C --genres-col C]`` validates the file (each
problem named exactly: the column, the line, the value), copies it under
``$LCER_HOME/data/NAME/raw/``, records how to read it in ``source.json`` and prepares it
with the same filtering and split as the built-in datasets. Ids must be integers.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lcer_core.checks import check_heldout, check_seed
from lcer_core.errors import InvalidParameterError
from lcer_core.fsio import home_error, write_json_atomic

from .download import copy_into, sha256_file
from .prepare import (
    PrepareResult,
    build,
    dataset_lock,
    meta_record,
    prepare_dataset,
    source_record,
    stored_settings,
    write_prepared,
)
from .preprocess import SplitResult
from .registry import (
    BUILTIN,
    CUSTOM_HELDOUT_DEFAULT,
    DEFAULT_SEED,
    CustomSource,
    DatasetSpec,
    _custom_spec,
    read_custom_source,
    source_json_path,
    validate_name,
)
from .user_files import DEFAULT_THRESHOLD, default_sep, read_sources

__all__ = ["register_and_prepare"]


def _same_registration(a: CustomSource, b: CustomSource) -> bool:
    return replace(a, original="", items_original=None) == replace(
        b, original="", items_original=None
    )


def _check_options(
    name: str,
    seed: int | None,
    threshold: float | None,
    rating_col: str | None,
    items_file: Path | None,
    item_id_col: str | None,
    title_col: str | None,
    genres_col: str | None,
    heldout: int | None,
) -> int:
    """Check the name and the options of a registration; return the number of held-out users."""
    validate_name(name)
    if name in BUILTIN:
        raise InvalidParameterError(
            f"{name!r} is a built-in dataset: choose another name for your data"
        )
    if seed is not None:
        check_seed(seed)
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidParameterError(
            f"threshold must be a finite number, got {threshold}", param="threshold"
        )
    if threshold is not None and rating_col is None:
        raise InvalidParameterError(
            "--threshold needs --rating-col (without ratings every row is kept)"
        )
    if items_file is None and (item_id_col or title_col or genres_col):
        raise InvalidParameterError("--item-id-col, --title-col and --genres-col need --items FILE")
    n_heldout = CUSTOM_HELDOUT_DEFAULT if heldout is None else heldout
    return check_heldout(n_heldout)


def _locate_files(
    file: Path, items_file: Path | None, sep: str | None
) -> tuple[Path, Path | None, str | None]:
    """The files' absolute paths (each must exist) and the separator to read them with."""
    file = file.expanduser().resolve()
    items_path = items_file.expanduser().resolve() if items_file else None
    for p in (file, items_path):
        if p is not None and not p.is_file():
            raise InvalidParameterError(f"file not found: {p}")
    if sep is None:  # by the file type (a tab for .tsv); None: each file by its own type
        seps = {default_sep(p) for p in (file, items_path) if p is not None}
        sep = seps.pop() if len(seps) == 1 else None
    return file, items_path, sep


def _new_source(
    file: Path,
    items_path: Path | None,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    threshold: float | None,
    item_id_col: str | None,
    title_col: str | None,
    genres_col: str | None,
    n_heldout: int,
    sep: str | None,
) -> CustomSource:
    """The registration of ``file`` (and ``items_path``) with these options and the files' digests."""
    items_copy = None
    if items_path is not None:
        items_copy = items_path.name if items_path.name != file.name else f"items-{items_path.name}"
    return CustomSource(
        file=file.name,
        original=str(file),
        sha256=sha256_file(file),
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        threshold=(DEFAULT_THRESHOLD if threshold is None else threshold) if rating_col else None,
        heldout_users=n_heldout,
        sep=sep,
        items_file=items_copy,
        items_original=str(items_path) if items_path else None,
        items_sha256=sha256_file(items_path) if items_path else None,
        item_id_col=(item_id_col or item_col) if items_path else None,
        title_col=(title_col or "title") if items_path else None,
        genres_col=genres_col if items_path else None,
    )


def _build_in_memory(
    spec: DatasetSpec,
    src: CustomSource,
    file: Path,
    items_path: Path | None,
    seed: int,
    n_heldout: int,
) -> tuple[dict[str, Path], SplitResult]:
    """Each copy's original file, and the prepared split read from the originals (no write)."""
    items_copy = src.items_file
    originals = {src.file: file} | ({items_copy: items_path} if items_copy and items_path else {})
    raw = read_sources(
        lambda f: originals[f], src, (file.name, items_path.name if items_path else "")
    )
    return originals, build(spec, raw, seed=seed, heldout=n_heldout)


def _write_registration(
    spec: DatasetSpec,
    src: CustomSource,
    old: CustomSource | None,
    originals: dict[str, Path],
    result: SplitResult,
    seed: int,
    n_heldout: int,
) -> Path:
    """Copy the files in, drop the replaced registration's, write the source and the prepared
    split; on error remove a folder this call created. Return the dataset's folder."""
    folder = spec.raw_dir().parent
    existed = folder.exists()
    try:
        for copy, original in originals.items():
            copy_into(original, spec.raw_dir() / copy)
        if old is not None:
            for stale in {old.file, old.items_file} - set(originals) - {None}:
                (spec.raw_dir() / stale).unlink(missing_ok=True)
        write_json_atomic(source_json_path(spec.name), src.to_json())
        source = source_record(spec, src.sha256, dict(spec.checksums))
        write_prepared(folder, result, meta_record(spec, result, seed, n_heldout, source))
    except OSError as exc:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise home_error(folder, exc) from None
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def register_and_prepare(
    name: str,
    file: Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None = None,
    threshold: float | None = None,
    items_file: Path | None = None,
    item_id_col: str | None = None,
    title_col: str | None = None,
    genres_col: str | None = None,
    heldout: int | None = None,
    sep: str | None = None,
    seed: int | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Validate ``file``, register it as dataset ``name`` and prepare it; nothing is written on error.

    Registering the same file with the same options again does no work; a different
    registration under an existing name needs ``force``.
    """
    n_heldout = _check_options(
        name, seed, threshold, rating_col, items_file, item_id_col, title_col, genres_col, heldout
    )
    file, items_path, sep = _locate_files(file, items_file, sep)
    src = _new_source(
        file,
        items_path,
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        threshold=threshold,
        item_id_col=item_id_col,
        title_col=title_col,
        genres_col=genres_col,
        n_heldout=n_heldout,
        sep=sep,
    )
    spec = _custom_spec(name, src)
    with dataset_lock():
        old = read_custom_source(name)
        if old is not None and _same_registration(old, src):
            return prepare_dataset(name, seed=seed, force=force, log=log)
        if old is not None and not force:
            raise InvalidParameterError(
                f"dataset {name!r} is already registered from {old.original}: pass --force to replace it"
            )
        if seed is None:  # a new registration keeps the seed of the one it replaces
            seed = (stored_settings(name) or (DEFAULT_SEED, 0))[0]
        # Validate and split in memory first: a bad file writes nothing.
        originals, result = _build_in_memory(spec, src, file, items_path, seed, n_heldout)
        folder = _write_registration(spec, src, old, originals, result, seed, n_heldout)
    (log or (lambda m: None))(f"registered {name} from {file} and prepared it in {folder}")
    return PrepareResult(name, folder, True, dict(result.stats), seed)
