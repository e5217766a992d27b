"""byol_rs.ema_update_ against the formula xi <- tau * xi + (1 - tau) * theta."""

import copy

import pytest
import torch
import torchvision

import byol_rs
from conftest import devices


def formula(target, online, tau):
    return [tau * t + (1 - tau) * o for t, o in zip(target, online)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("tau", [0.0, 0.5, 0.996, 1.0])
def test_separate_tensors_match_formula(device, tau):
    torch.manual_seed(0)
    online = torchvision.models.resnet18().to(device)
    target = copy.deepcopy(online)
    with torch.no_grad():
        for t in target.parameters():
            t.add_(torch.randn_like(t))
    want = formula([t.detach().clone() for t in target.parameters()], list(online.parameters()), tau)
    byol_rs.ema_update_(target, online, tau)
    for got, w in zip(target.parameters(), want):
        torch.testing.assert_close(got.detach(), w, rtol=1e-6, atol=1e-7)  # stated tolerance
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
    want = 0.9 * flat_t + 0.1 * flat_o
    byol_rs.ema_update_(views_t, views_o, 0.9)
    torch.testing.assert_close(flat_t, want, rtol=1e-6, atol=1e-7)


def test_bf16_tensors():
    t = [torch.randn(100).bfloat16()]
    o = [torch.randn(100).bfloat16()]
    want = formula([t[0].float()], [o[0].float()], 0.75)[0]
    byol_rs.ema_update_(t, o, 0.75)
    torch.testing.assert_close(t[0].float(), want, rtol=1e-2, atol=1e-2)


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
