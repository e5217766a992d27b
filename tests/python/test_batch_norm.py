"""The engine's fused training-mode `relu?(batch_norm(x) + residual?)` against PyTorch in fp64.

Output, running statistics and the gradients of x, weight, bias and the residual are judged
against F.batch_norm (+ add, + ReLU) in float64. The tolerance is floors.K = 10 times the floor
measured at test time: the same PyTorch ops' own fp32 error, and at least one fp32 ulp of the
tensor's largest entry (floors.py). Measured on the development machine: the engine's error is
at most 1.1 ulps where PyTorch's is 0.6-15.5 ulps, and where BN's backward cancels (dx with 2
values per channel: 3500 ulps) it is 0.54x PyTorch's; the worst ratio to the floor is 0.73.

Mutations checked by hand: momentum 0.1 read as 0.1001 and eps 1e-5 read as 1e-4 fail every
case; running_var from the biased variance and the fused op's dbias scaled by 1 + 1e-5 fail
every case but the 65,536-value one, where both changes (1.5e-5 and 1e-5 relative) lie within
10x PyTorch's own fp32 error of that sum.
"""

import pytest
import torch
import torch.nn.functional as F

from byol_rs import _core
from floors import assert_near as close

MOMENTUM, EPS = 0.1, 1e-5


def inputs(shape, residual, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    fmt = torch.channels_last if len(shape) == 4 and channels_last else torch.contiguous_format
    # A shifted, scaled activation like a conv's output; channel 0 has weight and bias 0, so
    # that its pre-activation is exactly 0 everywhere (ReLU's tie: no gradient passes).
    x = (torch.randn(shape, generator=g) * 2 + 0.5).contiguous(memory_format=fmt)
    w = torch.rand(c, generator=g) + 0.5
    b = torch.randn(c, generator=g)
    w[0], b[0] = 0.0, 0.0
    r = torch.randn(shape, generator=g).contiguous(memory_format=fmt) if residual else None
    grad = torch.randn(shape, generator=g)
    return x, w, b, r, grad


def reference(x, w, b, r, relu, grad, dtype=torch.float64):
    """PyTorch: BN in training mode, then the add, then ReLU; output, stats, gradients."""
    x, w, b = (t.to(dtype).requires_grad_() for t in (x, w, b))
    r = r.to(dtype).requires_grad_() if r is not None else None
    rm, rv = torch.zeros(x.shape[1], dtype=dtype), torch.ones(x.shape[1], dtype=dtype)
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=MOMENTUM, eps=EPS)
    if r is not None:
        y = y + r
    if relu:
        y = torch.relu(y)
    y.backward(grad.to(dtype))
    grads = [x.grad, w.grad, b.grad] + ([r.grad] if r is not None else [])
    return y.detach(), rm, rv, grads


def fused(x, w, b, r, relu, grad):
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    r = r.clone().requires_grad_() if r is not None else None
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    y = _core._batch_norm_act(x, w, b, rm, rv, residual=r, relu=relu, momentum=MOMENTUM, eps=EPS)
    assert y is not None, "the fused op declined inputs it should take"
    y.backward(grad)
    grads = [x.grad, w.grad, b.grad] + ([r.grad] if r is not None else [])
    return y.detach(), rm, rv, grads


@pytest.mark.parametrize(
    "shape,relu,residual",
    [
        ((8, 16, 6, 5), True, False),  # conv-BN-ReLU
        ((8, 16, 6, 5), False, False),  # a downsample's BN
        ((8, 16, 6, 5), True, True),  # a block's last BN, the skip and ReLU
        ((2, 64, 1, 1), True, True),  # 2 values per channel, the least BN accepts
        ((12, 40), True, False),  # a projector's BatchNorm1d
        ((64, 3, 32, 32), True, False),  # more rows than the fixed split has chunks
    ],
)
def test_matches_pytorch_in_fp64(shape, relu, residual):
    x, w, b, r, grad = inputs(shape, residual)
    y, rm, rv, grads = fused(x, w, b, r, relu, grad)
    y64, rm64, rv64, grads64 = reference(x, w, b, r, relu, grad)
    y32, rm32, rv32, grads32 = reference(x, w, b, r, relu, grad, dtype=torch.float32)
    close("y", y, y64, y32)
    assert y.is_contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.contiguous_format)
    close("running_mean", rm, rm64, rm32)
    close("running_var", rv, rv64, rv32)
    for name, got, want, theirs in zip(["dx", "dweight", "dbias", "dresidual"], grads, grads64, grads32):
        close(name, got, want, theirs)
    if relu and not residual:
        assert (y[:, 0] == 0).all() and (grads[1][0] == 0) and (grads[2][0] == 0)


def test_same_bits_on_any_thread_count():
    x, w, b, r, grad = inputs((32, 24, 9, 9), residual=True)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y, rm, rv, grads = fused(x, w, b, r, True, grad)
            runs.append([y, rm, rv, *grads])
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b_ in zip(runs[0], other):
            assert torch.equal(a, b_)


def test_under_no_grad_updates_statistics_and_records_nothing():
    x, w, b, _, _ = inputs((8, 16, 4, 4), residual=False)
    w.requires_grad_()
    rm, rv = torch.zeros(16), torch.ones(16)
    with torch.no_grad():
        y = _core._batch_norm_act(x, w, b, rm, rv)
    assert y.grad_fn is None and not y.requires_grad
    # The closed form, one fp32 ulp of its largest entry as the floor.
    close("running_mean", rm, MOMENTUM * x.double().mean((0, 2, 3)))


@pytest.mark.filterwarnings("ignore:.*Profiler clears events")
def test_forward_is_named_in_profiler_traces():
    """A custom autograd op's forward is invisible to torch.profiler unless it records itself;
    the backward appears as its autograd node."""
    from torch.profiler import ProfilerActivity, profile

    x, w, b, _, grad = inputs((8, 16, 4, 4), residual=False)
    x.requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _core._batch_norm_act(x, w, b, torch.zeros(16), torch.ones(16)).backward(grad)
    names = [e.key for e in prof.key_averages()]
    assert names.count("byol_rs::batch_norm_act") == 1, names
    assert any("BatchNormAct" in n for n in names), names


@pytest.mark.parametrize(
    "case",
    ["nchw", "float64", "one_value_per_channel", "residual_without_relu", "residual_in_other_layout", "stats_of_other_size"],
)
def test_declines_what_it_does_not_handle(case):
    """`None` means the engine runs ATen's BN instead; nothing is modified."""
    x, w, b, r, _ = inputs((4, 8, 3, 3), residual=True)
    rm, rv = torch.zeros(8), torch.ones(8)
    kwargs = dict(residual=None, relu=True)
    if case == "nchw":
        x = x.contiguous()
    elif case == "float64":
        x, w, b, rm, rv = (t.double() for t in (x, w, b, rm, rv))
    elif case == "one_value_per_channel":
        x = x[:1, :, :1, :1]
    elif case == "residual_without_relu":
        kwargs = dict(residual=r, relu=False)
    elif case == "residual_in_other_layout":
        kwargs = dict(residual=r.contiguous(), relu=True)
    elif case == "stats_of_other_size":
        rm = torch.zeros(9)
    assert _core._batch_norm_act(x, w, b, rm, rv, **kwargs) is None
    assert (rm == 0).all() and (rv == 1).all()
