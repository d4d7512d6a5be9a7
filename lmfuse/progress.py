"""Progress reports that read well both on a terminal and in a log file.

On a terminal, `progress_bar` is a tqdm bar, as ever. Anywhere else (stderr a pipe or a file:
a batch job, `nohup`, a notebook's subprocess) tqdm's carriage-return redraws pile up unseen
until the end, so it prints instead one plain line every `LMFUSE_PROGRESS_SECONDS` seconds
(default 10; 0 prints one per update) and a final one, each flushed to stderr at once:

    translate: 640/1000 (64%), 12.3 verse/s, elapsed 00:52, ETA 00:29
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from tqdm import tqdm

SECONDS_VARIABLE = "LMFUSE_PROGRESS_SECONDS"
DEFAULT_SECONDS = 10.0


def progress_bar(
    total: int | None = None,
    *,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    file: IO[str] | None = None,
    **tqdm_options: Any,
) -> tqdm | PlainProgress:
    """A tqdm bar on a terminal, else a `PlainProgress`; both take `update(n)`,
    `set_postfix(**values)` and `close()`, and are context managers. `tqdm_options`
    (e.g. dynamic_ncols) go to the bar only."""
    stream = sys.stderr if file is None else file
    if disable or _is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                    file=stream, **tqdm_options)
    return PlainProgress(total, desc=desc, unit=unit, initial=initial, stream=stream)


def seconds_between_lines() -> float:
    """`LMFUSE_PROGRESS_SECONDS`, or the default when it is unset or not a number >= 0 (a
    display setting: a typo in it is reported, but stops no job)."""
    raw = os.environ.get(SECONDS_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0.0:  # also NaN
        print(f"lmfuse: warning: {SECONDS_VARIABLE}={raw!r} is not a number of seconds >= 0; "
              f"progress lines come every {DEFAULT_SECONDS:g} s", file=sys.stderr, flush=True)
        return DEFAULT_SECONDS
    return seconds


class PlainProgress:
    """Progress as plain lines: `desc: done/total (pct%), rate unit/s, elapsed, ETA`, one every
    `every` seconds of `clock` (default: `seconds_between_lines()`) and one on `close`."""

    def __init__(
        self,
        total: int | None,
        *,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        stream: IO[str] | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self.stream = sys.stderr if stream is None else stream
        self.every = seconds_between_lines() if every is None else every
        self.clock = clock
        self._start = self._last_line = clock()
        self._postfix = ""
        self._shown = None  # the count of the last line written
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last_line >= self.every:
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        """Extra `key=value` pairs at the end of each line (as tqdm shows them)."""
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Writes the final line (unless the last line already showed this count)."""
        if not self._closed:
            self._closed = True
            if self._shown != self.n:
                self._write(self.clock())

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 0.0)
        done = self.n - self._start_n  # what this run did: a resumed count is no speed
        rate = done / elapsed if elapsed > 0 else None
        parts = [f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)"
                 if self.total else f"{self.n}"]
        parts.append(f"{_number(rate)} {self.unit}/s")
        parts.append(f"elapsed {tqdm.format_interval(elapsed)}")
        if self.total:
            left = max(self.total - self.n, 0)
            eta = (tqdm.format_interval(left / rate) if rate else "?") if left else "00:00"
            parts.append(f"ETA {eta}")
        if self._postfix:
            parts.append(self._postfix)
        return f"{self.desc}: " * bool(self.desc) + ", ".join(parts)

    def _write(self, now: float) -> None:
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()
        self._last_line, self._shown = now, self.n

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _number(rate: float | None) -> str:
    """3 significant digits, without an exponent: 0.0123, 4.56, 78.9, 1234."""
    if rate is None:
        return "?"
    return f"{rate:.0f}" if rate >= 99.95 else f"{rate:.3g}"


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
