"""A markdown page of qualitative examples, like Figure 4 of the paper.

Each example is one recommended item with its genres and, per method, its counterfactual
explanation: the removed items with their genres, or "no CE". Genres the CE item shares
with the recommended item are set in bold, which is how the paper reads such tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lcer_core.errors import DataFormatError

__all__ = ["METHOD_LABELS", "render_examples"]

#: How methods are named in the page (as in the paper); other names are shown as given.
METHOD_LABELS = {
    "lcer": "LCER",
    "kaffes": "KaffesCE",
    "kaffes-topk": "KaffesCE (top-K test)",
    "accent": "Accent",
    "fia": "FIA",
}

_ESCAPES = str.maketrans({c: "\\" + c for c in "\\|*_`[]<>#"})


def _md(text: Any) -> str:
    """Text safe inside a markdown table cell or heading."""
    return " ".join(str(text).split()).translate(_ESCAPES)


def _genres(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.replace("/", "|").split("|")
        return [p.strip() for p in parts if p.strip()]
    return [str(g) for g in value]


def _genre_cell(genres: list[str], shared_with: set[str]) -> str:
    if not genres:
        return "–"
    return " / ".join(f"**{_md(g)}**" if g in shared_with else _md(g) for g in genres)


def render_examples(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str = "Qualitative examples of counterfactual explanations",
    max_items: int = 10,
) -> str:
    """Markdown page: one section per recommended item, one table row per CE item of each method.

    Each row is ``{"title": str, "genres": list[str] | "A|B", "ces": {method: [{"title",
    "genres"}, ...] | [] | None}}``, optionally with ``"user"``, ``"rank"`` and ``"k"``.
    An empty or missing CE reads "no CE"; a CE longer than ``max_items`` is cut with a
    note of its full length, as in the paper.
    """
    lines = [f"# {_md(title)}", ""]
    if not rows:
        lines += ["No examples.", ""]
        return "\n".join(lines)
    for n, row in enumerate(rows, start=1):
        if "title" not in row or "ces" not in row:
            raise DataFormatError(f"example {n} needs 'title' and 'ces', has {sorted(row)}")
        rec_genres = _genres(row.get("genres"))
        shared = set(rec_genres)
        heading = f"## Example {n}: {_md(row['title'])}"
        lines += [heading, ""]
        line = (
            f"Recommended item: **{_md(row['title'])}** — genres: {_genre_cell(rec_genres, set())}"
        )
        if row.get("user") is not None:
            line += f" — user {_md(row['user'])}"
        if row.get("rank") is not None:
            k = f" of the top-{row['k']}" if row.get("k") is not None else ""
            line += f", rank {_md(row['rank'])}{k}"
        lines.append(line)
        lines += ["", "| Method | Counterfactual explanation | Genres |", "|---|---|---|"]
        for method, ce in row["ces"].items():
            label = _md(METHOD_LABELS.get(str(method), method))
            items = list(ce or [])
            if not items:
                lines.append(f"| {label} | no CE | – |")
                continue
            shown = items[:max_items]
            for i, item in enumerate(shown):
                name = (
                    item.get("title", item.get("sid", "?")) if isinstance(item, Mapping) else item
                )
                genres = _genres(item.get("genres")) if isinstance(item, Mapping) else []
                lines.append(
                    f"| {label if i == 0 else ''} | {_md(name)} | {_genre_cell(genres, shared)} |"
                )
            if len(items) > max_items:
                lines.append(f"|  | … ({len(items)} items in total) |  |")
        lines.append("")
    lines.append(
        'Genres shared with the recommended item are in **bold**; "no CE" means the method '
        "found no set whose removal drops the item from the top-K."
    )
    lines.append("")
    return "\n".join(lines)
