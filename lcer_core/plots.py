"""The paper's figures as PNG files, drawn from polars frames (matplotlib, no pyplot state).

Item figures (5, 6, 7) take frames with the columns of the DuckDB view
``item_explanations``: ``dataset, method, sid, title, popularity, explanation_count,
mean_importance, recommendation_count``, one panel per (dataset, method). Sweep figures
(8, 9 and the Pareto front) take one row per grid point with ``alpha, lam, val_pct, len,
ps_pct, pn_pct, fns_pct`` and, optionally, the best baseline's values of those metrics.

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas, so importing
this module changes no global backend and works without a display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lcer_core.errors import DataFormatError, InvalidParameterError
from lcer_core.fsio import write_bytes_atomic
from lcer_core.safe_text import printable

__all__ = [
    "ITEM_COLUMNS",
    "SWEEP_COLUMNS",
    "plot_explanation_count",
    "plot_mean_importance",
    "plot_recommendation_count",
    "plot_effect",
    "plot_pareto",
    "plot_frontier",
    "FRONTIER_COLUMNS",
    "pareto_front",
    "regression",
    "render_item_figures",
    "render_sweep_figures",
]

ITEM_COLUMNS = (
    "dataset",
    "method",
    "sid",
    "title",
    "popularity",
    "explanation_count",
    "mean_importance",
    "recommendation_count",
)
SWEEP_COLUMNS = ("alpha", "lam", "val_pct", "len", "ps_pct", "pn_pct", "fns_pct")

# One colour per metric, shared by the solid (LCER) and dashed (baseline) lines.
_METRIC_STYLE = {
    "val_pct": ("Validity", "#2ca02c", "o"),
    "ps_pct": ("PS", "#1f77b4", "s"),
    "pn_pct": ("PN", "#ff7f0e", "^"),
    "fns_pct": ("$F_{NS}$", "#d62728", "D"),
}
_SYMBOL = {"lam": "λ", "alpha": "α"}
_FONT = {"font.size": 11}
_DPI = 150


# --------------------------------------------------------------------------- helpers


def _require(df: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataFormatError(f"{what} frame lacks column(s) {', '.join(missing)}")
    if df.height == 0:
        raise DataFormatError(f"{what} frame is empty: nothing to plot")


def _new_figure(
    n_panels: int, panel_size: tuple[float, float] = (6.4, 4.4)
) -> tuple[Figure, list[Axes]]:
    ncols = min(2, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig: Figure, out: Path) -> Path:
    buf = io.BytesIO()  # rendered in memory, then written whole (a full disk is one line)
    fig.savefig(buf, dpi=_DPI, format="png")
    return write_bytes_atomic(out, buf.getbuffer())


def _groups(df: pl.DataFrame, keys: Sequence[str]) -> list[tuple[tuple, pl.DataFrame]]:
    parts = df.sort(list(keys)).partition_by(list(keys), as_dict=True, maintain_order=True)
    return list(parts.items())


def _spearman(df: pl.DataFrame, a: str, b: str) -> float:
    if df.height < 3:
        return float("nan")
    value = df.select(pl.corr(a, b, method="spearman")).item()
    return float("nan") if value is None else float(value)


def _rank_panel(
    ax: Axes,
    part: pl.DataFrame,
    value: str,
    value_label: str,
    title: str,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Items sorted by ``value`` (line, left axis) with their popularity (dots, right axis), as in the paper."""
    part = part.sort([value, "popularity"], descending=[True, True])
    x = np.arange(1, part.height + 1)
    ax.plot(x, part[value].to_numpy(), color="#1f77b4", lw=2, label=value_label, zorder=3)
    ax.set_xlabel("items ranked by " + value_label.lower())
    ax.set_ylabel(value_label, color="#1f77b4")
    ax.tick_params(axis="y", colors="#1f77b4")
    ax.set_xlim(0, part.height + 1)
    ax.set_ylim(*(ylim or (0, max(1.0, float(part[value].max())) * 1.05)))
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.scatter(x, part["popularity"].to_numpy(), s=8, color="#ff7f0e", alpha=0.55, lw=0, zorder=2)
    ax2.set_ylabel("popularity (interactions in training data)", color="#c85a00")
    ax2.tick_params(axis="y", colors="#c85a00")
    ax2.set_ylim(0, max(1.0, float(part["popularity"].max())) * 1.05)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    rho = _spearman(part, value, "popularity")
    ax.set_title(f"{title}\nSpearman ρ({value_label.lower()}, popularity) = {rho:.2f}", fontsize=11)
    ax.legend(
        handles=[
            Line2D([], [], color="#1f77b4", lw=2, label=value_label + " (sorted)"),
            Line2D([], [], color="#ff7f0e", marker="o", ls="", label="popularity of the item"),
        ],
        loc="upper right",
        fontsize=9,
    )


