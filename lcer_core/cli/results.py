"""``lcer sql`` and ``lcer report``: the results database, for people and for programs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from lcer_core.errors import InvalidParameterError, QueryTimeoutError
from lcer_core.paper import PAPER_RECOMMENDER
from lcer_core.store import (
    DEFAULT_LOCK_TIMEOUT,
    ResultStore,
    print_frame,
    table2_report,
    table3_report,
)
from lcer_core.store.formatting import cell, format_value, json_text, plain
from lcer_core.store.frontier import FRONTIER_HEADERS, frontier_cells, frontier_rows, frontier_title
from lcer_core.store.report import (
    METRIC_HEADERS,
    METRIC_SPECS,
    REPORT_METRICS,
    STRICT_COLUMNS,
    lam_report,
    paired_report,
    recommender_table2,
    seed_rows,
    strict_cells,
    strict_report,
    strict_title,
)
from lcer_core.store.views import METHOD_ORDER

__all__ = ["sql", "report"]


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class ReportFormat(StrEnum):
    table = "table"
    json = "json"


#: ``lcer sql``'s default time limit: below the time a pipeline's write waits for the file
#: (DEFAULT_LOCK_TIMEOUT), so that a query cannot make a running pipeline's write fail.
SQL_TIMEOUT_S = DEFAULT_LOCK_TIMEOUT / 2
SQL_MEMORY_LIMIT = "2GB"


def sql(
    query: str = typer.Argument(..., help="SQL to run on the results database (read-only)."),
    format: OutputFormat = typer.Option(
        OutputFormat.table, "--format", "-f", help="table, json or csv."
    ),
    timeout: float = typer.Option(
        SQL_TIMEOUT_S,
        "--timeout",
        help="Stop the query after SECONDS. A running pipeline waits for the query to end "
        f"before it writes, at most {DEFAULT_LOCK_TIMEOUT:g} s: a longer query can fail its write.",
    ),
    memory_limit: str = typer.Option(
        SQL_MEMORY_LIMIT,
        "--memory-limit",
        help="Memory the query may use (DuckDB size: 2GB, 500MB).",
    ),
) -> None:
    """Run a read-only SQL query on the results database (tables and views: see `lcer_core.store`).

    The query can read that database and nothing else; a missing database is reported, not created.
    Values are printed as data: control and bidi characters escaped (``\\x1b``, ``\\u202e``;
    lossless ``\\u001b`` in JSON), BLOBs as hex, lists, structs and maps as JSON in CSV.
    """
    try:
        frame = ResultStore().query(query, create=False, timeout=timeout, memory_limit=memory_limit)
    except QueryTimeoutError:
        raise QueryTimeoutError(
            f"the query ran longer than --timeout {timeout:g} s and was stopped"
        ) from None
    print_frame(frame, format.value)  # the database is closed already: printing holds no lock


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=4096, highlight=False, color_system=None)
    return console


def _cell(row: dict, metric: str, spec: str) -> str:
    """``mean ± std`` over seeds (just the value for one seed)."""
    value = format_value(row[metric], "–", spec)
    std = row.get(f"{metric}_std")
    return value if std is None or row[metric] is None else f"{value} ± {format(std, spec)}"


def _seeds_text(row: dict) -> str:
    seeds = row.get("seeds")
    return "–" if not seeds else ",".join(str(x) for x in seeds)


def _table2_view(
    frame: pl.DataFrame, dataset: str, k: int, *, paper: bool, recommenders: dict[str, str]
) -> Table | None:
    """The paper's methods beside the paper's numbers (``paper``), or the methods beyond it;
    the title names the recommender of the rows when it is not the paper's (``recommenders``:
    run id -> recommender)."""
    rows = frame.filter((pl.col("k") == k) & pl.col("method").is_in(METHOD_ORDER).eq(paper))
    if rows.height == 0:
        return None
    names = sorted({recommenders[r] for r in rows["run_id"] if r in recommenders})
    on = "" if names in ([], [PAPER_RECOMMENDER]) else f" · recommender {', '.join(names)}"
    title = (
        f"Table 2 · {dataset} · top-{k}{on}  (ours: mean ± std over seeds, then the paper's)"
        if paper
        else f"Beyond the paper · {dataset} · top-{k}{on}  (mean ± std over seeds)"
    )
    table = Table(title=cell(title), header_style="bold")
    table.add_column("Method")
    for header in ("α", "λ", "pairs", "seeds"):
        table.add_column(header, justify="right")
    for metric in REPORT_METRICS:
        table.add_column(METRIC_HEADERS[metric], justify="right")
        if paper:
            table.add_column("paper", justify="right", style="dim")
    table.add_column("calls/pair", justify="right")
    table.add_column("s/pair", justify="right")
    for row in rows.iter_rows(named=True):
        cells = [row["method"]]
        ran = row["run_id"] is not None
        cells += [format_value(row[c], "–") for c in ("alpha", "lam", "n_pairs")]
        cells.append(_seeds_text(row))
        for metric in REPORT_METRICS:
            spec = METRIC_SPECS[metric]
            cells.append(_cell(row, metric, spec) if ran else "not run")
            if paper:
                cells.append(format_value(row[f"paper_{metric}"], "–", spec))
        cells += [_cell(row, "calls_per_pair", ".0f"), _cell(row, "s_per_pair", ".4f")]
        table.add_row(*map(cell, cells))
    return table


def _recommender_view(frame: pl.DataFrame, dataset: str, recommender: str, k: int) -> Table:
    """Table 2 of one recommender at one K: the latest run of each method on its models."""
    title = f"Table 2 · {dataset} · recommender {recommender} · top-{k}  (latest run per method)"
    table = Table(title=cell(title), header_style="bold")
    table.add_column("Method")
    for header in ("α", "λ", "users", "pairs"):
        table.add_column(header, justify="right")
    for metric in REPORT_METRICS:
        table.add_column(METRIC_HEADERS[metric], justify="right")
    table.add_column("s/pair", justify="right")
    table.add_column("model")
    for row in frame.iter_rows(named=True):
        cells = [row["method"]]
        cells += [format_value(row[c], "–") for c in ("alpha", "lam", "n_users", "n_pairs")]
        cells += [format_value(row[m], "–", METRIC_SPECS[m]) for m in REPORT_METRICS]
        cells += [format_value(row["s_per_pair"], "–", ".4f"), str(row["model_key"])]
        table.add_row(*map(cell, cells))
    return table


def _strict_view(frame: pl.DataFrame, dataset: str) -> Table:
    """The strict comparison over all pairs, apart from the paper's tables."""
    table = Table(title=cell(strict_title(dataset)), header_style="bold")
    for column, header, _ in STRICT_COLUMNS:
        table.add_column(header, justify="left" if column in ("method", "selects_on") else "right")
    for row in frame.iter_rows(named=True):
        table.add_row(*(cell(text) for text in strict_cells(row)))
    return table


