"""The curation job driver: plans segments, dispatches shards, records the manifest, resumes.

A pipeline is cut into segments at every global step (exact dedup): segment 0 reads the raw
shards and ends by feeding the global step's ``collect``; the driver then calls its ``plan``;
segment 1 starts with that step as a filter, and so on. The last segment writes the curated
shards into the output directory; earlier ones write to ``_work/seg<k>/``.

Resume: shards marked done in the manifest (with their files present) are skipped; everything
else, quarantined shards included, is run again from scratch. A global plan is redone when the
set of shards it covered changed, and with it every later segment.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curation.config import JobConfig
from curation.executors import make_executor
from curation.global_step import GlobalStep, RunTasks
from curation.io.input_check import InputCheckConfig
from curation.io.reader import ColumnMap, discover_inputs, shard_rows
from curation.manifest import MANIFEST, Manifest
from curation.pipeline import ShardResult, ShardTask, WriterOptions
from curation.registry import STEPS, build_step

WORK = "_work"
REJECTED = "rejected"


class JobError(Exception):
    """The job cannot start (bad config, output directory conflict, config changed on resume)."""


@dataclass
class JobSummary:
    """The outcome of a job, for the CLI's closing lines and its exit code."""

    out_dir: Path
    rows_in: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    shards_done: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.quarantined


def split_segments(pipeline: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Cuts the step list before every global step."""
    segments: list[list[dict[str, Any]]] = [[]]
    for spec in pipeline:
        cls = STEPS.get(spec.get("step")) if isinstance(spec, dict) else None
        if cls is not None and issubclass(cls, GlobalStep) and segments[-1]:
            segments.append([])
        segments[-1].append(spec)
    return segments


def shard_keys(paths: list[Path]) -> list[str]:
    """Unique, filesystem-safe names for the shards (the file stem, or the index when stems
    collide)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:05d}-{stem}" for i, stem in enumerate(stems)]


def _validate_pipeline(pipeline: list[dict[str, Any]]) -> None:
    for i, spec in enumerate(pipeline):
        build_step(spec, f"pipeline[{i}]")


def run_job(config: JobConfig, *, resume: bool = False, show_progress: bool = True
            ) -> JobSummary:
    """Runs (or resumes) a curation job; see the module docstring."""
    from curation.builtin import load_builtin_steps
    from curation.progress import JobProgress
    from curation.report import write_reports

    load_builtin_steps(config.plugins)
    start = time.perf_counter()
    _validate_pipeline(config.pipeline)
    out_dir = Path(config.output.dir)
    inputs = discover_inputs(config.input.paths)
    keys = shard_keys(inputs)
    segments = split_segments(config.pipeline)
    manifest = _open_manifest(config, out_dir, inputs, keys, segments, resume)

    executor = make_executor(config.executor.kind, config.executor.resolved_workers(),
                             config.executor.ray_address)
    writer = WriterOptions(max_part_bytes=int(config.output.max_part_mb * (1 << 20)),
                           row_group_rows=config.output.row_group_rows,
                           compression=config.output.compression,
                           compression_level=config.output.compression_level)
    rows_total = {key: shard_rows(path) for key, path in zip(keys, inputs)}
    summary = JobSummary(out_dir=out_dir)
    progress = JobProgress(enabled=show_progress, segments=len(segments))
    with progress:
        for seg_index, steps in enumerate(segments):
            if seg_index > 0:
                _ensure_plan(manifest, out_dir, seg_index, steps[0], keys, executor.run_tasks)
            tasks = _segment_tasks(config, manifest, out_dir, seg_index, segments, inputs, keys,
                                   writer)
            progress.start_segment(seg_index, [t.shard for t in tasks],
                                   {t.shard: _rows_entering(manifest, seg_index, t.shard,
                                                            rows_total) for t in tasks})

            def on_result(result: ShardResult, seg_index: int = seg_index) -> None:
                manifest.record(seg_index, asdict(result))
                progress.finish_shard(result.shard, result.status)

            executor.run(tasks, on_result, progress.advance)

    last = len(segments) - 1
    for key in keys:
        for seg_index in range(len(segments)):
            result = manifest.shard_result(seg_index, key)
            if result is None or result["status"] != "done":
                error = (result or {}).get("error") or "not processed (an earlier segment failed)"
                summary.quarantined[key] = error
                break
        else:
            summary.shards_done += 1
    for seg_index in range(len(segments)):
        for key, result in manifest.data["segments"][seg_index]["shards"].items():
            if result["status"] != "done" or key in summary.quarantined:
                continue
            if seg_index == 0:
                summary.rows_in += result["rows_in"]
            summary.rows_rejected += sum(sum(s["rejected"].values()) for s in result["steps"])
            if seg_index == last:
                summary.rows_kept += result["rows_out"]
    manifest.data["status"] = "done" if summary.ok else "incomplete"
    manifest.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest.data["quarantined"] = summary.quarantined
    manifest.save()
    write_reports(manifest.data, out_dir)
    if summary.ok and (out_dir / WORK).exists():
        shutil.rmtree(out_dir / WORK)
    summary.seconds = time.perf_counter() - start
    return summary


