"""One rank of bench/pipeline.py's measured step times: runs every schedule on the tiny model
with gloo and prints one JSON line per schedule with this rank's mean step time and mean time
per compute action (F, B, I, W).

    python bench/_pipeline_worker.py STORE RANK WORLD MICROBATCHES STEPS
"""

import json
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from engine.distributed.pipeline import PipelineRuntime
from engine.distributed.schedules import build_schedule
from engine.model import Transformer, preset

SCHEDULES = (("gpipe", 1), ("1f1b", 1), ("interleaved-1f1b", 2), ("zb-h1", 1))
ROWS_PER_MICROBATCH, SEQ = 2, 64


def transfer_latency(rank: int, shape: tuple[int, ...], trips: int = 20) -> float:
    """One-way time of an activation-sized send between ranks 0 and 1 (ping-pong)."""
    buf = torch.zeros(shape)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(trips):
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        elif rank == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)
    seconds = (time.perf_counter() - start) / (2 * trips)
    dist.barrier()
    return seconds


def main() -> None:
    store, rank, world, m, steps = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                    int(sys.argv[4]), int(sys.argv[5]))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    config = preset("tiny", n_layers=2 * world, dim=128, n_heads=4, n_kv_heads=2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (m * ROWS_PER_MICROBATCH, SEQ + 1), generator=g)
    print(json.dumps({"latency_s": transfer_latency(rank, (ROWS_PER_MICROBATCH, SEQ,
                                                           config.dim))}), flush=True)
    runtimes = {}
    for kind, v in SCHEDULES:
        torch.manual_seed(0)
        runtimes[kind] = PipelineRuntime(Transformer(config), build_schedule(kind, world, m, v),
                                         timeout_s=120)
        runtimes[kind].step(tokens[:, :-1], tokens[:, 1:])  # warm-up
    totals: dict[str, dict[str, float]] = {kind: {} for kind in runtimes}
    counts: dict[str, dict[str, int]] = {kind: {} for kind in runtimes}
    wall: dict[str, list[float]] = {kind: [] for kind in runtimes}
    # Round robin over the schedules, so that load from other jobs hits them alike.
    for _ in range(steps):
        for kind, runtime in runtimes.items():
            for p in runtime.parameters():
                p.grad = None
            dist.barrier()
            start = time.perf_counter()
            result = runtime.step(tokens[:, :-1], tokens[:, 1:])
            wall[kind].append(time.perf_counter() - start)
            for op, seconds in result.compute_seconds.items():
                totals[kind][op] = totals[kind].get(op, 0.0) + seconds
                counts[kind][op] = counts[kind].get(op, 0) + result.counts[op]
    for kind, v in SCHEDULES:
        per_action = {op: totals[kind][op] / counts[kind][op] for op in totals[kind]}
        print(json.dumps({"kind": kind, "virtual_stages": v, "rank": rank,
                          "step_s": sorted(wall[kind])[len(wall[kind]) // 2],
                          "per_action_s": per_action}), flush=True)
    dist.barrier()


if __name__ == "__main__":
    main()