def _lam_view(frame: pl.DataFrame, dataset: str) -> Table:
    table = Table(
        title=cell(f"LCER by λ · {dataset}  (mean ± std over seeds; * closest to the paper's row)"),
        header_style="bold",
    )
    for header in ("k", "α", "λ", "seeds"):
        table.add_column(header, justify="right")
    for metric in REPORT_METRICS:
        table.add_column(METRIC_HEADERS[metric], justify="right")
        table.add_column("paper", justify="right", style="dim")
    table.add_column("distance", justify="right")
    for row in frame.iter_rows(named=True):
        cells = [str(row["k"]), format_value(row["alpha"], "–"), format_value(row["lam"], "–")]
        cells.append(str(row["n_seeds"]))
        for metric in REPORT_METRICS:
            spec = METRIC_SPECS[metric]
            cells += [_cell(row, metric, spec), format_value(row[f"paper_{metric}"], "–", spec)]
        mark = " *" if row["closest"] else ""
        cells.append(format_value(row["distance"], "–", ".3f") + mark)
        table.add_row(*map(cell, cells))
    return table


def _frontier_view(frame: pl.DataFrame, dataset: str, k: int) -> Table:
    """Every (method, budget) at ``k``: strict metrics and cost over split seeds, the frontier."""
    table = Table(title=cell(frontier_title(dataset, k)), header_style="bold")
    for header in FRONTIER_HEADERS:
        table.add_column(header, justify="left" if header in ("Method", "budget") else "right")
    for cells in frontier_cells(frame):
        table.add_row(*(cell(c) for c in cells))
    return table


