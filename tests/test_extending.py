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
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_fixtures import mlflow_template_db_fixture, store_fixture  # noqa: F401

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
    path = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, **extra}


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


@pytest.fixture()
def toy_loaded(toy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The page's toy registered in this process through its entry point; gone afterwards."""
    from lcer_core.explainers import METHODS, registry

    monkeypatch.syspath_prepend(str(toy_dir))
    try:
        registry.load_plugins()
        assert "toy" in METHODS
        yield toy_dir
    finally:
        METHODS.pop("toy", None)
        registry.PLUGINS.pop("toy", None)


def test_the_pages_lcer_run_sets_the_toys_option(toy_loaded: Path, capsys) -> None:
    """The page's ``lcer run ... --method toy --set top=2`` plans the toy with ``top`` 2: its own
    run key, not the default top's (tests/test_flows.py runs it through the pipeline)."""
    import json

    from dataset_fixtures import run_cli

    from lcer_core.plan import make_plan
    from lcer_core.runs import run_spec

    (argv,) = commands("lcer run")
    assert argv[argv.index("--set") + 1] == "top=2"
    code, out, err = run_cli([*argv[1:], "--show-plan"], capsys)
    assert code == 0, err
    plan = make_plan(json.loads(out))
    assert plan.explainers["toy"].fixed == {"top": 2}
    [spec] = plan.runs("ml-100k", "m", 0)
    assert spec.as_row()["config"] == {"method": "toy", "top": 2}
    assert spec.tracked_params()["explainer.top"] == 2
    same = {"dataset": "ml-100k", "method": "toy", "k": 2, "seed": 0, "n_users": 2}
    top2, default = run_spec(**same, model_key="m", top=2), run_spec(**same, model_key="m")
    assert spec.run_id == top2.run_id != default.run_id


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


def plugin(
    folder: Path,
    name: str,
    value: str,
    module: str | None = None,
    dist: str | None = None,
    version: str = "0.1",
) -> Path:
    """A distribution ``DIST-VERSION`` (``DIST``: ``name``) on ``folder`` declaring
    ``name = value`` (and a module)."""
    dist = dist or name
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
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
    assert message.startswith(f"explainer plugin 'bad' ({value}, from bad 0.1)"), message
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


# ---- plugins and built-in names; what a run records of the plugins -----------------------------


def test_a_plugin_may_not_take_a_builtin_name(tmp_path, monkeypatch) -> None:
    """A distribution ``evil`` declaring ``lcer`` (its module would drop the built-in and register
    itself) is refused before its module is imported: one line naming it; the built-in stays."""
    from lcer_core.explainers import LCER, METHODS, registry

    module = (
        "from lcer_core.explainers.registry import METHODS, register\n"
        "from lcer_core.explainers.fia import FIA\n"
        "METHODS.pop('lcer', None)\n"
        "class Cls(FIA):\n    name = 'lcer'\n"
    )
    monkeypatch.syspath_prepend(str(plugin(tmp_path, "lcer", "evil_lcer:Cls", module, "evil")))
    try:
        with pytest.raises(LcerError) as err:
            registry.load_plugins()
    finally:
        METHODS["lcer"] = LCER  # whatever happened, the next tests get the built-in
    assert str(err.value) == (
        "explainer plugin 'lcer' (evil_lcer:Cls, from evil 0.1) "
        "may not take the built-in method name 'lcer'"
    )
    assert "evil_lcer" not in sys.modules and "lcer" not in registry.PLUGINS


def test_a_plugin_that_replaces_a_builtin_while_imported_is_refused(tmp_path, monkeypatch) -> None:
    from lcer_core.explainers import LCER, METHODS, registry

    module = (
        "from lcer_core.explainers.registry import METHODS\n"
        "from lcer_core.explainers.fia import FIA\n"
        "class Cls(FIA):\n    name = 'sneaky'\n"
        "METHODS['lcer'] = Cls\n"
    )
    monkeypatch.syspath_prepend(str(plugin(tmp_path, "sneaky", "sneaky_plugin:Cls", module)))
    try:
        with pytest.raises(
            LcerError,
            match=r"^explainer plugin 'sneaky' \(sneaky_plugin:Cls, "
            r"from sneaky 0\.1\) replaced the built-in method\(s\) lcer$",
        ):
            registry.load_plugins()
        assert METHODS["lcer"] is LCER and "sneaky" not in METHODS
    finally:
        METHODS["lcer"] = LCER


def test_the_cli_refuses_a_plugin_taking_a_builtin_name(tmp_path: Path, lcer_home: Path) -> None:
    module = "from lcer_core.explainers.fia import FIA\nclass Cls(FIA):\n    name = 'lcer'\n"
    folder = plugin(tmp_path / "site", "lcer", "evil_lcer:Cls", module, "evil")
    done = subprocess.run(
        [str(LCER), "explain", "ml-100k", "--method", "lcer", "--no-train"],
        env=env_with(folder, LCER_HOME=str(lcer_home)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "explainer plugin 'lcer' (evil_lcer:Cls, from evil 0.1)" in done.stderr
    assert "may not take the built-in method name 'lcer'" in done.stderr


def test_every_run_records_the_loaded_plugins(tmp_path, monkeypatch, store) -> None:
    """A run stored and tracked while a plugin is loaded names it (distribution, version) in
    ``runs.plugins`` and in its MLflow run's ``lcer.plugins`` tag; none loaded: ``[]``."""
    import json

    from lcer_core.explainers import METHODS, registry
    from lcer_core.runs import run_spec
    from lcer_core.store import ResultStore
    from tasks import mlflow_client

    def stored_and_tracked(method: str) -> tuple[list, list]:
        spec = run_spec(dataset="ml-100k", method=method, k=5, seed=0, n_users=2, model_key="m")
        with ResultStore() as results:
            results.begin_run(spec.as_row())
            row = results.run(spec.run_id)
        tracked = mlflow_client.start_explain_run(
            "ml-100k", method=method, k=5, alpha=spec.alpha, lam=spec.lam
        )
        tag = store.get_run(tracked).data.tags[mlflow_client.TAG_PLUGINS]
        mlflow_client.end_run(tracked)
        return json.loads(row["plugins"]), json.loads(tag)

    assert stored_and_tracked("fia") == ([], [])
    module = "from lcer_core.explainers.fia import FIA\nclass Cls(FIA):\n    name = 'fia-copy'\n"
    folder = plugin(tmp_path, "fia-copy", "fia_copy_plugin:Cls", module, "fia-copies", "2.3")
    monkeypatch.syspath_prepend(str(folder))
    try:
        registry.load_plugins()
        want = [{"name": "fia-copy", "distribution": "fia-copies", "version": "2.3"}]
        assert stored_and_tracked("fia-copy") == (want, want)
        assert stored_and_tracked("fia") == (want, want)  # every run: what was loaded
    finally:
        METHODS.pop("fia-copy", None)
        registry.PLUGINS.pop("fia-copy", None)
