"""Fused linear + cross-entropy (engine.ops.loss) against torch's cross_entropy of the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model import Transformer, preset
from engine.ops.loss import (
    _linear_cross_entropy,
    cross_entropy_rows_reference,
    linear_cross_entropy,
)


def _inputs(n, d, v, dtype=torch.float32, seed=0, ignore_every=5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    weight.requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        target[::ignore_every] = -100
    return hidden, weight, target


def _reference(hidden, weight, target, reduction):
    logits = hidden.double() @ weight.double().T
    loss = F.cross_entropy(logits, target, reduction=reduction)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    return loss, gh, gw


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n,v,chunk", [(1, 16, None), (37, 37, 8), (300, 512, 64), (64, 1000, 7)])
def test_matches_torch_fp32(reduction, n, v, chunk):
    hidden, weight, target = _inputs(n, 24, v, ignore_every=5 if n > 1 else 0)
    loss = linear_cross_entropy(hidden, weight, target, reduction=reduction, chunk_rows=chunk)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref_loss, ref_gh, ref_gw = _reference(hidden, weight, target, reduction)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(gh.double(), ref_gh.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw.double(), ref_gw.double(), rtol=1e-5, atol=1e-7)


def test_gradcheck_float64():
    hidden, weight, target = _inputs(9, 5, 19, dtype=torch.float64, ignore_every=4)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, target, chunk_rows=4), (hidden, weight))
    # the incoming gradient scales both gradients
    loss = linear_cross_entropy(hidden, weight, target)
    gh, = torch.autograd.grad(3 * loss, hidden, retain_graph=True)
    ref, = torch.autograd.grad(3 * F.cross_entropy(hidden @ weight.T, target), hidden)
    torch.testing.assert_close(gh, ref)
    # a second backward through the same graph gives the same gradients
    again, = torch.autograd.grad(3 * loss, hidden)
    torch.testing.assert_close(again, ref)


def test_bf16_autocast_error_within_twice_torchs():
    """Under bf16 autocast the fused loss's error against float64 is at most 2x (plus a
    small floor) the error of torch's own bf16 linear + float32 cross-entropy."""
    hidden, weight, target = _inputs(256, 64, 3000, ignore_every=0)
    exact, exact_gh, exact_gw = _reference(hidden, weight, target, "mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, target)
        ours_gh, ours_gw = torch.autograd.grad(ours, (hidden, weight))
        torch_loss = F.cross_entropy((hidden @ weight.T).float(), target)
        torch_gh, torch_gw = torch.autograd.grad(torch_loss, (hidden, weight))
    assert ours_gh.dtype == torch.float32 and ours_gw.dtype == torch.float32
    for ours_v, torch_v, ref in ((ours, torch_loss, exact), (ours_gh, torch_gh, exact_gh),
                                 (ours_gw, torch_gw, exact_gw)):
        ours_err = (ours_v.double() - ref).abs().max().item()
        torch_err = (torch_v.double() - ref).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-6 * ref.abs().max().item(), (ours_err, torch_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("v", [16, 37, 300])
def test_rows_kernel_matches_reference(dtype, v):
    g = torch.Generator().manual_seed(v)
    logits = (torch.randn(11, v, generator=g) * 4).to(dtype)
    target = torch.randint(0, v, (11,), generator=g)
    target[3] = -1
    work = logits.clone()
    loss = torch.ops.crucible.cross_entropy_rows_(work, target, -1, 0.5, True)
    ref_loss, ref_grad = cross_entropy_rows_reference(logits, target, -1, 0.5, True)
    tol = {torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(work, ref_grad, rtol=tol, atol=tol)
    assert loss[3] == 0 and bool((work[3] == 0).all())
    # each kept row's gradient sums to zero (softmax sums to one, minus the one-hot)
    kept = work.double()[target != -1].sum(dim=1)
    assert kept.abs().max() < (0.02 if dtype == torch.bfloat16 else 1e-5)


def test_rows_kernel_rejects_bad_target_naming_row():
    logits = torch.zeros(4, 10)
    with pytest.raises(RuntimeError, match=r"target\[2\] = 10 is outside \[0, 10\)"):
        torch.ops.crucible.cross_entropy_rows_(logits, torch.tensor([1, 2, 10, 3]), -100, 1.0,
                                               True)


def test_shape_errors():
    hidden, weight, target = _inputs(8, 6, 20)
    with pytest.raises(ValueError, match="weight must be"):
        linear_cross_entropy(hidden, weight[:, :5], target)
    with pytest.raises(ValueError, match="leading shape"):
        linear_cross_entropy(hidden, weight, target[:4])
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, target, reduction="none")


def test_no_grad_computes_only_the_loss(monkeypatch):
    """Under no_grad (and for inputs that need no gradient) the op is asked for the loss only,
    and then returns empty gradients."""
    import engine.ops.loss as loss_module

    asked = []
    real = loss_module._linear_cross_entropy

    def spy(*args):
        asked.append(args[-1])
        return real(*args)

    monkeypatch.setattr(loss_module, "_linear_cross_entropy", spy)
    hidden, weight, target = _inputs(40, 8, 50)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, target)
    linear_cross_entropy(hidden.detach(), weight.detach(), target)
    linear_cross_entropy(hidden, weight, target)
    assert asked == [False, False, True]
    _, gh, gw = real(hidden.detach(), weight.detach(), target, -100, 1.0, 16, False)
    assert gh.numel() == 0 and gw.numel() == 0
    torch.testing.assert_close(loss.double(), _reference(hidden, weight, target, "mean")[0])


def test_opcheck():
    hidden, weight, target = _inputs(20, 8, 30)
    for grad in (True, False):
        torch.library.opcheck(_linear_cross_entropy,
                              (hidden.detach(), weight.detach(), target, -100, 0.1, 8, grad))
    torch.library.opcheck(torch.ops.crucible.cross_entropy_rows_.default,
                          (torch.randn(5, 33), torch.tensor([0, 4, -100, 32, 1]), -100, 1.0,
                           True))


def test_compile_fullgraph():
    hidden, weight, target = _inputs(32, 8, 40)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(h, w):
        return linear_cross_entropy(h * 2, w, target, reduction="sum")

    loss = f(hidden, weight)
    loss.backward()
    ref_loss, ref_gh, _ = _reference(hidden * 2, weight, target, "sum")
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), 2 * ref_gh.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_model_labels_fused_equals_unfused(tie):
    """model(ids, labels=...) gives the summed loss; the fused path (no logits) matches the
    torch path in value and in every parameter's gradient, tied embeddings included."""
    config = preset("tiny", tie_embeddings=tie)
    torch.manual_seed(0)
    fused = Transformer(config, "crucible")
    plain = Transformer(config, "crucible", fused=False)
    plain.load_state_dict(fused.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 33))
    labels = torch.randint(0, config.vocab_size, (2, 33))
    labels[:, :5] = -100
    losses = []
    for model in (fused, plain):
        loss = model(ids, labels=labels)
        loss.backward()
        losses.append(loss)
    expected = F.cross_entropy(plain(ids).flatten(0, 1), labels.flatten(), reduction="sum")
    torch.testing.assert_close(losses[0], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-4)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
