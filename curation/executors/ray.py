"""The Ray executor: the same shard tasks as Ray tasks on a cluster (or a local Ray instance).

``ray_address`` is passed to ``ray.init``: ``auto`` joins the cluster this machine belongs to,
``host:port`` a given head node, and None starts a private Ray instance on this machine. Every
worker must see the input and output paths (a shared filesystem or object store mount), and on
a cluster every node needs crucible (and any plugin modules) installed. A global step's plan
tasks run as Ray tasks too (:meth:`RayExecutor.run_tasks`).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from curation.executors.local import THREAD_VARS
from curation.pipeline import ShardTask, run_shard

# Each task reserves one CPU, so its thread pools (Polars, Arrow, our kernels) use one core,
# as the local executor's workers use their share.
ONE_CORE = {"env_vars": {name: "1" for name in THREAD_VARS}}


class RayExecutor:
    """Submits one Ray task per shard, at most ``workers`` in flight."""

    def __init__(self, workers: int, address: str | None) -> None:
        self.workers = max(1, workers)
        self.address = address

    def _ray(self):
        """The ``ray`` module, initialised (joins the cluster or starts a private instance)."""
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("the ray executor needs Ray: pip install 'crucible[ray]'") from exc
        if not ray.is_initialized():
            kwargs: dict = dict(include_dashboard=False, log_to_driver=False,
                                ignore_reinit_error=True)
            if self.address is None:
                # A private instance on this machine: its workers see the driver's import
                # path, as the local executor's do (plugins, an uninstalled checkout).
                kwargs["num_cpus"] = self.workers
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                    p for p in sys.path if p)}}
            ray.init(address=self.address, **kwargs)
        return ray

    def run(self, tasks: list[ShardTask], on_result, on_progress) -> None:
        ray = self._ray()
        remote = ray.remote(num_cpus=1, max_retries=0, runtime_env=ONE_CORE)(run_shard)
        queue = list(tasks)
        in_flight = {}
        while queue or in_flight:
            while queue and len(in_flight) < self.workers:
                task = queue.pop(0)
                in_flight[remote.remote(task)] = task
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                task = in_flight.pop(ref)
                result = ray.get(ref)
                on_progress(task.shard, result.rows_in)
                on_result(result)

    def run_tasks(self, fn: Callable[..., Any], args: list[tuple]) -> Iterator[Any]:
        """``fn(*a)`` for every ``a`` as Ray tasks, results yielded in the order of ``args``;
        at most twice ``workers`` tasks are submitted ahead of the one yielded."""
        if not args:
            return
        ray = self._ray()
        remote = ray.remote(num_cpus=1, max_retries=0, runtime_env=ONE_CORE)(fn)
        waiting = iter(args)
        pending = deque(remote.remote(*a) for _, a in zip(range(2 * self.workers), waiting))
        while pending:
            result = ray.get(pending.popleft())
            for a in waiting:
                pending.append(remote.remote(*a))
                break
            yield result