def _label(text: str) -> str:
    """Data as a figure's text: control and bidi characters escaped, ``$`` not mathtext."""
    return printable(text).replace("$", r"\$")


def _panel_title(key: tuple) -> str:
    return _label(" · ".join(str(k) for k in key))


# --------------------------------------------------------------------------- item figures


def plot_explanation_count(items: pl.DataFrame, out: Path) -> Path:
    """Figure 5: explanation count of each item (sorted, line) against its popularity (dots)."""
    import matplotlib

    _require(items, ("dataset", "method", "popularity", "explanation_count"), "item_explanations")
    groups = _groups(items, ("dataset", "method"))
    with matplotlib.rc_context(_FONT):
        fig, axes = _new_figure(len(groups))
        for ax, (key, part) in zip(axes, groups, strict=True):
            _rank_panel(ax, part, "explanation_count", "Explanation count", _panel_title(key))
        fig.suptitle("Explanation count and popularity of each item (Figure 5)")
        return _save(fig, out)


def plot_mean_importance(items: pl.DataFrame, out: Path) -> Path:
    """Figure 6: mean importance of each item in CEs (sorted, line) against its popularity (dots).

    Items with no importance (never in a CE, or a method without scores) are left out and
    counted in the panel title.
    """
    import matplotlib

    _require(items, ("dataset", "method", "popularity", "mean_importance"), "item_explanations")
    imp = pl.col("mean_importance").cast(pl.Float64)
    has_score = imp.is_not_null() & imp.is_not_nan()
    groups = _groups(items, ("dataset", "method"))
    scored_groups = [(k, p) for k, p in groups if p.filter(has_score).height > 0]
    unscored = sorted({str(k[1]) for k, p in groups} - {str(k[1]) for k, _ in scored_groups})
    with matplotlib.rc_context(_FONT):
        fig, axes = _new_figure(max(1, len(scored_groups)))
        if not scored_groups:
            axes[0].text(
                0.5,
                0.5,
                "no method in this frame has importance scores",
                ha="center",
                va="center",
                transform=axes[0].transAxes,
            )
            axes[0].set_axis_off()
        for ax, (key, part) in zip(axes, scored_groups, strict=False):
            scored = part.filter(has_score)
            title = _panel_title(key)
            left_out = part.height - scored.height
            if left_out:
                title += f" ({left_out} items never in a CE left out)"
            top = max(1.0, float(scored["mean_importance"].max()))
            _rank_panel(
                ax, scored, "mean_importance", "Mean importance", title, ylim=(0, top * 1.05)
            )
        suptitle = "Mean importance in CEs and popularity of each item (Figure 6)"
        if unscored:
            suptitle += "\nnot drawn (no importance scores): " + _label(", ".join(unscored))
        fig.suptitle(suptitle)
        return _save(fig, out)