def _paired_view(frame: pl.DataFrame, dataset: str) -> Table:
    first = frame.row(0, named=True)
    table = Table(
        title=cell(
            f"Paired comparison · {dataset} · {first['a']} − {first['b']} on the same pairs "
            f"(strict, all pairs; {first['level']:.0%} bootstrap interval over users)"
        ),
        header_style="bold",
    )
    for header in ("k", "pairs", "users", f"F_NS {first['a']}", f"F_NS {first['b']}"):
        table.add_column(cell(header), justify="right")
    for header in ("Δ F_NS", "Δ PS", "Δ PN"):
        table.add_column(header, justify="right")
    for row in frame.iter_rows(named=True):
        cells = [str(row["k"]), str(row["pairs"]), str(row["users"])]
        cells += [f"{row['fns_a']:.2f}", f"{row['fns_b']:.2f}"]
        for name in ("fns", "ps", "pn"):
            low, high = row[f"d_{name}_ci"]
            cells.append(f"{row[f'd_{name}']:+.2f} [{low:+.2f}, {high:+.2f}]")
        table.add_row(*cells)
    return table


def _compared(value: str | None) -> tuple[str, str] | None:
    """``--compare A,B`` as two registered method names (one line for anything else)."""
    if value is None:
        return None
    from lcer_core.explainers import get_method

    names = [v.strip() for v in value.split(",")]
    if len(names) != 2 or names[0] == names[1]:
        raise InvalidParameterError(
            f"--compare takes two different methods A,B, got {value!r}", param="compare"
        )
    for name in names:
        get_method(name)
    return names[0], names[1]


def _seed_view(frame: pl.DataFrame, dataset: str) -> Table:
    table = Table(title=cell(f"Per seed · {dataset}"), header_style="bold")
    for header in ("k", "Method", "seed", "α", "λ", "pairs"):
        table.add_column(header, justify="left" if header == "Method" else "right")
    for metric in REPORT_METRICS:
        table.add_column(METRIC_HEADERS[metric], justify="right")
    table.add_column("calls/pair", justify="right")
    table.add_column("s/pair", justify="right")
    for row in frame.iter_rows(named=True):
        cells = [str(row["k"]), row["method"], str(row["seed"])]
        cells += [format_value(row[c], "–") for c in ("alpha", "lam", "n_pairs")]
        cells += [format_value(row[m], "–", METRIC_SPECS[m]) for m in REPORT_METRICS]
        cells += [
            format_value(row["calls_per_pair"], "–", ".0f"),
            format_value(row["s_per_pair"], "–", ".4f"),
        ]
        table.add_row(*map(cell, cells))
    return table


def _table3_view(ours: pl.DataFrame, paper: pl.DataFrame, dataset: str) -> Table:
    table = Table(
        title=cell(f"Table 3 · {dataset}  (LCER at the length of each baseline, within 0.05)"),
        header_style="bold",
    )
    for header in ("source", "k", "baseline", "Len", "LCER Len", "α", "λ"):
        table.add_column(header, justify="left" if header in ("source", "baseline") else "right")
    for metric in ("val_pct", "ps_pct", "pn_pct", "fns_pct"):
        table.add_column(METRIC_HEADERS[metric], justify="right")
        table.add_column(f"LCER {METRIC_HEADERS[metric]}", justify="right")
    for source, frame in (("ours", ours), ("paper", paper)):
        for row in frame.iter_rows(named=True):
            cells = [source, str(row["k"]), row["baseline"]]
            cells += [format_value(row[c], "–", ".3f") for c in ("baseline_len", "lcer_len")]
            cells += [format_value(row.get(c), "–") for c in ("alpha", "lam")]
            for metric in ("val_pct", "ps_pct", "pn_pct", "fns_pct"):
                spec = METRIC_SPECS[metric]
                cells += [
                    format_value(row[f"baseline_{metric}"], "–", spec),
                    format_value(row[f"lcer_{metric}"], "–", spec),
                ]
            table.add_row(*map(cell, cells))
    return table


def _ensure_results(dataset: str, no_train: bool) -> None:
    """Run the pipeline on ``dataset`` (saying so in one line) when no run of it has finished."""
    from lcer_core.datasets import get_spec

    get_spec(dataset)
    with ResultStore() as store:
        if store.table2(dataset).height or no_train:
            return
    typer.echo(
        f"no finished runs for {dataset} yet: running the pipeline first (lcer run {dataset})",
        err=True,
    )
    from lcer_core.cli.pipeline import run_pipeline
    from lcer_core.plan import make_plan

    _, shown = run_pipeline(make_plan(datasets=[dataset]))
    typer.echo(shown.summary("pipeline done"), err=True)


