"""Flash attention on the CPU: the kernels against the plain PyTorch reference (forward and
backward, fp32/bf16 within 2x PyTorch's own error, float64 gradcheck), packed sequences, GQA,
odd lengths, strides, opcheck, torch.compile without graph breaks, and the input checks."""

import pytest
import torch

from engine.ops import attention_reference, flash_attention, flash_attention_with_lse


def make_qkv(shape_q, shape_kv, dtype, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(shape_q, generator=gen) * scale).to(dtype)
    k = (torch.randn(shape_kv, generator=gen) * scale).to(dtype)
    v = torch.randn(shape_kv, generator=gen).to(dtype)
    return q, k, v


def forward_backward(fn, q, k, v, grad, **kw):
    """Output and (dq, dk, dv) of fn for the upstream gradient `grad`."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    grads = torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))
    return out, grads


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


CASES = [
    # (B, T, Hq, Hkv, D, causal, window)
    (2, 100, 4, 4, 64, True, None),
    (1, 257, 4, 1, 128, True, None),    # multi-query
    (2, 77, 6, 2, 64, False, None),     # grouped-query, full attention
    (1, 200, 2, 2, 64, True, 48),       # sliding window
    (1, 130, 4, 2, 40, False, 33),      # head_dim not a multiple of 16, left window only
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_error_at_most_twice_pytorch_own_error(dtype, case):
    """Against a float64 oracle, our error in `dtype` is at most 2x that of the PyTorch
    reference run in the same dtype, for the output and all three gradients."""
    B, T, Hq, Hkv, D, causal, window = case
    q, k, v = make_qkv((B, T, Hq, D), (B, T, Hkv, D), torch.float64, seed=T)
    grad = torch.randn(B, T, Hq, D, dtype=torch.float64)
    kw = dict(causal=causal, window=window)
    exact, exact_grads = forward_backward(attention_reference, q, k, v, grad, **kw)
    low = [t.to(dtype) for t in (q, k, v)]
    ours, our_grads = forward_backward(flash_attention, *low, grad, **kw)
    torch_out, torch_grads = forward_backward(attention_reference, *low, grad, **kw)
    assert ours.dtype == dtype and ours.shape == q.shape
    floor = 1e-6 if dtype == torch.float32 else 1e-4
    for name, got, base, want in zip(["out", "dq", "dk", "dv"], [ours, *our_grads],
                                     [torch_out, *torch_grads], [exact, *exact_grads]):
        ours_err, torch_err = max_err(got, want), max_err(base, want)
        assert ours_err <= 2 * torch_err + floor, (name, ours_err, torch_err)


@pytest.mark.parametrize("amx", ["1", "0"])
def test_bfloat16_paths_both_within_twice_pytorch_error(amx, monkeypatch):
    """bfloat16 runs on AMX tiles where the CPU has them and on fp32 tiles otherwise
    (CRUCIBLE_ATTENTION_AMX=0 forces the latter): both meet the 2x bound, packed GQA included."""
    monkeypatch.setenv("CRUCIBLE_ATTENTION_AMX", amx)
    cu = torch.tensor([0, 70, 71, 300], dtype=torch.int32)
    q, k, v = make_qkv((300, 4, 64), (300, 2, 64), torch.float64, seed=11)
    grad = torch.randn(300, 4, 64, dtype=torch.float64)
    kw = dict(causal=True, cu_seqlens=cu, window=100)
    exact, exact_grads = forward_backward(attention_reference, q, k, v, grad, **kw)
    low = [t.bfloat16() for t in (q, k, v)]
    ours, our_grads = forward_backward(flash_attention, *low, grad, **kw)
    base, base_grads = forward_backward(attention_reference, *low, grad, **kw)
    for got, ref, want in zip([ours, *our_grads], [base, *base_grads], [exact, *exact_grads]):
        assert max_err(got, want) <= 2 * max_err(ref, want) + 1e-4


@pytest.mark.parametrize(("causal", "window", "varlen"),
                         [(True, None, False), (False, None, False), (True, 3, False),
                          (True, None, True), (False, 4, True)])
def test_gradcheck_float64(causal, window, varlen):
    q, k, v = make_qkv((1, 11, 4, 8), (1, 11, 2, 8), torch.float64, seed=3)
    kw = dict(causal=causal, window=window, softmax_scale=0.7)
    if varlen:
        q, k, v = q[0], k[0], v[0]
        kw["cu_seqlens"] = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda *x: flash_attention(*x, **kw), inputs)


def test_float64_matches_reference_and_lse():
    q, k, v = make_qkv((2, 70, 4, 24), (2, 70, 2, 24), torch.float64, seed=9)
    out, lse = flash_attention_with_lse(q, k, v, causal=True, window=20)
    ref, ref_lse = attention_reference(q, k, v, causal=True, window=20, return_lse=True)
    assert lse.shape == (2, 4, 70) and lse.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_equals_each_sequence_alone(dtype, causal):
    lengths = [1, 17, 0, 130, 64]
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = make_qkv((total, 4, 64), (total, 2, 64), dtype, seed=1)
    grad = torch.randn(total, 4, 64).to(dtype)
    out, lse = flash_attention_with_lse(q, k, v, causal=causal, cu_seqlens=cu)
    assert lse.shape == (4, total)
    out, grads = forward_backward(flash_attention, q, k, v, grad, causal=causal, cu_seqlens=cu,
                                  max_seqlen=max(lengths))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.02, atol=0.02)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if start == end:
            continue
        piece = [t[None, start:end] for t in (q, k, v)]
        alone, alone_grads = forward_backward(flash_attention, *piece, grad[None, start:end],
                                              causal=causal)
        _, alone_lse = flash_attention_with_lse(*piece, causal=causal)
        torch.testing.assert_close(out[start:end], alone[0], **tol)
        torch.testing.assert_close(lse[:, start:end], alone_lse[0], **tol)
        for got, want in zip(grads, alone_grads):
            torch.testing.assert_close(got[start:end], want[0], **tol)


@pytest.mark.parametrize("hkv", [1, 2])
def test_gqa_equals_repeated_kv_heads(hkv):
    q, k, v = make_qkv((2, 90, 4, 64), (2, 90, hkv, 64), torch.float32, seed=2)
    grad = torch.randn(2, 90, 4, 64)
    out, (dq, dk, dv) = forward_backward(flash_attention, q, k, v, grad)
    group = 4 // hkv
    k_rep, v_rep = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    ref, (rdq, rdk, rdv) = forward_backward(flash_attention, q, k_rep, v_rep, grad)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dq, rdq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dk, rdk.unflatten(2, (hkv, group)).sum(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dv, rdv.unflatten(2, (hkv, group)).sum(3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 17, 1000])
def test_odd_lengths_match_reference(length):
    heads = 2 if length < 1000 else 1
    q, k, v = make_qkv((1, length, heads, 64), (1, length, heads, 64), torch.float32, seed=4)
    grad = torch.randn(1, length, heads, 64)
    for causal in (True, False):
        out, grads = forward_backward(flash_attention, q, k, v, grad, causal=causal)
        ref, ref_grads = forward_backward(attention_reference, q.double(), k.double(),
                                          v.double(), grad.double(), causal=causal)
        torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=2e-5)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=5e-5)


def test_strided_inputs_match_contiguous():
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(2, 4, 50, 64, generator=gen).transpose(1, 2)        # (B, T, H, D) view
    k = torch.randn(2, 50, 2, 128, generator=gen)[..., ::2]              # lane stride 2
    v = torch.randn(2, 50, 6, 64, generator=gen)[:, :, 1:5:2]            # sliced heads
    grad = torch.randn(2, 4, 50, 64, generator=gen).transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out, grads = forward_backward(flash_attention, q, k, v, grad)
    ref, ref_grads = forward_backward(flash_attention, q.contiguous(), k.contiguous(),
                                      v.contiguous(), grad.contiguous())
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_softmax_scale_is_applied():
    q, k, v = make_qkv((1, 33, 2, 64), (1, 33, 2, 64), torch.float64, seed=7)
    for scale in (0.05, 1.0):
        torch.testing.assert_close(flash_attention(q, k, v, softmax_scale=scale),
                                   attention_reference(q, k, v, softmax_scale=scale))


def test_opcheck_forward_and_backward():
    q, k, v = make_qkv((1, 40, 4, 16), (1, 40, 2, 16), torch.float32, seed=8)
    fwd = torch.ops.crucible.flash_attention_forward.default
    for args in [(q, k, v, None, 0, 0.0, True, -1), (q, k, v, None, 0, 0.3, False, 9)]:
        torch.library.opcheck(fwd, [t.requires_grad_() if isinstance(t, torch.Tensor) else t
                                    for t in args])
    cu = torch.tensor([0, 15, 40], dtype=torch.int32)
    torch.library.opcheck(fwd, (q[0], k[0], v[0], cu, 25, 0.0, True, -1))
    # The backward op itself is not differentiable (no double backward): plain inputs.
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = fwd(q, k, v, None, 0, 0.0, True, -1)
    torch.library.opcheck(torch.ops.crucible.flash_attention_backward.default,
                          (torch.randn_like(out), q, k, v, out, lse, None, 0, 0.0, True, -1))


class TinyAttention(torch.nn.Module):
    """One attention block the way a model calls the op: project, attend, project back."""

    def __init__(self, dim=64, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wq = torch.nn.Linear(dim, dim, bias=False)
        self.wkv = torch.nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.wo = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x, cu_seqlens):
        n = x.shape[0]
        q = self.wq(x).view(n, self.heads, self.head_dim)
        k, v = self.wkv(x).view(n, 2, self.kv_heads, self.head_dim).unbind(1)
        out = flash_attention(q, k, v, causal=True, cu_seqlens=cu_seqlens, max_seqlen=40)
        return self.wo(out.reshape(n, -1))


def test_torch_compile_has_no_graph_break():
    torch.manual_seed(0)
    model = TinyAttention()
    x = torch.randn(70, 64)
    cu = torch.tensor([0, 30, 70], dtype=torch.int32)
    explanation = torch._dynamo.explain(model)(x, cu)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager_out = model(x, cu)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    out = compiled(x, cu)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(k=torch.randn(1, 8, 3, 16), v=torch.randn(1, 8, 3, 16)),
     "multiple of the key/value heads"),
    (dict(k=torch.randn(1, 8, 2, 8)), "must have the same shape"),
    (dict(v=torch.randn(1, 8, 2, 16).double()), "share one dtype"),
    (dict(q=torch.randn(8, 4, 16)), "must be \\(batch, seqlen, heads, head_dim\\)"),
    (dict(window=0), "window must be >= 1"),
])
def test_bad_inputs_are_rejected_with_a_clear_message(kwargs, message):
    args = dict(q=torch.randn(1, 8, 4, 16), k=torch.randn(1, 8, 2, 16), v=torch.randn(1, 8, 2, 16))
    args.update(kwargs)
    window = args.pop("window", None)
    with pytest.raises((RuntimeError, ValueError), match=message):
        flash_attention(args["q"], args["k"], args["v"], window=window)


def test_bad_cu_seqlens_are_rejected():
    q, k, v = make_qkv((10, 2, 16), (10, 2, 16), torch.float32)
    with pytest.raises(RuntimeError, match="end at the number of tokens 10"):
        flash_attention(q, k, v, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="1-D int32"):
        flash_attention(q, k, v, cu_seqlens=torch.tensor([0, 4, 10]))
    with pytest.raises(RuntimeError, match="shorter than the longest"):
        flash_attention(q, k, v, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32),
                        max_seqlen=5)


def test_profile_attention_writes_results_in_the_bench_format(tmp_path):
    import json

    from crucible.cli import main

    out = tmp_path / "attention.json"
    assert main(["profile", "attention", "--seqlens", "128", "--head-dims", "64", "--dtypes",
                 "float32", "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["bench"] == "attention"
    metrics = [(r["case"].split()[1], r["metric"]) for r in data["results"]]
    assert metrics[:2] == [("fwd", "ms"), ("fwd+bwd", "ms")]
    for row in data["results"]:
        assert row["reference"] == "torch SDPA" and row["ours"] > 0 and row["ratio"] > 0
        assert row["case"].endswith("causal T=128 D=64 H=64 float32")
