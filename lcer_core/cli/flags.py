"""The command line's flags: their names for the library's parameters (one table, applied at the
error boundary) and the option definitions the commands share.

Library messages start with the parameter's library name (``k must be a positive integer``);
:func:`cli_message` says the flag instead (``--k must be a positive integer``). The
``Annotated`` types below are the one definition of each flag shared by ``lcer run``,
``sweep``, ``train``, ``explain`` and ``bench``: a command declares ``users: Users = None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from lcer_core.errors import InvalidParameterError

__all__ = ["FLAGS", "COMMAND_FLAGS", "cli_message"]

_BUDGET_HELP = (
    "Search budget of the methods that have one (random-prefix: orders, kaffes*: max_queries, "
    "lcer-plus: candidates, amortised: budget; default: each method's)."
)

# ---- what to explain (the plan) ---------------------------------------------------------------
Users = Annotated[
    int | None, typer.Option("--users", help="Explain the first N test users (default: all).")
]
Steps = Annotated[
    int | None, typer.Option("--steps", help="LCER optimisation steps (default: LCER's).")
]
Budget = Annotated[int | None, typer.Option("--budget", help=_BUDGET_HELP)]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the explanations.")]
OptionalSeed = Annotated[
    int | None, typer.Option("--seed", help="Seed of the explanations (default: 0).")
]
K = Annotated[int, typer.Option("--k", help="Length of the recommendation list.")]
Ks = Annotated[
    str | None, typer.Option("--k", help="Comma-separated list lengths K (default: 5,10).")
]
Alpha = Annotated[
    float | None, typer.Option("--alpha", help="LCER's α (default: the paper's for the dataset).")
]
Lam = Annotated[
    float | None, typer.Option("--lam", help="LCER's λ (default: the paper's for the dataset).")
]
Lams = Annotated[
    str | None,
    typer.Option("--lam", help="LCER's λ, or a comma-separated list (default: the paper's)."),
]
Epochs = Annotated[
    int | None,
    typer.Option(
        "--epochs",
        help="Training epochs of the recommender (when it must be trained; default: its own).",
    ),
]
RecommenderOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--recommender-option",
        help="name=value: a field of the recommender's config (EASE's lam; repeatable); "
        "part of the model's key.",
    ),
]
ExplainDeployment = Annotated[
    str | None,
    typer.Option(
        "--explain-deployment",
        help="Run the explanations as a flow run of this deployment (FLOW/DEPLOYMENT, e.g. "
        "lcer-explain/lcer-explain: the gpu work pool) on the server at $PREFECT_API_URL.",
    ),
]
Recommender = Annotated[
    str | None,
    typer.Option(
        "--recommender",
        help="The recommender to train and explain, by its registry name (default: the "
        "paper's; an unknown name lists the others).",
    ),
]
ShardSize = Annotated[
    int | None, typer.Option("--shard-size", help="Test users per explanation task (default: 25).")
]
MethodNames = Annotated[
    list[str] | None,
    typer.Option(
        "--method",
        "-m",
        help="A method of the plan (repeatable; beside --methods, both count).",
    ),
]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="name=value: an option held fixed, for every method of the plan that declares "
        "it (METHOD.name=value: that method only; repeatable).",
    ),
]
Grids = Annotated[
    list[str] | None,
    typer.Option(
        "--grid",
        help="name=a,b,c: one run per value (and per combination with other --grid "
        "options), like --set (repeatable).",
    ),
]
PlanFile = Annotated[
    Path | None,
    typer.Option(
        "--plan",
        help="A plan in TOML (docs/commands.md): the flags given beside it override its fields.",
        dir_okay=False,
    ),
]
ShowPlan = Annotated[
    bool, typer.Option("--show-plan", help="Print the plan as JSON and stop (nothing runs).")
]

# ---- where it runs --------------------------------------------------------------------------
Runner = Annotated[str, typer.Option("--runner", help="Task runner: threads or ray.")]
Address = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (with --runner ray).")
]
Storage = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Storage URL (fsspec, e.g. file:///shared/folder or s3://bucket/prefix) "
        "through which explanations on another work pool travel; default $LCER_STORAGE.",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Print the full log stream instead of progress bars."),
]
Device = Annotated[
    str | None, typer.Option("--device", help="cpu or cuda (default: cuda when visible).")
]

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