def regression(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line ``y = slope·x + intercept`` and its R²; NaN where undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return float(slope), float(intercept), r2


def plot_recommendation_count(items: pl.DataFrame, out: Path) -> Path:
    """Figure 7: recommendation count against popularity, one dot per item, with its regression line.

    Recommendation counts belong to the recommender, not the explainer, so each item is
    drawn once per dataset whatever the number of methods in the frame.
    """
    import matplotlib

    _require(items, ("dataset", "sid", "popularity", "recommendation_count"), "item_explanations")
    per_item = items.unique(subset=["dataset", "sid"], keep="first", maintain_order=True)
    groups = _groups(per_item, ("dataset",))
    with matplotlib.rc_context(_FONT):
        fig, axes = _new_figure(len(groups))
        for ax, (key, part) in zip(axes, groups, strict=True):
            x = part["popularity"].to_numpy().astype(float)
            y = part["recommendation_count"].fill_null(0).to_numpy().astype(float)
            ax.scatter(x, y, s=10, alpha=0.5, color="#1f77b4", lw=0, label=f"items (n = {x.size})")
            slope, intercept, r2 = regression(x, y)
            if not math.isnan(slope):
                xs = np.array([0.0, x.max()])
                sign = "+" if intercept >= 0 else "−"
                ax.plot(
                    xs,
                    slope * xs + intercept,
                    color="red",
                    lw=2,
                    label=f"least squares: y = {slope:.3g}·x {sign} {abs(intercept):.3g}, R² = {r2:.2f}",
                )
            ax.set_xlabel("popularity (interactions in training data)")
            ax.set_ylabel("recommendation count (times in a top-K list)")
            ax.set_xlim(0, max(1.0, x.max()) * 1.03)
            ax.set_ylim(0, max(1.0, y.max()) * 1.05)
            ax.grid(alpha=0.3)
            ax.set_title(_panel_title(key))
            ax.legend(loc="upper left", fontsize=9)
        fig.suptitle("Recommendation count and popularity of each item (Figure 7)")
        return _save(fig, out)


# --------------------------------------------------------------------------- sweep figures


def _best_row(sweep: pl.DataFrame) -> dict:
    return sweep.sort("fns_pct", descending=True, nulls_last=True).row(0, named=True)


def plot_effect(
    sweep: pl.DataFrame,
    out: Path,
    *,
    vary: str = "lam",
    fixed: float | None = None,
    baseline: Mapping[str, float | None] | None = None,
    baseline_label: str = "best baseline",
    title: str | None = None,
) -> Path:
    """Figures 8 (``vary="lam"``) and 9 (``vary="alpha"``): metrics (lines) and length (bars) along one axis of the grid.

    The other hyperparameter is held at ``fixed`` (default: its value at the best F_NS).
    ``baseline`` maps metric names (``val_pct, ps_pct, pn_pct, fns_pct, len``) to the best
    baseline's values, drawn as dashed lines in the metric's colour.
    """
    import matplotlib

    if vary not in _SYMBOL:
        raise InvalidParameterError(f"vary must be 'lam' or 'alpha', not {vary!r}")
    _require(sweep, SWEEP_COLUMNS, "sweep")
    other = "alpha" if vary == "lam" else "lam"
    if fixed is None:
        fixed = float(_best_row(sweep)[other])
    rows = sweep.filter(
        (pl.col(other).cast(pl.Float64) - fixed).abs() <= 1e-9 * max(1.0, abs(fixed))
    )
    if rows.height == 0:
        values = sorted(sweep[other].unique().to_list())
        raise InvalidParameterError(f"{other} = {fixed:g} is not in the sweep (has {values})")
    rows = rows.sort(vary)
    baseline = dict(baseline or {})
    xs = np.arange(rows.height)
    labels = [f"{v:g}" for v in rows[vary].to_list()]

    with matplotlib.rc_context(_FONT):
        fig, (ax,) = _new_figure(1, (10.0, 5.6))
        ax2 = ax.twinx()
        lengths = rows["len"].to_numpy().astype(float)
        ax2.bar(xs, lengths, width=0.5, color="#9e9e9e", alpha=0.45, zorder=1)
        ax2.set_ylabel("mean CE length (items, bars)")
        top_len = np.nanmax(np.append(lengths, baseline.get("len") or 0.0))
        ax2.set_ylim(0, max(1.0, float(top_len)) * 1.15)
        # One legend column per quantity: LCER above, the baseline below (blank if none).
        columns: list[list] = []
        for metric, (name, color, marker) in _METRIC_STYLE.items():
            ys = rows[metric].cast(pl.Float64).to_numpy()
            if np.all(np.isnan(ys)):
                continue
            ax.plot(xs, ys, color=color, marker=marker, lw=2, zorder=3)
            column = [Line2D([], [], color=color, marker=marker, lw=2, label=f"{name} (LCER)")]
            b = baseline.get(metric)
            if b is not None and not math.isnan(b):
                ax.axhline(b, color=color, ls="--", lw=1.5, zorder=2)
                column.append(
                    Line2D([], [], color=color, ls="--", lw=1.5, label=f"{name} ({baseline_label})")
                )
            columns.append(column)
        column = [Patch(color="#9e9e9e", alpha=0.45, label="CE length (LCER)")]
        if baseline.get("len") is not None:
            ax2.axhline(baseline["len"], color="#616161", ls=":", lw=1.5)
            column.append(
                Line2D(
                    [], [], color="#616161", ls=":", lw=1.5, label=f"CE length ({baseline_label})"
                )
            )
        columns.append(column)
        depth = max(len(c) for c in columns)
        blank = Line2D([], [], alpha=0.0, label=" ")
        handles = [h for c in columns for h in c + [blank] * (depth - len(c))]
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_ylim(0, 105)
        ax.set_ylabel("metric (%)")
        ax.set_xticks(xs, labels)
        ax.set_xlabel(f"{_SYMBOL[vary]} ({vary}; one tick per grid value)")
        ax.grid(alpha=0.3, axis="y")
        fig_no = "Figure 8" if vary == "lam" else "Figure 9"
        ax.set_title(
            title or f"Effect of {_SYMBOL[vary]} at {_SYMBOL[other]} = {fixed:g} ({fig_no})"
        )
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(columns),
            fontsize=9,
            frameon=False,
            columnspacing=1.2,
            handlelength=2.2,
        )
        return _save(fig, out)


