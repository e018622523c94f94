"""Every environment variable that lcer reads, each declared once: its type, default, accepted
form and meaning (one field of :class:`Settings`).

:func:`settings` reads the environment afresh on each call (the command line and the tests set
variables at run time): nothing is kept from import, and a validated object is reused only for
the very same values. A blank value means unset. A bad value
is one :class:`~lcer_core.errors.InvalidParameterError` line that names the variable and the
form it accepts (``LCER_MAX_STORAGE_BYTES must be a positive number of bytes, got '4G'``),
all bad values of the environment in that one line. ``docs/environment.md`` holds the table
:func:`markdown_table` renders (``python -m lcer_core.settings docs/environment.md``
rewrites it; a test checks it).

To add a variable: one field with its ``validation_alias`` (the variable's name), a type
below (or a new one with its :class:`Form`), a default and a one-line ``description``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lcer_core.errors import InvalidParameterError

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_STORAGE_BYTES",
    "Settings",
    "settings",
    "markdown_table",
    "render_into",
]

#: Default cap of one download (the archive as fetched): 1 GiB.
MAX_DOWNLOAD_BYTES = 1 << 30
#: Default cap of one member read out of an archive (uncompressed): 256 MiB.
MAX_MEMBER_BYTES = 1 << 28
#: Default cap of one object read from the storage URL: 4 GiB (far above an Epinions-shaped
#: checkpoint, 0.56 GB, and far below the machine).
MAX_STORAGE_BYTES = 4 << 30


class Form(str):
    """What a type accepts, in words: the end of ``VAR must be ...`` and the docs' column."""


def _parse(parse: Callable[[str], Any]) -> BeforeValidator:
    """Strip a string from the environment and parse it (a ``ValueError`` is a bad value)."""
    return BeforeValidator(lambda v: parse(v.strip()) if isinstance(v, str) else v)


