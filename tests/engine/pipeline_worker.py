"""One rank of the multi-process pipeline tests (tests/engine/test_pipeline_runtime.py).

    python pipeline_worker.py --store FILE --rank R --world N --pp P --case grads|fail --out DIR

``grads``: for every schedule, one pipeline step (data parallel over world / pp replicas) and
this rank's loss and gradients against the unsplit model on the whole batch, written to
DIR/rank<R>.json. ``fail``: the rank running stage 2 raises in its second forward; ``stall``:
it stalls there past the others' timeout. Every rank writes the error it ended with and how
long that took.
"""

import argparse
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from engine.distributed.pipeline import PipelineError, PipelineRuntime, init_pipeline_groups
from engine.distributed.schedules import build_schedule
from engine.model import Transformer, preset

MICROBATCHES = 4
ROWS, SEQ = 8, 16
SCHEDULES = (("gpipe", 1), ("1f1b", 1), ("interleaved-1f1b", 2), ("zb-h1", 1))


def model_and_batch() -> tuple[Transformer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Transformer(preset("tiny", n_layers=8))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (ROWS, SEQ + 1), generator=g)
    return model, tokens[:, :-1], tokens[:, 1:]


def reference() -> tuple[float, dict[str, torch.Tensor]]:
    model, x, y = model_and_batch()
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in model.named_parameters()}


def check_grads(args, pp_group, dp_group, replica: int, replicas: int) -> dict:
    ref_loss, ref_grads = reference()
    rows = ROWS // replicas
    out = {}
    for kind, virtual in SCHEDULES:
        model, x, y = model_and_batch()
        x, y = x[replica * rows:(replica + 1) * rows], y[replica * rows:(replica + 1) * rows]
        schedule = build_schedule(kind, args.pp, MICROBATCHES, virtual)
        runtime = PipelineRuntime(model, schedule, pp_group=pp_group, dp_group=dp_group,
                                  timeout_s=30)
        result = runtime.step(x, y)
        names = {id(p): n for n, p in model.named_parameters()}
        diffs = [float((p.grad - ref_grads[names[id(p)]]).abs().max())
                 for p in runtime.parameters()]
        scale = max(float(ref_grads[names[id(p)]].abs().max()) for p in runtime.parameters())
        out[kind] = {"loss": result.loss, "max_grad_diff": max(diffs), "grad_scale": scale,
                     "params": len(diffs), "counts": result.counts}
    out["checkpoint"] = checkpoint_round_trip(args, runtime, model, x, y, pp_group, dp_group)
    if replicas > 1:
        # the replicas' losses are of their own halves; their mean is the batch loss
        for kind, _ in SCHEDULES:
            value = torch.tensor([out[kind]["loss"]])
            dist.all_reduce(value, group=dp_group)
            out[kind]["loss"] = float(value) / replicas
    return {"ref_loss": ref_loss, "schedules": out}


def checkpoint_round_trip(args, runtime, model, x, y, pp_group, dp_group) -> dict:
    """An optimizer step, engine.checkpoint's save of this rank's slice, a load into a
    differently initialised model: parameters and optimizer state come back exactly."""
    from engine.checkpoint import load_checkpoint, save_checkpoint

    opt = torch.optim.AdamW(runtime.module.parameters(), lr=1e-2)
    opt.step()
    root = Path(args.out) / "checkpoints"
    path = save_checkpoint(root, 1, runtime.module, opt, {}, keep_last=1)
    torch.manual_seed(123)
    other = Transformer(model.config)
    restored = PipelineRuntime(other, runtime.schedule, pp_group=pp_group, dp_group=dp_group)
    opt2 = torch.optim.AdamW(restored.module.parameters(), lr=1e-2)
    restored.step(x, y)
    opt2.step()  # creates the optimizer state that the load overwrites
    load_checkpoint(path, restored.module, opt2)
    want, got = runtime.module.state_dict(), restored.module.state_dict()
    same_params = want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    same_optim = len(s1) == len(s2) and all(
        torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    return {"same_params": same_params, "same_optim": same_optim, "keys": len(want)}


def check_failure(args) -> dict:
    """``fail``: stage 2 raises in its second forward. ``stall``: it sleeps 8 s there, past
    the 2 s timeout of the others."""
    model, x, y = model_and_batch()
    runtime = PipelineRuntime(model, build_schedule("1f1b", args.world, MICROBATCHES),
                              timeout_s=30 if args.case == "fail" else 2)
    if 2 in runtime.stages:
        stage = runtime.stages[2]
        calls = {"n": 0}
        forward = stage.forward

        def broken(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                if args.case == "stall":
                    time.sleep(8)
                else:
                    raise RuntimeError("injected failure in stage 2")
            return forward(*a, **k)

        stage.forward = broken
    start = time.monotonic()
    try:
        runtime.step(x, y)
        error = None
    except Exception as exc:  # noqa: BLE001 - the test reads the message
        error = f"{type(exc).__name__}: {exc}"
        pipeline_error = isinstance(exc, PipelineError)
    return {"error": error, "pipeline_error": error is None or pipeline_error,
            "seconds": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--case", choices=["grads", "fail", "stall"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=args.rank,
                            world_size=args.world, timeout=timedelta(seconds=30))
    if args.case == "grads":
        pp_group, dp_group = init_pipeline_groups(args.pp)
        replica = args.rank // args.pp
        result = check_grads(args, pp_group, dp_group, replica, args.world // args.pp)
    else:
        result = check_failure(args)
    Path(args.out, f"rank{args.rank}.json").write_text(json.dumps(result))
    # A failed step leaves transfers pending; leave without a teardown that would wait on them.
    os._exit(0)


if __name__ == "__main__":
    main()
