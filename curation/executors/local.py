"""The local executor: a pool of worker processes on this machine, one shard per task.

Workers are started with ``spawn`` (Arrow and Polars keep thread pools that ``fork`` would copy
in a broken state). Each worker reports rows read through a queue so the driver can draw
per-shard progress bars. With one worker, or one task, everything runs in-process. A global
step's plan tasks run in a pool of the same size (:meth:`LocalExecutor.run_tasks`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from curation.global_step import run_in_process
from curation.pipeline import ShardTask, run_shard


THREAD_VARS = ("CRUCIBLE_THREADS", "POLARS_MAX_THREADS", "OMP_NUM_THREADS")


def _run_in_worker(task: ShardTask, progress_queue) -> object:
    def report(shard: str, rows: int) -> None:
        progress_queue.put((shard, rows))

    return run_shard(task, report)


@contextmanager
def _thread_share(workers: int) -> Iterator[None]:
    """Gives each of ``workers`` processes spawned meanwhile its share of the cores for its own
    thread pools (Polars, Arrow, our kernels): spawned processes read these at start-up."""
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: share for k in THREAD_VARS})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
        workers = min(self.workers, len(tasks))
        with _thread_share(workers):
            self._run_pool(mp.get_context("spawn"), workers, tasks, on_result, on_progress)

    def run_tasks(self, fn: Callable[..., Any], args: list[tuple]) -> Iterator[Any]:
        """``fn(*a)`` for every ``a`` in worker processes, results yielded in the order of
        ``args``; at most twice ``workers`` tasks are submitted ahead of the one yielded."""
        if self.workers == 1 or len(args) <= 1:
            yield from run_in_process(fn, args)
            return
        workers = min(self.workers, len(args))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        try:
            waiting = iter(args)
            with _thread_share(workers):  # the pool starts its workers on the first submits
                pending = deque(pool.submit(fn, *a) for _, a in zip(range(2 * workers), waiting))
            while pending:
                result = pending.popleft().result()
                for a in waiting:
                    pending.append(pool.submit(fn, *a))
                    break
                yield result
        finally:
            pool.shutdown(cancel_futures=True)

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
