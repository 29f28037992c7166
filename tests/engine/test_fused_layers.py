"""Fused RMSNorm, RoPE and SwiGLU on the CPU against the torch compositions they replace:
forward and backward (fp32 to ~1e-6 relative, RoPE bit for bit, bf16 within 2x PyTorch's own
error against float64), odd sizes, single rows, strided inputs, broadcast tables, mixed RMSNorm
dtypes, float64 gradcheck, opcheck, torch.compile without graph breaks, the torch fallback, and
the input checks."""

import pytest
import torch

from engine.model.layers import rope_tables
from engine.ops import (
    apply_rope,
    apply_rope_reference,
    rms_norm,
    rms_norm_reference,
    swiglu,
    swiglu_reference,
)

EPS = 1e-5


def forward_backward(fn, inputs, grad):
    """Output of fn and its gradients with respect to every input, for upstream `grad`."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def rel_err(a, b):
    return max_err(a, b) / b.double().abs().max().item()


def rms_inputs(shape, x_dtype=torch.float32, w_dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.3
    w = 1 + 0.3 * torch.randn(shape[-1], generator=gen, dtype=torch.float64)
    return x.to(x_dtype), w.to(w_dtype)


def rope_inputs(shape, dtype=torch.float32, seed=0):
    """x (B, T, H, D) and cos/sin for positions that restart mid-row (packed documents)."""
    gen = torch.Generator().manual_seed(seed)
    B, T, _, D = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    positions = torch.arange(T).repeat(B, 1) % max(1, T // 2 + 1) + torch.arange(B)[:, None]
    cos, sin = rope_tables(D, positions, theta=10000.0)
    return x, cos, sin


def swiglu_inputs(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    up = torch.randn(shape, generator=gen, dtype=torch.float64)
    return gate.to(dtype), up.to(dtype)


def rms(x, w):
    return rms_norm(x, w, EPS)


def rms_ref(x, w):
    return rms_norm_reference(x, w, EPS)


RMS_SHAPES = [(1, 72), (3, 7, 100), (5, 384), (2, 8192), (4, 1), (9, 17)]
ROPE_SHAPES = [(1, 1, 1, 2), (2, 17, 3, 64), (2, 33, 4, 40), (1, 5, 2, 128), (3, 9, 1, 6)]
SWIGLU_SHAPES = [(1,), (7, 13), (2, 33, 1000), (3, 65537)]


# ---- float32 against the reference ----

@pytest.mark.parametrize("shape", RMS_SHAPES)
def test_rms_norm_float32_matches_reference(shape):
    x, w = rms_inputs(shape, seed=shape[-1])
    grad = torch.randn(shape, dtype=torch.float32)
    ours = forward_backward(rms, (x, w), grad)
    ref = forward_backward(rms_ref, (x, w), grad)
    exact = forward_backward(rms_ref, (x.double(), w.double()), grad.double())
    assert ours[0].dtype == torch.float32 and ours[0].shape == x.shape
    for name, got, base, want in zip(["y", "grad_x", "grad_weight"], ours, ref, exact):
        assert max_err(got, want) <= 2 * max_err(base, want) + 1e-7 * want.abs().max(), name
        # With D = 1, grad_x is all cancellation (x * rstd is +-1 up to eps): only the bound
        # against float64 above is meaningful.
        if shape[-1] > 1:
            assert rel_err(got, base) <= 1e-6, (name, rel_err(got, base))


@pytest.mark.parametrize("shape", ROPE_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_bit_identical_to_reference(shape, dtype):
    x, cos, sin = rope_inputs(shape, dtype, seed=shape[1])
    grad = torch.randn(shape).to(dtype)
    ours = forward_backward(lambda t: apply_rope(t, cos, sin), (x,), grad)
    ref = forward_backward(lambda t: apply_rope_reference(t, cos, sin), (x,), grad)
    assert ours[0].dtype == dtype
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SWIGLU_SHAPES)
def test_swiglu_float32_matches_reference(shape):
    gate, up = swiglu_inputs(shape, seed=shape[-1])
    grad = torch.randn(shape)
    ours = forward_backward(swiglu, (gate, up), grad)
    ref = forward_backward(swiglu_reference, (gate, up), grad)
    for name, got, want in zip(["y", "grad_gate", "grad_up"], ours, ref):
        assert got.dtype == torch.float32
        assert rel_err(got, want) <= 1e-6, (name, rel_err(got, want))


def test_swiglu_saturates_like_silu():
    gate = torch.tensor([-1e4, -100.0, -88.5, -20.0, 0.0, 20.0, 88.5, 100.0, 1e4,
                         float("inf"), float("-inf"), float("nan")])
    up = torch.full_like(gate, 1.5)
    torch.testing.assert_close(swiglu(gate, up), swiglu_reference(gate, up), equal_nan=True)


# ---- bfloat16: at most twice PyTorch's own error against float64 ----

def assert_within_twice_torch_error(fused, reference, inputs, grad, names):
    exact = forward_backward(reference, [t.double() for t in inputs], grad.double())
    ours = forward_backward(fused, inputs, grad)
    base = forward_backward(reference, inputs, grad)
    for name, got, ref, want in zip(names, ours, base, exact):
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        floor = 1e-6 * want.abs().max().item()
        assert max_err(got, want) <= 2 * max_err(ref, want) + floor, (
            name, max_err(got, want), max_err(ref, want))


@pytest.mark.parametrize("shape", [(1, 72), (3, 7, 100), (6, 384)])
@pytest.mark.parametrize(("x_dtype", "w_dtype"), [(torch.bfloat16, torch.bfloat16),
                                                  (torch.bfloat16, torch.float32),
                                                  (torch.float32, torch.bfloat16)])
def test_rms_norm_low_precision_within_twice_torch_error(shape, x_dtype, w_dtype):
    """Mixed dtypes included: y has torch.result_type(x, weight); grad_weight (weight's dtype)
    is summed over all rows in fp32."""
    x, w = rms_inputs(shape, x_dtype, w_dtype, seed=len(shape))
    grad = torch.randn(shape).to(torch.result_type(x, w))
    assert_within_twice_torch_error(rms, rms_ref, (x, w), grad, ["y", "grad_x", "grad_weight"])


@pytest.mark.parametrize("shape", [(1,), (7, 13), (2, 33, 1000)])
def test_swiglu_bfloat16_within_twice_torch_error(shape):
    gate, up = swiglu_inputs(shape, torch.bfloat16, seed=1)
    grad = torch.randn(shape).bfloat16()
    assert_within_twice_torch_error(swiglu, swiglu_reference, (gate, up), grad,
                                    ["y", "grad_gate", "grad_up"])


def test_rms_norm_grad_weight_mixed_dtypes_against_float64():
    """bf16 activations with an fp32 weight (the usual mixed-precision layout) and with a bf16
    weight: grad_weight, summed over 2048 rows in fp32, is within rounding of the float64 sum of
    grad_y * (the bf16 normalised x the forward multiplied by weight)."""
    for w_dtype, tol in [(torch.float32, 1e-6), (torch.bfloat16, 2 ** -8)]:
        x, w = rms_inputs((4, 512, 96), torch.bfloat16, w_dtype, seed=5)
        grad = torch.randn(4, 512, 96).to(torch.result_type(x, w))
        _, _, grad_w = forward_backward(rms, (x, w), grad)
        _, _, base = forward_backward(rms_ref, (x, w), grad)
        normed = rms_norm_reference(x, torch.ones(96, dtype=torch.bfloat16), EPS)
        exact = (grad.double() * normed.double()).sum((0, 1))
        assert grad_w.dtype == w_dtype
        assert rel_err(grad_w, exact) <= tol, (w_dtype, rel_err(grad_w, exact))
        assert max_err(grad_w, exact) <= 2 * max_err(base, exact) + 1e-6 * exact.abs().max()


def test_rms_norm_grad_weight_is_deterministic():
    x, w = rms_inputs((64, 2048), seed=2)
    grad = torch.randn(64, 2048)
    first = forward_backward(rms, (x, w), grad)
    second = forward_backward(rms, (x, w), grad)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- strides and broadcasting ----

def test_rms_norm_strided_inputs():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(100, 6, 5, generator=gen).permute(1, 2, 0)     # feature dim stride 30
    w = (1 + 0.3 * torch.randn(200, generator=gen))[::2]
    grad = torch.randn(100, 5, 6, generator=gen).permute(2, 1, 0)
    assert not (x.is_contiguous() or w.is_contiguous() or grad.is_contiguous())
    ours = forward_backward(rms, (x, w), grad)
    dense = forward_backward(rms, (x.contiguous(), w.contiguous()), grad.contiguous())
    ref = forward_backward(rms_ref, (x, w), grad)
    for got, same, want in zip(ours, dense, ref):
        torch.testing.assert_close(got, same, rtol=0, atol=0)
        assert rel_err(got, want) <= 1e-6


def test_rope_strided_x_and_broadcast_tables():
    """x transposed from (B, H, T, D); tables of one sequence expand()-ed over the batch (stride
    0, read in place) and tables without a unit last-dim stride."""
    B, T, H, D = 3, 21, 4, 32
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, H, T, D, generator=gen).transpose(1, 2)
    grad = torch.randn(B, H, T, D, generator=gen).transpose(1, 2)
    cos1, sin1 = rope_tables(D, torch.arange(T)[None], theta=500.0)        # (1, T, 1, D)
    expanded = (cos1.expand(B, -1, -1, -1), sin1.expand(B, -1, -1, -1))
    strided = tuple(t.expand(B, -1, -1, -1).squeeze(2).transpose(1, 2).contiguous()
                    .transpose(1, 2).unsqueeze(2) for t in (cos1, sin1))
    assert expanded[0].stride(0) == 0 and strided[0].stride(3) != 1
    for cos, sin in [(cos1, sin1), expanded, strided]:
        ours = forward_backward(lambda t: apply_rope(t, cos, sin), (x,), grad)
        ref = forward_backward(lambda t: apply_rope_reference(t, cos, sin), (x,), grad)
        for got, want in zip(ours, ref):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_swiglu_on_halves_of_one_projection_and_on_one_tensor_twice():
    """gate and up as the two (non-contiguous) halves of one fused projection, and one tensor
    passed as both: the gradients accumulate into the shared input."""
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(3, 17, 2 * 48, generator=gen)
    for split, grad in [(lambda t: t.chunk(2, dim=-1), torch.randn(3, 17, 48, generator=gen)),
                        (lambda t: (t, t), torch.randn(3, 17, 96, generator=gen))]:
        ours = forward_backward(lambda t: swiglu(*split(t)), (h,), grad)
        ref = forward_backward(lambda t: swiglu_reference(*split(t)), (h,), grad)
        for got, want in zip(ours, ref):
            assert rel_err(got, want) <= 1e-6


# ---- float64 gradcheck, opcheck, torch.compile ----

def test_gradcheck_float64():
    x, w = rms_inputs((3, 5, 7), torch.float64, torch.float64, seed=6)
    assert torch.autograd.gradcheck(rms, (x.requires_grad_(), w.requires_grad_()))
    x, cos, sin = rope_inputs((2, 3, 2, 6), torch.float64, seed=7)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x.requires_grad_(),))
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos.double(), sin.double()),
                                    (x,))
    gate, up = swiglu_inputs((4, 9), torch.float64, seed=8)
    assert torch.autograd.gradcheck(swiglu, (gate.requires_grad_(), up.requires_grad_()))


def test_float64_is_computed_in_float64():
    x, w = rms_inputs((4, 33), torch.float64, torch.float64, seed=9)
    torch.testing.assert_close(rms(x, w), rms_ref(x, w), rtol=1e-14, atol=1e-14)
    x, cos, sin = rope_inputs((2, 5, 3, 16), torch.float64, seed=9)
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rope_reference(x, cos, sin),
                               rtol=1e-14, atol=1e-14)
    gate, up = swiglu_inputs((50,), torch.float64, seed=9)
    torch.testing.assert_close(swiglu(gate, up), swiglu_reference(gate, up), rtol=1e-14,
                               atol=1e-14)


def test_opcheck_every_op():
    ops = torch.ops.crucible
    for x_dtype, w_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]:
        x, w = rms_inputs((3, 4, 24), x_dtype, w_dtype, seed=10)
        torch.library.opcheck(ops.rms_norm_forward.default,
                              (x.requires_grad_(), w.requires_grad_(), EPS))
        y, rstd = ops.rms_norm_forward(x.detach(), w.detach(), EPS)
        torch.library.opcheck(ops.rms_norm_backward.default,
                              (torch.randn_like(y), x.detach(), w.detach(), rstd))
    x, cos, sin = rope_inputs((2, 5, 3, 16), seed=11)
    torch.library.opcheck(ops.rope_forward.default, (x.requires_grad_(), cos, sin))
    torch.library.opcheck(ops.rope_backward.default, (torch.randn(2, 5, 3, 16), cos, sin))
    gate, up = swiglu_inputs((6, 40), seed=12)
    torch.library.opcheck(ops.swiglu_forward.default,
                          (gate.requires_grad_(), up.requires_grad_()))
    torch.library.opcheck(ops.swiglu_backward.default,
                          (torch.randn(6, 40), gate.detach(), up.detach()))


def tiny_block(x, norm_weight, cos, sin, w_gate, w_up):
    """Norm, rotate two heads, gated MLP: all three ops the way a decoder layer calls them."""
    B, T, C = x.shape
    h = rms_norm(x, norm_weight, EPS)
    h = apply_rope(h.view(B, T, 2, C // 2), cos, sin).reshape(B, T, C)
    return swiglu(h @ w_gate, h @ w_up)


def test_torch_compile_has_no_graph_break_and_matches_eager():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 9, 32, generator=gen)
    params = [1 + 0.1 * torch.randn(32, generator=gen), torch.randn(32, 48, generator=gen),
              torch.randn(32, 48, generator=gen)]
    cos, sin = rope_tables(16, torch.arange(9).repeat(2, 1), theta=10000.0)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, *params)]
        xl, nw, wg, wu = leaves
        out = fn(xl, nw, cos, sin, wg, wu)
        return [out, *torch.autograd.grad(out.square().sum(), leaves)]

    explanation = torch._dynamo.explain(tiny_block)(x, params[0], cos, sin, *params[1:])
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(tiny_block, backend="aot_eager", fullgraph=True)
    for got, want in zip(run(compiled), run(tiny_block)):
        torch.testing.assert_close(got, want)


# ---- the torch fallback and the input checks ----

def test_other_devices_and_dtypes_run_the_torch_composition():
    """No kernel off the CPU (meta stands in for CUDA here) or for other dtypes: the public
    functions run the reference composition instead."""
    meta = dict(device="meta")
    y = rms_norm(torch.empty(2, 8, dtype=torch.bfloat16, **meta), torch.empty(8, **meta), EPS)
    assert y.device.type == "meta" and y.dtype == torch.float32 and y.shape == (2, 8)
    y = apply_rope(torch.empty(1, 3, 2, 8, **meta), torch.empty(1, 3, 1, 8, **meta),
                   torch.empty(1, 3, 1, 8, **meta))
    assert y.device.type == "meta" and y.shape == (1, 3, 2, 8)
    assert swiglu(torch.empty(5, **meta), torch.empty(5, **meta)).device.type == "meta"
    gate, up = swiglu_inputs((7, 3), torch.float16)
    torch.testing.assert_close(swiglu(gate, up), swiglu_reference(gate, up), rtol=0, atol=0)
    x, w = rms_inputs((3, 8), torch.float32, torch.float64)
    torch.testing.assert_close(rms(x, w), rms_ref(x, w), rtol=0, atol=0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: rms_norm(torch.randn(2, 72), torch.randn(71), EPS),
     r"weight must be \(72\), one scale per feature"),
    (lambda: torch.ops.crucible.rms_norm_forward(torch.randn(2, 8).double(), torch.randn(8), EPS),
     "float64 is supported for both or neither"),
    (lambda: rms_norm(torch.randn(2, 8), torch.randn(8), -1.0), "must be finite and >= 0"),
    (lambda: apply_rope(torch.randn(1, 4, 2, 7), torch.randn(1, 4, 1, 7), torch.randn(1, 4, 1, 7)),
     "needs an even head_dim"),
    (lambda: apply_rope(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8)),
     r"cos has shape \[1, 4, 2, 8\]; expected \(1, 4, 1, 8\)"),
    (lambda: apply_rope(torch.randn(4, 2, 8), torch.randn(4, 1, 8), torch.randn(4, 1, 8)),
     r"expected \(batch, seqlen, heads, head_dim\)"),
    (lambda: swiglu(torch.randn(3, 4), torch.randn(4, 3)), "must have the same shape"),
])
def test_bad_inputs_are_rejected_with_a_clear_message(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()
