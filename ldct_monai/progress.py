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
    TimeRemainingColumn,
)
from rich.progress import ProgressColumn, Task
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, with the unit given as the task field ``unit`` (default 'it')."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if speed is None:
            return Text(f"? {unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")


class InfoColumn(ProgressColumn):
    """Free text a job updates as it goes (losses, current file): task field ``info``."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


def make_progress(transient: bool = False, disable: bool = False) -> Progress:
    """A rich :class:`Progress` with description, bar, M/N, %, rate, elapsed and ETA columns.

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
        TimeRemainingColumn(),
        InfoColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )
