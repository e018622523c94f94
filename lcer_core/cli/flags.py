"""The command line's names for the library's parameters: one table, applied at the error boundary.

Library messages start with the parameter's library name (``k must be a positive integer``);
:func:`cli_message` says the flag instead (``--k must be a positive integer``).
"""

from __future__ import annotations

from collections.abc import Sequence

from lcer_core.errors import InvalidParameterError

__all__ = ["FLAGS", "COMMAND_FLAGS", "cli_message"]

#: Library parameter -> its flag, for every command.
FLAGS: dict[str, str] = {
    "k": "--k",
    "alpha": "--alpha",
    "lam": "--lam",
    "steps": "--steps",
    "n_users": "--users",
    "seed": "--seed",
    "split_seed": "--split-seed",
    "shard_size": "--shard-size",
    "epochs": "--epochs",
    "device": "--device",
    "heldout": "--heldout",
    "split": "--split",
    "sample": "--sample",
    "synthetic_items": "--synthetic-items",
    "sep": "--sep",
    "threshold": "--threshold",
    "out": "--out",
    "address": "--address",
    "runner": "--runner",
    "explain_deployment": "--explain-deployment",
    "patience": "--patience",
    "min_delta": "--min-delta",
    "timeout": "--timeout",
    "memory_limit": "--memory-limit",
}

#: Where a command names a parameter otherwise (``lcer sweep`` takes lists of α and λ).
COMMAND_FLAGS: dict[str, dict[str, str]] = {
    "sweep": {"alpha": "--alphas", "lam": "--lams"},
    "run": {"split_seed": "--split-seeds"},
}


def _command(argv: Sequence[str] | None) -> str | None:
    """The command of a command line: its first word that is not an option."""
    return next((a for a in argv or () if not a.startswith("-")), None)


def cli_message(exc: Exception, argv: Sequence[str] | None = None) -> str:
    """The first line of ``exc``'s message, its parameter named by its flag."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    param = getattr(exc, "param", None) if isinstance(exc, InvalidParameterError) else None
    if not param or not text.startswith(f"{param} "):
        return text
    flag = COMMAND_FLAGS.get(_command(argv) or "", {}).get(param) or FLAGS.get(param)
    return f"{flag}{text[len(param) :]}" if flag else text
