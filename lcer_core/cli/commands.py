"""Imports every command module so that each registers its commands on the app."""

from lcer_core.cli import bench, data, model, pipeline, results, tracking  # noqa: F401
