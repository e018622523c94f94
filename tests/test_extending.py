"""docs/extending.md, followed step by step: its code blocks written to a folder on PYTHONPATH
(no install), the toy registered through its entry point, `lcer explain` run with it, and the
contract suite run on the toy explainer and the toy recommender. Then broken plugins."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lcer_core.errors import LcerError
from lcer_core.explainers.plugins import GROUP, load_plugins

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"^```(\w+)( file=(\S+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
LCER = Path(sys.executable).with_name("lcer")


def blocks() -> list[tuple[str, str | None, str]]:
    """(language, file name or None, text) of every fenced block of the page, in order."""
    return [(m[1], m[3], m[4]) for m in BLOCK.finditer(PAGE.read_text())]


def commands(prefix: str) -> list[list[str]]:
    return [
        shlex.split(line)
        for lang, _, text in blocks()
        if lang == "sh"
        for line in text.splitlines()
        if line.startswith(prefix)
    ]


@pytest.fixture()
def toy_dir(tmp_path: Path) -> Path:
    """The page's files, written where it says."""
    for _, name, text in blocks():
        if name:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
    return tmp_path


def env_with(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(folder), **extra}


def test_the_page_declares_the_entry_point_it_writes(toy_dir: Path) -> None:
    assert sorted(str(p.relative_to(toy_dir)) for p in toy_dir.rglob("*") if p.is_file()) == [
        "test_toy.py",
        "toy-0.1.dist-info/METADATA",
        "toy-0.1.dist-info/entry_points.txt",
        "toy_lcer.py",
    ]
    toml = next(text for lang, _, text in blocks() if lang == "toml")
    declared = tomllib.loads(toml)["project"]["entry-points"][GROUP]
    written = (toy_dir / "toy-0.1.dist-info/entry_points.txt").read_text()
    assert f"[{GROUP}]" in written
    assert all(f"{name} = {value}" in written for name, value in declared.items())


def test_lcer_explain_runs_the_toy_through_its_entry_point(toy_dir: Path, trained_home) -> None:
    (argv,) = commands("lcer explain")
    assert "--method" in argv and argv[argv.index("--method") + 1] == "toy"
    done = subprocess.run(
        [str(LCER), *argv[1:]],
        env=env_with(toy_dir, LCER_HOME=str(trained_home)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    metrics = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    metrics = {k.strip(): v.strip() for k, v in metrics.items()}
    users, k = int(argv[argv.index("--users") + 1]), int(argv[argv.index("--k") + 1])
    assert int(metrics["n_pairs"]) == users * k
    assert 0.0 <= float(metrics["val_pct"]) <= 100.0  # the toy reports validity
    assert set(metrics) == {"n_pairs", "val_pct", "len", "ps_pct", "pn_pct", "fns_pct"}


def test_the_contract_suite_passes_for_both_toys(toy_dir: Path) -> None:
    (argv,) = commands("pytest")
    done = subprocess.run(
        [sys.executable, "-m", *argv, "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=toy_dir,
        env=env_with(toy_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    # 8 explainer checks (the claim included: nothing skipped) and 7 recommender checks (the
    # history excluded from the top-K checked at 3 chunk sizes)
    assert re.search(r"\b15 passed\b", done.stdout) and "skipped" not in done.stdout


# ---- broken plugins ---------------------------------------------------------------------------


def plugin(folder: Path, name: str, value: str, module: str | None = None) -> Path:
    """A distribution ``NAME-0.1`` on ``folder`` declaring ``name = value`` (and a module)."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{name} = {value}\n")
    if module is not None:
        (folder / f"{value.split(':')[0]}.py").write_text(module)
    return folder


@pytest.mark.parametrize(
    ("value", "module", "needle"),
    [
        ("no_such_module_xyz:Cls", None, "failed to import: ModuleNotFoundError"),
        ("broken_plugin_a:Cls", "raise RuntimeError('boom\\nsecond line')\n", "RuntimeError: boom"),
        ("broken_plugin_b:Cls", "Cls = dict\n", "is not an Explainer subclass"),
        (
            "broken_plugin_c:Cls",
            "from lcer_core.explainers.fia import FIA\nclass Cls(FIA):\n    name = 'other'\n",
            "names its class 'other', not 'bad'",
        ),
    ],
)
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, monkeypatch, value, module, needle):
    monkeypatch.syspath_prepend(str(plugin(tmp_path, "bad", value, module)))
    seen: list[type] = []
    with pytest.raises(LcerError) as err:
        load_plugins(seen.append)
    message = str(err.value)
    assert message.startswith(f"explainer plugin 'bad' ({value}, from bad)"), message
    assert needle in message and "\n" not in message
    assert not seen


def test_a_plugin_that_cannot_register_is_named(tmp_path, monkeypatch) -> None:
    module = "from lcer_core.explainers.fia import FIA\nclass Cls(FIA):\n    name = 'dup'\n"
    monkeypatch.syspath_prepend(str(plugin(tmp_path, "dup", "dup_plugin:Cls", module)))

    def refuse(cls: type) -> None:
        raise LcerError(f"method name {cls.name!r} is already taken")

    with pytest.raises(LcerError, match=r"^explainer plugin 'dup' .* cannot be registered: "):
        load_plugins(refuse)
    loaded: list[type] = []
    assert [c.name for c in load_plugins(loaded.append)] == ["dup"] and len(loaded) == 1


def test_the_cli_reports_a_broken_plugin_in_one_line(tmp_path: Path, lcer_home: Path) -> None:
    folder = plugin(tmp_path / "site", "bad", "no_such_module_xyz:Cls")
    done = subprocess.run(
        [str(LCER), "explain", "ml-100k", "--method", "fia", "--no-train"],
        env=env_with(folder, LCER_HOME=str(lcer_home)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "explainer plugin 'bad'" in done.stderr and "ModuleNotFoundError" in done.stderr
