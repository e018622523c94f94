"""Query results as text: a rich table for people, JSON and CSV for programs."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

__all__ = [
    "FORMATS",
    "plain",
    "to_json",
    "to_csv",
    "to_rich_table",
    "format_value",
    "render",
    "print_frame",
]

#: The output formats of ``lcer sql`` (and ``--format`` elsewhere).
FORMATS = ("table", "json", "csv")


def plain(value: Any) -> Any:
    """A JSON-ready value: NaN as null, timestamps in ISO 8601, decimals as floats."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def to_json(frame: pl.DataFrame) -> str:
    """A JSON array with one object per row."""
    return json.dumps([plain(row) for row in frame.to_dicts()], ensure_ascii=False)


def to_csv(frame: pl.DataFrame) -> str:
    """CSV with a header; nested values (lists, structs) as JSON text."""
    nested = [
        name
        for name, dtype in frame.schema.items()
        if isinstance(dtype, (pl.List, pl.Array, pl.Struct, pl.Object))
    ]
    if nested:
        frame = frame.with_columns(
            pl.Series(
                c,
                [None if v is None else json.dumps(plain(v)) for v in frame[c].to_list()],
                pl.String,
            )
            for c in nested
        )
    return frame.write_csv()


def format_value(value: Any, null: str = "NULL", spec: str = ".6g") -> str:
    """One cell as text: floats by ``spec`` (6 significant digits), timestamps to the second."""
    if value is None:
        return null
    if isinstance(value, float):
        return null if math.isnan(value) else format(value, spec)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(plain(value), ensure_ascii=False)
    return str(value)


def to_rich_table(frame: pl.DataFrame, title: str | None = None, null: str = "NULL") -> Table:
    """A rich table of ``frame``, numbers right-aligned."""
    table = Table(title=title, show_lines=False, header_style="bold")
    for name, dtype in frame.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left", overflow="fold")
    for row in frame.iter_rows():
        table.add_row(*(format_value(v, null) for v in row))
    return table


def _console() -> Console:
    console = Console(soft_wrap=False, highlight=False)
    if not console.is_terminal:  # a pipe or a file: never squeeze a table into 80 columns
        console = Console(width=4096, soft_wrap=False, highlight=False, color_system=None)
    return console


def render(frame: pl.DataFrame, fmt: str = "table", title: str | None = None) -> str:
    """``frame`` as text in one of :data:`FORMATS` (a table rendered without colours)."""
    if fmt == "json":
        return to_json(frame)
    if fmt == "csv":
        return to_csv(frame)
    if fmt == "table":
        console = Console(
            width=4096, color_system=None, record=True, file=_NullFile(), highlight=False
        )
        console.print(to_rich_table(frame, title))
        return console.export_text().rstrip("\n")
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def print_frame(frame: pl.DataFrame, fmt: str = "table", title: str | None = None) -> None:
    """Print ``frame`` on stdout in one of :data:`FORMATS` (tables through rich)."""
    if fmt == "table":
        _console().print(to_rich_table(frame, title))
    else:
        text = render(frame, fmt)
        print(text, end="" if text.endswith("\n") else "\n")


class _NullFile:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass
