"""LCER: learning-based counterfactual explanations for recommendation, framework-free.

Explain one user in a notebook::

    from lcer_core import api
    data = api.ensure_dataset("ml-100k")
    model, _ = api.ensure_model(data)  # trains Mult-VAE the first time, then reuses it
    rec = model.recommender()
    pairs = api.make_pairs(rec, data, api.test_users(data, 10), k=5)
    expl = api.explain(rec, pairs, "lcer", alpha=0.1, lam=0.01, steps=3000)
"""

__version__ = "0.1.0"
