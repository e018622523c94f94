"""The settings: every environment variable parsed in one place, read afresh on each call, each
bad value one line (exit 2 from the command line), each documented once in docs/environment.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from dataset_fixtures import files_under, run_cli

from lcer_core import paths
from lcer_core.datasets.download import archive_limits, download_settings
from lcer_core.errors import InvalidParameterError
from lcer_core.remote import max_object_bytes, storage_url
from lcer_core.settings import Settings, markdown_table, render_into, settings

REPO = Path(__file__).resolve().parents[1]
NAMES = [f.validation_alias for f in Settings.model_fields.values()]
#: Variables that only the test harness reads (documented as such, never by the product).
HARNESS = {"LCER_FAULT_HOLD_WRITE", "LCER_FAULT_SLOW_SHARD", "LCER_FIGS_DIR"}


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# (variable, value, field, parsed) for values accepted as today.
GOOD: list[tuple[str, str, str, Any]] = [
    ("LCER_HOME", "/srv/lcer", "home", "/srv/lcer"),
    ("LCER_MIRROR", " file:///mirror/ ", "mirror", "file:///mirror"),
    ("LCER_MIRROR", "https://example.org/data", "mirror", "https://example.org/data"),
    (
        "MLFLOW_TRACKING_URI",
        "http://127.0.0.1:5000",
        "mlflow_tracking_uri",
        "http://127.0.0.1:5000",
    ),
    ("LCER_STORAGE", "s3://bucket/prefix//", "storage", "s3://bucket/prefix"),
    ("LCER_MAX_STORAGE_BYTES", " 1024 ", "max_storage_bytes", 1024),
    ("LCER_MAX_DOWNLOAD_BYTES", "1048576", "max_download_bytes", 1 << 20),
    ("LCER_MAX_MEMBER_BYTES", "1", "max_member_bytes", 1),
    ("LCER_DOWNLOAD_TIMEOUT", "0.5", "download_timeout", 0.5),
    ("LCER_DOWNLOAD_ATTEMPTS", "+5", "download_attempts", 5),
    ("LCER_DOWNLOAD_BACKOFF", "0", "download_backoff", 0.0),
    ("LCER_TASK_RUNNER", " ray ", "task_runner", "ray"),
    ("LCER_RAY_ADDRESS", " 10.0.0.1:6379 ", "ray_address", "10.0.0.1:6379"),
    ("LCER_RAY_NODE_GRACE_S", "2.5", "ray_node_grace_s", 2.5),
    ("LCER_REPO", "/srv/lcer-repo", "repo", "/srv/lcer-repo"),
]

# (variable, bad value, the message's expected form) for values refused as today.
BAD: list[tuple[str, str, str]] = [
    (
        "LCER_MIRROR",
        "ftp://example.org/data",
        "a URL that starts with http://, https:// or file://",
    ),
    ("LCER_MAX_STORAGE_BYTES", "4G", "a positive number of bytes"),
    ("LCER_MAX_DOWNLOAD_BYTES", "0", "a positive number of bytes"),
    ("LCER_MAX_MEMBER_BYTES", "-5", "a positive number of bytes"),
    ("LCER_DOWNLOAD_TIMEOUT", "soon", "a positive number of seconds"),
    ("LCER_DOWNLOAD_TIMEOUT", "nan", "a positive number of seconds"),
    ("LCER_DOWNLOAD_ATTEMPTS", "0", "an integer >= 1"),
    ("LCER_DOWNLOAD_ATTEMPTS", "2.5", "an integer >= 1"),
    ("LCER_DOWNLOAD_BACKOFF", "-1", "a number of seconds >= 0"),
    ("LCER_TASK_RUNNER", "dask", "threads or ray"),
    ("LCER_RAY_NODE_GRACE_S", "inf", "a positive number of seconds"),
    ("LCER_RAY_NODE_GRACE_S", "0", "a positive number of seconds"),
]


@pytest.mark.parametrize(("name", "value", "field", "parsed"), GOOD, ids=lambda v: str(v))
def test_each_variable_parses(
    clean_env: pytest.MonkeyPatch, name: str, value: str, field: str, parsed: Any
) -> None:
    default = getattr(settings(), field)
    clean_env.setenv(name, value)
    assert getattr(settings(), field) == parsed
    clean_env.setenv(name, "  ")  # blank: unset
    assert getattr(settings(), field) == default


@pytest.mark.parametrize(("name", "value", "form"), BAD, ids=lambda v: str(v))
def test_each_bad_value_is_one_line(
    clean_env: pytest.MonkeyPatch, name: str, value: str, form: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(InvalidParameterError) as err:
        settings()
    assert str(err.value) == f"{name} must be {form}, got {value!r}"


def test_read_afresh_and_by_the_call_sites(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No value is kept from import: each call site sees the environment of its call."""
    assert storage_url() is None and paths.mirror_base() is None
    assert (max_object_bytes(), archive_limits().member_bytes) == (4 << 30, 1 << 28)
    assert (
        paths.mlflow_tracking_uri() == f"sqlite:///{Path.cwd().resolve() / 'mlflow' / 'mlflow.db'}"
    )
    clean_env.setenv("LCER_HOME", str(tmp_path))
    clean_env.setenv("LCER_STORAGE", "file:///shared/")
    clean_env.setenv("LCER_MAX_STORAGE_BYTES", "2048")
    clean_env.setenv("LCER_MAX_MEMBER_BYTES", "4096")
    clean_env.setenv("LCER_DOWNLOAD_ATTEMPTS", "7")
    assert paths.lcer_home() == tmp_path.resolve()
    assert storage_url() == "file:///shared" and max_object_bytes() == 2048
    assert archive_limits().member_bytes == 4096 and download_settings().attempts == 7
    assert download_settings(attempts=2).attempts == 2  # an argument wins over the environment


