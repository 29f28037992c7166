"""Progress bars for a curation job (rich): one for the job's rows, one per running shard.

Disabled (silent) when ``enabled`` is False or stderr is not a terminal, so logs stay clean.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class JobProgress:
    """Rows read per shard and overall, per segment."""

    def __init__(self, enabled: bool, segments: int) -> None:
        console = Console(file=sys.stderr)
        self.enabled = enabled and console.is_terminal
        self.segments = segments
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=False, disable=not self.enabled)
        self.job: TaskID | None = None
        self.shards: dict[str, TaskID] = {}
        self.totals: dict[str, int] = {}

    def __enter__(self) -> JobProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start_segment(self, index: int, shards: list[str], rows: dict[str, int]) -> None:
        if self.job is not None:
            self.progress.remove_task(self.job)
        self.totals = rows
        label = f"segment {index + 1}/{self.segments}" if self.segments > 1 else "job"
        self.job = self.progress.add_task(f"[bold]{label}: {len(shards)} shards",
                                          total=sum(rows.values()) or None)
        self.shards = {}

    def advance(self, shard: str, rows: int) -> None:
        if shard not in self.shards:
            self.shards[shard] = self.progress.add_task(f"  {shard}",
                                                        total=self.totals.get(shard) or None)
        self.progress.advance(self.shards[shard], rows)
        if self.job is not None:
            self.progress.advance(self.job, rows)

    def finish_shard(self, shard: str, status: str) -> None:
        task = self.shards.pop(shard, None)
        if task is not None:
            self.progress.remove_task(task)
        if status != "done":
            self.progress.console.print(f"[red]quarantined[/red] {shard}")
