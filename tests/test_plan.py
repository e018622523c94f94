"""The plan is one typed value: built from the command line's flags or a TOML file, validated
whole (every bad value one line, exit 2), the flows' one parameter (Prefect's form), and the
runs it makes keyed as every earlier version keyed them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_fixtures import run_cli
from test_runs import COMMON, KEYS, V1_KEYS

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import PAPER_METHODS
from lcer_core.plan import Plan, make_plan, sweep_plan
from lcer_core.runs import RunSpec, plan_runs


def show_plan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Plan:
    code, out, err = run_cli(["run", *argv, "--show-plan"], capsys)
    assert code == 0, err
    return make_plan(json.loads(out))


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, (code, out, err)
    assert "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize(
    ("method", "options", "n_users", "key"),
    [(m, o, n, key) for (m, o, n, _), key in zip(V1_KEYS, KEYS, strict=True)],
)
def test_flags_and_set_make_the_keys_of_earlier_versions(
    method: str, options: dict, n_users: int | None, key: str, capsys
) -> None:
    """Today's flags (``--alpha --lam --steps``) and the generic ``--set`` give the same run,
    keyed as tests/test_runs.py's table (the keys of every earlier version)."""
    users = [] if n_users is None else ["--users", str(n_users)]
    common = ["ml-100k", "--method", method, "--k", "5", *users]
    short = [a for n, v in options.items() for a in (f"--{n}", str(v))]
    generic = [a for n, v in options.items() for a in ("--set", f"{n}={v}")]
    for argv in (common + short, common + generic):
        plan = show_plan(argv, capsys)
        [spec] = plan.runs("ml-100k", COMMON["model_key"], COMMON["seed"])
        assert spec.run_id == key, argv


def test_the_default_plan_is_the_papers_and_keys_as_before(capsys) -> None:
    plan = show_plan([], capsys)
    assert plan == make_plan() and plan.methods == list(PAPER_METHODS) and plan.ks == [5, 10]
    before = plan_runs(
        dataset="ml-100k",
        methods=PAPER_METHODS,
        ks=[5, 10],
        options={"alpha": None, "lam": None, "steps": None, "budget": None},
        seed=0,
        n_users=None,
        model_key="m",
    )
    assert [s.run_id for s in plan.runs("ml-100k", "m", 0)] == [s.run_id for s in before]


def test_a_grid_is_one_run_per_combination(capsys) -> None:
    plan = show_plan(
        ["--method", "lcer", "--grid", "alpha=0.05,0.1", "--grid", "lam=0.01,0.02", "--k", "5"],
        capsys,
    )
    runs = plan.runs("ml-100k", "m", 0)
    assert sorted((s.alpha, s.lam) for s in runs) == [
        (0.05, 0.01),
        (0.05, 0.02),
        (0.1, 0.01),
        (0.1, 0.02),
    ]
    # the sweep is the same plan: the same runs, the same keys
    sweep = sweep_plan("ml-100k", grid={"alpha": [0.05, 0.1], "lam": [0.01, 0.02]})
    assert {s.run_id for s in sweep.runs("ml-100k", "m", 0)} == {s.run_id for s in runs}


def test_a_plan_file_with_flags_over_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(
        'datasets = ["ml-100k"]\nks = [5]\nn_users = 20\n\n'
        "[explainers.lcer]\nfixed = {steps = 300}\ngrid = {alpha = [0.05, 0.1]}\n\n"
        "[explainers.kaffes]\n"
    )
    plan = show_plan(["--plan", str(path)], capsys)
    assert plan.methods == ["lcer", "kaffes"] and plan.n_users == 20 and plan.ks == [5]
    assert plan.explainers["lcer"].grid == {"alpha": [0.05, 0.1]}
    over = show_plan(["--plan", str(path), "--users", "3", "--set", "alpha=0.2"], capsys)
    assert over.n_users == 3 and over.ks == [5]
    assert over.explainers["lcer"].fixed == {"steps": 300, "alpha": 0.2}
    assert over.explainers["lcer"].grid == {}
    fia = show_plan(["--plan", str(path), "--methods", "lcer,fia"], capsys)
    assert fia.methods == ["lcer", "fia"] and fia.explainers["lcer"].fixed == {"steps": 300}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "lcer", "--set", "nope=1"], "--set nope: no method of the plan (lcer)"),
        (["--method", "lcer", "--set", "alpha=x"], "--set alpha: 'x' is not a valid float"),
        (["--method", "lcer", "--grid", "alpha=0.1,-1"], "--alpha must be a finite number"),
        (["--set", "toy.top=1"], "--set toy.top: toy is not a method of the plan"),
        (["--set", "fia.alpha=1"], "method 'fia' has no option 'alpha' (options: none)"),
        (["--steps", "3", "--set", "steps=4"], "--set steps: given by its own flag too"),
        (["--method", "bogus"], "unknown method 'bogus'"),
        (["--k", "0"], "--k must be a positive integer, got 0"),
        (["--seed", "1", "--seeds", "2"], "--seed and --seeds cannot be combined"),
        (["--plan", "/nonexistent/plan.toml"], "--plan: cannot read /nonexistent/plan.toml"),
    ],
)
def test_every_bad_value_is_one_line(argv: list[str], message: str, capsys) -> None:
    assert message in refused(["run", "ml-100k", *argv, "--show-plan"], capsys)


