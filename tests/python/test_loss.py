"""byol_rs.byol_loss against solo-learn's byol_loss_func written in plain PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import byol_rs
from conftest import devices


def reference(p, z, simplified=True):
    # solo-learn solo/losses/byol.py, both variants.
    if simplified:
        return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()
    p = F.normalize(p, dim=-1)
    z = F.normalize(z, dim=-1)
    return 2 - 2 * (p * z.detach()).sum(dim=1).mean()


def both(p, z, simplified=True):
    p1 = p.detach().clone().requires_grad_()
    p2 = p.detach().clone().requires_grad_()
    z1 = z.detach().clone().requires_grad_()
    got = byol_rs.byol_loss(p1, z1, simplified=simplified)
    want = reference(p2, z, simplified)
    got.backward()
    want.backward()
    return got, want, p1.grad, p2.grad, z1.grad


@pytest.mark.parametrize("simplified", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (256, 256), (4096, 256), (33, 1000)])
def test_fp32_matches_reference_value_and_grad(shape, simplified):
    torch.manual_seed(0)
    p, z = torch.randn(shape), torch.randn(shape)
    got, want, gp, wp, gz = both(p, z, simplified)
    # Stated tolerance: value 1e-6 absolute, gradient 1e-6 relative to its largest entry.
    assert abs(got.item() - want.item()) < 1e-6
    assert (gp - wp).abs().max() <= 1e-6 * wp.abs().max()
    assert gz is None  # stop-gradient: nothing reaches z


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_dtypes_and_devices(device, dtype, tol):
    torch.manual_seed(1)
    p = torch.randn(64, 128, device=device).to(dtype)
    z = torch.randn(64, 128, device=device).to(dtype)
    got, _, gp, _, _ = both(p, z)
    # The reference in fp32 on the same (rounded) inputs; low precision is compared loosely.
    want, _, _, wp, _ = both(p.float(), z.float())
    assert got.dtype == dtype and got.device.type == device
    assert gp.dtype == dtype and gp.device.type == device
    assert abs(got.float().item() - want.item()) < tol * 4
    assert (gp.float() - wp).abs().max() <= tol * wp.abs().max() * 4


@pytest.mark.parametrize("simplified", [True, False])
def test_zero_vectors_are_finite_and_match_reference(simplified):
    p = torch.zeros(4, 8)
    p[1] = torch.randn(8)
    z = torch.randn(4, 8)
    z[2] = 0
    got, want, gp, wp, _ = both(p, z, simplified)
    assert torch.isfinite(got) and torch.isfinite(gp).all()
    assert abs(got.item() - want.item()) < 1e-6
    torch.testing.assert_close(gp, wp, rtol=1e-6, atol=1e-7)


def test_symmetric_loss_is_sum_of_both_directions():
    torch.manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(16, 32) for _ in range(4))
    got = byol_rs.symmetric_byol_loss(p1, p2, z1, z2)
    want = reference(p1, z2) + reference(p2, z1)
    assert abs(got.item() - want.item()) < 2e-6
    # swapping the views leaves the symmetric loss unchanged
    swapped = byol_rs.symmetric_byol_loss(p2, p1, z2, z1)
    assert abs(got.item() - swapped.item()) < 2e-6


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 70), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31))
def test_property_matches_reference_over_sizes(n, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, d, generator=g) * scale
    z = torch.randn(n, d, generator=g)
    got, want, gp, wp, _ = both(p, z)
    assert abs(got.item() - want.item()) < 2e-6
    # Relative to the gradient's natural scale 1/(n |p|): at d=1 the true gradient is 0.
    natural = 1.0 / (n * p.norm(dim=1).min().item())
    assert (gp - wp).abs().max() <= 2e-6 * max(wp.abs().max().item(), natural)
    assert -2e-6 <= got.item() <= 4.0 + 2e-6  # cos can round to just past +-1


@pytest.mark.parametrize(
    "p,z,message",
    [
        (torch.randn(4), torch.randn(4), "p: expected a 2-D"),
        (torch.randn(4, 3), torch.randn(4, 2), "z: shape"),
        (torch.randn(4, 3), torch.randn(4, 3).double(), "z: dtype"),
        (torch.randint(0, 3, (4, 3)), torch.randint(0, 3, (4, 3)), "p: expected a floating-point"),
        (torch.randn(0, 3), torch.randn(0, 3), "p: expected a non-empty"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(p, z, message):
    with pytest.raises(ValueError, match=message):
        byol_rs.byol_loss(p, z)


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match="p: expected a torch.Tensor"):
        byol_rs.byol_loss([1.0, 2.0], torch.randn(1, 2))
