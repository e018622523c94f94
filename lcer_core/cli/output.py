"""What every command prints the same way: text made safe for a terminal, and the one-line error."""

from __future__ import annotations

import typer

__all__ = ["fail", "printable"]

# C0 and C1 control characters and DEL: a title or an id may hold a terminal escape sequence.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09}


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``), safe to print on a terminal."""
    return text.translate(_CONTROL)


def fail(message: str) -> None:
    """Print one error line and exit with status 2."""
    typer.echo(f"error: {printable(message)}", err=True)
    raise SystemExit(2)
