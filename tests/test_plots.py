"""The paper's figures from synthetic frames, and the qualitative-examples page.

Set ``LCER_FIGS_DIR`` to keep the PNGs for a look (``LCER_FIGS_DIR=/tmp/figs pytest ...``).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.image
import numpy as np
import polars as pl
import pytest

from lcer_core import plots
from lcer_core.errors import DataFormatError, InvalidParameterError
from lcer_core.examples_md import render_examples


@pytest.fixture()
def figs_dir(tmp_path: Path) -> Path:
    keep = os.environ.get("LCER_FIGS_DIR")
    return Path(keep) if keep else tmp_path


def items_frame(seed: int = 0, n: int = 800) -> pl.DataFrame:
    """Items with long-tailed popularity; CE and top-K counts that grow with popularity."""
    rng = np.random.default_rng(seed)
    pop = np.sort(np.minimum(rng.zipf(1.5, n), 580))[::-1]
    rec = rng.poisson(pop * 0.35)
    frames = []
    for j, method in enumerate(["lcer", "accent"]):
        count = rng.poisson(pop * (0.06 + 0.04 * j))
        noise = rng.normal(0, 0.08, n)
        importance = np.clip(0.5 + 0.4 * np.log1p(pop) / np.log(580) + noise, 0.5, 1.0)
        importance = np.where((count > 0) & (method == "lcer"), importance, np.nan)
        frames.append(
            pl.DataFrame(
                {
                    "dataset": "ml-100k",
                    "method": method,
                    "sid": np.arange(n),
                    "title": [f"Movie {i}" for i in range(n)],
                    "popularity": pop,
                    "explanation_count": count,
                    "mean_importance": importance,
                    "recommendation_count": rec,
                }
            )
        )
    return pl.concat(frames)


def sweep_frame() -> pl.DataFrame:
    """A 4 x 4 α/λ grid whose length falls with λ and metrics fall with λ, as in the paper."""
    rows = []
    for alpha in [0.0, 0.1, 0.5, 1.0]:
        for lam in [0.001, 0.01, 0.1, 1.0]:
            length = 8 / (1 + 10 * lam) + 2 * alpha
            ps = 95 - 30 * lam - 5 * (1 - alpha)
            pn = 70 - 40 * lam + 10 * alpha
            rows.append(
                {
                    "alpha": alpha,
                    "lam": lam,
                    "val_pct": 99.0 - 5 * lam,
                    "len": length,
                    "ps_pct": ps,
                    "pn_pct": pn,
                    "fns_pct": 2 * ps * pn / (ps + pn),
                }
            )
    return pl.DataFrame(rows)


BASELINE = {"val_pct": 97.0, "ps_pct": 80.0, "pn_pct": 55.0, "fns_pct": 65.2, "len": 3.2}


def assert_real_png(path: Path, min_w: int = 800, min_h: int = 500) -> None:
    """A PNG of a sensible size with actual drawing on it (not one flat colour)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05
    packed = (rgb * 255).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    assert np.unique(packed).size > 50  # several colours and antialiased text


def test_item_figures(figs_dir: Path) -> None:
    paths = plots.render_item_figures(items_frame(), figs_dir)
    assert [p.name for p in paths] == [
        "fig5_explanation_count.png",
        "fig6_mean_importance.png",
        "fig7_recommendation_count.png",
    ]
    for p in paths:
        assert_real_png(p)


def test_sweep_figures(figs_dir: Path) -> None:
    paths = plots.render_sweep_figures(sweep_frame(), figs_dir, baseline=BASELINE)
    assert [p.name for p in paths] == [
        "fig8_effect_lambda.png",
        "fig9_effect_alpha.png",
        "pareto_fns_len.png",
    ]
    for p in paths:
        assert_real_png(p)
    # Without a baseline and with validity missing (as for FIA) it still draws.
    no_val = sweep_frame().with_columns(val_pct=pl.lit(None, dtype=pl.Float64))
    assert_real_png(
        plots.plot_effect(no_val, figs_dir / "fig8_no_baseline.png", vary="lam", fixed=0.5)
    )


def test_pareto_front_on_a_hand_made_grid() -> None:
    grid = pl.DataFrame(
        {
            "alpha": [0.1, 0.1, 0.5, 0.5, 1.0],
            "lam": [0.1, 1.0, 0.1, 1.0, 0.1],
            "len": [2.0, 1.0, 3.0, 1.0, 4.0],
            "fns_pct": [60.0, 40.0, 55.0, 45.0, 70.0],
        }
    )
    front = plots.pareto_front(grid)
    # (1, 40) is beaten by (1, 45); (3, 55) by (2, 60); the rest trade length for F_NS.
    assert front.select("len", "fns_pct").rows() == [(1.0, 45.0), (2.0, 60.0), (4.0, 70.0)]


def test_regression_recovers_an_exact_line() -> None:
    x = np.array([1.0, 2.0, 3.0, 10.0])
    slope, intercept, r2 = plots.regression(x, 2.0 * x + 1.0)
    assert (
        slope == pytest.approx(2.0) and intercept == pytest.approx(1.0) and r2 == pytest.approx(1.0)
    )
    assert all(np.isnan(v) for v in plots.regression(np.ones(3), np.arange(3.0)))


def test_figures_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="explanation_count"):
        plots.plot_explanation_count(items_frame().drop("explanation_count"), tmp_path / "x.png")
    with pytest.raises(DataFormatError, match="empty"):
        plots.plot_recommendation_count(items_frame().head(0), tmp_path / "x.png")
    with pytest.raises(InvalidParameterError, match="alpha = 0.3"):
        plots.plot_effect(sweep_frame(), tmp_path / "x.png", vary="lam", fixed=0.3)
    with pytest.raises(InvalidParameterError, match="vary"):
        plots.plot_effect(sweep_frame(), tmp_path / "x.png", vary="k")


def test_examples_page(figs_dir: Path) -> None:
    rows = [
        {
            "title": "Schindler's List (1993)",
            "genres": ["Drama", "War"],
            "user": "196",
            "rank": 2,
            "k": 5,
            "ces": {
                "lcer": [
                    {"title": "The English Patient (1996)", "genres": ["Drama", "Romance", "War"]},
                    {"title": "Patton (1970)", "genres": "Drama|War"},
                ],
                "kaffes": [],
                "accent": None,
                "fia": [{"title": f"Movie {i}", "genres": ["Comedy"]} for i in range(12)],
            },
        },
        {"title": "A | B *C*", "genres": "Comedy", "ces": {"lcer": [{"title": "D", "genres": []}]}},
    ]
    page = render_examples(rows, max_items=10)
    (figs_dir / "examples.md").write_text(page)
    lines = page.splitlines()
    assert lines[0] == "# Qualitative examples of counterfactual explanations"
    assert "## Example 1: Schindler's List (1993)" in lines
    assert lines[4].endswith("genres: Drama / War — user 196, rank 2 of the top-5")
    assert "| LCER | The English Patient (1996) | **Drama** / Romance / **War** |" in lines
    assert "|  | Patton (1970) | **Drama** / **War** |" in lines
    assert "| KaffesCE | no CE | – |" in lines
    assert "| Accent | no CE | – |" in lines
    assert (
        sum(line.startswith("|  | Movie") for line in lines) == 9
    )  # 10 shown, FIA's first on its own row
    assert "|  | … (12 items in total) |  |" in lines
    # Markdown metacharacters in titles cannot break the table.
    assert "## Example 2: A \\| B \\*C\\*" in lines
    assert "| LCER | D | – |" in lines
    with pytest.raises(DataFormatError, match="example 1"):
        render_examples([{"genres": []}])
