"""byol_rs.ema_update_ against the formula xi <- tau * xi + (1 - tau) * theta.

Tolerance: per element, K = 10 times the closed-form floor eps * (|xi| + |theta|), the rounding
of a two-term weighted sum in the dtype (tau and 1 - tau lie in [0, 1]; it also bounds the lerp
form xi + (1 - tau) * (theta - xi)), against the formula in float64. Measured on the development
machine: at most 0.50 of the floor in fp32 (the fp32 formula itself: 1.05), 0.25 in bf16 (torch
in bf16: 0.41).

Mutations of the tau passed to ema_update_, checked by hand: one step off in a 10-step cosine
schedule (0.996 -> 0.99610) fails; 1 - tau fails every case but tau = 0.5 (where it is the
same); tau shifted by 1e-5 fails every case but bf16 (below its resolution).
"""

import copy

import pytest
import torch
import torchvision

import byol_rs
from conftest import devices
from floors import K, eps


def formula(target, online, tau):
    return [tau * t + (1 - tau) * o for t, o in zip(target, online)]


def assert_ema(got, target, online, tau, dtype=torch.float32):
    """got within K * eps(dtype) * (|target| + |online|) of the formula in float64, per element."""
    for g, t, o in zip(got, target, online):
        t, o = t.detach().double().cpu(), o.detach().double().cpu()
        want = formula([t], [o], tau)[0]
        err = (g.detach().double().cpu() - want).abs()
        bound = K * eps(dtype) * (t.abs() + o.abs())
        assert (err <= bound).all(), f"max |diff| {err.max().item():.3g}, {(err / bound).max().item():.3g} x the bound"


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("tau", [0.0, 0.5, 0.996, 1.0])
def test_separate_tensors_match_formula(device, tau):
    torch.manual_seed(0)
    online = torchvision.models.resnet18().to(device)
    target = copy.deepcopy(online)
    with torch.no_grad():
        for t in target.parameters():
            t.add_(torch.randn_like(t))
    before = [t.detach().clone() for t in target.parameters()]
    byol_rs.ema_update_(target, online, tau)
    assert_ema(list(target.parameters()), before, list(online.parameters()), tau)
    assert all(p.grad is None for p in target.parameters())


def test_tau_one_changes_nothing_bit_for_bit():
    torch.manual_seed(1)
    target = [torch.randn(10, 10), torch.randn(3)]
    online = [torch.randn(10, 10), torch.randn(3)]
    before = [t.clone() for t in target]
    byol_rs.ema_update_(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(target, before))


def test_flat_buffer_views_take_the_single_kernel_path_and_agree():
    torch.manual_seed(2)
    sizes = [(64, 3, 3, 3), (64,), (128, 64)]
    n = sum(torch.Size(s).numel() for s in sizes)
    flat_t, flat_o = torch.randn(n), torch.randn(n)
    views_t = list(torch.split(flat_t, [torch.Size(s).numel() for s in sizes]))
    views_t = [v.view(s) for v, s in zip(views_t, sizes)]
    views_o = [v.view(s) for v, s in zip(torch.split(flat_o, [torch.Size(s).numel() for s in sizes]), sizes)]
    before = flat_t.clone()
    byol_rs.ema_update_(views_t, views_o, 0.9)
    assert_ema([flat_t], [before], [flat_o], 0.9)


def test_bf16_tensors():
    t = [torch.randn(100).bfloat16()]
    o = [torch.randn(100).bfloat16()]
    before = [t[0].clone()]
    byol_rs.ema_update_(t, o, 0.75)
    assert t[0].dtype == torch.bfloat16
    assert_ema(t, before, o, 0.75, dtype=torch.bfloat16)


@pytest.mark.parametrize(
    "target,online,tau,message",
    [
        ([torch.zeros(3)], [torch.zeros(3), torch.zeros(3)], 0.5, "online: has 2 tensors but target has 1"),
        ([torch.zeros(3)], [torch.zeros(4)], 0.5, "online: tensor 0 has shape"),
        ([torch.zeros(3)], [torch.zeros(3).double()], 0.5, "online: tensor 0 has dtype"),
        ([torch.zeros(3)], [torch.zeros(3)], -0.1, "tau: must lie in"),
        ([torch.zeros(3)], [torch.zeros(3)], 1.01, "tau: must lie in"),
        ([torch.zeros(3, dtype=torch.long)], [torch.zeros(3, dtype=torch.long)], 0.5, "target: tensor 0 has dtype"),
    ],
)
def test_mismatches_raise_value_error(target, online, tau, message):
    before = [t.clone() for t in target]
    with pytest.raises(ValueError, match=message):
        byol_rs.ema_update_(target, online, tau)
    assert all(torch.equal(a, b) for a, b in zip(target, before))


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="tau: expected a float"):
        byol_rs.ema_update_([torch.zeros(1)], [torch.zeros(1)], "0.5")
    with pytest.raises(TypeError, match="target: expected a module or a sequence"):
        byol_rs.ema_update_(torch.zeros(1), [torch.zeros(1)], 0.5)
    with pytest.raises(TypeError):
        byol_rs.ema_update_([1.0], [torch.zeros(1)], 0.5)
