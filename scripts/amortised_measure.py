"""Measure the amortised explainer on ML 100K, K=5 (issue 27; docs/results.md, "amortised").

Run with LCER_HOME holding a prepared ml-100k and a trained Mult-VAE. Modes: train (the
data-size curve), choose (budget/max_length on validation), compare SPLIT BUDGET MAX_LENGTH
(amortised, kaffes-topk, lcer 300 steps), amort_test, gradrank, gradrank2 (no training: rank
by the first-order share), warm STEPS,... (LCER cold vs warm start), sweep JSON... (training
configs). One JSON line per measurement; strict metrics over all pairs.
"""

import dataclasses
import json
import sys
import time

import torch

from lcer_core import amortised_store as store
from lcer_core.datasets import load_prepared
from lcer_core.explainers.amortised import AmortisedTraining
from lcer_core.metrics import evaluate_pairs, strict_summary
from lcer_core.models import load_model
from lcer_core.pairs import make_pairs
from lcer_core.runs import method_configs

torch.set_num_threads(1)
what = sys.argv[1]
data = load_prepared("ml-100k")
model = load_model("ml-100k")
rec = model.recommender("cpu")
K = 5


def run(name, cfg, pairs, seed=0):
    from lcer_core.explainers import get_method

    t = time.perf_counter()
    out = get_method(name)(cfg).explain(rec, pairs, seed=seed)
    dt = time.perf_counter() - t
    s = strict_summary(evaluate_pairs(rec, pairs, out))
    return {
        "fns": round(s["strict_fns_pct"], 2),
        "len": round(s["strict_len"], 2),
        "pn": round(s["strict_pn_pct"], 2),
        "ps": round(s["strict_ps_pct"], 2),
        "s_per_pair": round(dt / len(pairs), 5),
    }


def amort(key, **kw):
    from lcer_core.explainers.amortised import AmortisedConfig

    return AmortisedConfig(network=key, **kw)


val20 = make_pairs(rec, data, data.users_of("val")[:20], K)
val100 = make_pairs(rec, data, data.users_of("val"), K)
test20 = make_pairs(rec, data, data.users_of("test")[:20], K)
if what == "train":
    for mp in [100, 300, 1000, None]:
        tr = AmortisedTraining(max_pairs=mp)
        t = time.perf_counter()
        key = store.ensure_network(model, data, K, tr)
        dt = time.perf_counter() - t
        curve = json.loads((store.network_path(key) / "curve.json").read_text())["epoch_mean_loss"]
        print(
            json.dumps(
                {
                    "max_pairs": mp,
                    "key": key,
                    "train_s": round(dt, 1),
                    "curve": [round(c, 4) for c in curve],
                    "val100": run("amortised", amort(key), val100),
                }
            ),
            flush=True,
        )
elif what == "choose":
    key = store.ensure_network(model, data, K, AmortisedTraining())
    for b, m in [(4, 8), (8, 16), (8, 32), (16, 32), (16, 64)]:
        print(
            json.dumps(
                {
                    "budget": b,
                    "max_length": m,
                    "val20": run("amortised", amort(key, budget=b, max_length=m), val20),
                    "val100": run("amortised", amort(key, budget=b, max_length=m), val100),
                }
            ),
            flush=True,
        )
elif what == "compare":
    split = sys.argv[2]
    b, m = int(sys.argv[3]), int(sys.argv[4])
    pairs = val20 if split == "val" else test20
    key = store.ensure_network(model, data, K, AmortisedTraining())
    print(
        json.dumps(
            {
                "split": split,
                "amortised": run("amortised", amort(key, budget=b, max_length=m), pairs),
            }
        ),
        flush=True,
    )
    print(
        json.dumps(
            {
                "split": split,
                "kaffes-topk": run(
                    "kaffes-topk", method_configs("kaffes-topk", "ml-100k")[0], pairs
                ),
            }
        ),
        flush=True,
    )
    [c300] = method_configs("lcer", "ml-100k", {"steps": 300})
    print(json.dumps({"split": split, "lcer300": run("lcer", c300, pairs)}), flush=True)
elif what == "warm":
    key = store.ensure_network(model, data, K, AmortisedTraining())
    steps = [int(s) for s in sys.argv[2].split(",")]
    for st in steps:
        [c] = method_configs("lcer", "ml-100k", {"steps": st})
        row = {"steps": st, "cold": run("lcer", c, test20)}
        row["warm"] = run("lcer", dataclasses.replace(c, warm_start=key), test20)
        print(json.dumps(row), flush=True)
if what == "gradrank":
    # ablation: no learning, rank the history by the first-order drop g_j alone (same prefix test)
    import lcer_core.explainers.amortised as am

    key = store.ensure_network(model, data, K, AmortisedTraining())
    am.network_logits = lambda net, r, p, alpha, chunk=4096: am.features(r, p, alpha)[
        ..., 0
    ].masked_fill(~p.mask, float("-inf"))
    for b, m in [(8, 16), (16, 16)]:
        print(
            json.dumps(
                {
                    "gradrank": True,
                    "budget": b,
                    "max_length": m,
                    "val100": run("amortised", amort(key, budget=b, max_length=m), val100),
                }
            ),
            flush=True,
        )
if what == "sweep":
    for spec in sys.argv[2:]:
        kw = json.loads(spec)
        tr = AmortisedTraining(**kw)
        t = time.perf_counter()
        key = store.ensure_network(model, data, K, tr)
        dt = time.perf_counter() - t
        curve = json.loads((store.network_path(key) / "curve.json").read_text())["epoch_mean_loss"]
        print(
            json.dumps(
                {
                    **kw,
                    "key": key,
                    "train_s": round(dt, 1),
                    "curve": [round(c, 4) for c in curve[::2]],
                    "val100": run("amortised", amort(key), val100),
                }
            ),
            flush=True,
        )
if what == "gradrank2":
    import lcer_core.explainers.amortised as am

    key = store.ensure_network(model, data, K, AmortisedTraining())
    am.network_logits = lambda net, r, p, alpha, chunk=4096: am.features(r, p, alpha)[
        ..., 0
    ].masked_fill(~p.mask, float("-inf"))
    print(
        json.dumps(
            {
                "gradrank": True,
                "budget": 16,
                "max_length": 64,
                "val100": run("amortised", amort(key, budget=16, max_length=64), val100),
                "test20": run("amortised", amort(key, budget=16, max_length=64), test20),
            }
        ),
        flush=True,
    )
    print(
        json.dumps(
            {
                "gradrank": True,
                "budget": 8,
                "max_length": 16,
                "test20": run("amortised", amort(key), test20),
            }
        ),
        flush=True,
    )
if what == "amort_test":
    key = store.ensure_network(model, data, K, AmortisedTraining())
    print(
        json.dumps(
            {
                "amortised": True,
                "budget": 8,
                "max_length": 16,
                "test20": run("amortised", amort(key), test20),
            }
        ),
        flush=True,
    )
