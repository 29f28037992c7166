"""The pipeline runtime across real processes (gloo on CPU): for every schedule, the loss and
this rank's gradients after one step equal the unsplit model's on the whole batch, with 2 and
4 pipeline ranks and with 2 pipeline ranks x 2 data-parallel replicas; each rank's slice goes
through engine.checkpoint and back exactly; a stage that raises ends every rank quickly with an
error naming it, and one that stalls ends the others at their timeout."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("pipeline_worker.py")
ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zb-h1")


def launch(tmp_path: Path, world: int, pp: int, case: str) -> list[dict]:
    """Runs ``world`` worker processes and returns each rank's JSON report."""
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), "--store", str(tmp_path / "store"), "--rank", str(r),
         "--world", str(world), "--pp", str(pp), "--case", case, "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=60)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a pipeline rank hung (world {world}, case {case})")
    reports = []
    for r, log in enumerate(logs):
        path = tmp_path / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote no report:\n{log[-3000:]}"
        reports.append(json.loads(path.read_text()))
    return reports


@pytest.mark.parametrize(("world", "pp"), [(2, 2), (4, 4), (4, 2)],
                         ids=["pp2", "pp4", "pp2xdp2"])
def test_every_schedule_matches_the_unsplit_model(tmp_path, world, pp):
    reports = launch(tmp_path, world, pp, "grads")
    params = 0
    for rank, report in enumerate(reports):
        for kind in SCHEDULES:
            got = report["schedules"][kind]
            assert got["loss"] == pytest.approx(report["ref_loss"], rel=1e-6), (rank, kind)
            # fp32: only the micro-batch grouping of the sums differs
            assert got["max_grad_diff"] <= 1e-5 * got["grad_scale"] + 1e-8, (rank, kind)
        params += report["schedules"]["1f1b"]["params"]
        ckpt = report["schedules"]["checkpoint"]
        assert ckpt["same_params"] and ckpt["same_optim"], (rank, ckpt)
        assert ckpt["keys"] == report["schedules"]["zb-h1"]["params"]
        counts = report["schedules"]["zb-h1"]["counts"]
        assert counts["I"] == counts["W"] == counts["F"] == 4
        assert report["schedules"]["interleaved-1f1b"]["counts"] == {"F": 8, "B": 8}
    # the stages of one replica hold the whole model: 8 blocks x 9 tensors + embed, norm, out
    assert params == (world // pp) * (8 * 9 + 3)


def test_a_failing_stage_ends_every_rank_with_its_error(tmp_path):
    reports = launch(tmp_path, 4, 4, "fail")
    for rank, report in enumerate(reports):
        assert report["error"] is not None, f"rank {rank} finished a step that had failed"
        assert "injected failure in stage 2" in report["error"], report["error"]
        assert report["pipeline_error"], report["error"]
        assert report["seconds"] < 10, f"rank {rank} took {report['seconds']:.1f}s to stop"
    assert "aborted" in reports[0]["error"] and "rank 2" in reports[0]["error"]


def test_a_stalled_stage_ends_the_others_at_their_timeout(tmp_path):
    reports = launch(tmp_path, 4, 4, "stall")
    for rank in (0, 1, 3):  # rank 2 sleeps past their 2 s timeout
        error, seconds = reports[rank]["error"], reports[rank]["seconds"]
        assert error is not None and "did not arrive within 2s" in error, (rank, error)
        assert reports[rank]["pipeline_error"]
        assert seconds < 6, f"rank {rank} took {seconds:.1f}s to stop"
    assert reports[2]["error"] is not None  # its peers are gone: it fails too, not hangs


def test_split_backward_weight_grads_equal_the_full_backward():
    import torch

    from engine.distributed.stages import PipelineStage, stage_layers
    from engine.distributed.weight_grad import WeightGradCapture
    from engine.model import Transformer, preset

    torch.manual_seed(0)
    model = Transformer(preset("tiny", n_layers=4))
    stage = PipelineStage(model, 1, 2)
    assert list(stage.blocks) == ["2", "3"] and stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert WeightGradCapture.supports(stage)
    assert not WeightGradCapture.supports(PipelineStage(model, 0, 2))  # the embedding
    x = torch.randn(2, 8, 64)
    pos = torch.arange(8).expand(2, 8)
    dy = torch.randn(2, 8, 512)
    xi = x.clone().requires_grad_()
    stage(xi, pos).backward(dy)
    want = {n: p.grad.clone() for n, p in stage.named_parameters()}
    want_x = xi.grad.clone()
    stage.zero_grad(set_to_none=True)
    capture = WeightGradCapture()
    xi = x.clone().requires_grad_()
    with capture.recording(stage):
        out = stage(xi, pos)
    (gx,) = torch.autograd.grad(out, xi, dy)  # I: no weight gradient yet
    assert all(p.grad is None for p in stage.parameters())
    capture.apply()                            # W
    torch.testing.assert_close(gx, want_x, rtol=0, atol=0)
    for n, p in stage.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-7, msg=n)
