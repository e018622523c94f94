"""``lcer prepare`` and ``lcer stats``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lcer_core.datasets.registry import DEFAULT_SEED
from lcer_core.errors import InvalidParameterError


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _summary(stats: dict[str, Any]) -> str:
    return (
        f"{stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions, "
        f"density {stats['density_pct']:.3f} %; held out {stats['val_users']} validation and "
        f"{stats['test_users']} test users"
    )


DatasetArg = Annotated[
    str, typer.Argument(help="Dataset name: ml-100k, ml-1m, alishop, epinions, or yours.")
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        help=f"Seed of the user shuffle and the 80/20 fold-in split (default: the stored "
        f"one, else {DEFAULT_SEED})."
    ),
]
SplitSeedOpt = Annotated[
    int | None,
    typer.Option(
        help="Prepare, beside the default split, the split with this seed (another assignment "
        "of users to train, validation and test) in data/DATASET/split-SEED/."
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Prepare again even if already prepared.")]
HeldoutOpt = Annotated[
    int | None,
    typer.Option(
        help="Validation users, and as many test users (default: the stored number, else the registry's)."
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        help="reference (Mult-VAE's protocol) or authors-notebook (the LCER authors' "
        "notebook as it ran: shuffled numbers 0..n-1 used as raw user ids); default: the "
        "stored split, else reference."
    ),
]
FromOpt = Annotated[
    Path | None,
    typer.Option("--from", help="Register your own interactions (.csv or .parquet) as DATASET."),
]
UserColOpt = Annotated[str | None, typer.Option(help="With --from: the user id column.")]
ItemColOpt = Annotated[str | None, typer.Option(help="With --from: the item id column.")]
RatingColOpt = Annotated[
    str | None, typer.Option(help="With --from: the rating column (optional).")
]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="With --rating-col: keep ratings above this (default 3.5).")
]
ItemsOpt = Annotated[Path | None, typer.Option(help="With --from: a file of item titles.")]
ItemIdColOpt = Annotated[str | None, typer.Option(help="With --items: its item id column.")]
TitleColOpt = Annotated[
    str | None, typer.Option(help="With --items: its title column (default title).")
]
GenresColOpt = Annotated[str | None, typer.Option(help="With --items: its genres/category column.")]
SepOpt = Annotated[
    str | None,
    typer.Option(help="With --from: the CSV separator (default: tab for .tsv, else comma)."),
]


def _prepare_registry(
    dataset: str,
    seed: int | None,
    force: bool,
    heldout: int | None,
    split: str | None,
    file_options: dict[str, Any],
    split_seed: int | None = None,
) -> Any:
    """Prepare a registry dataset; the options of ``--from`` must not be given."""
    stray = [k for k, v in file_options.items() if v is not None]
    if stray:
        raise InvalidParameterError(f"{', '.join(stray)} only apply with --from FILE")
    if split_seed is not None and seed is not None:
        raise InvalidParameterError("--seed and --split-seed cannot be combined")
    from lcer_core.datasets import prepare_dataset

    return prepare_dataset(
        dataset,
        seed=seed,
        force=force,
        heldout=heldout,
        log=_err,
        split=split,
        split_seed=split_seed,
    )


def _check_from(split: str | None, user_col: str | None, item_col: str | None) -> None:
    """With ``--from``: no split but the reference one, and both id columns named."""
    if split not in (None, "reference"):
        raise InvalidParameterError("--split applies to registry datasets, not with --from")
    if not user_col or not item_col:
        missing = [k for k, v in {"--user-col": user_col, "--item-col": item_col}.items() if not v]
        raise InvalidParameterError(f"--from needs {' and '.join(missing)}")


def prepare(
    dataset: DatasetArg,
    seed: SeedOpt = None,
    split_seed: SplitSeedOpt = None,
    force: ForceOpt = False,
    heldout: HeldoutOpt = None,
    split: SplitOpt = None,
    from_: FromOpt = None,
    user_col: UserColOpt = None,
    item_col: ItemColOpt = None,
    rating_col: RatingColOpt = None,
    threshold: ThresholdOpt = None,
    items: ItemsOpt = None,
    item_id_col: ItemIdColOpt = None,
    title_col: TitleColOpt = None,
    genres_col: GenresColOpt = None,
    sep: SepOpt = None,
) -> None:
    """Download (or take from LCER_MIRROR), filter and split DATASET; a second call does no work."""
    if from_ is None:
        given = {
            "--user-col": user_col,
            "--item-col": item_col,
            "--rating-col": rating_col,
            "--threshold": threshold,
            "--items": items,
            "--item-id-col": item_id_col,
            "--title-col": title_col,
            "--genres-col": genres_col,
        }
        result = _prepare_registry(dataset, seed, force, heldout, split, given, split_seed)
    else:
        if split_seed is not None:
            raise InvalidParameterError(
                "--split-seed applies to a prepared dataset, not with --from"
            )
        _check_from(split, user_col, item_col)
        from lcer_core.datasets.custom import register_and_prepare

        result = register_and_prepare(
            dataset,
            from_,
            user_col=user_col,
            item_col=item_col,
            rating_col=rating_col,
            threshold=threshold,
            items_file=items,
            item_id_col=item_id_col,
            title_col=title_col,
            genres_col=genres_col,
            heldout=heldout,
            sep=sep,
            seed=seed,
            force=force,
            log=_err,
        )
    typer.echo(f"{dataset}: {_summary(result.stats)}")


def stats(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Table 1 statistics after filtering (users, items, interactions, density %) and the split sizes."""
    from lcer_core.datasets import get_spec, is_prepared, load_prepared, prepare_dataset

    get_spec(dataset)  # an unknown name fails here, before any work
    if not is_prepared(dataset):
        prepare_dataset(dataset, log=_err)
    data = load_prepared(dataset)
    out = {"dataset": dataset} | {k: v for k, v in data.stats.items() if k != "dataset"}
    out["seed"] = data.meta.get("seed")
    out["fingerprint"] = data.fingerprint
    if as_json:
        typer.echo(json.dumps(out))
        return
    width = max(len(k) for k in out)
    for key, value in out.items():
        shown = (
            f"{value:.3f}"
            if key == "density_pct"
            else (f"{value:,}" if isinstance(value, int) and key != "seed" else value)
        )
        typer.echo(f"{key:<{width}}  {shown}")


def synth(
    shape: Annotated[str, typer.Argument(help="Dataset shape: ml-1m, alishop or epinions.")],
    out: Annotated[Path, typer.Option("--out", help="The file to write (.parquet or .csv).")],
    seed: Annotated[
        int, typer.Option(help="Seed of every random draw (same seed, same file).")
    ] = 0,
) -> None:
    """Write a synthetic interaction file (user, item, rating) of a paper dataset's shape."""
    from lcer_core.datasets.synth import write_synth

    frame = write_synth(shape, out, seed=seed)
    typer.echo(
        f"{out}: {frame.height:,} rows, {frame['user'].n_unique():,} users, "
        f"{frame['item'].n_unique():,} items; `lcer prepare NAME --from {out} --user-col user "
        f"--item-col item --rating-col rating` gives {shape}'s Table 1 row"
    )
