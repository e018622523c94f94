"""`lcer report DATASET --html FILE`: one self-contained page, hostile titles escaped, rendered
offline by headless Chromium with no request leaving the machine.

Set ``LCER_FIGS_DIR`` to keep the screenshot (``LCER_FIGS_DIR=/tmp/figs``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import matplotlib.image
import numpy as np
import polars as pl
import pytest
from browser import render, require_chromium
from dataset_fixtures import run_cli
from markupsafe import escape
from test_store import T0, write

from lcer_core.store import ResultStore

HOSTILE = '<script>alert("x")</script> & <img src="https://evil.example/p.png">'
STATS = {
    "dataset": "ml-100k",
    "users": 938,
    "items": 1447,
    "interactions": 55361,
    "density_pct": 4.079,
}


@pytest.fixture()
def results_home(lcer_home: Path) -> Path:
    """Stored runs of ML 100K at K = 5 and 10, a 2 x 2 LCER grid at K = 5, items with titles (one hostile)."""
    sids = list(range(130))
    items = pl.DataFrame(
        {
            "sid": sids,
            "raw_id": [str(s + 1) for s in sids],
            "title": [HOSTILE if s == 101 else f"Film {s} (19{s % 100:02d})" for s in sids],
            "popularity": [1 + (s * 7) % 41 for s in sids],
        }
    )
    with ResultStore() as store:
        store.upsert_dataset(STATS, items)
        for a in (0.1, 0.5):
            for lam in (0.01, 1.0):
                write(store, method="lcer", alpha=a, lam=lam, finished_at=T0 - timedelta(hours=1),
                      metrics={"len": 3.0 - lam - a, "fns_pct": 50.0 + 20 * a + 5 * lam})  # fmt: skip
        for k in (5, 10):
            for method in ("fia", "accent", "lcer"):
                write(store, method=method, k=k, metrics={"fns_pct": 12.34 + k})
    return lcer_home


def _netlog_urls(path: Path) -> set[str]:
    """Every URL a request was made for, from Chromium's ``--log-net-log`` file."""
    text = path.read_text().rstrip()
    if not text.endswith("}"):  # a log cut short: close its event list
        text = text.rstrip(",") + "]}"
    events = json.loads(text)["events"]
    return {e["params"]["url"] for e in events if "url" in e.get("params", {})}


#: Where Chromium itself calls home (time, check-in, spelling dictionaries), whatever the page.
_CHROMIUM_SERVICES = ("google.com", "gvt1.com", "googleapis.com", "gstatic.com")


def _chromium_service(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return any(host == d or host.endswith("." + d) for d in _CHROMIUM_SERVICES)


def _images(page: str) -> list[bytes]:
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    return [base64.b64decode(s.split(",", 1)[1]) for s in srcs]


def test_html_report_is_self_contained_and_escapes_titles(
    results_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, plain_out, _ = run_cli(["report", "ml-100k"], capsys)
    assert code == 0
    out_file = tmp_path / "report.html"
    code, out, err = run_cli(["report", "ml-100k", "--html", str(out_file)], capsys)
    assert code == 0, err
    assert out == plain_out  # the tables on stdout are unchanged
    page = out_file.read_text()
    # Nothing to fetch: no URL, no script, no stylesheet link; figures are inline PNGs.
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    text = text.replace(str(escape(HOSTILE)), "")  # the title, shown as text
    assert "http" not in text.lower() and "//" not in text and "url(" not in text
    assert "<script" not in page and "<link" not in page
    pngs = _images(page)
    assert len(pngs) == 6  # Figures 5, 6, 7, 8, 9 and the Pareto front
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5000 for p in pngs)
    # The hostile title is shown as text, escaped.
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;img" in page
    # Table 2 beside the paper (ours 17.34 at K = 5, the paper's 58.34), Table 3, examples.
    assert "17.34" in page and "58.34" in page and "22.34" in page
    assert 'id="table2-k5"' in page and 'id="table2-k10"' in page and 'id="table3"' in page
    assert page.count("<h3>User u") == 3
    assert "If you had not watched Film " in page and "would not be recommended to you" in page


def test_html_report_refusals_are_one_line(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["report", "ml-100k", "--no-train", "--html", str(tmp_path / "r.html")], capsys
    )
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "no finished runs for dataset 'ml-100k'" in err
    assert not (tmp_path / "r.html").exists()


def test_html_report_to_an_unwritable_place_is_one_line(
    results_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no" / "such" / "dir" / "r.html"
    code, out, err = run_cli(["report", "ml-100k", "--html", str(target)], capsys)
    assert (
        code == 2
        and out == ""
        and err.startswith("error: cannot write ")
        and len(err.splitlines()) == 1
    )


@pytest.mark.slow
def test_html_report_renders_offline_in_headless_chromium(
    results_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_chromium()
    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", "ml-100k", "--html", str(page)], capsys)
    assert code == 0, err
    # A test copy reports each image's natural size into the DOM once the page has loaded.
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => { document.body.dataset.sizes ="
            " JSON.stringify([...document.images].map(i => [i.naturalWidth, i.naturalHeight]));"
            " });</script></body>",
        )
    )
    shot, netlog = tmp_path / "report.png", tmp_path / "netlog.json"
    dom = render(
        probe.as_uri(),
        profile=tmp_path / "profile",
        screenshot=shot,
        window=(1300, 1800),
        budget_ms=10000,
        timeout=180,
        extra=["--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}"],
    )
    sizes = json.loads(re.search(r'data-sizes="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert len(sizes) == 6 and all(w > 300 and h > 200 for w, h in sizes), sizes
    for number in ("17.34", "58.34", "22.34", "80.00"):
        assert number in dom, number
    assert "<script>alert" not in dom.split("<script>window")[0]  # the hostile title stayed text
    # Only the page itself was loaded: no http(s), no DNS lookup.
    # The page asked for nothing: the only requests in the net log are Chromium's own calls
    # home (refused by the resolver rule), none from the page or its hostile title.
    requested = _netlog_urls(netlog)
    page_requests = {u for u in requested if not _chromium_service(u)}
    assert page_requests == set(), page_requests
    assert not any("evil.example" in u for u in requested)
    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 1000 and float(np.std(img[..., :3])) > 0.05
    if os.environ.get("LCER_FIGS_DIR"):
        Path(os.environ["LCER_FIGS_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["LCER_FIGS_DIR"]) / "report.png")
