"""Executors run ShardTasks: `local` (worker processes) and `ray` (a Ray cluster).

Both call the same ``curation.pipeline.run_shard`` on the same tasks, so they produce
byte-identical outputs. ``run(tasks, on_result, on_progress)`` reports each ShardResult as it
completes (in completion order); the driver records it in the manifest.
``run_tasks(fn, args)`` runs a global step's plan tasks on the same workers: ``fn(*a)`` for every
tuple ``a`` (``fn`` a module-level function), results yielded in the order of ``args``
(see ``curation.global_step``).
"""

from __future__ import annotations

from collections.abc import Callable

from curation.pipeline import ShardResult, ShardTask

ResultFn = Callable[[ShardResult], None]
ProgressFn = Callable[[str, int], None]


def make_executor(kind: str, workers: int, ray_address: str | None = None):
    """Returns the executor for ``kind`` (``local`` or ``ray``)."""
    if kind == "local":
        from curation.executors.local import LocalExecutor

        return LocalExecutor(workers)
    if kind == "ray":
        from curation.executors.ray import RayExecutor

        return RayExecutor(workers, ray_address)
    raise ValueError(f"unknown executor {kind!r}; use 'local' or 'ray'")


__all__ = ["make_executor", "ShardTask", "ShardResult", "ResultFn", "ProgressFn"]
