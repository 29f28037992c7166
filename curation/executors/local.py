"""The local executor: a pool of worker processes on this machine, one shard per task.

Workers are started with ``spawn`` (Arrow and Polars keep thread pools that ``fork`` would copy
in a broken state). Each worker reports rows read through a queue so the driver can draw
per-shard progress bars. With one worker, or one task, everything runs in-process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from curation.pipeline import ShardTask, run_shard


_THREAD_VARS = ("CRUCIBLE_THREADS", "POLARS_MAX_THREADS", "OMP_NUM_THREADS")


def _run_in_worker(task: ShardTask, progress_queue) -> object:
    def report(shard: str, rows: int) -> None:
        progress_queue.put((shard, rows))

    return run_shard(task, report)


class LocalExecutor:
    """Runs shard tasks in ``workers`` processes (in-process when there is nothing to share)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)

    def run(self, tasks: list[ShardTask], on_result, on_progress) -> None:
        if not tasks:
            return
        if self.workers == 1 or len(tasks) == 1:
            for task in tasks:
                on_result(run_shard(task, on_progress))
            return
        ctx = mp.get_context("spawn")
        workers = min(self.workers, len(tasks))
        # Each worker gets its share of the cores for its own thread pools (Polars, Arrow,
        # our kernels): spawned processes read these at start-up.
        share = str(max(1, len(os.sched_getaffinity(0)) // workers))
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update({k: share for k in _THREAD_VARS})
        try:
            self._run_pool(ctx, workers, tasks, on_result, on_progress)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _run_pool(self, ctx, workers: int, tasks: list[ShardTask], on_result, on_progress
                  ) -> None:
        with ctx.Manager() as manager:
            progress_queue = manager.Queue()
            stop = threading.Event()

            def drain() -> None:
                while not stop.is_set():
                    try:
                        shard, rows = progress_queue.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    on_progress(shard, rows)

            drainer = threading.Thread(target=drain, daemon=True)
            drainer.start()
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    pending = {pool.submit(_run_in_worker, t, progress_queue) for t in tasks}
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            on_result(future.result())
            finally:
                stop.set()
                drainer.join()