def _rows_entering(manifest: Manifest, seg_index: int, shard: str,
                   raw_rows: dict[str, int]) -> int:
    """Rows a shard brings into a segment: its raw rows, or what the segment before kept."""
    if seg_index == 0:
        return raw_rows.get(shard, 0)
    previous = manifest.shard_result(seg_index - 1, shard)
    return previous["rows_out"] if previous else 0


def _open_manifest(config: JobConfig, out_dir: Path, inputs: list[Path], keys: list[str],
                   segments: list[list[dict[str, Any]]], resume: bool) -> Manifest:
    existing = Manifest.load(out_dir)
    fingerprint = config.fingerprint()
    input_records = [{"shard": k, "path": str(p)} for k, p in zip(keys, inputs)]
    if existing is not None:
        if not resume:
            raise JobError(f"{out_dir} already holds a job ({MANIFEST}); pass --resume to "
                           "finish it, or choose another --output")
        if existing.data["config_hash"] != fingerprint:
            raise JobError(f"{out_dir}: the config changed since this job started (hash "
                           f"{existing.data['config_hash']} vs {fingerprint}); resume needs "
                           "the same config, or start a new job in another --output")
        if [r["path"] for r in existing.data["inputs"]] != [r["path"] for r in input_records]:
            raise JobError(f"{out_dir}: the input shards differ from the ones this job "
                           "started with; resume needs the same inputs")
        existing.data["status"] = "running"
        return existing
    if out_dir.exists() and any(p.suffix == ".parquet" for p in out_dir.iterdir()):
        raise JobError(f"{out_dir} already contains Parquet files but no {MANIFEST}; choose an "
                       "empty or new --output so nothing is overwritten")
    segment_names = [[s["step"] for s in seg] for seg in segments]
    return Manifest.create(out_dir, config.to_dict(), fingerprint, input_records, segment_names)


def _segment_dir(out_dir: Path, seg_index: int, n_segments: int) -> Path:
    return out_dir if seg_index == n_segments - 1 else out_dir / WORK / f"seg{seg_index}"


def _segment_tasks(config: JobConfig, manifest: Manifest, out_dir: Path, seg_index: int,
                   segments: list[list[dict[str, Any]]], inputs: list[Path], keys: list[str],
                   writer: WriterOptions) -> list[ShardTask]:
    tasks = []
    next_global = segments[seg_index + 1][0] if seg_index + 1 < len(segments) else None
    for shard_index, (key, path) in enumerate(zip(keys, inputs)):
        if manifest.is_done(seg_index, key):
            continue
        if seg_index == 0:
            shard_inputs = [str(path)]
        else:
            previous = manifest.shard_result(seg_index - 1, key)
            if previous is None or previous["status"] != "done":
                continue
            shard_inputs = previous["outputs"]
        tasks.append(ShardTask(
            shard=key, shard_index=shard_index, inputs=shard_inputs, segment=seg_index,
            steps=segments[seg_index],
            out_dir=str(_segment_dir(out_dir, seg_index, len(segments))),
            rejected_dir=str(out_dir / REJECTED), work_dir=str(out_dir / WORK),
            columns=ColumnMap(text=config.input.text_column, id=config.input.id_column),
            batch_size=config.input.batch_size,
            input_check=(InputCheckConfig(max_doc_bytes=config.input.max_doc_bytes)
                         if seg_index == 0 else None),
            collect_for=next_global, writer=writer, plugins=list(config.plugins)))
    return tasks


def _ensure_plan(manifest: Manifest, out_dir: Path, seg_index: int, spec: dict[str, Any],
                 keys: list[str], run_tasks: RunTasks) -> None:
    """Runs the global step's plan over the shards done in the previous segment, unless a
    plan over exactly those shards is already recorded. ``run_tasks`` (the executor's) runs
    the plan's tasks on the job's workers."""
    done = [k for k in keys if manifest.is_done(seg_index - 1, k)]
    recorded = manifest.data["plans"].get(str(seg_index))
    if recorded is not None and recorded["shards"] == done:
        return
    if recorded is not None:
        manifest.reset_segments_from(seg_index)
    step = build_step(spec, f"global step {spec['step']!r}")
    assert isinstance(step, GlobalStep)
    print(f"[curate] planning {spec['step']} over {len(done)} shards", file=sys.stderr)
    summary = step.plan(out_dir / WORK, done, run_tasks)
    manifest.data["plans"][str(seg_index)] = {"step": spec["step"], "shards": done, **summary}
    manifest.save()
