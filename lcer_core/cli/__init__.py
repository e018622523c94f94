"""The ``lcer`` command line (the one module of lcer_core that may start flows)."""

from lcer_core.cli.app import build_app, main

__all__ = ["build_app", "main"]
