"""Progress of a long job: a redrawn bar on a terminal, plain periodic lines in logs and pipes.

    progress = Progress("migrate", total_files=120, total_bytes=3 << 30)
    progress.add(files=1, nbytes=4096)     # from any thread
    progress.close()                       # final line; also usable as a context manager

`set(files_done=..., bytes_done=...)` takes absolute figures instead (a flush that counts what
is left can pass total - left). Rates are over the last few seconds, not the whole run.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import TextIO

BAR_WIDTH = 24
TTY_INTERVAL = 0.1      # seconds between redraws of the bar
PLAIN_INTERVAL = 5.0    # seconds between plain lines
RATE_WINDOW = 5.0       # seconds of history the rate is measured over


def format_size(n: float) -> str:
    """Bytes in binary units, one decimal: 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '2h10m'."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Files and bytes done out of a total, with the rate; thread-safe, draws at most every interval."""

    def __init__(self, label: str, total_files: int | None = None, total_bytes: int | None = None,
                 stream: TextIO | None = None, tty: bool | None = None, interval: float | None = None) -> None:
        self.label = label
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (TTY_INTERVAL if self.tty else PLAIN_INTERVAL)
        self.files_done = 0
        self.bytes_done = 0
        self._lock = threading.Lock()  # protects the counts, the samples and the last draw (worker threads report)
        self._start = time.monotonic()
        self._last_draw = self._start
        self._samples: deque[tuple[float, int]] = deque([(self._start, 0)])
        self._width = 0
        self._closed = False

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        """Count work just done."""
        with self._lock:
            self.files_done += files
            self.bytes_done += nbytes
            self._maybe_draw()

    def set(self, files_done: int | None = None, bytes_done: int | None = None) -> None:
        """Absolute figures, for callers that count what is left rather than what is done."""
        with self._lock:
            if files_done is not None:
                self.files_done = files_done
            if bytes_done is not None:
                self.bytes_done = bytes_done
            self._maybe_draw()

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW seconds (over the whole run once closed)."""
        now = time.monotonic()
        t0, b0 = (self._start, 0) if self._closed else self._samples[0]
        return (self.bytes_done - b0) / (now - t0) if now > t0 else 0.0

    def line(self) -> str:
        """The current state in words: '12/30 files, 1.2 MiB/3.0 MiB, 5.1 MiB/s, 4s left'."""
        files = f"{self.files_done}/{self.total_files}" if self.total_files is not None else str(self.files_done)
        nbytes = format_size(self.bytes_done)
        if self.total_bytes is not None:
            nbytes += "/" + format_size(self.total_bytes)
        rate = self.rate()
        text = f"{files} files, {nbytes}, {format_size(rate)}/s"
        if rate > 0 and self.total_bytes is not None and self.total_bytes > self.bytes_done:
            text += f", {format_duration((self.total_bytes - self.bytes_done) / rate)} left"
        return text

    def _fraction(self) -> float | None:
        if self.total_bytes:
            return min(1.0, self.bytes_done / self.total_bytes)
        if self.total_files:
            return min(1.0, self.files_done / self.total_files)
        return None

    def _maybe_draw(self, force: bool = False) -> None:
        now = time.monotonic()
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW:
            self._samples.popleft()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        if self.tty:
            frac = self._fraction()
            bar = ""
            if frac is not None:
                filled = int(frac * BAR_WIDTH)
                bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {frac * 100:3.0f}% "
            text = f"{self.label}: {bar}{self.line()}"
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + pad)
        else:
            self.stream.write(f"{self.label}: {self.line()}\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (and end the bar's line)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._maybe_draw(force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
