"""The ``lcer`` command line (the one module of lcer_core that may start flows)."""

from lcer_core.cli.app import app, main

__all__ = ["app", "main"]
