"""The compiled ops themselves: kernels against the PyTorch references, opcheck, torch.compile,
and the input checks' error messages."""

import pytest
import torch

from engine.ops import fused_adamw_, fused_adamw_reference_, total_norm, total_norm_reference
from engine.optim import FusedAdamW

ODD_SIZES = [(1,), (7,), (1000003,), (3, 5, 17), (65537,)]
HYPER = dict(lr=3e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, eps=1e-8)


def lists(dtype, sizes=ODD_SIZES, amsgrad=False, master=False):
    params = [torch.randn(s).to(dtype) for s in sizes]
    grads = [torch.randn(s).to(dtype) for s in sizes]
    exp_avgs = [torch.randn(s).mul_(0.1) for s in sizes]
    exp_avg_sqs = [torch.rand(s).mul_(0.01) for s in sizes]
    max_sqs = [v + torch.rand(s).mul_(0.001) for v, s in zip(exp_avg_sqs, sizes)] if amsgrad else []
    masters = [p.float() + torch.randn(p.shape) * 1e-3 for p in params] if master else []
    steps = [torch.tensor(float(6 + i)) for i in range(len(sizes))]
    return params, grads, exp_avgs, exp_avg_sqs, steps, max_sqs, masters


def call_kwargs(tensor_lists, **kw):
    """Splits lists() output into the wrapper's positional lists and keyword lists."""
    params, grads, m, v, steps, max_sqs, masters = tensor_lists
    return (params, grads, m, v, steps), dict(max_exp_avg_sqs=max_sqs, master_params=masters, **kw)


def clone_all(tensor_lists):
    return [[t.clone() for t in ts] for ts in tensor_lists]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("scale", [None, 0.37])
def test_kernel_matches_reference(dtype, amsgrad, master, scale):
    ours = lists(dtype, amsgrad=amsgrad, master=master)
    ref = clone_all(ours)
    before_param, before_m = ours[0][2].clone(), ours[2][2].clone()
    grad_scale = None if scale is None else torch.tensor(scale)
    kwargs = dict(HYPER, amsgrad=amsgrad, maximize=False, grad_scale=grad_scale)
    args, kw = call_kwargs(ours, **kwargs)
    fused_adamw_(*args, **kw)
    args, kw = call_kwargs(ref, **kwargs)
    fused_adamw_reference_(*args, **kw)
    assert [s.item() for s in ours[4]] == [7.0 + i for i in range(len(ODD_SIZES))]
    names = ["params", "grads", "exp_avgs", "exp_avg_sqs", "state_steps", "max_exp_avg_sqs",
             "master_params"]
    for name, got, want in zip(names, ours, ref):
        for t, (a, b) in enumerate(zip(got, want)):
            if name == "params" and dtype == torch.bfloat16:
                # fp32 results within an ulp may round to neighbouring bf16 values.
                torch.testing.assert_close(a, b, rtol=2**-7, atol=1e-6, msg=f"{name}[{t}]")
            else:
                torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=f"{name}[{t}]")
    # Something really changed: every first moment moves, and the parameters with it (in bf16
    # many updates of lr 3e-3 round away, so only some bf16 values change).
    assert (ours[2][2] != before_m).float().mean() > 0.99
    moved = (ours[0][2] != before_param).float().mean()
    assert moved > (0.9 if dtype == torch.float32 else 0.3)


