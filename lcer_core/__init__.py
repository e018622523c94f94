"""LCER: learning-based counterfactual explanations for recommendation, framework-free.

Explain one user in a notebook::

    from lcer_core import api
    model, data = api.load_model("ml-100k"), api.load_dataset("ml-100k")
    api.explain_user(model, data, user="196", k=5, method="lcer")
"""

__version__ = "0.1.0"
