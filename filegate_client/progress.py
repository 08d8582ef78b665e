"""Progress bars (rich): one per file plus a total, on a terminal only."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class Bars:
    """Bars for transfers; silent (every call a no-op) when not on a terminal or ``quiet``."""

    def __init__(self, *, quiet: bool, total: int, label: str) -> None:
        self.shown = not quiet and sys.stdout.isatty()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._total: TaskID | None = None
        if self.shown:  # rich is imported only here: a script's run starts faster without it
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}", justify="left"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=False),
                transient=False,
            )
            self._total = self._progress.add_task(label, total=total)

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, name: str, size: int, done: int = 0) -> TaskID | None:
        if self._progress is None:
            return None
        with self._lock:
            task = self._progress.add_task(name, total=size, completed=done)
            if done and self._total is not None:
                self._progress.advance(self._total, done)
            return task

    def advance(self, task: TaskID | None, amount: int) -> None:
        if self._progress is None or task is None:
            return
        with self._lock:
            self._progress.advance(task, amount)
            if self._total is not None:
                self._progress.advance(self._total, amount)

    def say(self, message: str) -> None:
        """A line above the bars (or on stderr without them)."""
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(message, file=sys.stderr)
