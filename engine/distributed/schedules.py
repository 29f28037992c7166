"""Pipeline-parallel schedules: typed wrappers over the C++ generator, validator and simulator
(``engine._pipeline``, built from csrc/pipeline/).

    s = build_schedule("zb-h1", stages=4, microbatches=8)
    s.check()                                   # raises ScheduleError listing every problem
    print(s.to_grid_string())                   # step x rank grid, as torch prints its own
    s.simulate(StepTimes(1.0, 1.0, 1.0)).bubble_ratio

A schedule lists, per pipeline rank, the ordered actions that rank runs: compute (F forward,
B full backward, or the zero-bubble split I input-gradient + W weight-gradient) and the
point-to-point transfers (SEND_F/RECV_F carry activations forward, SEND_B/RECV_B carry
input gradients back). Stage ``s`` of ``stages * virtual_stages`` runs on rank
``s % stages``. Action strings are torch.distributed.pipelining's ("0F0", "1I2", "2SEND_B0").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

from engine import _pipeline

ScheduleKind = Literal["gpipe", "1f1b", "interleaved-1f1b", "zb-h1"]
KINDS: tuple[str, ...] = ("gpipe", "1f1b", "interleaved-1f1b", "zb-h1")


class ScheduleError(ValueError):
    """A schedule that is incomplete, breaks a dependency, leaves a transfer unmatched or
    deadlocks."""


class Op(str, Enum):
    """What an action does; the value is torch.distributed.pipelining's name for it."""

    FORWARD = "F"
    FULL_BACKWARD = "B"
    BACKWARD_INPUT = "I"
    BACKWARD_WEIGHT = "W"
    SEND_F = "SEND_F"
    RECV_F = "RECV_F"
    SEND_B = "SEND_B"
    RECV_B = "RECV_B"

    @property
    def is_compute(self) -> bool:
        """True for F, B, I and W."""
        return self in (Op.FORWARD, Op.FULL_BACKWARD, Op.BACKWARD_INPUT, Op.BACKWARD_WEIGHT)


@dataclass(frozen=True)
class Action:
    """One step of one rank: ``op`` on ``stage`` for micro-batch ``microbatch``."""

    op: Op
    stage: int
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.op.value}{self.microbatch}"

    @classmethod
    def from_str(cls, text: str) -> Action:
        """Parses an action string such as ``"2F0"`` or ``"1SEND_B3"``."""
        match = _ACTION.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"action {text!r} is not <stage><op><microbatch> with op one of "
                             f"{', '.join(o.value for o in Op)} (e.g. '0F0', '1SEND_B2')")
        return cls(Op(match[2]), int(match[1]), int(match[3]))


_ACTION = re.compile(r"(\d+)(SEND_F|RECV_F|SEND_B|RECV_B|F|B|I|W)(\d+)")