def test_every_bad_value_in_one_line(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LCER_MAX_MEMBER_BYTES", "-5")
    clean_env.setenv("LCER_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(InvalidParameterError) as err:
        settings()
    assert str(err.value) == (
        "LCER_MAX_MEMBER_BYTES must be a positive number of bytes, got '-5'; "
        "LCER_DOWNLOAD_TIMEOUT must be a positive number of seconds, got 'soon'"
    )


def test_bad_value_through_the_cli_is_one_line_exit_2(
    lcer_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LCER_MAX_STORAGE_BYTES", "abc")
    code, out, err = run_cli(["settings"], capsys)
    message = "error: LCER_MAX_STORAGE_BYTES must be a positive number of bytes, got 'abc'\n"
    assert (code, out, err) == (2, "", message)
    monkeypatch.delenv("LCER_MAX_STORAGE_BYTES")
    monkeypatch.setenv("LCER_DOWNLOAD_ATTEMPTS", "many")
    code, out, err = run_cli(["prepare", "ml-100k"], capsys)
    message = "error: LCER_DOWNLOAD_ATTEMPTS must be an integer >= 1, got 'many'\n"
    assert (code, out, err) == (2, "", message)
    assert files_under(lcer_home) == []


def test_settings_command_prints_the_values_in_effect(
    lcer_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LCER_RAY_NODE_GRACE_S", "5")
    code, out, err = run_cli(["settings"], capsys)
    assert code == 0 and err == ""
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert list(lines) == NAMES
    assert lines["LCER_HOME"] == str(lcer_home)
    assert lines["LCER_RAY_NODE_GRACE_S"] == "5.0"
    assert lines["LCER_DOWNLOAD_ATTEMPTS"] == "3  (default)"


def test_environment_page_is_rendered_from_the_settings() -> None:
    """Each variable is documented once, from its field: the page's table is the rendered one,
    and every LCER_* the page names is a field (or a variable of the test harness)."""
    page = (REPO / "docs" / "environment.md").read_text()
    assert render_into(page) == page, "run: python -m lcer_core.settings docs/environment.md"
    assert all(f"| `{name}` |" in markdown_table() for name in NAMES)
    named = set(re.findall(r"\bLCER_[A-Z0-9_]+\b", page))
    assert named - HARNESS <= set(NAMES), named - HARNESS - set(NAMES)


def test_product_code_names_only_declared_variables() -> None:
    """Every LCER_* variable that the product names is a field of the settings (one place)."""
    named = {
        f"{path.relative_to(REPO)}: {name}"
        for part in ("lcer_core", "flows", "tasks")
        for path in (REPO / part).rglob("*.py")
        for name in re.findall(r"\bLCER_[A-Z0-9_]+\b", path.read_text())
        if name not in NAMES
    }
    assert named == set()
