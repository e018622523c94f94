"""A user's own interaction file (CSV or Parquet) read into raw interactions, each problem
named exactly (the column, the line, the value): what ``lcer prepare NAME --from FILE``
registers (:mod:`lcer_core.datasets.custom`) and every later preparation re-reads."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import polars as pl

from lcer_core.errors import DataFormatError, InvalidParameterError

from .parse import RawInteractions
from .registry import CustomSource, DatasetSpec

__all__ = ["DEFAULT_THRESHOLD", "default_sep", "load_table", "read_custom", "read_sources"]

DEFAULT_THRESHOLD = 3.5  # with a rating column, keep ratings above this unless told otherwise
_CSV = (".csv", ".tsv", ".txt")
_PARQUET = (".parquet", ".pq")

Locate = Callable[[int], str]


def _ragged_line(text: str, sep: str) -> str:
    """Describe the first CSV line whose field count differs from the header's."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header = next(reader, [])
    for row in reader:
        if row and len(row) != len(header):
            return f"line {reader.line_num} has {len(row)} fields, the header {len(header)}"
    return "it cannot be parsed as CSV"


def _record_lines(text: str, sep: str) -> list[tuple[int, bool]]:
    """(line it starts on, blank?) of every CSV record after the header, quoted line breaks
    included, as Python's csv module splits them."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    next(reader, None)
    out: list[tuple[int, bool]] = []
    start = reader.line_num + 1
    for row in reader:
        out.append((start, not row))
        start = reader.line_num + 1
    return out


def default_sep(path: Path) -> str:
    """The separator of a file by its type: a tab for ``.tsv``, else a comma."""
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _read_csv(path: Path, sep: str) -> tuple[pl.DataFrame, Locate]:
    """A CSV file with every column as text, blank lines skipped; also each row's line."""
    data = path.read_bytes()
    if not data:
        raise DataFormatError(f"{path.name} is empty")
    if b"\r" in data:  # CR-LF or CR-only line ends: read as LF
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head = next(csv.reader(io.StringIO(data[: 1 << 20].decode("utf-8", "replace"))), [])
    twice = sorted({c for c in head if head.count(c) > 1})
    if twice:
        raise DataFormatError(
            f"{path.name} line 1: column {twice[0]!r} appears twice in the header"
        )
    try:
        df = pl.read_csv(io.BytesIO(data), separator=sep, infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.NoDataError:
        raise DataFormatError(f"{path.name} is empty") from None
    except pl.exceptions.ComputeError:
        text = data.decode("utf-8", "replace")
        raise DataFormatError(f"{path.name} is not valid CSV: {_ragged_line(text, sep)}") from None
    lines: list[int] | None = None
    blank_rows = df.select(pl.all_horizontal(pl.all().is_null())).to_series() if df.width else None
    if blank_rows is not None and blank_rows.any():
        records = _record_lines(data.decode("utf-8", "replace"), sep)
        if len(records) == df.height:  # drop the rows of blank lines, keep the others' lines
            df = df.filter(pl.Series([not blank for _, blank in records]))
            lines = [line for line, blank in records if not blank]

    def locate(i: int) -> str:
        nonlocal lines
        if lines is None:
            records = _record_lines(data.decode("utf-8", "replace"), sep)
            lines = [line for line, blank in records if not blank]
        return f"line {lines[i]}" if i < len(lines) else f"line {i + 2}"

    return df, locate


def load_table(path: Path, *, sep: str | None = None) -> tuple[pl.DataFrame, Locate]:
    """Read a CSV (all columns as text) or Parquet file; also how to name row ``i`` in a message.

    ``sep`` defaults to the file type's (:func:`default_sep`)."""
    if not path.is_file():
        raise InvalidParameterError(f"file not found: {path}")
    suffix = path.suffix.lower()
    sep = default_sep(path) if sep is None else sep
    try:
        if suffix in _PARQUET:
            df = pl.read_parquet(path)
            locate: Locate = lambda i: f"row {i + 1}"  # noqa: E731
        elif suffix in _CSV:
            if len(sep) != 1:
                raise InvalidParameterError(f"sep must be one character, got {sep!r}", param="sep")
            df, locate = _read_csv(path, sep)
        else:
            raise InvalidParameterError(
                f"unsupported file type {path.name!r}: use .csv or .parquet (or .tsv)"
            )
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc}") from None
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(f"cannot read {path.name}: {first}") from None
    if df.width == 0 or df.height == 0:
        raise DataFormatError(f"{path.name} has no rows")
    return df, locate


def _column(df: pl.DataFrame, col: str, label: str, option: str) -> pl.Series:
    if col not in df.columns:
        raise DataFormatError(
            f"column {col!r} ({option}) not found in {label}; available columns: {', '.join(df.columns)}"
        )
    return df[col]


_EXACT = 2**53  # floats name integers exactly below this


def _integral(f: pl.Series) -> pl.Series:
    """Float values that are whole numbers (``1.0``), as Int64; anything else null."""
    ok = (f.is_finite() & (f.floor() == f) & (f.abs() < _EXACT)).fill_null(False)
    return f.set(~ok, None).cast(pl.Int64, strict=False)


