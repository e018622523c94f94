"""Imports every command module so that each registers its commands on the app."""

from lcer_core.cli import data, model, results  # noqa: F401