def pareto_front(sweep: pl.DataFrame) -> pl.DataFrame:
    """Grid points that no other point beats on both shorter length and higher F_NS, by increasing length."""
    _require(sweep, ("len", "fns_pct"), "sweep")
    ranked = sweep.filter(pl.col("len").is_not_null() & pl.col("fns_pct").is_not_null()).sort(
        ["len", "fns_pct"], descending=[False, True]
    )
    best_before = pl.col("fns_pct").cum_max().shift(1).fill_null(float("-inf"))
    return ranked.filter(pl.col("fns_pct") > best_before)


def plot_pareto(
    sweep: pl.DataFrame,
    out: Path,
    *,
    baseline: Mapping[str, float | None] | None = None,
    baseline_label: str = "best baseline",
    title: str | None = None,
) -> Path:
    """F_NS against CE length for every grid point, the Pareto front (short and high) highlighted."""
    import matplotlib

    _require(sweep, SWEEP_COLUMNS, "sweep")
    front = pareto_front(sweep)
    with matplotlib.rc_context(_FONT):
        fig, (ax,) = _new_figure(1, (10.5, 5.6))
        ax.scatter(
            sweep["len"].to_numpy(),
            sweep["fns_pct"].to_numpy(),
            s=36,
            color="#9e9e9e",
            label=f"grid points (n = {sweep.height})",
            zorder=2,
        )
        ax.plot(
            front["len"].to_numpy(),
            front["fns_pct"].to_numpy(),
            color="#d62728",
            marker="o",
            ms=8,
            lw=2,
            label=f"Pareto front (n = {front.height})",
            zorder=3,
        )
        key_lines = ["Pareto front (α, λ → length, $F_{NS}$):"]
        for i, r in enumerate(front.iter_rows(named=True), start=1):
            ax.annotate(
                str(i),
                (r["len"], r["fns_pct"]),
                textcoords="offset points",
                xytext=(-4, 7),
                ha="right",
                fontsize=9,
                color="#8b0000",
                weight="bold",
            )
            key_lines.append(
                f"{i}: α={r['alpha']:g}, λ={r['lam']:g} → {r['len']:.2f}, {r['fns_pct']:.1f}%"
            )
        ax.text(
            1.02,
            1.0,
            "\n".join(key_lines),
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=9,
            family="DejaVu Sans",
        )
        xmax = float(sweep["len"].max())
        b = dict(baseline or {})
        if b.get("len") is not None and b.get("fns_pct") is not None:
            ax.scatter(
                [b["len"]],
                [b["fns_pct"]],
                marker="*",
                s=220,
                color="#1f77b4",
                edgecolor="black",
                label=baseline_label,
                zorder=4,
            )
            xmax = max(xmax, float(b["len"]))
        ax.set_xlim(0, max(1.0, xmax) * 1.1)
        ax.set_ylim(0, 105)
        ax.set_xlabel("mean CE length (items; shorter is better)")
        ax.set_ylabel("$F_{NS}$ (%; higher is better)")
        ax.grid(alpha=0.3)
        ax.set_title(title or "$F_{NS}$ against CE length over the α/λ grid")
        ax.legend(loc="lower right", fontsize=9)
        return _save(fig, out)


