"""One rich progress bar style for every long job: count, rate and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import ProgressColumn, Task
from rich.text import Text

console = Console(stderr=True)


def average_rate(task: Task) -> float | None:
    """Items per second since the task started (None before the first item).

    rich's own ``Task.speed`` divides the items of its last few samples by the time between the first and
    the last of them: when work completes in bursts (a batch of slices written at once) that time is a few
    milliseconds and the rate comes out hundreds of times too high (506.8 slices/s shown for a real 1.29).
    """
    elapsed = task.finished_time if task.finished_time else task.elapsed
    if not elapsed or task.completed <= 0:
        return None
    return task.completed / elapsed


class RateColumn(ProgressColumn):
    """Items per second since the start (:func:`average_rate`), unit from the task field ``unit`` (default 'it')."""

    def render(self, task: Task) -> Text:
        speed = average_rate(task)
        unit = task.fields.get("unit", "it")
        if speed is None:
            return Text(f"? {unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.2f} {unit}/s" if speed < 10 else f"{speed:,.1f} {unit}/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the average rate since the start (rich's TimeRemainingColumn uses the bursty ``speed``)."""

    def render(self, task: Task) -> Text:
        style = "progress.remaining"
        if task.finished:
            return Text("0:00:00", style=style)
        rate = average_rate(task)
        if task.total is None or not rate:
            return Text("-:--:--", style=style)
        left = int(max(0.0, task.total - task.completed) / rate)
        return Text(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style=style)


class InfoColumn(ProgressColumn):
    """Free text a job updates as it goes (losses, current file): task field ``info``."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


def make_progress(transient: bool = False, disable: bool = False) -> Progress:
    """A rich :class:`Progress` with description, bar, M/N, %, rate, elapsed and ETA columns.

    Rate and ETA are averages since the task started (:func:`average_rate`), right for bursty work.

    Writes to stderr so command output on stdout stays clean for pipes.
    """
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        EtaColumn(),
        InfoColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )
