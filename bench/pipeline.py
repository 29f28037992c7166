"""Benchmark: pipeline schedules. (1) Generation time of each schedule for p ranks and m
micro-batches (p = 64, m = 1024; target < 50 ms) in crucible's C++ generator against
torch.distributed.pipelining constructing the same schedule, in the same run. (2) Measured step
time of each schedule on 4 CPU ranks (gloo, tiny model) against the simulator fed with the
F/B/W times and the transfer latency measured in that run. Writes bench/results/pipeline.json.

    python bench/pipeline.py [--quick] [--stages P] [--microbatches M]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crucible.benchmarking import machine_info, print_table, result, write_results  # noqa: E402

TORCH_CLASSES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
                 "interleaved-1f1b": "ScheduleInterleaved1F1B",
                 "zb-h1": "ScheduleInterleavedZeroBubble"}


class _FakeStage:
    """What torch's schedule constructors read from a stage (no model, no process group)."""

    def __init__(self, index: int, num_stages: int, group_size: int) -> None:
        self.stage_index, self.num_stages = index, num_stages
        self.group_size, self.group_rank = group_size, 0
        self.is_first, self.is_last = index == 0, index == num_stages - 1
        self.submod = None


def torch_construct(kind: str, p: int, m: int, v: int) -> None:
    """torch.distributed.pipelining building the whole schedule (every rank's order): the
    single-stage classes compute it in _get_pipeline_order, the multi-stage ones in __init__
    (with their send/recv lowering)."""
    import torch.distributed.pipelining.schedules as tps

    cls = getattr(tps, TORCH_CLASSES[kind])
    stages = [_FakeStage(i * p, p * v, p) for i in range(v)]
    if kind in ("gpipe", "1f1b"):
        cls(stages[0], m)._get_pipeline_order()
    else:
        cls(stages, m)


def seconds(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def generation_rows(p: int, m: int, torch_repeats: int) -> list[dict]:
    import torch.distributed.pipelining.schedules  # noqa: F401 - import outside the timings

    from engine.distributed.schedules import build_schedule

    rows = []
    for kind in TORCH_CLASSES:
        v = 2 if kind == "interleaved-1f1b" else 1
        ours = seconds(lambda: build_schedule(kind, p, m, v), 7)
        schedule = build_schedule(kind, p, m, v)
        validate = seconds(schedule.validate, 3)
        ref = seconds(lambda: torch_construct(kind, p, m, v), torch_repeats)
        print(f"[pipeline] generate {kind}: ours {ours * 1e3:.2f} ms, torch {ref * 1e3:.0f} ms",
              file=sys.stderr)
        rows.append(result(f"generate {kind} p={p} m={m}" + (f" v={v}" if v > 1 else ""),
                           "ms", ours * 1e3, f"torch.distributed.pipelining "
                           f"{TORCH_CLASSES[kind]}", ref * 1e3,
                           ours_validate_ms=round(validate * 1e3, 2),
                           actions=schedule.num_actions()))
    return rows


def measured_rows(world: int, m: int, steps: int) -> list[dict]:
    from engine.distributed.schedules import StepTimes, build_schedule

    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_pipeline_worker.py"), f"{tmp}/store",
             str(r), str(world), str(m), str(steps)], cwd=ROOT, stdout=subprocess.PIPE,
            text=True) for r in range(world)]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit("bench/pipeline.py: a pipeline rank failed (see its output above)")
    reports: dict[str, list[dict]] = {}
    latency = 0.0
    for out in outs:
        for line in out.splitlines():
            rec = json.loads(line)
            if "latency_s" in rec:
                latency = max(latency, rec["latency_s"])
            else:
                reports.setdefault(rec["kind"], []).append(rec)
    rows = []
    for kind, recs in reports.items():
        v = recs[0]["virtual_stages"]
        measured = max(r["step_s"] for r in recs)  # the step ends when the last rank ends

        def mean(op: str) -> float:
            vals = [r["per_action_s"][op] for r in recs if op in r["per_action_s"]]
            return statistics.mean(vals) * v if vals else 0.0  # a chunk is 1/v of a rank

        if kind == "zb-h1":
            times = StepTimes(mean("F"), mean("I"), mean("W"), latency)
        else:
            times = StepTimes(mean("F"), mean("B"), 0.0, latency)
        sim = build_schedule(kind, world, m, v).simulate(times)
        rows.append(result(f"step {kind} {world} CPU ranks m={m}" + (f" v={v}" if v > 1 else ""),
                           "ms/step", measured * 1e3,
                           "simulator fed the measured F/B/W times and latency", sim.makespan * 1e3,
                           simulated_bubble=round(sim.bubble_ratio, 3),
                           latency_ms=round(latency * 1e3, 3)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="p=32, m=256 for the generation and 3 measured steps (< 2 min)")
    parser.add_argument("--stages", type=int, default=None, help="pipeline ranks p (64)")
    parser.add_argument("--microbatches", type=int, default=None, help="micro-batches m (1024)")
    args = parser.parse_args()
    p = args.stages or (32 if args.quick else 64)
    m = args.microbatches or (256 if args.quick else 1024)
    rows = generation_rows(p, m, torch_repeats=1 if (args.quick or m >= 512) else 3)
    rows += measured_rows(world=4, m=8, steps=3 if args.quick else 10)
    machine = machine_info()
    print_table(f"pipeline schedules on {machine['cpu']}", rows,
                ("ours_validate_ms", "actions", "simulated_bubble", "latency_ms"))
    path = write_results("pipeline", machine, rows, ROOT / "bench" / "results")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
