"""``lcer bench``: the performance benchmark (sequential reference loop against the batched engine)."""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import typer

from lcer_core.cli import flags


def _clean(v):  # noqa: ANN001, ANN202
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def bench(
    dataset: str = typer.Option(
        "ml-100k", "--dataset", help="Dataset whose test users are explained."
    ),
    k: flags.K = 5,
    steps: flags.Steps = None,
    users: Annotated[int | None, typer.Option("--users", help="Test users (default: all).")] = None,
    sample: int = typer.Option(5, "--sample", help="Pairs run through the sequential loop."),
    full: bool = typer.Option(
        False, "--full", help="Run the sequential loop over all pairs (slow)."
    ),
    patience: int = typer.Option(
        0, "--patience", help="Also measure early stop with this patience."
    ),
    min_delta: float = typer.Option(
        0.0, "--min-delta", help="Early stop: smallest loss drop that restarts the count."
    ),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="name=value: a field of LCER's configuration (repeatable)."),
    ] = None,
    items: int = typer.Option(
        None, "--synthetic-items", help="Use an untrained model over N items."
    ),
    device: flags.Device = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the explanations and data.")] = 0,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Seconds per pair of the reference's sequential loop and of the batched engine, and the speed-up."""
    from lcer_core.bench import BenchSetup, run_benchmark
    from lcer_core.cli.assignments import parse_assignments
    from lcer_core.cli.progress import stage_bars
    from lcer_core.explainers import LCERConfig

    fields = {"steps": steps, "patience": patience, "min_delta": min_delta}
    fields = {n: v for n, v in fields.items() if v is not None}
    sets = parse_assignments(set_, LCERConfig, flag="--set", many=False)
    config = LCERConfig(**{**fields, **sets})
    setup = BenchSetup(dataset, k, users, sample, full, items, device, seed)
    # Bars only when both streams are a terminal: a piped stdout (or --json) keeps its lines as they were.
    with stage_bars(enabled=not as_json and sys.stdout.isatty()) as (say, on_epoch, progress):
        raw = run_benchmark(
            config,
            setup,
            log=say if not as_json else (lambda msg: typer.echo(msg, err=True)),
            on_epoch=on_epoch,
            progress=progress,
        )
    res = _clean(raw)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(
        f"device {res['device']} ({res['threads']} threads), {res['pairs']} pairs x {res['steps']} steps"
    )
    typer.echo(
        f"sequential loop : {res['sequential_s_per_pair']:.3f} s/pair ({res['sequential_pairs']} pairs)"
    )
    typer.echo(
        f"batched engine  : {res['batched_s_per_pair']:.4f} s/pair ({res['batched_total_s']:.1f} s in all)"
    )
    typer.echo(
        f"speed-up        : {res['speedup']:.1f}x   ({res['gflop']:.0f} GFLOP, {res['gflop_per_s']:.1f} GFLOP/s)"
    )
    typer.echo(f"peak memory     : {res['peak_rss_mb']:.0f} MB")
    for key in (
        "metrics_sequential",
        "metrics_batched_on_sample",
        "metrics_batched",
        "metrics_early_stop",
    ):
        if key in res:
            m = res[key]
            typer.echo(
                f"{key:26}: "
                + "  ".join(
                    f"{x}={m[x]:.2f}" if isinstance(m[x], float) else f"{x}={m[x]}" for x in m
                )
            )
    if "early_stop_s_per_pair" in res:
        typer.echo(
            f"early stop      : {res['early_stop_s_per_pair']:.4f} s/pair, {res['early_stop_speedup_over_batched']:.2f}x over batched"
            f" ({res['early_stop_pair_steps_pct']:.1f}% of the pair-steps run)"
        )
