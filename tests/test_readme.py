"""The README's commands: the two first commands, every `lcer` line of the tour parsed by the
real command line, the cheap ones run for real (explain one user, SQL, report), and every
link of the README and of docs/ pointing at a file that exists."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from dataset_fixtures import run_cli
from test_report_html import results_home  # noqa: F401  (stored runs of ML 100K)

from lcer_core.cli.app import build_app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def bash_lines() -> list[str]:
    """Every command line of the README's ```bash blocks, in order (comments dropped)."""
    return [
        line.split("  #")[0].strip()
        for lang, text in BLOCK.findall(README.read_text())
        if lang == "bash"
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def tour(command: str) -> list[str]:
    """The README's ``lcer COMMAND ...`` lines, as argv without ``lcer``."""
    return [shlex.split(line)[1:] for line in bash_lines() if line.startswith(f"lcer {command} ")]


def test_the_readme_starts_with_the_two_commands() -> None:
    first = BLOCK.search(README.read_text())
    assert first is not None and first[1] == "bash"
    lines = [line.split("#")[0].strip() for line in first[2].splitlines()]
    assert lines == ["bash scripts/run", "bash scripts/test"]
    assert (REPO / "scripts" / "run").is_file() and (REPO / "scripts" / "test").is_file()


def test_every_tour_command_parses() -> None:
    """Each `lcer` line names a command and only options that command has."""
    group = typer.main.get_command(build_app())
    commands = getattr(group, "commands", {})
    lines = [shlex.split(line) for line in bash_lines() if line.startswith("lcer ")]
    assert {argv[1] for argv in lines} >= {"run", "report", "explain", "sql", "ui"}
    for argv in lines:
        command = commands.get(argv[1])
        assert command is not None, f"unknown command in README: {argv}"
        known = {opt for param in command.params for opt in param.opts}
        flags = {arg for arg in argv[2:] if arg.startswith("-")}
        assert flags <= known, f"{argv}: unknown options {sorted(flags - known)}"
        context = command.make_context("lcer", list(argv[2:]), resilient_parsing=True)
        context.close()


@pytest.mark.parametrize("page", [README, *sorted((REPO / "docs").glob("*.md"))], ids=str)
def test_every_relative_link_is_a_file(page: Path) -> None:
    targets = [m[1] for m in LINK.finditer(page.read_text()) if "://" not in m[1]]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_the_tour_explains_user_196(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    monkeypatch.setenv("LCER_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (argv,) = tour("explain")
    code, out, err = run_cli([*argv, "--no-train"], capsys)
    assert code == 0, err
    assert out.startswith("User 196 of ml-100k, top-5 by Mult-VAE, explained by lcer:")


def test_the_tour_reads_the_results(
    results_home: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    monkeypatch.chdir(tmp_path)
    (sql,) = tour("sql")
    code, out, err = run_cli(sql, capsys)
    assert code == 0, err
    assert "fia" in out and "lcer" in out
    for argv in tour("report"):
        code, out, err = run_cli([*argv, "--no-train"], capsys)
        assert code == 0, f"{argv}: {err}"
        assert "lcer" in out and "fia" in out, argv
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_the_tours_plan_is_the_plan_it_shows(capsys) -> None:
    """The README's ``--show-plan`` line prints the plan it would run: the grid and the option
    set by the generic flags reach the method's entry."""
    import json

    (argv,) = [a for a in tour("run") if "--show-plan" in a]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["datasets"] == ["ml-100k"] and plan["ks"] == [5] and plan["n_users"] == 5
    assert plan["explainers"]["lcer"]["fixed"]["steps"] == 300
    assert plan["explainers"]["lcer"]["grid"]["lam"] == [0.01, 0.05]
