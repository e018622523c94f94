"""A byte-for-byte fingerprint of a folder tree: what an attack must leave unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["tree_digest"]


def tree_digest(path: Path | str) -> dict[str, str]:
    """Every entry under ``path`` (relative POSIX path) mapped to what it is: a file's sha256,
    ``dir``, or a symlink's target; links are not followed, so nothing outside is read."""
    root = Path(path)
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            key = entry.relative_to(root).as_posix()
            if entry.is_symlink():
                out[key] = f"link:{os.readlink(entry)}"
            elif entry.is_dir():
                out[key] = "dir"
            else:
                digest = hashlib.sha256()
                with entry.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                out[key] = digest.hexdigest()
    return dict(sorted(out.items()))
