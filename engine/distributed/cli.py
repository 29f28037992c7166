"""``crucible pipeline plan``: every pipeline schedule for a (stages, micro-batches) shape,
simulated with given F/B/W times, printed as grids and a table, with a recommendation."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

GRID_MAX_STEPS = 200


def add_pipeline_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``pipeline plan`` to the ``crucible`` command."""
    pipeline = subparsers.add_parser(
        "pipeline", help="plan pipeline-parallel schedules",
        description="Pipeline-parallel schedules (GPipe, 1F1B, interleaved 1F1B, ZB-H1), "
                    "generated and simulated in C++.")
    actions = pipeline.add_subparsers(dest="action", metavar="ACTION", required=True)
    plan = actions.add_parser(
        "plan", help="simulate every schedule for a shape and recommend one",
        description="Generate and validate every schedule for STAGES pipeline ranks and "
                    "MICROBATCHES micro-batches, simulate one training step with the given "
                    "times, print each schedule's step x rank grid and a table (makespan, "
                    "bubble, peak in-flight activations per rank), and recommend the fastest "
                    "schedule that fits the memory budget.",
        epilog="Exit status: 0 with a recommendation, 1 when no schedule fits the budget or "
               "the shape, 2 for a bad command line.")
    plan.add_argument("--stages", type=int, required=True, metavar="P",
                      help="pipeline ranks")
    plan.add_argument("--microbatches", type=int, required=True, metavar="M",
                      help="micro-batches per training step")
    plan.add_argument("--virtual-stages", type=int, default=2, metavar="V",
                      help="model chunks per rank for interleaved-1f1b (default: 2)")
    plan.add_argument("--times", default="1,1,1", metavar="F,B,W",
                      help="time of one micro-batch through one rank's layers: forward, "
                           "input-gradient backward, weight-gradient backward (a full "
                           "backward costs B+W); any unit (default: 1,1,1)")
    plan.add_argument("--latency", type=float, default=0.0, metavar="T",
                      help="one point-to-point transfer, in the unit of --times (default: 0)")
    plan.add_argument("--memory-budget", type=float, default=None, metavar="N",
                      help="most activations a rank may hold, in micro-batches through that "
                           "rank's layers (1F1B needs STAGES, GPipe MICROBATCHES); default: "
                           "no limit")
    plan.add_argument("--grid", choices=["auto", "all", "none"], default="auto",
                      help="print each schedule's step x rank grid: auto (only when it has at "
                           f"most {GRID_MAX_STEPS} steps), all or none (default: auto)")
    plan.set_defaults(func=run_plan)


@dataclass
class PlanRow:
    """One schedule's outcome in a plan."""

    kind: str
    makespan: float | None = None
    bubble_ratio: float | None = None
    peak_activations: float | None = None
    unavailable: str | None = None

    def fits(self, budget: float | None) -> bool:
        """Runnable and within the activation budget."""
        return self.unavailable is None and (budget is None or self.peak_activations <= budget)


def plan(stages: int, microbatches: int, virtual_stages: int, times, grid: str = "none",
         out=None) -> list[PlanRow]:
    """Builds, validates and simulates every schedule; prints grids as asked (to ``out``,
    default the current ``sys.stdout``)."""
    out = out if out is not None else sys.stdout
    from engine.distributed.schedules import KINDS, build_schedule

    rows = []
    for kind in KINDS:
        v = virtual_stages if kind == "interleaved-1f1b" else 1
        try:
            schedule = build_schedule(kind, stages, microbatches, v).check()
        except ValueError as exc:
            rows.append(PlanRow(kind, unavailable=str(exc)))
            continue
        sim = schedule.simulate(times)
        rows.append(PlanRow(kind, sim.makespan, sim.bubble_ratio, sim.peak_activations))
        text = schedule.to_grid_string() if grid != "none" else ""
        if grid == "all" or (grid == "auto" and text.count("\n") <= GRID_MAX_STEPS + 1):
            print(f"{kind} ({stages} ranks, {microbatches} micro-batches"
                  + (f", {v} virtual stages" if v > 1 else "") + "):", file=out)
            print(text, file=out)
    return rows


def recommend(rows: list[PlanRow], budget: float | None) -> PlanRow | None:
    """The fastest schedule within the budget; the smaller activation peak breaks ties."""
    fitting = [r for r in rows if r.fits(budget)]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (round(r.makespan, 9), r.peak_activations))


def run_plan(args: argparse.Namespace) -> int:
    """``crucible pipeline plan``: grids, the table and the recommendation; the exit status."""
    from engine.distributed.schedules import StepTimes

    try:
        times = StepTimes.parse(args.times, latency=args.latency)
    except ValueError as exc:
        print(f"crucible pipeline plan: --times/--latency: {exc}", file=sys.stderr)
        return 2
    if args.stages < 1 or args.microbatches < 1:
        print("crucible pipeline plan: --stages and --microbatches must be >= 1",
              file=sys.stderr)
        return 2
    rows = plan(args.stages, args.microbatches, args.virtual_stages, times, args.grid)
    header = f"{'schedule':<18}{'makespan':>10}{'bubble':>9}{'peak act.':>11}  fits budget"
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.unavailable is not None:
            print(f"{r.kind:<18}{'—':>10}{'—':>9}{'—':>11}  not available: {r.unavailable}")
            continue
        fits = "yes" if r.fits(args.memory_budget) else "no"
        print(f"{r.kind:<18}{r.makespan:>10.4g}{100 * r.bubble_ratio:>8.1f}%"
              f"{r.peak_activations:>11.3g}  {fits}")
    best = recommend(rows, args.memory_budget)
    if best is None:
        print(f"crucible pipeline plan: no schedule fits --memory-budget {args.memory_budget} "
              "for this shape; raise the budget or change --stages/--microbatches",
              file=sys.stderr)
        return 1
    print(f"\nrecommended: {best.kind} (step {best.makespan:.4g}, bubble "
          f"{100 * best.bubble_ratio:.1f}%, peak {best.peak_activations:.3g} micro-batches "
          "of activations per rank)")
    return 0