def report(
    dataset: str = typer.Argument(..., help="Dataset name, e.g. ml-100k."),
    format: ReportFormat = typer.Option(
        ReportFormat.table, "--format", "-f", help="table or json."
    ),
    html: Path | None = typer.Option(
        None,
        "--html",
        help="Also write a self-contained HTML page (tables, figures, examples) to FILE.",
    ),
    no_train: bool = typer.Option(
        False,
        "--no-train",
        help="Refuse (exit 2) instead of running the pipeline when there are no results.",
    ),
    per_seed: bool = typer.Option(False, "--per-seed", help="Also one row per seed."),
    compare: str | None = typer.Option(
        None,
        "--compare",
        help="A,B: method A against B on the same pairs, per K (strict F_NS, PS, PN; "
        "bootstrap interval over users).",
    ),
) -> None:
    """Table 2 (and Table 3) of the paper for DATASET, from the results database, beside the paper's.

    Metrics are means ± standard deviations over the seeds present (``lcer run --seeds``);
    methods beyond the paper (kaffes-topk, lcer-plus) are in a table of their own; with runs of
    more than one recommender (``lcer run --recommender``), Table 2 of each apart. With no
    finished run for DATASET, runs the pipeline first (`lcer run DATASET`), unless --no-train.
    """
    pair = _compared(compare)
    _ensure_results(dataset, no_train)
    if html is not None:
        from lcer_core.report_html import write_html_report

        with ResultStore() as store:
            write_html_report(dataset, html, store)
        typer.echo(f"wrote {html}", err=True)
    with ResultStore() as store:
        table2 = table2_report(store, dataset)
        table3, paper3 = table3_report(store, dataset)
        seeds = seed_rows(store, dataset)
        lams = lam_report(store, dataset)
        strict = strict_report(store, dataset)
        points = frontier_rows(store, dataset)
        paired = paired_report(store, dataset, *pair) if pair else None
        by_recommender = recommender_table2(store, dataset)
    if format is ReportFormat.json:
        payload = {
            "dataset": dataset,
            "table2": [plain(r) for r in table2.to_dicts()],
            "table2_by_recommender": [plain(r) for r in by_recommender.to_dicts()],
            **({"per_seed": [plain(r) for r in seeds.to_dicts()]} if per_seed else {}),
            "lcer_by_lam": [plain(r) for r in lams.to_dicts()],
            "table3": [plain(r) for r in table3.to_dicts()],
            "paper_table3": [plain(r) for r in paper3.to_dicts()],
            "strict": [plain(r) for r in strict.to_dicts()],
            "frontier": [plain(r) for r in points.to_dicts()],
            **({"paired": [plain(r) for r in paired.to_dicts()]} if paired is not None else {}),
        }
        typer.echo(json_text(payload))
        return
    console = _console()
    recommender_of = dict(zip(by_recommender["run_id"], by_recommender["recommender"], strict=True))
    for paper in (True, False):
        for k in table2["k"].unique().sort().to_list():
            view = _table2_view(table2, dataset, k, paper=paper, recommenders=recommender_of)
            if view is not None:
                console.print(view)
    recommenders = by_recommender["recommender"].unique(maintain_order=True).to_list()
    if recommenders and recommenders != [PAPER_RECOMMENDER]:  # more than the paper's
        for name in recommenders:
            mine = by_recommender.filter(pl.col("recommender") == name)
            for k in mine["k"].unique().sort().to_list():
                console.print(_recommender_view(mine.filter(pl.col("k") == k), dataset, name, k))
    if per_seed:
        console.print(_seed_view(seeds, dataset))
    if lams.height:
        console.print(_lam_view(lams, dataset))
    if paired is not None:
        if paired.height:
            console.print(_paired_view(paired, dataset))
        else:
            console.print(
                f"Paired comparison: {pair[0]} and {pair[1]} have no K with runs on the same pairs"
            )
    if table3.height or paper3.height:
        console.print(_table3_view(table3, paper3, dataset))
    else:
        console.print(
            cell(
                "Table 3: no LCER run matches a baseline's length within 0.05 "
                f"(run `lcer sweep {dataset}` for more α/λ points)."
            )
        )
    if strict.height:
        console.print(_strict_view(strict, dataset))
    for k in sorted(set(points["k"].to_list())) if points.height else []:
        console.print(_frontier_view(points.filter(pl.col("k") == k), dataset, k))
