"""Progress of long work for the command line: rich bars on a terminal, plain lines in a log.

Both are the pipeline's callback (:class:`Progress`) and show the count, the rate
(``41.2 images/s``, or ``12.5 s/epoch`` below one per second) and the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars
from rich.text import Text


class Progress(Protocol):
    """Called as ``progress(description, done, total)`` while long work runs (the CLI draws rich bars from
    it); ``info`` is shown beside the count, ``unit`` names what is counted."""

    def __call__(
        self, description: str, done: int, total: int, info: str = "", unit: str = "images"
    ) -> None: ...


def no_progress(description: str, done: int, total: int, info: str = "", unit: str = "images") -> None:
    """A :class:`Progress` that shows nothing."""


def rate_text(speed: float, unit: str) -> str:
    """``41.2 images/s``, or ``12.5 s/epoch`` when fewer than one ``unit`` a second."""
    one = unit[:-3] + "y" if unit.endswith("ies") else unit.removesuffix("s")
    return f"{speed:.1f} {unit}/s" if speed >= 1 else f"{1 / speed:.1f} s/{one}"


class RateColumn(ProgressColumn):
    """A task's speed over its recent updates (the unit is the task's ``unit`` field)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        return Text(rate_text(speed, task.fields.get("unit", "images")), style="progress.data.speed")


@dataclass
class _Line:
    start: float
    done_at_start: int
    printed_at: float
    tenth: int = -1
    finished: bool = False


class ProgressLines:
    """Progress as plain lines, for output that is not a terminal (a log file, a CI job): a line when a
    task starts, at each further tenth of it or after ``every`` seconds without one, and when it ends."""

    def __init__(self, console: Console, every: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.console, self.every, self.clock = console, every, clock
        self.tasks: dict[str, _Line] = {}

    def __call__(self, description: str, done: int, total: int, info: str = "", unit: str = "images") -> None:
        now = self.clock()
        line = self.tasks.setdefault(description, _Line(now, done, now))
        finished = done >= total
        tenth = 10 * done // max(total, 1)
        if line.finished or not (finished or tenth > line.tenth or now - line.printed_at >= self.every):
            return
        line.tenth, line.printed_at, line.finished = tenth, now, finished
        parts = [f"{description}: {done}/{total} {unit}"]
        elapsed = now - line.start
        speed = (done - line.done_at_start) / elapsed if elapsed > 0 else 0.0
        if speed > 0:
            parts.append(rate_text(speed, unit))
            if not finished:
                parts.append(f"{timedelta(seconds=round((total - done) / speed))} left")
        if finished:
            parts.append(f"{timedelta(seconds=round(elapsed))} in all")
        if info:
            parts.append(info)
        self.console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_display(console: Console, quiet: bool = False) -> Iterator[Progress]:
    """The progress callback for ``console``: nothing when ``quiet``, bars on a terminal, lines otherwise."""
    if quiet:
        yield no_progress
        return
    if not console.is_terminal:
        yield ProgressLines(console)
        return
    bars = Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        speed_estimate_period=300,  # an epoch can take minutes: keep enough updates for a rate and an ETA
    )
    tasks: dict[str, Any] = {}

    def update(description: str, done: int, total: int, info: str = "", unit: str = "images") -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=total, info=info, unit=unit)
        bars.update(tasks[description], completed=done, total=total, info=info)

    with bars:
        yield update