def _digits(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _url(text: str) -> str | None:
    return text.rstrip("/") or None


def _mirror(text: str) -> str | None:
    url = _url(text)
    if url is not None and not url.startswith(("http://", "https://", "file://")):
        raise ValueError(url)
    return url


#: A byte count: ASCII digits, at least 1 (no unit: ``4G`` is refused).
Bytes = Annotated[int, _parse(_digits), Field(ge=1), Form("a positive number of bytes")]
#: Seconds for a time-out: a positive number (Python's float syntax; ``inf`` waits forever).
Seconds = Annotated[float, _parse(float), Field(gt=0), Form("a positive number of seconds")]
#: Seconds of a back-off: zero or more.
Delay = Annotated[float, _parse(float), Field(ge=0), Form("a number of seconds >= 0")]
#: A finite positive number of seconds.
Grace = Annotated[
    float, _parse(float), Field(gt=0, allow_inf_nan=False), Form("a positive number of seconds")
]
#: A count of tries: an integer >= 1.
Count = Annotated[int, _parse(int), Field(ge=1), Form("an integer >= 1")]
#: A URL or folder as given, surrounding blanks and trailing slashes removed.
Url = Annotated[str | None, _parse(_url), Form("a URL")]
#: A dataset mirror: an ``http://``, ``https://`` or ``file://`` URL.
MirrorUrl = Annotated[
    str | None, _parse(_mirror), Form("a URL that starts with http://, https:// or file://")
]
#: Text as given.
Text = Annotated[str | None, Form("text")]
#: Text with surrounding blanks removed.
Word = Annotated[str | None, _parse(lambda s: s or None), Form("text")]
#: A fraction of one GPU: more than 0, at most 1.
GpuFraction = Annotated[
    float,
    _parse(float),
    Field(gt=0, le=1, allow_inf_nan=False),
    Form("a fraction of one GPU in (0, 1]"),
]
#: Where the recommender trains.
TrainOn = Annotated[
    Literal["auto", "gpu", "here"], _parse(lambda s: s or "auto"), Form("auto, gpu or here")
]
#: The task runner of deployed flows.
Runner = Annotated[Literal["threads", "ray"], _parse(str), Form("threads or ray")]


class Settings(BaseSettings):
    """The environment as lcer reads it. ``MLFLOW_TRACKING_URI`` is MLflow's own (read here for
    the default); every other field is ours (``LCER_*``)."""

    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore")

    home: Text = Field(
        None,
        validation_alias="LCER_HOME",
        description="the root of all state (unset: the current folder): holds `data/`, "
        "`models/`, `results/lcer.duckdb`, `mlflow/`, `work/`, `prefect-home/`, `logs/`",
    )
    mirror: MirrorUrl = Field(
        None,
        validation_alias="LCER_MIRROR",
        description="base URL under which dataset archives are found by file name "
        "(unset: the official hosts)",
    )
    mlflow_tracking_uri: Text = Field(
        None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLflow's own: the tracking store "
        "(unset: `sqlite:///$LCER_HOME/mlflow/mlflow.db`)",
    )
    storage: Url = Field(
        None,
        validation_alias="LCER_STORAGE",
        description="fsspec URL shared with workers on other machines (`file:///shared/lcer`, "
        "`s3://bucket/prefix`): the model, data and shard files of explanations on another "
        "pool travel through it",
    )
    storage_options: Text = Field(
        None,
        validation_alias="LCER_STORAGE_OPTIONS",
        description="a JSON object of fsspec storage options for `LCER_STORAGE` (e.g. "
        '`{"endpoint_url": "http://minio:9000"}`); unset: credentials and endpoint come from '
        "the back end's usual environment (`AWS_*` for S3, `GOOGLE_APPLICATION_CREDENTIALS` "
        "for GCS); see [cluster.md](cluster.md#storage)",
    )
    max_storage_bytes: Bytes = Field(
        MAX_STORAGE_BYTES,
        validation_alias="LCER_MAX_STORAGE_BYTES",
        description="the largest object read back from `LCER_STORAGE` (a model, a data part, a "
        "shard file) and the most a Parquet object received decodes to; larger is refused, unread",
    )
    max_download_bytes: Bytes = Field(
        MAX_DOWNLOAD_BYTES,
        validation_alias="LCER_MAX_DOWNLOAD_BYTES",
        description="cap of one dataset download; see [security.md](security.md)",
    )
    max_member_bytes: Bytes = Field(
        MAX_MEMBER_BYTES,
        validation_alias="LCER_MAX_MEMBER_BYTES",
        description="cap of one member read out of an archive (all members of one archive "
        "together: twice this); see [security.md](security.md)",
    )
    download_timeout: Seconds = Field(
        60.0,
        validation_alias="LCER_DOWNLOAD_TIMEOUT",
        description="download time-out per connect or read",
    )
    download_attempts: Count = Field(
        3, validation_alias="LCER_DOWNLOAD_ATTEMPTS", description="tries of one download"
    )
    download_backoff: Delay = Field(
        1.0,
        validation_alias="LCER_DOWNLOAD_BACKOFF",
        description="wait before the first retry of a download, doubled each time",
    )
    task_runner: Runner = Field(
        "threads",
        validation_alias="LCER_TASK_RUNNER",
        description="the task runner of deployed flows",
    )
    ray_address: Word = Field(
        None,
        validation_alias="LCER_RAY_ADDRESS",
        description="the Ray cluster of deployed flows with `LCER_TASK_RUNNER=ray` "
        "(unset: a local one)",
    )
    ray_node_grace_s: Grace = Field(
        60.0,
        validation_alias="LCER_RAY_NODE_GRACE_S",
        description="on Ray, how long a shard may wait with no live node that has what it asks "
        "for (its GPU node died) before the run gives it up",
    )
    ray_gpus_per_shard: GpuFraction = Field(
        1.0,
        validation_alias="LCER_RAY_GPUS_PER_SHARD",
        description="on Ray, the fraction of one GPU each explanation task asks for when the "
        "cluster has GPUs (1: a whole GPU and a fresh worker per shard; `0.5`: two shards "
        "share a GPU in long-lived workers); see [cluster.md](cluster.md)",
    )
    train_on: TrainOn = Field(
        "auto",
        validation_alias="LCER_TRAIN_ON",
        description="where the recommender trains: `auto` (a GPU worker of the Ray cluster "
        "when it has one, else where the flow runs), `gpu` (a GPU worker, else one line) or "
        "`here`",
    )
    git_url: Word = Field(
        None,
        validation_alias="LCER_GIT_URL",
        description="read by `prefect deploy` only (`flows/deploy.py`): the repository every "
        "flow run clones the deployed commit from (unset: the checkout's `origin`, else its "
        "path); see [cluster.md](cluster.md)",
    )
    repo: Text = Field(
        None,
        validation_alias="LCER_REPO",
        description="read by no command (deployments clone the deployed commit, see "
        "`LCER_GIT_URL`), but a deployed flow refuses to run if it or `LCER_HOME` holds an "
        "unexpanded `{{ $VAR }}`",
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data


def _form(field: Any) -> str:
    return next((m for m in field.metadata if isinstance(m, Form)), "valid")


def _fields() -> dict[str, Any]:
    """Each field by its variable's name."""
    return {f.validation_alias: f for f in Settings.model_fields.values()}


def settings() -> Settings:
    """The settings of the current environment, read now; one line naming every bad value."""
    return _settings(tuple(os.environ.get(name) for name in _NAMES))


@functools.lru_cache(maxsize=16)
def _settings(values: tuple[str | None, ...]) -> Settings:
    """The settings of these values of :data:`_NAMES` (validation costs about a millisecond,
    and paths are asked for often: built once per distinct environment)."""
    given = {name: value for name, value in zip(_NAMES, values, strict=True) if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        fields, bad = _fields(), {}
        for error in exc.errors():
            name = str(error["loc"][0])
            raw = given.get(name, "").strip()
            bad.setdefault(name, f"{name} must be {_form(fields[name])}, got {raw!r}")
        raise InvalidParameterError("; ".join(bad.values())) from None


_NAMES = tuple(_fields())


# ------------------------------------------------------------------ documentation


def _shown(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, int) and default >= 1 << 20 and default % (1 << 20) == 0:
        mib = default >> 20
        return f"{default} ({mib >> 10} GiB)" if mib % 1024 == 0 else f"{default} ({mib} MiB)"
    return f"`{default}`"


def markdown_table() -> str:
    """The table of every variable, as ``docs/environment.md`` holds it."""
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for name, field in _fields().items():
        rows.append(
            f"| `{name}` | {_shown(field.default)} | {_form(field)} | {field.description} |"
        )
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- settings table: begin -->\n", "<!-- settings table: end -->\n"


def render_into(text: str) -> str:
    """``text`` (a Markdown page) with the table between :data:`BEGIN` and :data:`END` renewed."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}{markdown_table()}{END}{tail}"


if __name__ == "__main__":  # python -m lcer_core.settings docs/environment.md
    page = Path(sys.argv[1])
    page.write_text(render_into(page.read_text()))
