"""Progress: a tqdm bar on a terminal, plain timed lines anywhere else (fake clock here)."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from lmfuse import progress
from lmfuse.progress import PlainProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def plain(clock: FakeClock, every: float = 10.0, **kwargs) -> tuple[PlainProgress, io.StringIO]:
    stream = io.StringIO()
    kwargs = {"total": 100, "desc": "translate", "unit": "verse", **kwargs}
    return PlainProgress(stream=stream, every=every, clock=clock, **kwargs), stream


def test_a_line_every_interval_with_count_rate_and_eta():
    clock = FakeClock()
    bar, stream = plain(clock)
    clock.now += 5
    bar.update(10)
    assert stream.getvalue() == ""  # not yet 10 s
    clock.now += 5
    bar.update(10)
    clock.now += 5
    bar.update(30)
    clock.now += 10
    bar.update(30)
    clock.now += 2
    bar.close()  # the last line already shows 80: no repeat
    assert stream.getvalue() == (
        "translate: 20/100 (20%), 2 verse/s, elapsed 00:10, ETA 00:40\n"
        "translate: 80/100 (80%), 3.2 verse/s, elapsed 00:25, ETA 00:06\n"
    )


def test_the_final_line_shows_the_last_count_and_no_carriage_return():
    clock = FakeClock()
    bar, stream = plain(clock)
    clock.now += 10
    bar.update(40)
    clock.now += 5
    bar.update(60)  # 5 s after the last line: none yet
    bar.close()
    bar.close()  # a second close writes nothing
    lines = stream.getvalue().splitlines()
    assert lines == ["translate: 40/100 (40%), 4 verse/s, elapsed 00:10, ETA 00:15",
                     "translate: 100/100 (100%), 6.67 verse/s, elapsed 00:15, ETA 00:00"]
    assert "\r" not in stream.getvalue()


def test_zero_seconds_writes_every_update_and_postfix_values_follow():
    clock = FakeClock()
    bar, stream = plain(clock, every=0.0, total=None, desc="train", unit="step")
    bar.set_postfix(loss="2.310", tok_s="900")
    clock.now += 2
    bar.update(1)
    clock.now += 2
    bar.update(1)
    assert stream.getvalue().splitlines() == [
        "train: 1, 0.5 step/s, elapsed 00:02, loss=2.310, tok_s=900",
        "train: 2, 0.5 step/s, elapsed 00:04, loss=2.310, tok_s=900",
    ]


def test_a_resumed_count_is_not_speed():
    clock = FakeClock()
    bar, stream = plain(clock, every=0.0, total=1000, initial=500, desc="train", unit="step")
    clock.now += 10
    bar.update(100)
    assert stream.getvalue() == "train: 600/1000 (60%), 10 step/s, elapsed 00:10, ETA 00:40\n"


def test_no_progress_yet_has_an_unknown_rate_and_eta():
    clock = FakeClock()
    bar, stream = plain(clock, every=0.0)
    bar.update(0)
    assert stream.getvalue() == "translate: 0/100 (0%), ? verse/s, elapsed 00:00, ETA ?\n"


def test_a_terminal_gets_tqdm_anything_else_plain_lines(monkeypatch):
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "0")
    terminal = Terminal()
    bar = progress_bar(3, desc="translate", unit="verse", file=terminal)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in terminal.getvalue()  # tqdm redraws in place
    log = io.StringIO()
    with progress_bar(3, desc="translate", unit="verse", file=log) as bar:
        assert isinstance(bar, PlainProgress)
        bar.update(3)
    assert log.getvalue().startswith("translate: 3/3 (100%), ") and log.getvalue().count("\n") == 1
    hidden = io.StringIO()
    bar = progress_bar(3, desc="translate", file=hidden, disable=True)
    bar.update(3)
    bar.close()
    assert hidden.getvalue() == ""


@pytest.mark.parametrize("raw, seconds", [("", 10.0), ("0", 0.0), (" 2.5 ", 2.5)])
def test_the_interval_comes_from_the_environment(monkeypatch, raw, seconds):
    monkeypatch.setenv(progress.SECONDS_VARIABLE, raw)
    assert progress.seconds_between_lines() == seconds


@pytest.mark.parametrize("raw", ["ten", "-1", "nan"])
def test_a_bad_interval_is_reported_and_the_default_used(monkeypatch, capsys, raw):
    monkeypatch.setenv(progress.SECONDS_VARIABLE, raw)
    assert progress.seconds_between_lines() == progress.DEFAULT_SECONDS
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"LMFUSE_PROGRESS_SECONDS={raw!r}" in err


def test_rates_are_written_without_exponents():
    clock = FakeClock()
    bar, stream = plain(clock, every=0.0, total=None, desc="translate", unit="verse")
    clock.now += 0.5
    bar.update(1234)
    assert stream.getvalue().startswith("translate: 1234, 2468 verse/s, ")