def _ids(s: pl.Series, label: str, locate: Locate) -> pl.Series:
    """An id column as Int64 (``1.0`` is 1, from text or floats alike); the first empty,
    non-integer or out-of-range value is named with its line."""
    dtype = s.dtype
    if dtype.is_integer():
        out = s.cast(pl.Int64, strict=False)  # UInt64 ids >= 2^63 do not fit: refused below
        original = s
    elif dtype.is_float():
        out = _integral(s)
        original = s.cast(pl.String)
    elif dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        original = s.cast(pl.String)
        text = original.str.strip_chars()
        as_int = text.cast(pl.Int64, strict=False)
        out = pl.select(
            pl.coalesce(as_int, _integral(text.cast(pl.Float64, strict=False)))
        ).to_series()
    else:
        raise DataFormatError(
            f"{label}: column {s.name!r} must hold integer ids, got a column of type {dtype}"
        )
    bad = (out.is_null()).arg_true()
    if bad.len():
        i = int(bad[0])
        value = original[i]
        if value is None or str(value).strip() == "":
            raise DataFormatError(f"{label} {locate(i)}: empty id in column {s.name!r}")
        if dtype.is_integer():
            raise DataFormatError(
                f"{label} {locate(i)}: column {s.name!r} holds id {value}, beyond the largest "
                f"id supported (2^63 - 1)"
            )
        raise DataFormatError(
            f"{label} {locate(i)}: column {s.name!r} must hold integer ids, got {value!r}"
        )
    return out.alias(s.name)


def _numbers(s: pl.Series, label: str, locate: Locate) -> pl.Series:
    """A rating column as Float64; the first empty, non-numeric or non-finite value is named
    with its line."""
    if s.dtype.is_numeric():
        out = s.cast(pl.Float64)
        original = s
    elif s.dtype in (pl.String, pl.Categorical) or isinstance(s.dtype, pl.Enum):
        original = s.cast(pl.String)
        out = original.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        raise DataFormatError(
            f"{label}: column {s.name!r} must be numeric, got a column of type {s.dtype}"
        )
    bad = (out.is_null() | ~out.is_finite()).arg_true()
    if bad.len():
        i = int(bad[0])
        what = "numeric" if out[i] is None else "a finite number"
        raise DataFormatError(
            f"{label} {locate(i)}: column {s.name!r} must be {what}, got {original[i]!r}"
        )
    return out


def _text(s: pl.Series) -> pl.Series:
    return s.cast(pl.String).str.strip_chars().replace("", None)


def _parse_interactions(path: Path, src: CustomSource, label: str) -> pl.DataFrame:
    df, locate = load_table(path, sep=src.sep)
    user = _ids(_column(df, src.user_col, label, "--user-col"), label, locate).alias("user")
    item = _ids(_column(df, src.item_col, label, "--item-col"), label, locate).alias("item")
    if src.rating_col:
        rating = _numbers(_column(df, src.rating_col, label, "--rating-col"), label, locate).alias(
            "rating"
        )
    else:
        rating = pl.Series("rating", [None] * df.height, dtype=pl.Float64)
    return pl.DataFrame([user, item, rating])


def _parse_items(path: Path, src: CustomSource, label: str) -> pl.DataFrame:
    df, locate = load_table(path, sep=src.sep)
    item = _ids(_column(df, src.item_id_col or src.item_col, label, "--item-id-col"), label, locate)
    title = _text(_column(df, src.title_col or "title", label, "--title-col"))
    if src.genres_col:
        genres = _text(_column(df, src.genres_col, label, "--genres-col"))
    else:
        genres = pl.Series("genres", [None] * df.height, dtype=pl.String)
    out = pl.DataFrame([item.alias("item"), title.alias("title"), genres.alias("genres")])
    dup = (~out["item"].is_first_distinct()).arg_true()
    if dup.len():
        i = int(dup[0])
        raise DataFormatError(f"{label} {locate(i)}: item id {out['item'][i]} is listed twice")
    return out


def _empty_items() -> pl.DataFrame:
    return pl.DataFrame(schema={"item": pl.Int64, "title": pl.String, "genres": pl.String})


def read_sources(
    folder_of: Callable[[str], Path], src: CustomSource, labels: tuple[str, str]
) -> RawInteractions:
    """The interactions (and items) of ``src``, each file found by ``folder_of(name)`` and
    named in messages by ``labels``."""
    ratings = _parse_interactions(folder_of(src.file), src, labels[0])
    items = (
        _parse_items(folder_of(src.items_file), src, labels[1])
        if src.items_file
        else _empty_items()
    )
    return RawInteractions(ratings=ratings, items=items)


def read_custom(spec: DatasetSpec) -> RawInteractions:
    """Parse the registered copy of a custom dataset (checked against its digest by ``fetch``)."""
    src = spec.custom
    if src is None:
        raise InvalidParameterError(f"{spec.name!r} is not a custom dataset")
    raw = spec.raw_dir()
    return read_sources(lambda f: raw / f, src, (src.file, src.items_file or ""))
