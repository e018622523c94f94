"""``lcer settings``: the environment variables lcer reads, with the values in effect."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from lcer_core.cli.output import printable


def settings(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The environment variables lcer reads (docs/environment.md), with the values in effect;
    a bad one is refused in one line, as by every command."""
    from lcer_core.settings import Settings
    from lcer_core.settings import settings as read

    env, fields = read(), Settings.model_fields
    values = {f.validation_alias: getattr(env, name) for name, f in fields.items()}
    if as_json:
        typer.echo(json.dumps(values))
        return
    width = max(map(len, values))
    for (name, value), field in zip(values.items(), fields.values(), strict=True):
        shown = "unset" if value is None else printable(str(value))
        typer.echo(f"{name:<{width}}  {shown}" + ("  (default)" if value == field.default else ""))
