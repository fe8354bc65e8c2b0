"""Progress bars and stage messages for long work (rich), silent when disabled (tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ProgressFn = Callable[[int, int], None]


class Reporter:
    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    def say(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg)

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[ProgressFn]:
        """Yields a ``progress(done, total)`` callback driving one bar."""
        if not self.enabled:
            yield lambda done, tot: None
            return
        with Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            tid = bar.add_task(description, total=total)

            def update(done: int, tot: int) -> None:
                bar.update(tid, completed=done, total=tot)

            yield update
