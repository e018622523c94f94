"""Run a command under a pseudo-terminal and read back what a person would see on it (pyte)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from dataclasses import dataclass

import pyte


@dataclass
class Screen:
    """What the terminal showed: its lines (scrolled-off ones included), the raw bytes, the status."""

    lines: list[str]
    raw: bytes
    returncode: int
    columns: int

    def logical_lines(self) -> list[str]:
        """The lines as printed: a row filled to the last column continues on the next one."""
        out: list[str] = []
        joining = False
        for row in self.lines:
            if joining:
                out[-1] += row
            else:
                out.append(row)
            joining = len(row) == self.columns
        return out


def run_in_pty(
    argv: list[str], env: dict[str, str], cwd: str, *, timeout: float, columns: int = 160
) -> Screen:
    """Run ``argv`` with stdout and stderr on a new pseudo-terminal of ``columns`` x 50; its screen."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "50"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, start_new_session=True
    )
    os.close(slave)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise TimeoutError(f"{argv} still running after {timeout} s:\n{_tail(raw)}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                raw += chunk
            elif proc.poll() is not None:
                # Drain what is left, then stop.
                while select.select([master], [], [], 0.2)[0]:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        break
                    raw += chunk
                break
        code = proc.wait(30)
    finally:
        os.close(master)
    screen = pyte.HistoryScreen(columns, 50, history=10_000)
    stream = pyte.ByteStream(screen)
    stream.feed(bytes(raw).replace(b"\n", b"\r\n") if b"\r\n" not in raw else bytes(raw))
    history = ["".join(ch.data for ch in row.values()) for row in screen.history.top]
    lines = [line.rstrip() for line in history + list(screen.display)]
    while lines and not lines[-1]:
        lines.pop()
    return Screen(lines, bytes(raw), code, columns)


def _tail(raw: bytearray) -> str:
    return bytes(raw[-3000:]).decode("utf-8", "replace")
