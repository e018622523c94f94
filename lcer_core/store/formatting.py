"""Query results as text: a rich table for people, JSON and CSV for programs.

Data is printed as data in every format: table cells, headers and titles are rich ``Text``
(never markup), with control and bidi characters escaped (:func:`~lcer_core.safe_text.printable`);
CSV escapes them the same way (``\x1b``, ``\u202e``; tabs and newlines kept, quoted), JSON as
``\u001b``/``\u202e`` (lossless). BLOBs are hex; lists, structs and maps are JSON text in CSV.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lcer_core.safe_text import BIDI_CONTROLS, ESCAPES, printable

__all__ = [
    "FORMATS",
    "plain",
    "cell",
    "json_text",
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
        return {_key(k): plain(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


def _key(key: Any) -> str:
    """A JSON object key for a map's key of any type."""
    value = plain(key)
    return value if isinstance(value, str) else json.dumps(value)


# What JSON leaves raw with ensure_ascii=False and a terminal obeys: DEL, C1, bidi controls.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (*range(0x7F, 0xA0), *BIDI_CONTROLS)}


def json_text(payload: Any) -> str:
    """``payload`` as JSON, UTF-8 text kept but control and bidi characters as ``\\uXXXX``."""
    text = json.dumps(payload, ensure_ascii=False)
    return text.translate(_JSON_ESCAPES)  # they occur only inside strings: still the same JSON


def to_json(frame: pl.DataFrame) -> str:
    """A JSON array with one object per row."""
    return json_text([plain(row) for row in frame.to_dicts()])


_CSV_KEEP = "\t\n"
_CSV_FROM = [chr(c) for c in ESCAPES if chr(c) not in _CSV_KEEP]
_CSV_TO = [ESCAPES[ord(c)] for c in _CSV_FROM]


def to_csv(frame: pl.DataFrame) -> str:
    """CSV with a header: BLOBs as hex, lists, structs and maps as JSON text, and control and
    bidi characters escaped (``\\x1b``, ``\\u202e``) but for tabs and newlines."""
    columns = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Binary):
            columns.append(col.bin.encode("hex"))
        elif dtype.is_nested() or isinstance(dtype, pl.Object):
            values = [None if v is None else json.dumps(plain(v)) for v in frame[name].to_list()]
            columns.append(pl.Series(name, values, pl.String))  # ASCII JSON: nothing to escape
        elif isinstance(dtype, (pl.String, pl.Categorical, pl.Enum)):
            columns.append(col.cast(pl.String).str.replace_many(_CSV_FROM, _CSV_TO))
    if columns:
        frame = frame.with_columns(columns)
    return frame.rename({c: printable(c, _CSV_KEEP) for c in frame.columns}).write_csv()


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
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def cell(text: str | None, style: str = "") -> Text | None:
    """``text`` as a rich ``Text`` for a table cell or title: printed as it is, never read as
    markup (``[link=...]``, ``[/x]``), its control and bidi characters escaped (tabs and
    newlines kept: a cell may have lines)."""
    return None if text is None else Text(printable(text, "\t\n"), style=style)


def to_rich_table(frame: pl.DataFrame, title: str | None = None, null: str = "NULL") -> Table:
    """A rich table of ``frame``, numbers right-aligned, every cell as data."""
    table = Table(title=cell(title), show_lines=False, header_style="bold")
    for name, dtype in frame.schema.items():
        justify = "right" if dtype.is_numeric() else "left"
        table.add_column(cell(name), justify=justify, overflow="fold")
    for row in frame.iter_rows():
        table.add_row(*(cell(format_value(v, null)) for v in row))
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
