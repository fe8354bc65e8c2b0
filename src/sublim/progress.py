"""Progress bars and stage messages for long work (rich), silent when disabled (tests), and the
torch thread count a piece of long work runs with."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ProgressFn = Callable[[int, int], None]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (0: leave the count as it is), then restore it."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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

    @contextmanager
    def ticker(self, description: str, total: int, every: int = 20) -> Iterator[Callable[[], None]]:
        """Yields a no-argument ``tick()`` that counts one step, for loops of many tiny steps:
        the bar is redrawn every ``every`` ticks (redrawing costs more than a tiny step)."""
        with self.task(description, total) as update:
            count = 0

            def tick() -> None:
                nonlocal count
                count += 1
                if count % every == 0:
                    update(count, total)

            yield tick
