"""Accent's two stopping rules side by side: ours (re-query) and the authors' (additive estimate).

usage: LCER_HOME=... python scripts/accent_stop_rules.py USERS MODEL_KEY [MODEL_KEY ...]
(the explainer's seed is each model's seed; Accent draws no random numbers anyway)
"""

from __future__ import annotations

import sys
import time

import torch

from lcer_core import api
from lcer_core.explainers import Accent, AccentConfig
from lcer_core.metrics import evaluate_pairs, summarize


def main() -> None:
    n_users, keys = int(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    data = api.load_dataset("ml-100k")
    print("| seed | K | stop rule | Val | Len | PS | PN | F_NS | s/pair |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        model = api.load_model("ml-100k", key)
        rec = model.recommender()
        for k in (5, 10):
            pairs = api.make_pairs(rec, data, users=n_users, k=k)
            for stop in ("requery", "additive"):
                t0 = time.perf_counter()
                out = Accent(AccentConfig(stop=stop)).explain(rec, pairs)
                dt = (time.perf_counter() - t0) / len(pairs)
                m = summarize(evaluate_pairs(rec, pairs, out))
                print(
                    f"| {model.seed} | {k} | {stop} | {m['val_pct']:.1f} | {m['len']:.3f} | "
                    f"{m['ps_pct']:.2f} | {m['pn_pct']:.2f} | {m['fns_pct']:.2f} | {dt:.4f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