def test_strided_but_dense_tensors_are_updated_in_their_own_layout():
    base = torch.randn(40, 30)
    param = base.t()  # dense, not contiguous
    grad = torch.randn(40, 30).t()
    m, v = torch.zeros(40, 30).t(), torch.zeros(40, 30).t()
    ref = [param.contiguous(), grad.contiguous(), m.contiguous(), v.contiguous()]
    fused_adamw_([param], [grad], [m], [v], [torch.tensor(0.0)], **HYPER)
    fused_adamw_reference_([ref[0]], [ref[1]], [ref[2]], [ref[3]], [torch.tensor(0.0)], **HYPER)
    torch.testing.assert_close(param, ref[0])
    torch.testing.assert_close(m, ref[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_total_norm_matches_float64_reference(dtype):
    tensors = [torch.randn(s).to(dtype) * 5 for s in ODD_SIZES]
    got = total_norm(tensors)
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got, total_norm_reference(tensors), rtol=1e-6, atol=0)


def test_total_norm_is_deterministic_and_handles_empty_and_single():
    tensors = [torch.randn(s) for s in ODD_SIZES]
    assert torch.equal(total_norm(tensors), total_norm(tensors))
    assert total_norm([]).item() == 0.0
    assert total_norm([torch.tensor([3.0, 4.0])]).item() == 5.0


def test_opcheck_fused_adamw():
    params, grads, m, v, steps, mx, masters = lists(torch.bfloat16, sizes=[(3,), (5, 4)],
                                                    amsgrad=True, master=True)
    torch.library.opcheck(
        torch.ops.crucible.fused_adamw_.default,
        (params, grads, m, v, mx, masters, steps, 1e-3, 0.9, 0.999, 0.01, 1e-8, True, False,
         torch.tensor(0.5)),
    )


def test_opcheck_total_norm():
    torch.library.opcheck(torch.ops.crucible.total_norm.default,
                          ([torch.randn(3), torch.randn(4, 5)],))


def test_torch_compile_traces_through_the_ops():
    params, grads, m, v, steps, _, _ = lists(torch.float32, sizes=[(10,), (4, 4)])
    ref = clone_all([params, grads, m, v, steps])

    def step(params, grads, m, v, steps):
        coef = torch.clamp(1.0 / (total_norm(grads) + 1e-6), max=1.0)
        fused_adamw_(params, grads, m, v, steps, **HYPER, grad_scale=coef)

    torch.compile(step, backend="aot_eager", fullgraph=True)(params, grads, m, v, steps)
    coef = torch.clamp(1.0 / (total_norm_reference(ref[1]) + 1e-6), max=1.0)
    fused_adamw_reference_(*ref, **HYPER, grad_scale=coef)
    assert [s.item() for s in steps] == [s.item() for s in ref[4]] == [7.0, 8.0]
    for a, b in zip(params, ref[0]):
        torch.testing.assert_close(a, b)


# --- bad input: every message names the list, the index and the way out --------------------

def call(params, grads, m, v, mx=(), masters=(), steps=None, **kw):
    steps = [torch.tensor(0.0) for _ in params] if steps is None else steps
    fused_adamw_(params, grads, m, v, steps, max_exp_avg_sqs=mx, master_params=masters,
                 **{**HYPER, **kw})


def test_error_dtype_mismatch_names_the_gradient():
    with pytest.raises(RuntimeError, match=r"grads\[1\] has dtype BFloat16 but params\[1\]"):
        call([torch.zeros(2), torch.zeros(3)], [torch.zeros(2), torch.zeros(3).bfloat16()],
             [torch.zeros(2), torch.zeros(3)], [torch.zeros(2), torch.zeros(3)])


def test_error_state_must_be_fp32():
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] has dtype BFloat16.*float32"):
        call([torch.zeros(2).bfloat16()], [torch.zeros(2).bfloat16()],
             [torch.zeros(2).bfloat16()], [torch.zeros(2)])


def test_error_unsupported_param_dtype():
    with pytest.raises(RuntimeError, match=r"params\[0\] has dtype Half"):
        call([torch.zeros(2).half()], [torch.zeros(2).half()], [torch.zeros(2)], [torch.zeros(2)])


def test_error_list_lengths_and_sizes():
    with pytest.raises(RuntimeError, match="lists differ in length"):
        call([torch.zeros(2)], [], [torch.zeros(2)], [torch.zeros(2)])
    with pytest.raises(RuntimeError,
                       match=r"exp_avg_sqs\[0\] has 3 elements but params\[0\] has 2"):
        call([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(3)])
    with pytest.raises(RuntimeError, match="max_exp_avg_sqs has 0 entries; it needs 1"):
        call([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], amsgrad=True)


def test_error_non_dense_and_mismatched_layouts():
    gappy = torch.zeros(4, 6)[:, ::2]
    with pytest.raises(RuntimeError, match=r"params\[0\].*not dense in memory"):
        call([gappy], [torch.zeros(4, 3)], [torch.zeros(4, 3)], [torch.zeros(4, 3)])
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\].*laid out unlike params\[0\]"):
        call([torch.zeros(4, 3)], [torch.zeros(4, 3)], [torch.zeros(3, 4).t()],
             [torch.zeros(4, 3)])


def test_error_mixed_devices_in_one_call():
    cpu_only = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    args = ([torch.zeros(2), torch.zeros(2, device="meta")], [torch.zeros(2)] * 2,
            [torch.zeros(2)] * 2, [torch.zeros(2)] * 2, [], [], [torch.tensor(0.0)] * 2, 1e-3,
            0.9, 0.999, 0.0, 1e-8, False, False, None)
    with pytest.raises(RuntimeError, match=r"mixed devices.*params\[1\] is on meta"):
        torch.ops.crucible.fused_adamw_.default.redispatch(cpu_only, *args)


def test_error_bad_grad_scale_and_steps():
    one = [torch.zeros(2)]
    with pytest.raises(RuntimeError, match="grad_scale must be a one-element float32"):
        call(one, one, one, one, grad_scale=torch.ones(2))
    with pytest.raises(RuntimeError, match="state_steps has 0 entries"):
        call(one, one, one, one, steps=[])
    with pytest.raises(RuntimeError, match=r"state_steps\[0\] must be a one-element float32 CPU"):
        call(one, one, one, one, steps=[torch.tensor(0, dtype=torch.int64)])


def test_optimizer_errors_name_the_parameter():
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\].*float16"):
        FusedAdamW([torch.nn.Parameter(torch.zeros(2)),
                    torch.nn.Parameter(torch.zeros(2).half())])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*not dense"):
        FusedAdamW([torch.nn.Parameter(torch.zeros(4, 6)[:, ::2])])
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = FusedAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"params'\]\[0\].*sparse gradient.*SparseAdam"):
        opt.step()
    for kwargs, pattern in [({"lr": -1.0}, "learning rate"), ({"betas": (0.9, 1.0)}, "betas"),
                            ({"differentiable": True}, "differentiable"),
                            ({"max_grad_norm": 0.0}, "max_grad_norm")]:
        with pytest.raises(ValueError, match=pattern):
            FusedAdamW([torch.nn.Parameter(torch.zeros(1))], **kwargs)
