"""Fixture writers for the dataset tests: raw archives in exactly the published formats,
an independent reference of the filtering, a misbehaving HTTP server, and a CLI runner."""

from __future__ import annotations

import bz2
import http.server
import io
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from lcer_core.cli import main

Rating = tuple[int, int, float]


# --------------------------------------------------------------------------- the CLI


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``lcer ARGV`` in-process; (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (empty if it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------- synthetic ratings


def synthetic_ratings(
    n_users: int = 60, n_items: int = 40, seed: int = 0, raw_offset: int = 1
) -> list[Rating]:
    """Ratings 1-5 for ``n_users`` users, 3-20 each, with a few users left under 5 positives."""
    rng = np.random.RandomState(seed)
    out: list[Rating] = []
    for u in range(n_users):
        k = int(rng.randint(3, 21))
        items = rng.choice(n_items, size=k, replace=False)
        for i in items:
            out.append((u * 7 + raw_offset, int(i) * 3 + 10, float(rng.randint(1, 6))))
    return out


def reference_table1(
    ratings: Sequence[Rating], threshold: float | None = 3.5, min_user: int = 5
) -> dict:
    """Table 1 statistics by plain Python, independent of the package's polars code."""
    seen: set[tuple[int, int]] = set()
    kept: list[tuple[int, int]] = []
    for u, i, r in ratings:
        if (threshold is None or r > threshold) and (u, i) not in seen:
            seen.add((u, i))
            kept.append((u, i))
    per_user: dict[int, int] = {}
    for u, _ in kept:
        per_user[u] = per_user.get(u, 0) + 1
    kept = [(u, i) for u, i in kept if per_user[u] >= min_user]
    users = {u for u, _ in kept}
    items = {i for _, i in kept}
    return {
        "users": len(users),
        "items": len(items),
        "interactions": len(kept),
        "density_pct": 100.0 * len(kept) / (len(users) * len(items)) if kept else 0.0,
        "kept": kept,
    }


# --------------------------------------------------------------------------- archives


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def ml100k_members(shared: Path) -> dict[str, bytes]:
    """The files of the mirror's ml-100k.zip, by member path."""
    with zipfile.ZipFile(shared / "ml-100k.zip") as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


def write_ml1m(
    folder: Path,
    ratings: Sequence[Rating],
    movies: dict[int, tuple[str, str]],
    bad_line: int | None = None,
) -> Path:
    """``ml-1m.zip``: ``ml-1m/ratings.dat`` (``::``) and ``ml-1m/movies.dat`` (Latin-1)."""
    lines = [f"{u}::{i}::{int(r)}::{978300760 + n}" for n, (u, i, r) in enumerate(ratings)]
    if bad_line is not None:
        lines[bad_line - 1] = "42::1193::five::978300760"
    movie_lines = [f"{i}::{title}::{genres}" for i, (title, genres) in sorted(movies.items())]
    return write_zip(
        folder / "ml-1m.zip",
        {
            "ml-1m/ratings.dat": ("\n".join(lines) + "\n").encode(),
            "ml-1m/movies.dat": ("\n".join(movie_lines) + "\n").encode("latin-1"),
            "ml-1m/README": b"fixture",
        },
    )


def write_epinions(folder: Path, ratings: Sequence[Rating]) -> Path:
    """``ratings_data.txt.bz2``: ``user item rating`` separated by one space, no header."""
    text = "".join(f"{u} {i} {int(r)}\n" for u, i, r in ratings)
    path = folder / "ratings_data.txt.bz2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(text.encode()))
    return path


def write_alishop(
    folder: Path,
    parts: dict[str, list[tuple[int, int]]],
    raw_items: list[str],
    cate: dict[str, str],
) -> Path:
    """``alishop-7c.zip`` in the Mult-VAE layout (files under ``alishop-7c/``)."""
    names = {
        "train": "train.csv",
        "val_tr": "validation_tr.csv",
        "val_te": "validation_te.csv",
        "test_tr": "test_tr.csv",
        "test_te": "test_te.csv",
    }
    members = {
        f"alishop-7c/{fname}": ("uid,sid\n" + "".join(f"{u},{s}\n" for u, s in parts[p])).encode()
        for p, fname in names.items()
    }
    members["alishop-7c/unique_sid.txt"] = ("\n".join(raw_items) + "\n").encode()
    members["alishop-7c/item_cate.csv"] = "".join(f"{k},{v}\n" for k, v in cate.items()).encode()
    return write_zip(folder / "alishop-7c.zip", members)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bz2_garbage() -> bytes:
    good = bz2.compress(b"1 2 5\n" * 1000)
    return good[: len(good) - 20]


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------- a misbehaving server


class FaultyServer:
    """A loopback HTTP server whose answers follow a plan: one behaviour per request.

    Behaviours: ``ok``, ``404``, ``500``, ``close`` (closes the connection half-way
    through the body), ``slow`` (waits ``delay`` s before answering). After the plan runs
    out, ``default`` applies.
    """

    def __init__(
        self,
        files: dict[str, bytes],
        plan: Sequence[str] = (),
        default: str = "ok",
        delay: float = 2.0,
    ):
        self.files = files
        self.plan = list(plan)
        self.default = default
        self.delay = delay
        self.hits: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                with outer._lock:
                    outer.hits.append(self.path)
                    behaviour = outer.plan.pop(0) if outer.plan else outer.default
                data = outer.files.get(self.path.lstrip("/"))
                try:
                    if behaviour == "slow":
                        time.sleep(outer.delay)
                    if behaviour == "404" or data is None:
                        self._answer(404, b"not found")
                    elif behaviour == "500":
                        self._answer(500, b"oops")
                    elif behaviour == "close":
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                    else:
                        self._answer(200, data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def closed_port_url() -> Iterator[str]:
    """A loopback URL on which nothing listens (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"http://127.0.0.1:{port}"