def test_a_bad_plan_file_is_one_line(tmp_path: Path, capsys) -> None:
    for text, message in [
        ("ks = [", "is not TOML"),
        ("colour = 1", "plan: colour: Extra inputs are not permitted"),
        ('ks = ["x"]', "plan: ks.0: Input should be a valid integer"),
        ("[explainers.toy]", "unknown method 'toy'"),
        ('recommender = "nope"', "unknown recommender 'nope'; known: ease, multvae"),
        ("[explainers.fia]\nfixed = {top = 2}", "method 'fia' has no option 'top'"),
    ]:
        path = tmp_path / "plan.toml"
        path.write_text(text)
        assert message in refused(["run", "--plan", str(path), "--show-plan"], capsys), text
    with pytest.raises(InvalidParameterError, match="no method given"):
        make_plan(explainers={})


def test_the_flows_take_the_plan_and_prefect_shows_its_form() -> None:
    """Prefect's parameter schema of both flows has the plan's fields (its form in the UI), and
    a run crossing to ``lcer-explain`` has a real schema, not ``{"type": "object"}``."""
    from pydantic import TypeAdapter

    from flows.explain import lcer_explain
    from flows.pipeline import lcer_pipeline
    from flows.sweep import lcer_sweep

    for flow in (lcer_pipeline, lcer_sweep):
        schema = flow.parameters.model_dump()
        assert list(schema["properties"]) == ["plan", "explain_deployment"]
        plan = schema["definitions"]["Plan"]["properties"]
        assert set(Plan.model_fields) == set(plan) >= {"datasets", "explainers", "ks", "seeds"}
        assert schema["definitions"]["ExplainerPlan"]["properties"].keys() == {"fixed", "grid"}
    run = TypeAdapter(RunSpec).json_schema()
    assert {"run_id", "method", "k", "config", "model_key"} <= set(run["properties"])
    # what the server checks a deployment's parameters with: a plan, runs with their digests
    from prefect.utilities.schema_tools import ValidationError, validate

    from lcer_core.runs import run_spec

    spec = run_spec(dataset="ml-100k", method="lcer", k=5, seed=0, n_users=4, model_key="m")
    runs = [spec.to_payload(), spec.bound("a" * 64, "b" * 64).to_payload()]
    explain = lcer_explain.parameters.model_dump()
    validate({"specs": runs, "users": [1, 2]}, explain, raise_on_error=True)
    with pytest.raises(ValidationError, match="minimum of 1"):
        validate({"specs": [{**runs[0], "k": 0}], "users": [1]}, explain, raise_on_error=True)
    pipeline = lcer_pipeline.parameters.model_dump()
    plan = {"explainers": {"lcer": {"fixed": {"steps": 100}}, "fia": {}}, "ks": [5]}
    validate({"plan": plan}, pipeline, raise_on_error=True)
    with pytest.raises(ValidationError, match="colour"):
        validate({"plan": {"colour": 1}}, pipeline, raise_on_error=True)


def test_the_deployments_and_the_docs_hold_valid_plans() -> None:
    """prefect.yaml's ``plan`` parameters and docs/commands.md's TOML plan are plans; the
    sweep deployment's is the paper's grid (25 points)."""
    import re
    import tomllib

    import yaml

    repo = Path(__file__).resolve().parents[1]
    deployments = yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"]
    plans = {
        d["name"]: make_plan(d["parameters"]["plan"])
        for d in deployments
        if "plan" in d.get("parameters", {})
    }
    assert plans["lcer-pipeline"] == make_plan()
    assert plans["lcer-sweep"] == sweep_plan("ml-100k")
    assert len(plans["lcer-sweep"].runs("ml-100k", "m", 0)) == 25
    page = (repo / "docs" / "commands.md").read_text()
    [block] = re.findall(r"```toml\n(.*?)```", page, re.DOTALL)
    assert make_plan(tomllib.loads(block)).methods == ["lcer", "kaffes"]


def test_an_oversized_plan_is_refused_before_any_configuration(tmp_path: Path, capsys) -> None:
    """A plan file larger than a plan, or a grid whose combinations explode, is one line:
    the file is not read past its cap, the configurations are never built."""
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    assert "is larger than 1048576 bytes" in refused(
        ["run", "--plan", str(big), "--show-plan"], capsys
    )
    values = ",".join(str(0.001 * (i + 1)) for i in range(200))
    argv = ["run", "ml-100k", "--method", "lcer", "--grid", f"alpha={values}",
            "--grid", f"lam={values}", "--show-plan"]  # fmt: skip
    assert refused(argv, capsys) == (
        "error: the plan makes 80000 explanation runs, more than 10000: split it into smaller plans"
    )
