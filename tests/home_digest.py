"""A byte-for-byte fingerprint of a folder tree, to assert that a failed command changed nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["tree_digest"]


def tree_digest(path: Path) -> dict[str, str]:
    """Every entry under ``path`` by relative path: a file's sha256, ``dir`` or ``link -> TARGET``."""
    root = Path(path)
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames + filenames:
            entry = here / name
            rel = entry.relative_to(root).as_posix()
            if entry.is_symlink():
                out[rel] = f"link -> {os.readlink(entry)}"
            elif entry.is_dir():
                out[rel] = "dir"
            else:
                h = hashlib.sha256()
                with open(entry, "rb") as fh:
                    for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(chunk)
                out[rel] = h.hexdigest()
    return out
