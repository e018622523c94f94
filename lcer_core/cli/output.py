"""What every command prints the same way: text made safe for a terminal, and the one-line error."""

from __future__ import annotations

import typer

from lcer_core.safe_text import printable

__all__ = ["fail", "printable"]


def fail(message: str) -> None:
    """Print one error line and exit with status 2."""
    typer.echo(f"error: {printable(message)}", err=True)
    raise SystemExit(2)
