"""The ``lcer`` Typer application and its error boundary.

:func:`build_app` registers the commands listed in :mod:`lcer_core.cli.commands` (plain
functions of their modules, which import nothing from here); :func:`main` maps every
:class:`~lcer_core.errors.LcerError` (and a ``MemoryError``) to exit status 2 and one line on
stderr, with no traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.exceptions import Abort, TyperException

from lcer_core.cli.output import fail, printable
from lcer_core.errors import LcerError

__all__ = ["build_app", "main", "fail", "printable"]


def build_app() -> typer.Typer:
    """The ``lcer`` application with every command of :data:`~lcer_core.cli.commands.COMMANDS`."""
    from lcer_core.cli.commands import COMMANDS

    app = typer.Typer(
        name="lcer",
        help="Counterfactual explanations for top-K recommendations (LCER and baselines).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for command in COMMANDS:
        app.command()(command)
    return app


def _usage_line(exc: TyperException) -> str:
    """A usage error (bad option type, missing argument, unknown command) as one line."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lcer`` command."""
    try:
        os.getcwd()  # a deleted folder: relative paths mean nothing, and torch's MKL aborts
    except FileNotFoundError:
        fail("the current folder no longer exists: change to a folder that exists")
    app = build_app()
    out_of_memory: str | None = None
    try:
        # Not standalone: usage errors come back as exceptions, so that they print as one line
        # (standalone Typer draws a multi-line box).
        code = app(args=argv, standalone_mode=False)
    except MemoryError as exc:  # an input too big for this process, wherever: still one line
        out_of_memory = (
            f"out of memory ({str(exc) or 'no detail'}): the command needs more memory than "
            "this process may use"
        )
    except LcerError as exc:
        from lcer_core.cli.flags import cli_message

        fail(cli_message(exc, sys.argv[1:] if argv is None else argv))
    except TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `lcer`: the help, as before
            typer.echo(exc.format_message())
            raise SystemExit(exc.exit_code) from None
        typer.echo(f"error: {_usage_line(exc)}", err=True)
        raise SystemExit(exc.exit_code) from None
    except Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    if out_of_memory is not None:  # out of the handler: its traceback, and what it held, freed
        fail(out_of_memory)
    # As in Typer's standalone mode: always leave through SystemExit, with Exit's code if any.
    status = code if isinstance(code, int) else 0
    if status == 130:
        typer.echo("interrupted", err=True)
    raise SystemExit(status)
