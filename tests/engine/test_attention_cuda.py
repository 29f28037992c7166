"""The CUDA flash attention kernels against the fp32 reference, forward and backward. They run
where torch sees a GPU (the device machine) and are skipped on CPU-only machines, where
`make cuda-check` still compiles them."""

import pytest
import torch

from engine.ops import attention_reference, flash_attention, flash_attention_with_lse

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def forward_backward(fn, q, k, v, grad, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    return out, torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


CASES = [
    # (B, T, Hq, Hkv, D, causal, window)
    (2, 256, 4, 4, 64, True, None),
    (1, 1000, 8, 2, 128, True, None),
    (2, 77, 4, 1, 64, False, None),
    (1, 300, 4, 4, 128, True, 100),
    (1, 17, 2, 2, 64, False, 5),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
def test_cuda_error_at_most_twice_pytorch_own_error(dtype, case):
    B, T, Hq, Hkv, D, causal, window = case
    gen = torch.Generator(device="cuda").manual_seed(T)
    q = torch.randn(B, T, Hq, D, device="cuda", generator=gen)
    k = torch.randn(B, T, Hkv, D, device="cuda", generator=gen)
    v = torch.randn(B, T, Hkv, D, device="cuda", generator=gen)
    grad = torch.randn(B, T, Hq, D, device="cuda", generator=gen)
    kw = dict(causal=causal, window=window)
    exact, exact_grads = forward_backward(attention_reference, q, k, v, grad, **kw)
    low = [t.to(dtype) for t in (q, k, v)]
    ours, our_grads = forward_backward(flash_attention, *low, grad, **kw)
    torch_out, torch_grads = forward_backward(attention_reference, *low, grad, **kw)
    for name, got, base, want in zip(["out", "dq", "dk", "dv"], [ours, *our_grads],
                                     [torch_out, *torch_grads], [exact, *exact_grads]):
        assert max_err(got, want) <= 2 * max_err(base, want) + 1e-3, name


def test_cuda_varlen_matches_cpu_kernel():
    lengths = [1, 17, 200, 64]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total = sum(lengths)
    q = torch.randn(total, 4, 64).bfloat16()
    k = torch.randn(total, 2, 64).bfloat16()
    v = torch.randn(total, 2, 64).bfloat16()
    grad = torch.randn(total, 4, 64).bfloat16()
    cpu_out, cpu_grads = forward_backward(flash_attention, q, k, v, grad, cu_seqlens=cu)
    gpu_out, gpu_grads = forward_backward(
        flash_attention, q.cuda(), k.cuda(), v.cuda(), grad.cuda(), cu_seqlens=cu.cuda(),
        max_seqlen=max(lengths))
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=0.02, atol=0.02)
    for got, want in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(got.cpu(), want, rtol=0.05, atol=0.05)
    _, lse = flash_attention_with_lse(q.cuda(), k.cuda(), v.cuda(), cu_seqlens=cu.cuda(),
                                      max_seqlen=max(lengths))
    _, cpu_lse = flash_attention_with_lse(q, k, v, cu_seqlens=cu)
    torch.testing.assert_close(lse.cpu(), cpu_lse, rtol=1e-2, atol=1e-2)


def test_cuda_strided_inputs_match_contiguous():
    q = torch.randn(2, 4, 90, 64, device="cuda").bfloat16().transpose(1, 2)
    k = torch.randn(2, 90, 2, 128, device="cuda").bfloat16()[..., ::2]
    v = torch.randn(2, 90, 2, 64, device="cuda").bfloat16()
    out = flash_attention(q, k, v)
    torch.testing.assert_close(out, flash_attention(q.contiguous(), k.contiguous(), v))
