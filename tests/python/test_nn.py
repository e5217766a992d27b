"""byol_rs.nn.BYOL: BYOL around any nn.Module, against a BYOL written in plain PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import byol_rs
from byol_rs.errors import ByolTypeError, ByolValueError
from floors import K, eps
from reference_byol import regression_loss, tau_at

# Both sides run in fp32 and are judged against the same BYOL in fp64: byol_rs's error must stay
# within K = 10 times the floor measured at test time, plain PyTorch's own fp32 error after the
# same steps, and at least one fp32 ulp of the tensor's largest entry (floors.py). The fp32 error
# is what makes this fair: mobilenet_v3_small at 64 px is chaotic in fp32 (weights scaled by
# 1 + 1e-7 drift 4e-3 in two steps; its loss lands 1.6e-2 from fp64 after 3 steps), and BN
# biases fed by long sums lose digits to cancellation. Measured on the development machine: at
# most 1.63x PyTorch's error for mobilenet (a BN running mean), 1.21x the floor for TinyNet; the
# loss 1.72 ulps where PyTorch's was 0.01.
HEADS = dict(projector_hidden=64, projection_dim=32, predictor_hidden=64)


class TinyNet(nn.Module):
    """A user's own backbone: conv-BN-ReLU, pooled and flattened to 16 features."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.body(x)


def mobilenet():
    net = torchvision.models.mobilenet_v3_small()
    net.classifier = nn.Identity()
    return net


class ReferenceStep:
    """The same BYOL written out in PyTorch: per-view forwards, target in train mode under
    no_grad, loss 2 - 2 cos symmetrised, SGD, then the EMA with the closed-form cosine tau."""

    def __init__(self, model: byol_rs.nn.BYOL):
        self.m = copy.deepcopy(model)
        self.opt = torch.optim.SGD(self._online(), lr=0.05, momentum=0.9)

    def _online(self):
        return [p for mod in (self.m.backbone, self.m.projector, self.m.predictor) for p in mod.parameters()]

    def step(self, v1, v2, k):
        m = self.m
        z1, z2 = m.projector(m.backbone(v1)), m.projector(m.backbone(v2))
        p1, p2 = m.predictor(z1), m.predictor(z2)
        if m.momentum:
            with torch.no_grad():
                t1 = m.target_projector(m.target_backbone(v1))
                t2 = m.target_projector(m.target_backbone(v2))
        else:
            t1, t2 = z1.detach(), z2.detach()
        loss = regression_loss(p1, t2) + regression_loss(p2, t1)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if m.momentum:
            tau = tau_at(k, m.total_steps, m.tau_base, m.tau_final)
            with torch.no_grad():
                online = list(m.backbone.parameters()) + list(m.projector.parameters())
                target = list(m.target_backbone.parameters()) + list(m.target_projector.parameters())
                for t, o in zip(target, online):
                    t.mul_(tau).add_((1 - tau) * o)
        return loss.item()


def assert_as_accurate_as_pytorch(got: nn.Module, fp32: nn.Module, fp64: nn.Module):
    g, r, truth = got.state_dict(), fp32.state_dict(), fp64.state_dict()
    assert g.keys() == truth.keys()
    for k in (k for k in truth if k != "step"):  # the references keep no counter
        if not truth[k].is_floating_point():
            assert torch.equal(g[k], truth[k]), k
            continue
        # The ZERO_GRAD biases are compared as parameters, not gradients: their floor of one ulp
        # of the bias itself lies far above the gradient noise that moves them.
        ours = (g[k].double() - truth[k]).abs().max().item()
        theirs = (r[k].double() - truth[k]).abs().max().item()
        floor = max(theirs, eps() * truth[k].abs().max().item())
        assert ours <= K * floor, f"{k}: {ours:.3g} vs PyTorch fp32 {theirs:.3g}"


