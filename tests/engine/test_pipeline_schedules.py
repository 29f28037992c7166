"""Pipeline schedules (C++ generator, validator, simulator): validity over many shapes,
the constraints' errors, the bubble formulas, the orders and CSV of
torch.distributed.pipelining."""

import pytest
import torch.distributed.pipelining.schedules as tps

from engine.distributed.schedules import (
    KINDS,
    Action,
    Op,
    ScheduleError,
    StepTimes,
    build_schedule,
    load_csv,
    schedule_from_actions,
)

EQUAL = StepTimes(1.0, 1.0, 1.0)


class FakeStage:
    """Just what torch's schedule constructors read from a pipeline stage."""

    def __init__(self, index: int, num_stages: int, group_size: int, rank: int) -> None:
        self.stage_index, self.num_stages = index, num_stages
        self.group_size, self.group_rank = group_size, rank
        self.is_first, self.is_last = index == 0, index == num_stages - 1
        self.submod = None


def torch_order(cls, p: int, m: int, v: int = 1) -> dict[int, list[str]]:
    """torch's compute order per rank, idle steps and REDUCE_GRAD dropped."""
    stages = [FakeStage(i * p, p * v, p, 0) for i in range(v)]
    if cls in (tps.ScheduleGPipe, tps.Schedule1F1B):
        order = cls(stages[0], m)._get_pipeline_order()
    else:
        order = cls(stages, m).pipeline_order
    return {r: [str(a) for a in acts if a is not None and a.is_compute_op]
            for r, acts in order.items()}


def ours(kind: str, p: int, m: int, v: int = 1) -> dict[int, list[str]]:
    s = build_schedule(kind, p, m, v)
    return {r: [str(a) for a in s.compute_actions(r)] for r in range(p)}


