"""FusedAdamW against torch.optim.AdamW: 100-step trajectories, clipping, param groups, odd
sizes, bf16, amsgrad/maximize, state-dict round trips both ways, and a convergence check."""

import copy

import pytest
import torch

from engine.ops import total_norm_reference
from engine.optim import FusedAdamW

SIZES = [(1,), (7,), (1000003,), (33, 65)]


def make_params(sizes=SIZES, dtype=torch.float32):
    return [torch.nn.Parameter(torch.randn(s, dtype=torch.float32).to(dtype)) for s in sizes]


def clone_params(params, dtype=None):
    return [torch.nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in params]


def groups_of(params, split):
    """Three param groups with different hyper-parameters."""
    return [
        {"params": params[:split], "lr": 3e-2, "weight_decay": 0.1},
        {"params": params[split:-1], "lr": 1e-2, "betas": (0.8, 0.99)},
        {"params": params[-1:], "lr": 5e-3, "weight_decay": 0.0, "eps": 1e-6},
    ]


def set_grads(step, *param_lists, scale=1.0):
    gen = torch.Generator().manual_seed(1000 + step)
    for ps in zip(*param_lists):
        grad = torch.randn(ps[0].shape, generator=gen) * scale
        for p in ps:
            p.grad = grad.to(p.dtype)


@pytest.mark.parametrize("amsgrad,maximize", [(False, False), (True, False), (False, True)])
def test_matches_torch_adamw_100_steps_param_groups(amsgrad, maximize):
    ours_p, ref_p = make_params(), None
    ref_p = clone_params(ours_p)
    ours = FusedAdamW(groups_of(ours_p, 2), amsgrad=amsgrad, maximize=maximize)
    ref = torch.optim.AdamW(groups_of(ref_p, 2), amsgrad=amsgrad, maximize=maximize,
                            foreach=False)
    for step in range(100):
        set_grads(step, ours_p, ref_p)
        ours.step()
        ref.step()
    for p, q in zip(ours_p, ref_p):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=2e-6)
        assert not torch.equal(p, torch.zeros_like(p))
    for p, q in zip(ours_p, ref_p):
        torch.testing.assert_close(ours.state[p]["exp_avg"], ref.state[q]["exp_avg"])
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])
        assert ours.state[p]["step"].item() == 100.0


def test_params_actually_move_and_skip_params_without_grad():
    ps = make_params([(5,), (6,)])
    before = [p.detach().clone() for p in ps]
    opt = FusedAdamW(ps, lr=0.1)
    ps[0].grad = torch.ones(5)
    opt.step()
    # Adam's first step moves every coordinate by lr (sign of the gradient), minus decay.
    torch.testing.assert_close(ps[0].detach(), before[0] * (1 - 0.1 * 0.01) - 0.1,
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(ps[1].detach(), before[1])
    assert ps[1] not in opt.state


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_fused_clipping_matches_clip_grad_norm_then_adamw(max_norm):
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = FusedAdamW(groups_of(ours_p, 1), max_grad_norm=max_norm)
    ref = torch.optim.AdamW(groups_of(ref_p, 1), foreach=False)
    for step in range(100):
        set_grads(step, ours_p, ref_p, scale=3.0)
        exact_norm = total_norm_reference([p.grad for p in ours_p])
        norm = ours.step()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_p, max_norm, foreach=False)
        ref.step()
        # Ours accumulates in double: exact to fp32 rounding; torch's fp32 sum drifts ~1e-5.
        torch.testing.assert_close(norm, exact_norm, rtol=1e-6, atol=0)
        torch.testing.assert_close(norm, ref_norm, rtol=1e-4, atol=0)
    for p, q in zip(ours_p, ref_p):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=2e-6)
    # The gradients themselves are left untouched (the clip is folded into the update).
    set_grads(0, ours_p)
    expected = [p.grad.clone() for p in ours_p]
    ours.step()
    assert all(torch.equal(p.grad, e) for p, e in zip(ours_p, expected))


def test_step_returns_closure_loss_without_clipping():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = FusedAdamW([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    assert p.item() < 2.0


def test_bf16_params_keep_fp32_state_and_follow_fp32_adamw():
    ours_p = make_params(dtype=torch.bfloat16)
    ref_p = clone_params(ours_p, dtype=torch.float32)
    ours = FusedAdamW(ours_p, lr=1e-2)
    ref = torch.optim.AdamW(ref_p, lr=1e-2, foreach=False)
    for step in range(100):
        set_grads(step, ours_p)
        for p, q in zip(ours_p, ref_p):
            q.grad = p.grad.float()
        ours.step()
        ref.step()
        # Without master weights the fp32 reference restarts from the bf16 value each step.
        with torch.no_grad():
            for p, q in zip(ours_p, ref_p):
                q.copy_(p.float())
    for p in ours_p:
        assert p.dtype == torch.bfloat16
        assert ours.state[p]["exp_avg"].dtype == torch.float32
    for p, q in zip(ours_p, ref_p):
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])