@pytest.mark.parametrize("make,size", [(mobilenet, 64), (TinyNet, 16)])
@pytest.mark.parametrize("momentum", [True, False])
def test_matches_plain_pytorch_byol(make, size, momentum):
    """Three SGD steps and EMA updates against ReferenceStep in fp32 and fp64.

    Mutations of the reference checked by hand: the loss's gradient with the wrong sign (SGD
    ascending) fails all four cases; the EMA left out (tau = 1) fails both momentum cases; tau
    one step off (tau_at(k + 1)) in the reference's EMA fails TinyNet, while for mobilenet the
    effect lies within 10x PyTorch's own chaotic fp32 error, and only the tau check below
    catches it (it fails both momentum cases when byol_rs's tau is one step off)."""
    torch.manual_seed(0)
    model = byol_rs.nn.BYOL(make(), **HEADS, input_shape=(3, size, size), total_steps=10, tau_base=0.9, momentum=momentum)
    ref32, ref64 = ReferenceStep(model), ReferenceStep(copy.deepcopy(model).double())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    for k in range(3):
        v1, v2 = torch.randn(16, 3, size, size, dtype=torch.float64), torch.randn(16, 3, size, size, dtype=torch.float64)
        want = ref64.step(v1, v2, k)
        theirs = ref32.step(v1.float(), v2.float(), k)
        loss = model(v1.float(), v2.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        tau = model.update_target()
        assert abs(loss.item() - want) <= K * max(abs(theirs - want), eps() * abs(want))
        # tau in f64 on both sides, a closed form of 4 roundings: within K ulps of float64 (measured: equal).
        assert tau == (pytest.approx(tau_at(k, 10, 0.9, 1.0), rel=K * eps(torch.float64), abs=0) if momentum else 0.0)
    assert_as_accurate_as_pytorch(model, ref32.m, ref64.m)
    assert int(model.step) == 3
    assert hasattr(model, "target_backbone") == momentum


def test_feature_dim_is_inferred_by_a_dry_run_that_leaves_bn_untouched():
    net = mobilenet()
    before = copy.deepcopy(net.state_dict())
    model = byol_rs.nn.BYOL(net, **HEADS, input_shape=(3, 64, 64))
    assert model.projector[0].in_features == 576  # mobilenet_v3_small's pooled width
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training
    explicit = byol_rs.nn.BYOL(TinyNet(), 16, **HEADS)
    assert explicit.projector[0].in_features == 16


def test_a_backbone_without_2d_output_is_named_with_its_shape():
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ByolValueError, match=r"backbone: returned \(2, 8, 14, 14\); .* 2-D \[batch, features\]"):
        byol_rs.nn.BYOL(conv, **HEADS, input_shape=(3, 16, 16))
    model = byol_rs.nn.BYOL(conv, 8, **HEADS)  # given feature_dim: the error comes at forward
    with pytest.raises(ByolValueError, match=r"returned \(4, 8, 14, 14\)"):
        model(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    with pytest.raises(ByolTypeError, match="backbone: expected a torch.nn.Module"):
        byol_rs.nn.BYOL(lambda x: x)
    with pytest.raises(ByolValueError, match="view2: shape"):
        byol_rs.nn.BYOL(TinyNet(), 16, **HEADS)(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 8))


def test_state_dict_round_trip_resumes_weights_and_tau_schedule():
    torch.manual_seed(1)
    a = byol_rs.nn.BYOL(TinyNet(), **HEADS, input_shape=(3, 16, 16), total_steps=10)
    opt = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        a(torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)).backward()
        opt.step()
        a.update_target()
    torch.manual_seed(2)
    b = byol_rs.nn.BYOL(TinyNet(), **HEADS, input_shape=(3, 16, 16), total_steps=10)
    b.load_state_dict(a.state_dict())
    assert int(b.step) == 2 and b.tau() == a.tau()
    v = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    assert torch.equal(a(*v), b(*v))


def test_augment_makes_the_views_from_one_batch():
    aug = byol_rs.Augment.small_image(16, seed=3)
    model = byol_rs.nn.BYOL(TinyNet(), **HEADS, augment=aug)
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    loss = model(images)
    same = byol_rs.Augment.small_image(16, seed=3)(images)
    assert torch.equal(loss, model(*same))  # the same views as a separate Augment with that seed
    assert model.embed(images.float()[:, :, :16, :16]).shape == (8, 16)