def shapes():
    for p in range(1, 7):
        for m in range(1, 13):
            yield "gpipe", p, m, 1
            if m >= p:
                yield "1f1b", p, m, 1
                yield "zb-h1", p, m, 1
            for v in (2, 3):
                if m % max(1, m // p) == 0:
                    yield "interleaved-1f1b", p, m, v


def test_every_generated_schedule_is_valid():
    count = 0
    for kind, p, m, v in shapes():
        s = build_schedule(kind, p, m, v)
        assert s.validate() == [], (kind, p, m, v)
        computes = sum(len(s.compute_actions(r)) for r in range(p))
        assert computes == (3 if kind == "zb-h1" else 2) * m * p * v
        count += 1
    assert count > 300


@pytest.mark.parametrize(("kind", "p", "m", "v", "message"), [
    ("1f1b", 4, 3, 1, "microbatches (3) must be >= stages (4)"),
    ("zb-h1", 8, 4, 1, "microbatches (4) must be >= stages (8)"),
    ("interleaved-1f1b", 4, 8, 1, "virtual_stages must be >= 2"),
    ("interleaved-1f1b", 4, 9, 2, "must be a multiple of the number of rounds"),
    ("gpipe", 4, 8, 2, "virtual_stages must be 1"),
    ("gpipe", 0, 8, 1, "stages (pipeline ranks) must be >= 1"),
    ("1f1b", 2, 0, 1, "microbatches must be >= 1"),
    ("pipedream", 2, 4, 1, "unknown schedule 'pipedream'"),
])
def test_out_of_domain_shapes_raise_a_clear_error(kind, p, m, v, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_schedule(kind, p, m, v)


@pytest.mark.parametrize(("p", "m"), [(2, 2), (4, 8), (4, 32), (8, 8), (8, 64)])
def test_1f1b_bubble_is_p_minus_1_over_m_plus_p_minus_1(p, m):
    sim = build_schedule("1f1b", p, m).simulate(EQUAL)
    assert sim.bubble_ratio == pytest.approx((p - 1) / (m + p - 1), abs=1e-12)
    assert sim.makespan == pytest.approx(3 * (m + p - 1))
    # 1F1B holds at most p - r micro-batches on rank r; GPipe holds all m
    assert [r.peak_activations for r in sim.ranks] == [min(p - r, m) for r in range(p)]
    assert build_schedule("gpipe", p, m).simulate(EQUAL).peak_activations == m


@pytest.mark.parametrize(("p", "m"), [(4, 8), (4, 32), (8, 16), (8, 64)])
def test_zb_h1_bubble_is_a_third_of_1f1b(p, m):
    zb = build_schedule("zb-h1", p, m).simulate(EQUAL)
    base = build_schedule("1f1b", p, m).simulate(EQUAL)
    busy = 3 * m  # per rank: m x (F + B + W)
    # idle time per rank: (p-1)(F+B+W) for 1F1B, (p-1)(F+B-W) for ZB-H1
    assert base.makespan - busy == pytest.approx(3 * (p - 1))
    assert zb.makespan - busy == pytest.approx(p - 1)
    assert zb.bubble_ratio == pytest.approx((p - 1) / (3 * m + p - 1))
    assert 0.3 < zb.bubble_ratio / base.bubble_ratio < 0.42
    # and no more activation memory than 1F1B at its peak
    assert zb.peak_activations == base.peak_activations == p


def test_interleaving_shrinks_the_bubble_and_latency_grows_the_step():
    p, m = 4, 16
    plain = build_schedule("1f1b", p, m).simulate(EQUAL)
    inter = build_schedule("interleaved-1f1b", p, m, 2).simulate(EQUAL)
    assert inter.bubble_ratio < plain.bubble_ratio
    slow = build_schedule("1f1b", p, m).simulate(StepTimes(1.0, 1.0, 1.0, latency=0.5))
    # the first micro-batch crosses p - 1 links forward and p - 1 back
    assert slow.makespan >= plain.makespan + 2 * (p - 1) * 0.5


@pytest.mark.parametrize(("p", "m"), [(2, 2), (3, 5), (4, 8), (8, 12)])
def test_compute_order_matches_torch_pipelining(p, m):
    assert ours("gpipe", p, m) == torch_order(tps.ScheduleGPipe, p, m)
    # Schedule1F1B._get_pipeline_order (torch 2.13) numbers the last rank's forwards from 1
    # (1F1, 1B0, 1F2, ... with 1F<m> out of range); every other rank must agree.
    ref = torch_order(tps.Schedule1F1B, p, m)
    got = ours("1f1b", p, m)
    assert {r: got[r] for r in range(p - 1)} == {r: ref[r] for r in range(p - 1)}
    assert got[p - 1] == [f"{p - 1}{op}{i}" for i in range(m) for op in "FB"]
    assert ours("zb-h1", p, m) == torch_order(tps.ScheduleInterleavedZeroBubble, p, m)
    for v in (2, 3):
        if m % max(1, m // p) == 0:
            assert ours("interleaved-1f1b", p, m, v) == torch_order(
                tps.ScheduleInterleaved1F1B, p, m, v)


@pytest.mark.parametrize(("kind", "v"), [("1f1b", 1), ("interleaved-1f1b", 2), ("zb-h1", 1)])
def test_csv_loads_into_torch_pipelining_runtime(tmp_path, kind, v):
    p, m = 4, 8
    s = build_schedule(kind, p, m, v)
    path = tmp_path / "schedule.csv"
    s.to_csv(path)
    stages = [FakeStage(i * p, p * v, p, 0) for i in range(v)]
    runtime = tps._PipelineScheduleRuntime(stages, m)
    runtime._load_csv(str(path), format="compute_only")
    assert {r: [str(a) if a else None for a in acts]
            for r, acts in runtime.pipeline_order.items()} == s.to_pipelining_order()
    # _load_csv ran torch's own _validate_schedule and lowered the order to send/recv (which
    # raises on an order it cannot schedule)
    assert sum(len(a) for a in runtime.pipeline_order_with_comms.values()) > 2 * m * p * v
    comms = tmp_path / "comms.csv"
    s.to_csv(comms, with_comms=True)
    runtime._load_csv(str(comms), format="compute_comms")
    assert [str(a) for a in runtime.pipeline_order_with_comms[1]] == [
        str(a) for a in s.actions(1)]
    assert load_csv(comms, m, v, with_comms=True).validate() == []
    assert ours_from(load_csv(path, m, v)) == ours(kind, p, m, v)


def ours_from(s):
    return {r: [str(a) for a in s.compute_actions(r)] for r in range(s.ranks)}


def test_grid_lines_up_steps_like_torch():
    s = build_schedule("1f1b", 2, 3)
    assert s.to_grid_string() == (
        "        Rank 0 Rank 1\n"
        "Step 0: 0F0\n"
        "Step 1: 0F1    1F0\n"
        "Step 2:        1B0\n"
        "Step 3: 0B0    1F1\n"
        "Step 4: 0F2    1B1\n"
        "Step 5: 0B1    1F2\n"
        "Step 6:        1B2\n"
        "Step 7: 0B2\n")
    assert s.actions(0)[:3] == [Action(Op.FORWARD, 0, 0), Action(Op.SEND_F, 0, 0),
                                Action(Op.FORWARD, 0, 1)]
    assert "1RECV_F0" in s.to_grid_string(with_comms=True)


def test_action_strings_round_trip():
    for text in ("0F0", "12I3", "1SEND_B7", "3RECV_F0", "2W11"):
        assert str(Action.from_str(text)) == text
    with pytest.raises(ValueError, match="not <stage><op><microbatch>"):
        Action.from_str("F0")


def test_validator_reports_each_kind_of_problem():
    good = [["0F0", "0F1", "0B0", "0B1"], ["1F0", "1B0", "1F1", "1B1"]]
    assert schedule_from_actions(good, 2).validate() == []
    missing = [["0F0", "0F1", "0B0"], good[1]]
    assert any("0B1" in e and "found 0 B" in e for e in schedule_from_actions(missing, 2)
               .validate())
    # rank 1 waits for a gradient before sending the activations rank 0 waits for
    swapped = [["0F0", "0B0", "0F1", "0B1"], ["1F0", "1B0", "1F1", "1B1"]]
    assert schedule_from_actions(swapped, 2).validate() == []
    deadlock = [["0F0", "0B0", "0F1", "0B1"], ["1F1", "1F0", "1B0", "1B1"]]
    problems = schedule_from_actions(deadlock, 2).validate()
    assert any(e.startswith("deadlock: rank") for e in problems), problems
    wrong_rank = [["0F0", "0F1", "0B0", "0B1", "1F0"], good[1]]
    assert any("belongs to stage 1, which runs on rank 1" in e
               for e in schedule_from_actions(wrong_rank, 2).validate())
    comms = build_schedule("1f1b", 2, 2)
    rows = [[str(a) for a in comms.actions(r)] for r in range(2)]
    rows[1].remove("1RECV_F1")
    problems = schedule_from_actions(rows, 2, with_comms=True).validate()
    assert any("0SEND_F1 appears 1 times and its matching 1RECV_F1 0 times" in e
               for e in problems), problems
    # valid with tags (gloo), not with NCCL's in-order matching: rejected
    out_of_order = [["0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0B0", "0RECV_B1", "0B1"],
                    ["1RECV_F1", "1F1", "1RECV_F0", "1F0", "1B0", "1SEND_B0", "1B1", "1SEND_B1"]]
    assert schedule_from_actions(out_of_order, 2, with_comms=True).validate() == [
        "rank 0 sends its message #0 to rank 1 for 1RECV_F0, but rank 1 receives 1RECV_F1 "
        "there; transfers between two ranks must be received in the order they are sent (NCCL "
        "matches them by order)"]
    with pytest.raises(ScheduleError, match="is invalid"):
        schedule_from_actions(deadlock, 2).check()
    with pytest.raises(RuntimeError, match="deadlocks"):
        schedule_from_actions(deadlock, 2).simulate()


def test_large_schedules_are_valid():
    for kind, v in (("1f1b", 1), ("interleaved-1f1b", 2), ("zb-h1", 1)):
        s = build_schedule(kind, 64, 1024, v)
        assert s.validate() == []
        assert s.num_actions() > 64 * 1024 * 2


def test_plan_command_recommends_the_fastest_schedule_within_budget(capsys):
    from crucible.cli import main

    assert main(["pipeline", "plan", "--stages", "4", "--microbatches", "8"]) == 0
    out = capsys.readouterr().out
    assert "zb-h1 (4 ranks, 8 micro-batches):" in out and "Step 26: 0W7" in out
    assert "recommended: zb-h1 (step 27, bubble 11.1%" in out
    # GPipe holds all 8 micro-batches, interleaving 5.5: a budget of 4 leaves 1F1B and ZB-H1
    assert main(["pipeline", "plan", "--stages", "4", "--microbatches", "8", "--grid", "none",
                 "--times", "1,2,0", "--memory-budget", "4"]) == 0
    fits = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in KINDS}
    assert fits == {"gpipe": "no", "1f1b": "yes", "interleaved-1f1b": "no", "zb-h1": "yes"}
    assert main(["pipeline", "plan", "--stages", "4", "--microbatches", "2",
                 "--memory-budget", "1", "--grid", "none"]) == 1
    out = capsys.readouterr().out
    assert "not available: 1f1b: microbatches (2) must be >= stages (4)" in out
    assert main(["pipeline", "plan", "--stages", "4", "--microbatches", "8",
                 "--times", "1,2"]) == 2