def test_bf16_master_weights_track_fp32_adamw_exactly_and_round_to_param():
    ours_p = make_params(dtype=torch.bfloat16)
    ref_p = clone_params(ours_p, dtype=torch.float32)
    ours = FusedAdamW(ours_p, lr=1e-2, max_grad_norm=1.0, master_weights=True)
    ref = torch.optim.AdamW(ref_p, lr=1e-2, foreach=False)
    for step in range(100):
        set_grads(step, ours_p)
        for p, q in zip(ours_p, ref_p):
            q.grad = p.grad.float()
        ours.step()
        torch.nn.utils.clip_grad_norm_(ref_p, 1.0, foreach=False)
        ref.step()
    for p, q in zip(ours_p, ref_p):
        master = ours.state[p]["master_param"]
        torch.testing.assert_close(master, q.detach(), rtol=2e-6, atol=2e-6)
        assert torch.equal(p.detach(), master.to(torch.bfloat16))


def test_mixed_fp32_and_bf16_params_with_master_weights():
    ps = [torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(10).bfloat16())]
    opt = FusedAdamW(ps, master_weights=True)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert "master_param" not in opt.state[ps[0]]
    assert opt.state[ps[1]]["master_param"].dtype == torch.float32


def run_steps(opt, params, steps, offset):
    for step in range(offset, offset + steps):
        set_grads(step, params)
        opt.step()


@pytest.mark.parametrize("direction", ["ours_to_torch", "torch_to_ours"])
def test_state_dict_round_trip_continues_identically(direction):
    first_cls, second_cls = ((FusedAdamW, torch.optim.AdamW) if direction == "ours_to_torch"
                             else (torch.optim.AdamW, FusedAdamW))
    kwargs = {"foreach": False}
    params = make_params([(7,), (129, 3)])
    first = first_cls(groups_of(params, 1)[:2], **kwargs)
    run_steps(first, params, 10, 0)
    saved = copy.deepcopy(first.state_dict())

    resumed_params = clone_params(params)
    second = second_cls(groups_of(resumed_params, 1)[:2], **kwargs)
    second.load_state_dict(saved)
    run_steps(first, params, 10, 10)
    run_steps(second, resumed_params, 10, 10)
    for p, q in zip(params, resumed_params):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=2e-6)
    assert second.state_dict()["param_groups"] == first.state_dict()["param_groups"]


def test_state_dict_keys_match_torch_adamw():
    ps = make_params([(3,)])
    ours, ref = FusedAdamW(ps), torch.optim.AdamW(clone_params(ps))
    set_grads(0, ps, list(ref.param_groups[0]["params"]))
    ours.step()
    ref.step()
    a, b = ours.state_dict(), ref.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert set(a["state"][0]) == set(b["state"][0])
    assert a["state"][0]["step"].dtype == b["state"][0]["step"].dtype == torch.float32


def test_bf16_state_survives_save_and_load_in_fp32():
    params = make_params([(1000,)], dtype=torch.bfloat16)
    opt = FusedAdamW(params, master_weights=True)
    run_steps(opt, params, 3, 0)
    saved = copy.deepcopy(opt.state_dict())
    other = FusedAdamW(clone_params(params), master_weights=True)
    other.load_state_dict(saved)
    loaded = other.state[other.param_groups[0]["params"][0]]
    for key in ("exp_avg", "exp_avg_sq", "master_param"):
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], saved["state"][0][key])
    assert loaded["step"].item() == 3.0


def test_convergence_matches_torch_on_a_small_mlp():
    def model():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(),
                                   torch.nn.Linear(64, 1))

    data_gen = torch.Generator().manual_seed(7)
    x = torch.randn(256, 16, generator=data_gen)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    curves = []
    for make_opt in (lambda ps: FusedAdamW(ps, lr=3e-3, max_grad_norm=1.0),
                     lambda ps: torch.optim.AdamW(ps, lr=3e-3, foreach=False)):
        net = model()
        opt = make_opt(net.parameters())
        losses = []
        for _ in range(200):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            if not isinstance(opt, FusedAdamW):
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        curves.append(torch.tensor(losses))
    ours, ref = curves
    assert ours[-1] < 0.2 * ours[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
