"""Progress of a backlog on the terminal: a live bar when the output is a terminal, one line per item when not.

Built on rich (:class:`rich.progress.Progress`): its console knows whether its file is a terminal,
it draws the bar with done/total, failures, rate and time left, and what is printed while the bar
is live (a failure's line, forwarded worker logs) appears above it instead of tearing it. On a log
file or in CI (not a terminal) nothing is drawn and every item keeps its one line, as before.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

#: Seconds per minute, for the rate column.
SECONDS_PER_MINUTE = 60.0
#: Refreshes of the bar per second.
REFRESH_PER_SECOND = 4


class RateColumn(ProgressColumn):
    """Items finished per minute (rich's estimate over its recent samples)."""

    def render(self, task: Task) -> Text:
        """The rate, or "-" before there is one."""
        speed = task.finished_speed or task.speed
        return Text("-/min" if speed is None else f"{speed * SECONDS_PER_MINUTE:.1f}/min", style="progress.data.speed")


class BacklogProgress:
    """A context manager following a backlog's items: a bar on a terminal, else the per-item lines.

    Parameters
    ----------
    total
        Items to follow.
    unit
        What they are ("exposures", "tiles").
    file
        Where to draw (default: standard output); the bar is drawn only when it is a terminal.
    """

    def __init__(self, total: int, *, unit: str, file: IO[str] | None = None) -> None:
        self.total = int(total)
        self.unit = unit
        self.console = Console(file=file if file is not None else sys.stdout, highlight=False)
        self.live = self.console.is_terminal
        self.failed = 0
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> BacklogProgress:
        if self.live:
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("[red]{task.fields[failed]} failed"), RateColumn(),
                                      TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                      console=self.console, refresh_per_second=REFRESH_PER_SECOND)
            self._progress.start()
            self._task = self._progress.add_task(self.unit, total=self.total, failed=0)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, *, failed: bool, echo: Callable[[], None]) -> None:
        """One more item finished.

        Parameters
        ----------
        failed
            Whether it failed (counted on the bar, and its line printed above it).
        echo
            Prints the item's line: always when not on a terminal, for failures only on one.
        """
        self.failed += bool(failed)
        if self._progress is None:
            echo()
            return
        if failed:
            echo()  # rich redirects stdout and stderr while live: the line lands above the bar
        self._progress.update(self._task, advance=1, failed=self.failed)

    def callback(self, is_failure: Callable[[Any], bool], echo: Callable[[int, int, Any], None]
                 ) -> Callable[[int, int, Any], None]:
        """An ``on_row``/``on_tile`` callback ``(done, total, item)`` that advances and echoes."""
        def on_item(done: int, total: int, item: Any) -> None:
            self.advance(failed=is_failure(item), echo=lambda: echo(done, total, item))

        return on_item
