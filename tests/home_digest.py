"""The whole of an LCER_HOME as data: every file's sha256, for "nothing changed" checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["tree_digest"]


def tree_digest(path: Path) -> dict[str, str]:
    """Map every file and symlink below ``path`` (relative path) to the sha256 of its bytes
    (of its target's name for a symlink; ``dir`` for a folder, so empty folders count too)."""
    root = Path(path)
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames:
            sub = here / name
            rel = str(sub.relative_to(root))
            out[rel] = (
                "symlink:" + hashlib.sha256(os.readlink(sub).encode()).hexdigest()
                if sub.is_symlink()
                else "dir"
            )
        for name in filenames:
            file = here / name
            rel = str(file.relative_to(root))
            if file.is_symlink():
                out[rel] = "symlink:" + hashlib.sha256(os.readlink(file).encode()).hexdigest()
                continue
            h = hashlib.sha256()
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[rel] = h.hexdigest()
    return out