FRONTIER_COLUMNS = ("k", "method", "budget", "strict_fns_pct", "s_per_pair", "on_frontier")


def plot_frontier(points: pl.DataFrame, out: Path, *, title: str | None = None) -> Path:
    """Strict F_NS against seconds per pair (log scale), one panel per K: every method at each
    budget (a method's budgets joined by a line; error bars: sd over split seeds), the points
    no other beats on both axes joined as the frontier."""
    import matplotlib

    _require(points, FRONTIER_COLUMNS, "frontier")
    data = points.filter(
        pl.col("s_per_pair").is_not_null() & pl.col("strict_fns_pct").is_not_null()
    )
    _require(data, FRONTIER_COLUMNS, "frontier (measured points)")
    ks = sorted(set(data["k"].to_list()))
    methods = sorted(set(data["method"].to_list()))
    colours = matplotlib.colormaps["tab10"]
    with matplotlib.rc_context(_FONT):
        fig, axes = _new_figure(len(ks), (7.2, 5.0))
        for ax, k in zip(axes, ks, strict=True):
            part = data.filter(pl.col("k") == k)
            for i, method in enumerate(methods):
                pts = part.filter(pl.col("method") == method).sort("s_per_pair")
                if pts.height == 0:
                    continue
                sd = pts["strict_fns_pct_sd"] if "strict_fns_pct_sd" in pts.columns else None
                ax.errorbar(
                    pts["s_per_pair"].to_numpy(),
                    pts["strict_fns_pct"].to_numpy(),
                    yerr=None if sd is None else sd.fill_null(0.0).to_numpy(),
                    color=colours(i % 10),
                    marker="o",
                    ms=6,
                    lw=1.2,
                    capsize=3,
                    label=_label(method),
                    zorder=2,
                )
                for r in pts.iter_rows(named=True):
                    if r["budget"]:
                        ax.annotate(
                            _label(r["budget"]),
                            (r["s_per_pair"], r["strict_fns_pct"]),
                            textcoords="offset points",
                            xytext=(4, -10),
                            fontsize=7,
                            color=colours(i % 10),
                        )
            front = part.filter("on_frontier").sort("s_per_pair")
            ax.step(
                front["s_per_pair"].to_numpy(),
                front["strict_fns_pct"].to_numpy(),
                where="post",
                color="black",
                lw=1.5,
                ls="--",
                label=f"frontier (n = {front.height})",
                zorder=3,
            )
            ax.set_xscale("log")
            ax.set_ylim(0, 100)
            ax.set_xlabel("seconds per pair (log scale; same device and threads)")
            ax.set_ylabel("strict $F_{NS}$ (%, all pairs)")
            ax.set_title(_label(title) if title else f"strict $F_{{NS}}$ against cost · top-{k}")
            ax.grid(alpha=0.3, which="both")
            ax.legend(loc="lower right", fontsize=8)
        return _save(fig, out)


# --------------------------------------------------------------------------- bundles


def render_item_figures(items: pl.DataFrame, out_dir: Path) -> list[Path]:
    """Figures 5, 6 and 7 into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [
        plot_explanation_count(items, out_dir / "fig5_explanation_count.png"),
        plot_mean_importance(items, out_dir / "fig6_mean_importance.png"),
        plot_recommendation_count(items, out_dir / "fig7_recommendation_count.png"),
    ]


def render_sweep_figures(
    sweep: pl.DataFrame,
    out_dir: Path,
    *,
    baseline: Mapping[str, float | None] | None = None,
    alpha: float | None = None,
    lam: float | None = None,
) -> list[Path]:
    """Figures 8 and 9 and the Pareto front into ``out_dir``; returns their paths.

    Figure 8 holds α at ``alpha``, Figure 9 holds λ at ``lam`` (defaults: the best F_NS point).
    """
    out_dir = Path(out_dir)
    return [
        plot_effect(
            sweep, out_dir / "fig8_effect_lambda.png", vary="lam", fixed=alpha, baseline=baseline
        ),
        plot_effect(
            sweep, out_dir / "fig9_effect_alpha.png", vary="alpha", fixed=lam, baseline=baseline
        ),
        plot_pareto(sweep, out_dir / "pareto_fns_len.png", baseline=baseline),
    ]
