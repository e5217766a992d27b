"""The engine's Winograd F(2x2, 3x3) convolution (stride 1, padding 1, no bias) against
F.conv2d in fp64.

Output and the gradients of x and the weight are judged against F.conv2d in float64. The
tolerance is floors.K = 10 times the floor measured at test time: oneDNN's own fp32 F.conv2d
error, and at least sqrt(n) fp32 ulps of the tensor's largest entry, n the length of the sums
that make one entry (9c for the output, 9k for dx, N*H*W for dweight; floors.py). Winograd's
transforms round more than a direct sum: measured on the development machine, the engine's error
is 0.95-4.1 ulps where oneDNN's is 0.43-6.5 ulps (at most 2.7x oneDNN's), and its worst ratio
to the floor is 0.51.

Mutations checked by hand (each fails every case): the weight's kernel flipped (correlation read
as convolution), the weight scaled by 1 + 1e-5 in the reference, one input channel dropped.
"""

import pytest
import torch
import torch.nn.functional as F

from byol_rs import _core
from floors import assert_near


def close(name, got, want, fp32, n):
    assert_near(name, got, want, fp32, n=n)


def sum_lengths(x, weight):
    """How many products make one entry of the output, dx and dweight."""
    (n, c, h, w), k = x.shape, weight.shape[0]
    return 9 * c, 9 * k, n * h * w


def inputs(n, c, k, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(k, c, 3, 3, generator=g) / (3 * c**0.5)).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(n, k, h, w, generator=g)
    return x, weight, grad


def conv_and_grads(conv, x, weight, grad, dtype=None):
    x, weight = x.detach().clone(), weight.detach().clone()
    if dtype is not None:
        x, weight, grad = x.to(dtype), weight.to(dtype), grad.to(dtype)
    x.requires_grad_(), weight.requires_grad_()
    y = conv(x, weight)
    y.backward(grad)
    return y.detach(), x.grad, weight.grad


@pytest.mark.parametrize(
    "n,c,k,h,w",
    [(2, 3, 5, 4, 4), (3, 8, 6, 6, 6), (1, 16, 16, 2, 2), (4, 64, 32, 4, 4), (2, 7, 9, 4, 8), (2, 32, 64, 8, 2)],
)
def test_matches_pytorch_in_fp64(n, c, k, h, w):
    x, weight, grad = inputs(n, c, k, h, w)
    want = conv_and_grads(lambda a, b: F.conv2d(a, b, padding=1), x, weight, grad, torch.float64)
    fp32 = conv_and_grads(lambda a, b: F.conv2d(a, b, padding=1), x, weight, grad)
    got = conv_and_grads(_core._winograd_conv3x3, x, weight, grad)
    for name, g_, w_, f_, len_ in zip(["output", "dx", "dweight"], got, want, fp32, sum_lengths(x, weight)):
        close(name, g_, w_, f_, len_)
    # Channels_last out, as the engine's next layers expect; the weight gradient in the weight's layout.
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert got[2].is_contiguous(memory_format=torch.channels_last)


def test_weight_gradient_only_and_no_grad():
    x, weight, grad = inputs(2, 8, 8, 4, 4)
    w = weight.clone().requires_grad_()
    _core._winograd_conv3x3(x, w).backward(grad)  # x needs no gradient, as for a first layer
    w_ref = weight.clone().requires_grad_()
    F.conv2d(x, w_ref, padding=1).backward(grad)
    w64 = weight.double().requires_grad_()
    F.conv2d(x.double(), w64, padding=1).backward(grad.double())
    close("dweight", w.grad, w64.grad, w_ref.grad, sum_lengths(x, weight)[2])
    with torch.no_grad():
        y = _core._winograd_conv3x3(x, w)
    assert y.grad_fn is None and not y.requires_grad


@pytest.mark.parametrize("case", ["nchw", "odd_side", "float64", "kernel_5x5", "channel_mismatch", "autocast"])
def test_declines_what_it_does_not_handle(case):
    """`None` means the engine runs ATen's convolution instead."""
    x, weight, _ = inputs(2, 4, 4, 4, 4)
    if case == "nchw":
        x = x.contiguous()
    elif case == "odd_side":
        x = torch.randn(2, 4, 5, 4).contiguous(memory_format=torch.channels_last)
    elif case == "float64":
        x, weight = x.double(), weight.double()
    elif case == "kernel_5x5":
        weight = torch.randn(4, 4, 5, 5)
    elif case == "channel_mismatch":
        weight = torch.randn(4, 3, 3, 3)
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _core._winograd_conv3x3(x, weight) is None
    else:
        assert _core._winograd_conv3x3(x, weight) is None


@pytest.mark.filterwarnings("ignore:.*Profiler clears events")
def test_the_engine_uses_it_only_where_it_is_faster(monkeypatch):
    """ResNet-18 at 32 px: layer 4's stride-1 3x3 convolutions (4x4 pixels) go through it, and
    nothing does with BYOL_RS_WINOGRAD=0."""
    import byol_rs
    from torch.profiler import ProfilerActivity, profile

    learner = byol_rs.BYOL("resnet18", small_image=True, total_steps=10)
    v = torch.randn(4, 3, 32, 32)

    def calls():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            learner.embed(v)
        return sum(e.count for e in prof.key_averages() if e.key == "byol_rs::winograd_conv3x3")

    assert calls() == 3  # layer4.0.conv2, layer4.1.conv1, layer4.1.conv2
    monkeypatch.setenv("BYOL_RS_WINOGRAD", "0")
    assert calls() == 0
