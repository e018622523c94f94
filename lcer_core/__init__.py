"""LCER: learning-based counterfactual explanations for recommendation, framework-free.

Explain recommendations in a notebook (the example of :mod:`lcer_core.api`, run as a doctest
by the test suite)::

    from lcer_core import api
    data = api.load_dataset("ml-100k")
    model = api.train_model(data)  # trains the paper's recommender the first time, then reuses it
    rec = model.recommender()
    pairs = api.make_pairs(rec, data, users=10, k=5)  # the first 10 test users' top-5
    expl = api.explain(rec, pairs, "lcer", alpha=0.1, lam=0.01, steps=3000)
    metrics = api.summarize(api.evaluate(rec, pairs, expl), "lcer")
    one = api.explain_user(data, model, data.users["raw_id"][0], k=5)  # one user, item by item
"""

__version__ = "0.1.0"
