"""Generalisation of the amortised explainer on ML 100K, K=5 (issue 27; docs/results.md).

Run with LCER_HOME holding a prepared ml-100k and LCER_MIRROR set (split seeds are prepared,
and Mult-VAE trained on each, ``EPOCHS`` epochs, here). Modes, one JSON line per measurement,
strict metrics over all pairs, budget 16 / max_length 64 (chosen on validation users of the
default split, docs/results.md):

``transfer SPLITS USERS``: one network per split (its own Mult-VAE, its own training users);
every network applied to every split's Mult-VAE and its first USERS test users, beside the
same prefix test ranked by the first-order share alone (no training). ``unseen`` rows keep the
test users of split B that were no training user of split A (the network never saw them).
``curve PAIRS USERS``: networks trained on seeded samples of the default split's training
pairs, evaluated on the first USERS validation users and test users.
"""

import json
import sys
import time

import torch

from lcer_core import amortised_store as store
from lcer_core.datasets import ensure_prepared
from lcer_core.explainers import amortised as am
from lcer_core.explainers import get_method
from lcer_core.explainers.amortised import AmortisedConfig, AmortisedTraining
from lcer_core.metrics import evaluate_pairs, strict_summary
from lcer_core.models import ensure_model
from lcer_core.pairs import make_pairs
from lcer_core.recommender.multvae import MultVAEConfig

torch.set_num_threads(1)
K, EPOCHS, BUDGET, MAX_LENGTH = 5, 30, 16, 64
_NETWORK_LOGITS = am.network_logits


def _grad_logits(net, rec, pairs, alpha, chunk=4096):  # noqa: ANN001, ANN202
    return am.features(rec, pairs, alpha)[..., 0].masked_fill(~pairs.mask, float("-inf"))


def run(rec, key, pairs, *, gradrank=False):  # noqa: ANN001, ANN201
    am.network_logits = _grad_logits if gradrank else _NETWORK_LOGITS
    cfg = AmortisedConfig(network=key, budget=BUDGET, max_length=MAX_LENGTH)
    t = time.perf_counter()
    out = get_method("amortised")(cfg).explain(rec, pairs, seed=0)
    dt = time.perf_counter() - t
    s = strict_summary(evaluate_pairs(rec, pairs, out))
    return {
        "pairs": len(pairs),
        "fns": round(s["strict_fns_pct"], 1),
        "ps": round(s["strict_ps_pct"], 1),
        "pn": round(s["strict_pn_pct"], 1),
        "len": round(s["strict_len"], 2),
        "s_per_pair": round(dt / max(len(pairs), 1), 5),
    }


def transfer(key, data_a, data_b):  # noqa: ANN001, ANN201
    """Network ``key`` (split A's) for split B's recommender: the same weights, its item and
    target embeddings re-indexed by the items' raw ids (an item split A never saw: the mean
    embedding); kept in memory under a derived key."""
    net_a, training = store.load_network(key)
    sid_a = dict(zip(data_a.items["raw_id"], data_a.items["sid"], strict=True))
    src = torch.tensor([sid_a.get(r, -1) for r in data_b.items.sort("sid")["raw_id"]])
    net_b = am.AmortisedNet(data_b.n_items, training.dim, training.hidden)
    state = net_a.state_dict()
    for name in ("item.weight", "target.weight"):
        w = state[name]
        state[name] = torch.where((src >= 0)[:, None], w[src.clamp_min(0)], w.mean(0))
    net_b.load_state_dict(state)
    derived = store.network_key(model=key, data=data_b.fingerprint, k=K, training=training)
    store.remember(derived, net_b.eval(), training)
    return derived, float((src < 0).float().mean())


def split(seed):  # noqa: ANN001, ANN201
    data = ensure_prepared("ml-100k", seed)
    model, _ = ensure_model(data, MultVAEConfig(epochs=EPOCHS))
    return data, model, model.recommender("cpu")


what = sys.argv[1]
if what == "transfer":
    seeds = [None if s == "default" else int(s) for s in sys.argv[2].split(",")]
    n_users = int(sys.argv[3])
    splits = {s: split(s) for s in seeds}
    nets = {}
    for s, (data, model, _) in splits.items():
        t = time.perf_counter()
        nets[s] = store.ensure_network(model, data, K, AmortisedTraining())
        print(json.dumps({"split": s, "network": nets[s], "s": round(time.perf_counter() - t)}))
    for b, (data_b, _, rec_b) in splits.items():
        test_b = data_b.users_of("test")[:n_users]
        pairs = make_pairs(rec_b, data_b, test_b, K)
        print(json.dumps({"eval_split": b, "gradrank": run(rec_b, nets[b], pairs, gradrank=True)}))
        raw_b = dict(zip(data_b.users["uid"], data_b.users["raw_id"], strict=True))
        for a, (data_a, _, _) in splits.items():
            key, new_items = (nets[a], 0.0) if a == b else transfer(nets[a], data_a, data_b)
            train_a = set(data_a.users.filter(data_a.users["split"] == "train")["raw_id"])
            unseen = [u for u in test_b if raw_b[u] not in train_a]
            row = {"train_split": a, "eval_split": b, "items_new_to_a": round(new_items, 4)}
            row["all"] = run(rec_b, key, pairs)
            if a != b and unseen:
                sub = make_pairs(rec_b, data_b, unseen, K)
                row["unseen"] = run(rec_b, key, sub)
                row["unseen_gradrank"] = run(rec_b, key, sub, gradrank=True)
                row["unseen_own"] = run(rec_b, nets[b], sub)
            print(json.dumps(row), flush=True)
elif what == "curve":
    sizes = [None if p == "all" else int(p) for p in sys.argv[2].split(",")]
    n_users = int(sys.argv[3])
    data, model, rec = split(None)
    val = make_pairs(rec, data, data.users_of("val")[:n_users], K)
    test = make_pairs(rec, data, data.users_of("test")[:n_users], K)
    key0 = store.ensure_network(model, data, K, AmortisedTraining())
    print(
        json.dumps(
            {
                "max_pairs": 0,
                "val": run(rec, key0, val, gradrank=True),
                "test": run(rec, key0, test, gradrank=True),
            }
        ),
        flush=True,
    )
    for mp in sizes:
        for seed in (0, 1):
            t = time.perf_counter()
            key = store.ensure_network(model, data, K, AmortisedTraining(max_pairs=mp, seed=seed))
            row = {"max_pairs": mp, "seed": seed, "train_s": round(time.perf_counter() - t, 1)}
            row |= {"val": run(rec, key, val), "test": run(rec, key, test)}
            print(json.dumps(row), flush=True)
