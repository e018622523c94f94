"""Text from data (titles, ids, query results) made safe to print: no character of it can
drive the terminal.

C0 and C1 control characters, DEL and the bidirectional embedding, override and isolate
characters (U+202A-U+202E, U+2066-U+2069, which reorder what a reader sees) are written as
visible escapes: ``\\x1b`` for a control character, ``\\u202e`` for a bidi character. The
escape is for eyes, not a lossless encoding: a backslash in the data is left as it is.
"""

from __future__ import annotations

__all__ = ["BIDI_CONTROLS", "ESCAPES", "printable"]

#: Bidirectional embedding/override (U+202A-U+202E) and isolate (U+2066-U+2069) characters.
BIDI_CONTROLS = (*range(0x202A, 0x202F), *range(0x2066, 0x206A))

#: Every character :func:`printable` escapes, and its escape.
ESCAPES: dict[int, str] = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    **{c: f"\\u{c:04x}" for c in BIDI_CONTROLS},
}

_TABLES: dict[str, dict[int, str]] = {}


def printable(text: str, keep: str = "\t") -> str:
    """``text`` with control and bidi characters escaped (``\\x1b``, ``\\u202e``), except
    those in ``keep`` (a tab, by default)."""
    table = _TABLES.get(keep)
    if table is None:
        table = _TABLES[keep] = {c: e for c, e in ESCAPES.items() if chr(c) not in keep}
    return text.translate(table)
