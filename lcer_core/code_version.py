"""Which code this process runs: the package version and a digest of its source.

A run that crosses machines (a work pool's worker, a Ray node) must run the code it was
planned with. :func:`code_version` names that code as ``VERSION+src.DIGEST``: the package's
version (for people) and a sha256 over the files of the packages ``lcer_core``,
``flows`` and ``tasks`` as they lie beside the imported ``lcer_core`` (for the check), so an
editable install, a wheel and a git clone of the same commit agree, whatever their folder.
Nothing here imports Prefect or Ray.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from lcer_core import __version__
from lcer_core.errors import InvalidParameterError

__all__ = ["PACKAGES", "package_dirs", "code_version", "same_code", "check_code_version"]

#: The top-level packages of the ``lcer`` distribution: what a worker must run the same of.
PACKAGES = ("lcer_core", "flows", "tasks")
_SKIP = ("__pycache__",)
_SKIP_SUFFIXES = (".pyc", ".pyo")


def package_dirs(root: Path | None = None) -> list[Path]:
    """The folders of :data:`PACKAGES` under ``root`` (default: beside the imported ``lcer_core``)."""
    base = Path(__file__).resolve().parents[1] if root is None else Path(root)
    return [base / name for name in PACKAGES]


def _digest(root: Path | None) -> str:
    h = hashlib.sha256()
    for folder in package_dirs(root):
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and p.suffix not in _SKIP_SUFFIXES
            and not any(part in _SKIP for part in p.relative_to(folder).parts)
        )
        for path in files:
            h.update(path.relative_to(folder.parent).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


@functools.cache
def _cached(root: str | None) -> str:
    return f"{__version__}+src.{_digest(None if root is None else Path(root))}"


def code_version(root: Path | None = None) -> str:
    """``VERSION+src.DIGEST`` of the code under ``root`` (default: this process's)."""
    return _cached(None if root is None else str(Path(root).resolve()))


def same_code(a: str, b: str) -> bool:
    """Whether two :func:`code_version` strings name the same source (the installed version
    may differ between machines that run the same source)."""
    return "+src." in a and a.rpartition("+src.")[2] == b.rpartition("+src.")[2]


def check_code_version(expected: str | None, *, where: str = "this worker") -> None:
    """Refuse, in one line, to run for a caller whose code (``expected``) is not this process's."""
    mine = code_version()
    if expected is None:
        raise InvalidParameterError(
            f"{where} runs lcer {mine}; the run does not say which code it was deployed with "
            "(code_version): start it from a pipeline of this version",
            param="code_version",
        )
    if not same_code(expected, mine):
        raise InvalidParameterError(
            f"{where} runs lcer {mine}, the run was deployed with {expected}: deploy the same "
            "commit to every pool (prefect --no-prompt deploy --all) or install it on this worker",
            param="code_version",
        )
