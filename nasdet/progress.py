"""Progress of long loops: rich's live bar on a terminal, a plain line every N steps elsewhere.

rich redraws its bar in place only on a terminal; written to a log file (``nasdet pipeline > run.log``)
it shows nothing until the loop ends, minutes later. ``progress_bar`` then returns a ``PlainProgress``,
which prints one ordinary line each ``every`` steps (and at the end) with the same ``add_task`` /
``update`` calls.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import Progress, ProgressColumn


def progress_bar(console: Console, *columns: str | ProgressColumn, label: str, every: int = 1,
                 fields: Callable[[dict], str] | None = None, disable: bool = False):
    """A rich ``Progress`` with ``columns`` on a terminal; otherwise a ``PlainProgress`` printing
    ``label`` lines every ``every`` steps, ``fields(task_fields)`` appended."""
    if console.is_terminal:
        return Progress(*columns, console=console, disable=disable)
    return PlainProgress(console, label, every=every, fields=fields, disable=disable)


class PlainProgress:
    """The subset of rich's ``Progress`` the loops use, as plain log lines:
    ``label: 40/800 (5%), description, fields, elapsed 0:01:05, left 0:20:40``."""

    def __init__(self, console: Console, label: str, every: int = 1, fields: Callable[[dict], str] | None = None,
                 disable: bool = False):
        self.console, self.label, self.every, self.fields, self.disable = console, label, max(1, every), fields, disable
        self.tasks: list[dict] = []

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for task in self.tasks:
                if task["printed"] != task["completed"]:
                    self._print(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        self.tasks.append({"description": description, "total": total, "completed": completed, "fields": fields,
                           "start": time.perf_counter(), "start_completed": completed, "printed": completed})
        return len(self.tasks) - 1

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        if description is not None:
            task["description"] = description
        task["fields"].update(fields)
        done = task["completed"]
        if done // self.every > task["printed"] // self.every or (done == task["total"] and done != task["printed"]):
            self._print(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print(self, task: dict) -> None:
        task["printed"] = task["completed"]
        if self.disable:
            return
        done, total = task["completed"], task["total"]
        elapsed = time.perf_counter() - task["start"]
        parts = [f"{self.label}: {done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{self.label}: {done:g}"]
        if task["description"]:
            parts.append(task["description"])
        if self.fields is not None:
            parts.append(self.fields(task["fields"]))
        parts.append(f"elapsed {_clock(elapsed)}")
        rate = (done - task["start_completed"]) / elapsed if elapsed > 0 else 0.0
        if total and rate > 0 and done < total:
            parts.append(f"left {_clock((total - done) / rate)}")
        self.console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
