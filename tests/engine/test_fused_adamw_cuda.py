"""The CUDA kernels against the CPU kernels and the references. They run where torch sees a
GPU (the device machine) and are skipped on CPU-only machines, where `make cuda-check` still
compiles them."""

import pytest
import torch

from engine.ops import fused_adamw_, total_norm, total_norm_reference
from engine.optim import FusedAdamW

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SIZES = [(1,), (7,), (1000003,), (3, 5, 17), (65537,), (4096, 257)]


def make(dtype, device, amsgrad, master):
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(s, generator=gen).to(dtype) for s in SIZES]
    out = dict(
        params=params,
        grads=[torch.randn(s, generator=gen).to(dtype) for s in SIZES],
        exp_avgs=[torch.randn(s, generator=gen) * 0.1 for s in SIZES],
        exp_avg_sqs=[torch.rand(s, generator=gen) * 0.01 for s in SIZES],
        max_exp_avg_sqs=[torch.rand(s, generator=gen) * 0.02 for s in SIZES] if amsgrad else [],
        master_params=[p.float() for p in params] if master else [],
    )
    moved = {k: [t.to(device) for t in v] for k, v in out.items()}
    moved["state_steps"] = [torch.tensor(float(i + 1)) for i in range(len(SIZES))]
    return moved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_cuda_kernel_equals_cpu_kernel_bit_for_bit(dtype, amsgrad, master, maximize):
    hyper = dict(lr=3e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, eps=1e-8, amsgrad=amsgrad,
                 maximize=maximize)
    results = []
    for device in ("cpu", "cuda"):
        t = make(dtype, device, amsgrad, master)
        fused_adamw_(t["params"], t["grads"], t["exp_avgs"], t["exp_avg_sqs"], t["state_steps"],
                     max_exp_avg_sqs=t["max_exp_avg_sqs"], master_params=t["master_params"],
                     grad_scale=torch.tensor(0.75, device=device), **hyper)
        results.append(t)
    cpu, cuda = results
    for key in ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "master_params"):
        for a, b in zip(cpu[key], cuda[key]):
            # Both kernels round every operation on its own (no FMA contraction): same bits.
            assert torch.equal(a, b.cpu()), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_total_norm_matches_reference_and_is_deterministic(dtype):
    tensors = [torch.randn(s, device="cuda").to(dtype) for s in SIZES]
    got = total_norm(tensors)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), total_norm_reference([t.cpu() for t in tensors]),
                               rtol=1e-6, atol=0)
    assert torch.equal(got, total_norm(tensors))


def test_cuda_optimizer_matches_torch_fused_with_clipping():
    gen = torch.Generator().manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen).cuda()) for s in SIZES]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = FusedAdamW(ours, lr=1e-2, max_grad_norm=1.0)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, foreach=False)
    for _ in range(50):
        for p, q in zip(ours, ref):
            p.grad = torch.randn(p.shape, generator=gen).cuda()
            q.grad = p.grad.clone()
        opt.step()
        torch.nn.utils.clip_grad_norm_(ref, 1.0, foreach=False)
        ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
