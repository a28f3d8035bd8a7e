"""Progress bars with counts and rates, shared by every long-running step."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, in the unit of the task."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "files", enabled: bool = True) -> Iterator:
    """Yield an ``advance(n=1, total=None)`` function driving a bar with counts, rate, elapsed and
    ETA; ``total`` given sets the bar's total (work found as it goes: the total grows)."""
    if not enabled:
        yield lambda n=1, total=None: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total, unit=unit)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                prog.update(task, total=total)
            if n:
                prog.advance(task, n)

        yield advance
