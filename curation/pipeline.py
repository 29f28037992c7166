"""Running one segment of a pipeline over one shard: read, check, steps, write, count.

``run_shard`` is what every executor calls, in a worker process or a Ray task. It is
deterministic (same inputs and config, same output bytes) and leaves either complete outputs
or none: parts are renamed into place only when complete, and a failed shard's parts are
removed before it reports ``quarantined``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.global_step import GlobalStep
from curation.io.input_check import InputCheck, InputCheckConfig
from curation.io.reader import ColumnMap, ShardError, read_batches
from curation.io.writer import PartWriter, remove_parts
from curation.registry import build_step
from curation.step import RejectSink, Step

ProgressFn = Callable[[str, int], None]


@dataclass
class WriterOptions:
    """How parts are written (from ``OutputConfig``)."""

    max_part_bytes: int = 256 << 20
    row_group_rows: int = 65536
    compression: str = "zstd"
    compression_level: int | None = 3


@dataclass
class ShardTask:
    """One shard through one segment of the pipeline."""

    shard: str
    """Shard key: unique, used to name every file the shard produces."""
    shard_index: int
    """Position of the shard in the job's sorted input list (deterministic survivor order)."""
    inputs: list[str]
    """Files to read, in order (the raw shard, or the previous segment's parts)."""
    segment: int
    steps: list[dict[str, Any]]
    """Step specs of this segment; the first may be a global step planned by the driver."""
    out_dir: str
    """Where this segment's kept rows go (the job output, or a work folder)."""
    rejected_dir: str
    work_dir: str
    columns: ColumnMap = field(default_factory=ColumnMap)
    batch_size: int = 4096
    input_check: InputCheckConfig | None = None
    """Run the input check first (only in segment 0)."""
    plugins: list[str] = field(default_factory=list)
    """Modules that register extra steps (imported before the steps are built)."""
    collect_for: dict[str, Any] | None = None
    """Spec of the global step that starts the next segment: its collect() sees our output."""
    writer: WriterOptions = field(default_factory=WriterOptions)


@dataclass
class ShardResult:
    """What happened to a shard in one segment."""

    shard: str
    segment: int
    status: str  # "done" or "quarantined"
    rows_in: int = 0
    rows_out: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


class _PartSink(RejectSink):
    """Writes one step's rejected rows of one shard to ``rejected/<step>/<shard>-NNNNN``."""

    def __init__(self, directory: Path, shard: str, options: WriterOptions) -> None:
        self.writer = PartWriter(directory, shard, max_part_bytes=options.max_part_bytes,
                                 row_group_rows=options.row_group_rows,
                                 compression=options.compression,
                                 compression_level=options.compression_level)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write(batch)


def _read_all(task: ShardTask) -> Iterator[pa.RecordBatch]:
    columns = task.columns if task.segment == 0 else ColumnMap()
    for path in task.inputs:
        yield from read_batches(Path(path), columns, task.batch_size, task.shard)


def _counted(batches: Iterator[pa.RecordBatch], progress: ProgressFn | None,
             shard: str) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield batch
        if progress is not None:
            progress(shard, batch.num_rows)


def build_segment_steps(task: ShardTask) -> list[Step]:
    """Instantiates the segment's steps (input check first in segment 0)."""
    from curation.builtin import load_builtin_steps

    load_builtin_steps(task.plugins)  # worker processes start with an empty registry
    steps: list[Step] = []
    if task.input_check is not None:
        steps.append(InputCheck(task.input_check))
    steps.extend(build_step(spec, f"pipeline step {spec.get('step')!r}") for spec in task.steps)
    return steps


def run_shard(task: ShardTask, progress: ProgressFn | None = None) -> ShardResult:
    """Runs ``task``; never raises for a bad shard (it is reported as quarantined)."""
    start = time.perf_counter()
    out_dir, rejected_dir = Path(task.out_dir), Path(task.rejected_dir)
    work_dir = Path(task.work_dir)
    steps: list[Step] = []
    sinks: list[tuple[Step, _PartSink]] = []
    writer = PartWriter(out_dir, task.shard, max_part_bytes=task.writer.max_part_bytes,
                        row_group_rows=task.writer.row_group_rows,
                        compression=task.writer.compression,
                        compression_level=task.writer.compression_level)
    collector: GlobalStep | None = None
    try:
        _remove_outputs(task)
        steps = build_segment_steps(task)
        for step in steps:
            sink = _PartSink(rejected_dir / step.name, task.shard, task.writer)
            step.sink = sink
            sinks.append((step, sink))
            if isinstance(step, GlobalStep):
                step.begin_shard(work_dir, task.shard)
        if task.collect_for is not None:
            built = build_step(task.collect_for, "global step")
            assert isinstance(built, GlobalStep)
            collector = built
            collector.start_collect(work_dir, task.shard, task.shard_index)
        rows_in = 0

        def source() -> Iterator[pa.RecordBatch]:
            nonlocal rows_in
            for batch in _counted(_read_all(task), progress, task.shard):
                rows_in += batch.num_rows
                yield batch

        stream: Iterator[pa.RecordBatch] = source()
        for step in steps:
            stream = step(stream)
        for batch in stream:
            writer.write(batch)
            if collector is not None:
                collector.collect(batch)
        outputs = writer.close()
        rejected = [p for _, sink in sinks for p in sink.writer.close()]
        if collector is not None:
            collector.finish_collect()
        counts = [{"step": s.name, **s.counts.as_dict()} for s in steps]
        _check_balance(task.shard, rows_in, writer.rows, counts)
        return ShardResult(shard=task.shard, segment=task.segment, status="done",
                           rows_in=rows_in, rows_out=writer.rows, steps=counts,
                           outputs=[str(p) for p in outputs],
                           rejected=[str(p) for p in rejected],
                           seconds=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a bad shard must not stop the job
        writer.abort()
        for _, sink in sinks:
            sink.writer.abort()
        _remove_outputs(task)
        detail = str(exc) if isinstance(exc, (ShardError, OSError, ValueError)) else (
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
        return ShardResult(shard=task.shard, segment=task.segment, status="quarantined",
                           error=detail, seconds=time.perf_counter() - start)


def _remove_outputs(task: ShardTask) -> None:
    """Deletes whatever an earlier, interrupted attempt of this task left behind."""
    remove_parts(Path(task.out_dir), task.shard)
    names = (["input"] if task.input_check is not None else []) + [s["step"] for s in task.steps]
    for name in names:
        remove_parts(Path(task.rejected_dir) / name, task.shard)


def _check_balance(shard: str, rows_in: int, rows_out: int, counts: list[dict]) -> None:
    """Rows in = rows kept + rows rejected, for the shard and for every step."""
    rejected = sum(sum(c["rejected"].values()) for c in counts)
    if rows_in != rows_out + rejected:
        raise RuntimeError(f"shard {shard}: {rows_in} rows in but {rows_out} kept + "
                           f"{rejected} rejected; a step dropped rows without a reason")
    for c in counts:
        if c["rows_in"] != c["rows_out"] + sum(c["rejected"].values()):
            raise RuntimeError(f"shard {shard}: step {c['step']} took {c['rows_in']} rows, "
                               f"passed {c['rows_out']} and rejected "
                               f"{sum(c['rejected'].values())}; rows were lost")
