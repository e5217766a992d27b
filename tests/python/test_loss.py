"""byol_rs.byol_loss against solo-learn's byol_loss_func written in plain PyTorch.

Tolerances (floors.py): K = 10 times the floor measured at test time, the reference's own error
in the tested dtype against the reference in float64, and at least one ulp of the natural scale:
2 for the loss 2 - 2 cos (4 for the symmetric sum), the largest entry of the fp64 gradient (or
1 / (n min |p|) where the true gradient is 0). Measured on the development machine: loss within
1 ulp of 2 (PyTorch fp32 alike), gradient at most 1.9 ulps (PyTorch 1.4); bf16/fp16 within one
ulp of the dtype, as PyTorch in the dtype.

Mutations of byol_loss checked by hand: the gradient's sign flipped and the mean over rows read
as the sum fail every case but shape (1, 1) (one row, true gradient 0); the loss scaled by
1 + 1e-5 fails every fp32 case (it is below bf16's and fp16's resolution). 3,000 random cases
of the property test pass.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import byol_rs
from conftest import devices
from floors import K, assert_near, eps


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
    _, want64, _, wp64, _ = both(p.double(), z.double(), simplified)
    assert_near("loss", got, want64, want, scale=2.0)
    # (1, 1): the true gradient is 0 (d = 1); its natural scale is 1 / |p|.
    assert_near("grad", gp, wp64, wp, scale=max(wp64.abs().max().item(), 1 / p.norm(dim=1).min().item()))
    assert gz is None  # stop-gradient: nothing reaches z


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_devices(device, dtype):
    torch.manual_seed(1)
    p = torch.randn(64, 128, device=device).to(dtype)
    z = torch.randn(64, 128, device=device).to(dtype)
    got, theirs, gp, tp, _ = both(p, z)
    # The floor: the reference in the same dtype on the same device, against the reference in
    # float64 on the same (rounded) inputs, and at least one ulp of the dtype.
    _, want, _, wp, _ = both(p.double(), z.double())
    assert got.dtype == dtype and got.device.type == device
    assert gp.dtype == dtype and gp.device.type == device
    assert_near("loss", got.float(), want, theirs.float(), scale=2.0, dtype=dtype)
    assert_near("grad", gp.float(), wp, tp.float(), dtype=dtype)


@pytest.mark.parametrize("simplified", [True, False])
def test_zero_vectors_are_finite_and_match_reference(simplified):
    p = torch.zeros(4, 8)
    p[1] = torch.randn(8)
    z = torch.randn(4, 8)
    z[2] = 0
    got, want, gp, wp, _ = both(p, z, simplified)
    _, want64, _, wp64, _ = both(p.double(), z.double(), simplified)
    assert torch.isfinite(got) and torch.isfinite(gp).all()
    # The zero rows' gradient is 1 / eps-clamped norms (4e7 here): PyTorch's fp32 error 2.8 ulps
    # of it, ours 3.7 (measured).
    assert_near("loss", got, want64, want, scale=2.0)
    assert_near("grad", gp, wp64, wp)


def test_symmetric_loss_is_sum_of_both_directions():
    torch.manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(16, 32) for _ in range(4))
    got = byol_rs.symmetric_byol_loss(p1, p2, z1, z2)
    want = reference(p1, z2) + reference(p2, z1)
    want64 = reference(p1.double(), z2.double()) + reference(p2.double(), z1.double())
    assert_near("loss", got, want64, want, scale=4.0)
    # swapping the views leaves the symmetric loss unchanged (measured: bit-identical), to K
    # ulps of its scale 4
    swapped = byol_rs.symmetric_byol_loss(p2, p1, z2, z1)
    assert abs(got.item() - swapped.item()) <= K * eps() * 4


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 70), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31))
def test_property_matches_reference_over_sizes(n, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, d, generator=g) * scale
    z = torch.randn(n, d, generator=g)
    got, want, gp, wp, _ = both(p, z)
    _, want64, _, wp64, _ = both(p.double(), z.double())
    assert_near("loss", got, want64, want, scale=2.0)
    # Relative to the gradient's natural scale 1/(n |p|): at d=1 the true gradient is 0.
    natural = 1.0 / (n * p.norm(dim=1).min().item())
    assert_near("grad", gp, wp64, wp, scale=max(wp64.abs().max().item(), natural))
    slack = K * eps() * 2  # cos can round to just past +-1: K ulps of the loss's scale 2
    assert -slack <= got.item() <= 4.0 + slack


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
