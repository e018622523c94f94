"""The ``lcer`` Typer application and its error boundary.

Each command group lives in its own module and registers itself on :data:`app`;
:func:`main` maps every :class:`~lcer_core.errors.LcerError` to exit status 2 and one
line on stderr, with no traceback.
"""

from __future__ import annotations

import sys

import typer

from lcer_core.errors import LcerError

__all__ = ["app", "main", "fail"]

app = typer.Typer(
    name="lcer",
    help="Counterfactual explanations for top-K recommendations (LCER and baselines).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str) -> None:
    """Print one error line and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lcer`` command."""
    # Importing the command modules registers their commands on ``app``.
    from lcer_core.cli import commands  # noqa: F401

    try:
        app(args=argv, standalone_mode=True)
    except LcerError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
