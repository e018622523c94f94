"""Early stop's trade-off from one recorded LCER run (see lcer_core/early_stop.py).

    python scripts/early_stop_replay.py [--dataset ml-100k] [--k 5] [--steps 3000]
        [--rules 300:0,500:0.005,1000:0.01] [--users N] [--seed 0]

Uses the latest trained model in $LCER_HOME (trains one if there is none), the test users and
the paper's α = 0.1, λ = 0.01, as `lcer bench` does. Prints, for the full run, for every pair
cut at a common step, for the hindsight oracle and for each rule: the share of pair-steps
run (and weighted by history length, closer to what a step costs) and Table 2's metrics.
About a minute more than one LCER run on ML 100K; the recording needs T × (P + N) numbers
(3000 × 23,560 for ML 100K at K = 5: ~300 MB).
"""

from __future__ import annotations

import argparse

import torch

from lcer_core import models
from lcer_core.datasets import ensure_prepared
from lcer_core.early_stop import record_run
from lcer_core.explainers import LCERConfig
from lcer_core.metrics import evaluate_pairs, summarize
from lcer_core.pairs import make_pairs, test_users


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", default="300:0,500:0.005,1000:0.01", help="patience:min_delta,...")
    args = ap.parse_args()
    rules = [(int(p), float(d)) for p, d in (r.split(":") for r in args.rules.split(","))]

    data = ensure_prepared(args.dataset)
    model = models.find_model(args.dataset) or models.ensure_model(data)[0]
    rec = model.recommender("cpu")
    pairs = make_pairs(rec, data, test_users(data, args.users, strict=True), args.k)
    run = record_run(rec, pairs, LCERConfig(steps=args.steps), seed=args.seed)
    lengths = run.pairs.mask.sum(1).float()
    total = len(run.pairs) * args.steps

    def line(name: str, stops: torch.Tensor | None, base: float | None) -> float:
        ex = run.explanations(stops)
        m = summarize(evaluate_pairs(rec, run.pairs, ex))
        steps = ex.steps.float()
        share = 100 * float(steps.sum()) / total
        weighted = 100 * float((steps * lengths).sum()) / (float(lengths.sum()) * args.steps)
        delta = "" if base is None else f" ({m['fns_pct'] - base:+.2f})"
        print(
            f"{name:28} {share:6.1f} {weighted:8.1f} {m['val_pct']:6.1f} {m['len']:6.2f} "
            f"{m['ps_pct']:6.1f} {m['pn_pct']:6.1f} {m['fns_pct']:7.2f}{delta}"
        )
        return float(m["fns_pct"])

    print(f"{len(run.pairs)} pairs, {args.steps} steps, K = {args.k}, model {model.key}")
    print(
        f"{'':28} {'steps%':>6} {'by-len%':>8} {'Val':>6} {'Len':>6} {'PS':>6} {'PN':>6} {'F_NS':>7}"
    )
    base = line("full run", None, None)
    for frac in (1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6):
        t = round(args.steps * frac)
        line(f"every pair cut at step {t}", torch.full((len(run.pairs),), t), base)
    line("oracle (last improvement)", run.oracle_steps(), base)
    for patience, delta in rules:
        line(f"patience {patience}, min delta {delta:g}", run.stop_steps(patience, delta), base)


if __name__ == "__main__":
    main()
