"""``lcer prepare`` and ``lcer stats``."""

from __future__ import annotations