@dataclass(frozen=True)
class StepTimes:
    """Seconds (or any unit) of one micro-batch through one rank's share of the layers."""

    forward: float = 1.0
    """F."""
    backward: float = 1.0
    """I, the input-gradient half of the backward (the ZB paper's B)."""
    weight: float = 1.0
    """W, the weight-gradient half; a full backward B costs ``backward + weight``."""
    latency: float = 0.0
    """One point-to-point transfer, from its SEND to the RECV completing."""

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "weight", "latency"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"StepTimes.{name} must be >= 0 (got {getattr(self, name)})")

    @classmethod
    def parse(cls, text: str, latency: float = 0.0) -> StepTimes:
        """``"F,B,W"`` (e.g. ``"1,1,1"`` or ``"1,1.2,0.8"``) as StepTimes."""
        parts = text.split(",")
        try:
            values = [float(x) for x in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise ValueError(f"times {text!r} must be three numbers F,B,W (e.g. 1,1,1)")
        return cls(*values, latency=latency)


@dataclass(frozen=True)
class RankSimulation:
    """One rank's share of a simulated step."""

    busy: float
    """Time spent computing."""
    finish: float
    """When its last action ends."""
    peak_activations: float
    """Most micro-batches whose activations are held at once, in units of one micro-batch
    through the rank's layers (held from F until the backward is complete: B, or W)."""


@dataclass(frozen=True)
class SimulationResult:
    """A simulated training step."""

    makespan: float
    """From the first action to the last rank finishing."""
    bubble_ratio: float
    """Idle share of all ranks' time: 1 - busy / (ranks * makespan)."""
    ranks: tuple[RankSimulation, ...]

    @property
    def peak_activations(self) -> float:
        """The largest per-rank peak."""
        return max(r.peak_activations for r in self.ranks)


class Schedule:
    """Per-rank ordered actions for ``ranks`` pipeline ranks, ``virtual_stages`` model chunks
    per rank and ``microbatches`` micro-batches. Build one with ``build_schedule`` or
    ``schedule_from_actions``."""

    def __init__(self, native: _pipeline.Schedule) -> None:
        self._native = native

    @property
    def kind(self) -> str:
        """gpipe, 1f1b, interleaved-1f1b, zb-h1 or custom."""
        return self._native.kind

    @property
    def ranks(self) -> int:
        """Pipeline ranks (the ``stages`` argument of build_schedule)."""
        return self._native.ranks

    @property
    def virtual_stages(self) -> int:
        """Model chunks per rank."""
        return self._native.virtual_stages

    @property
    def microbatches(self) -> int:
        """Micro-batches per step."""
        return self._native.microbatches

    @property
    def num_stages(self) -> int:
        """Model chunks in all: ranks * virtual_stages."""
        return self._native.stages

    @property
    def split_backward(self) -> bool:
        """True when backwards are split into I and W (zero-bubble)."""
        return any(a.op is Op.BACKWARD_INPUT for a in self.compute_actions(0))

    def stage_rank(self, stage: int) -> int:
        """The rank that runs ``stage``."""
        return stage % self.ranks

    def rank_stages(self, rank: int) -> list[int]:
        """The stages ``rank`` runs, in model order."""
        return list(range(rank, self.num_stages, self.ranks))

    def compute_actions(self, rank: int) -> list[Action]:
        """``rank``'s compute actions (F, B, I, W) in order."""
        return [Action(Op(o), s, m) for o, s, m in self._native.compute_actions(rank)]

    def actions(self, rank: int) -> list[Action]:
        """``rank``'s compute and communication actions in order."""
        return [Action(Op(o), s, m) for o, s, m in self._native.actions(rank)]

    def num_actions(self) -> int:
        """Actions of all ranks, communication included."""
        return self._native.num_actions()

    def validate(self) -> list[str]:
        """Every problem found (empty when valid): completeness, dependencies, SEND/RECV
        matching, deadlock freedom."""
        return self._native.validate()

    def check(self) -> Schedule:
        """Raises ScheduleError listing the problems of an invalid schedule; returns self."""
        problems = self.validate()
        if problems:
            raise ScheduleError(f"{self.kind} schedule ({self.ranks} ranks, "
                                f"{self.microbatches} micro-batches) is invalid:\n  "
                                + "\n  ".join(problems))
        return self

    def simulate(self, times: StepTimes = StepTimes()) -> SimulationResult:
        """Replays the schedule with ``times`` (a virtual stage's times are the rank's divided
        by virtual_stages). Raises RuntimeError when the schedule deadlocks."""
        makespan, bubble, ranks = self._native.simulate(times.forward, times.backward,
                                                        times.weight, times.latency)
        return SimulationResult(makespan, bubble, tuple(RankSimulation(*r) for r in ranks))

    def to_grid_string(self, with_comms: bool = False) -> str:
        """The step x rank grid of compute actions, one unit of time per action (the layout
        of torch.distributed.pipelining's ``_format_pipeline_order``); ``with_comms`` lists
        every rank's full action list instead."""
        return self._native.grid(with_comms)

    def to_csv(self, path: str | Path | None = None, with_comms: bool = False) -> str:
        """One row per rank of action strings, in the CSV that
        ``_PipelineScheduleRuntime._load_csv`` reads: ``format="compute_only"`` (idle steps
        are empty cells) or, with ``with_comms``, ``format="compute_comms"``. Written to
        ``path`` when given; returned either way."""
        text = self._native.csv(with_comms)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_pipelining_order(self, with_comms: bool = False) -> dict[int, list[str | None]]:
        """``{rank: [action string or None]}``, the shape of torch's ``pipeline_order``
        (compute only, None = idle step) or ``pipeline_order_with_comms``. Map the strings
        with ``torch.distributed.pipelining.schedules._Action.from_str``."""
        rows = self.to_csv(with_comms=with_comms).splitlines()
        return {r: [cell or None for cell in row.split(",")] if row else []
                for r, row in enumerate(rows)}

    def __repr__(self) -> str:
        return (f"Schedule({self.kind!r}, ranks={self.ranks}, virtual_stages="
                f"{self.virtual_stages}, microbatches={self.microbatches})")


def build_schedule(kind: ScheduleKind, stages: int, microbatches: int,
                   virtual_stages: int = 1) -> Schedule:
    """Generates ``kind`` for ``stages`` pipeline ranks and ``microbatches`` micro-batches
    (``virtual_stages`` chunks per rank, >= 2, for interleaved-1f1b only). Raises ValueError
    naming the violated constraint: 1f1b and zb-h1 need microbatches >= stages; interleaved
    needs microbatches to be a multiple of max(1, microbatches // stages)."""
    if kind not in KINDS:
        raise ValueError(f"unknown schedule {kind!r} (choose {', '.join(KINDS)})")
    return Schedule(_pipeline.build(kind, stages, microbatches, virtual_stages))


def schedule_from_actions(actions: list[list[str]], microbatches: int,
                          virtual_stages: int = 1, with_comms: bool = False) -> Schedule:
    """A custom schedule from per-rank action strings (a CSV's rows; empty strings are idle
    steps). Without ``with_comms`` the SEND/RECV actions are added as build_schedule does.
    Not validated: call ``check()``."""
    return Schedule(_pipeline.from_actions(len(actions), virtual_stages, microbatches,
                                           actions, with_comms))


def load_csv(path: str | Path, microbatches: int, virtual_stages: int = 1,
             with_comms: bool = False) -> Schedule:
    """Reads a schedule CSV (ours or torch.distributed.pipelining's ``_dump_csv``)."""
    rows = [line.split(",") if line else [] for line in Path(path).read_text().splitlines()]
    return schedule_from_actions(rows, microbatches, virtual_stages, with_comms)
