"""Parsers of the raw formats, with polars; a malformed line names its file and line number.

Every ratings parser returns ``user`` (Int64), ``item`` (Int64), ``rating`` (Float64) in
file order; every item parser ``item`` (Int64, or Utf8 for Alishop), ``title``, ``genres``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lcer_core.errors import DataFormatError

from .download import read_members
from .registry import DatasetSpec

__all__ = [
    "ML100K_GENRES",
    "RawInteractions",
    "GivenSplit",
    "parse_lines",
    "parse_ml100k_ratings",
    "parse_ml100k_items",
    "parse_ml100k_genres",
    "parse_ml1m_ratings",
    "parse_ml1m_movies",
    "parse_epinions_ratings",
    "parse_uid_sid_csv",
    "parse_unique_sid",
    "parse_item_cate",
    "read_raw",
    "parse_members",
]

# The order of the 19 genre flags of u.item (the content of u.genre), used when u.genre is absent.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True)
class RawInteractions:
    """Ratings (``user``, ``item``, ``rating``) in file order and item metadata (``item``, ``title``, ``genres``)."""

    ratings: pl.DataFrame
    items: pl.DataFrame


@dataclass(frozen=True)
class GivenSplit:
    """A dataset that arrives filtered and split in the Mult-VAE layout (Alishop)."""

    parts: dict[str, pl.DataFrame]  # train, val_tr, val_te, test_tr, test_te: uid, sid (Int64)
    items: pl.DataFrame  # sid (Int64), raw_id (Utf8), genres (Utf8 or null)


def _decode(data: bytes, label: str, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataFormatError(f"{label} line {line}: not valid {encoding} text") from None


def parse_lines(
    data: bytes,
    label: str,
    pattern: str,
    names: list[str],
    expected: str,
    *,
    encoding: str = "utf-8",
    skip_header: str | None = None,
) -> pl.DataFrame:
    """Match every non-blank line against ``pattern`` (one capture group per name), as strings.

    The first line that does not match raises :class:`DataFormatError` with its number.
    ``skip_header`` is the exact header line to drop (it must be there).
    """
    text = _decode(data, label, encoding)
    lines = pl.Series("line", text.split("\n"), dtype=pl.String).str.strip_suffix("\r")
    df = lines.to_frame().with_row_index("lineno", offset=1)
    if skip_header is not None:
        first = df["line"][0] if df.height else ""
        if first.strip() != skip_header:
            raise DataFormatError(
                f"{label} line 1: expected the header {skip_header!r}, got {first[:80]!r}"
            )
        df = df.slice(1)
    df = df.filter(pl.col("line").str.strip_chars() != "")
    groups = df.with_columns(pl.col("line").str.extract_groups(pattern).alias("_g"))
    fields = groups.select("lineno", "line", pl.col("_g").struct.field("*"))
    fields = fields.rename({old: new for old, new in zip(fields.columns[2:], names, strict=True)})
    bad = fields.filter(pl.any_horizontal(pl.col(names).is_null()))
    if bad.height:
        raise DataFormatError(
            f"{label} line {bad['lineno'][0]}: expected {expected}, got {bad['line'][0][:80]!r}"
        )
    return fields


def _to_numbers(df: pl.DataFrame, label: str, ints: list[str], floats: list[str]) -> pl.DataFrame:
    """Cast string columns to Int64 / Float64; the first value that is not a number names its line."""
    casts = [pl.col(c).str.strip_chars().cast(pl.Int64, strict=False) for c in ints]
    casts += [pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in floats]
    out = df.with_columns(casts)
    for c in ints + floats:
        bad = out.filter(
            pl.col(c).is_null() | (pl.col(c).is_nan() if c in floats else pl.lit(False))
        )
        if bad.height:
            kind = "an integer" if c in ints else "a number"
            raw = df.filter(pl.col("lineno") == bad["lineno"][0])[c][0]
            raise DataFormatError(f"{label} line {bad['lineno'][0]}: {c} {raw!r} is not {kind}")
    return out


def parse_ml100k_ratings(data: bytes, label: str = "u.data") -> pl.DataFrame:
    """ML 100K ``u.data``: ``user \\t item \\t rating \\t timestamp``."""
    df = parse_lines(
        data,
        label,
        r"^\s*([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+?)\s*$",
        ["user", "item", "rating", "timestamp"],
        "'user<TAB>item<TAB>rating<TAB>timestamp'",
    )
    return _to_numbers(df, label, ["user", "item", "timestamp"], ["rating"]).select(
        "user", "item", "rating"
    )


def parse_ml100k_genres(data: bytes | None, label: str = "u.genre") -> tuple[str, ...]:
    """Genre names of ``u.genre`` (``name|index``) in index order; the documented list if absent."""
    if data is None:
        return ML100K_GENRES
    df = parse_lines(
        data, label, r"^(.*)\|(\d+)\s*$", ["name", "index"], "'genre|index'", encoding="latin-1"
    )
    df = _to_numbers(df, label, ["index"], []).sort("index")
    return tuple(df["name"].to_list())


def parse_ml100k_items(
    data: bytes, label: str = "u.item", genres: tuple[str, ...] = ML100K_GENRES
) -> pl.DataFrame:
    """ML 100K ``u.item`` (Latin-1): id|title|release|video release|url|one 0/1 flag per genre."""
    n = len(genres)
    flags = r"\|([01])" * n
    df = parse_lines(
        data,
        label,
        rf"^([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*){flags}\s*$",
        ["item", "title", "release", "video", "url"] + [f"g{i}" for i in range(n)],
        f"'id|title|release date|video release date|url' and {n} genre flags separated by '|'",
        encoding="latin-1",
    )
    df = _to_numbers(df, label, ["item"], [])
    names = pl.concat_list(
        [
            pl.when(pl.col(f"g{i}") == "1").then(pl.lit(g)).otherwise(None)
            for i, g in enumerate(genres)
        ]
    )
    return df.select(
        "item",
        pl.col("title").str.strip_chars().replace("", None).alias("title"),
        names.list.drop_nulls().list.join("|").replace("", None).alias("genres"),
    )


def parse_ml1m_ratings(data: bytes, label: str = "ratings.dat") -> pl.DataFrame:
    """ML 1M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``."""
    df = parse_lines(
        data,
        label,
        r"^\s*([^:]+)::([^:]+)::([^:]+)::([^:]+?)\s*$",
        ["user", "item", "rating", "timestamp"],
        "'UserID::MovieID::Rating::Timestamp'",
    )
    return _to_numbers(df, label, ["user", "item", "timestamp"], ["rating"]).select(
        "user", "item", "rating"
    )


def parse_ml1m_movies(data: bytes, label: str = "movies.dat") -> pl.DataFrame:
    """ML 1M ``movies.dat`` (Latin-1): ``MovieID::Title::Genres`` with ``|``-separated genres."""
    df = parse_lines(
        data,
        label,
        r"^\s*([^:]+)::(.*)::([^:]*?)\s*$",
        ["item", "title", "genres"],
        "'MovieID::Title::Genres'",
        encoding="latin-1",
    )
    df = _to_numbers(df, label, ["item"], [])
    return df.select(
        "item",
        pl.col("title").str.strip_chars().replace("", None),
        pl.col("genres").str.strip_chars().replace("", None),
    )


def parse_epinions_ratings(data: bytes, label: str = "ratings_data.txt") -> pl.DataFrame:
    """Epinions ``ratings_data.txt``: ``user item rating`` separated by a space, no header."""
    df = parse_lines(
        data,
        label,
        r"^\s*(\S+)\s+(\S+)\s+(\S+)\s*$",
        ["user", "item", "rating"],
        "'user item rating'",
    )
    return _to_numbers(df, label, ["user", "item"], ["rating"]).select("user", "item", "rating")


def parse_uid_sid_csv(data: bytes, label: str) -> pl.DataFrame:
    """A Mult-VAE split file: header ``uid,sid`` then one ``uid,sid`` pair a line."""
    df = parse_lines(
        data, label, r"^\s*([^,]+),([^,]+?)\s*$", ["uid", "sid"], "'uid,sid'", skip_header="uid,sid"
    )
    return _to_numbers(df, label, ["uid", "sid"], []).select("lineno", "uid", "sid")


def parse_unique_sid(data: bytes, label: str = "unique_sid.txt") -> pl.DataFrame:
    """``unique_sid.txt``: the raw item id of internal item ``sid`` on line ``sid + 1``."""
    df = parse_lines(data, label, r"^\s*(\S+)\s*$", ["raw_id"], "one item id")
    dup = df.filter(~pl.col("raw_id").is_first_distinct())
    if dup.height:
        raise DataFormatError(
            f"{label} line {dup['lineno'][0]}: item {dup['raw_id'][0]!r} listed twice"
        )
    return df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("sid"), "raw_id")


def parse_item_cate(data: bytes, label: str = "item_cate.csv") -> pl.DataFrame:
    """``item_cate.csv``: ``item,category`` (raw ids, no header)."""
    df = parse_lines(
        data, label, r"^\s*([^,]+),([^,]*?)\s*$", ["raw_id", "category"], "'item,category'"
    )
    return df.select(
        pl.col("raw_id").str.strip_chars(), pl.col("category").replace("", None)
    ).unique("raw_id", keep="first", maintain_order=True)


def _read_alishop(members: dict[str, bytes], at: Callable[[str], str]) -> GivenSplit:
    items = parse_unique_sid(members["unique_sid.txt"], at("unique_sid.txt"))
    n_items = items.height
    files = {
        "train": "train.csv",
        "val_tr": "validation_tr.csv",
        "val_te": "validation_te.csv",
        "test_tr": "test_tr.csv",
        "test_te": "test_te.csv",
    }
    parts: dict[str, pl.DataFrame] = {}
    for part, fname in files.items():
        df = parse_uid_sid_csv(members[fname], at(fname))
        bad = df.filter((pl.col("sid") < 0) | (pl.col("sid") >= n_items) | (pl.col("uid") < 0))
        if bad.height:
            raise DataFormatError(
                f"{at(fname)} line {bad['lineno'][0]}: uid {bad['uid'][0]} / sid {bad['sid'][0]} out of range "
                f"(unique_sid.txt lists {n_items} items)"
            )
        parts[part] = df.select("uid", "sid")
    cate = parse_item_cate(members["item_cate.csv"], at("item_cate.csv"))
    items = items.join(cate, on="raw_id", how="left", maintain_order="left").rename(
        {"category": "genres"}
    )
    return GivenSplit(parts=parts, items=items)


def read_raw(spec: DatasetSpec, archive: Path) -> RawInteractions | GivenSplit:
    """Parse the archive of a built-in dataset (members read capped and checked, see :func:`read_members`)."""
    return parse_members(spec, read_members(spec, archive).data, archive.name)


def parse_members(
    spec: DatasetSpec, members: dict[str, bytes], archive_name: str
) -> RawInteractions | GivenSplit:
    """Parse the members of a built-in dataset's archive, by base name (optional ones may be absent)."""
    fmt = spec.raw_format

    def at(member: str) -> str:
        return f"{archive_name}:{member}"

    if fmt == "ml-100k":
        genres = parse_ml100k_genres(members.get("u.genre"), at("u.genre"))
        return RawInteractions(
            ratings=parse_ml100k_ratings(members["u.data"], at("u.data")),
            items=parse_ml100k_items(members["u.item"], at("u.item"), genres=genres),
        )
    if fmt == "ml-1m":
        return RawInteractions(
            ratings=parse_ml1m_ratings(members["ratings.dat"], at("ratings.dat")),
            items=parse_ml1m_movies(members["movies.dat"], at("movies.dat")),
        )
    if fmt == "epinions":
        ratings = parse_epinions_ratings(members["ratings_data.txt"], at("ratings_data.txt"))
        return RawInteractions(
            ratings=ratings,
            items=pl.DataFrame(schema={"item": pl.Int64, "title": pl.String, "genres": pl.String}),
        )
    if fmt == "alishop":
        return _read_alishop(members, at)
    raise DataFormatError(f"no parser for raw format {fmt!r} of dataset {spec.name!r}")
