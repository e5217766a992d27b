"""The CUDA path against the CPU: loss, EMA, augmentations and the engine step.

Every test here carries the `cuda` marker and skips with a reason where no GPU is visible
(`pytest -m cuda tests/python` runs them with the other CUDA cases; benches/gpu/run.sh does that on
the GPU machine). Stated tolerances:

- loss, CUDA against a CPU fp32 reference on the same rounded inputs: absolute on the value fp32
  1e-5, bf16 2e-2, fp16 2e-3; on the gradient, x max|grad|, fp32 1e-5, bf16 and fp16 1e-2 (at
  4096 rows the fp16 gradient, about 1 / (N |p|), lies in fp16's subnormal range);
- EMA, CUDA and the CPU in the same dtype, each within 10x the closed-form rounding floor
  eps(dtype) * (|xi| + |theta|) of the formula in float64 (test_ema.py's rule);
- one engine step (ConvNet, LARS, fp32, TF32 off), CUDA against the CPU from identical weights
  and views: loss 1e-4 relative, z_std 1e-3 relative, parameters rtol 1e-4 / atol 1e-6,
  optimizer momentum 1e-3 x its largest entry;
- bf16 / fp16 engine steps: either the documented "not supported by this build yet" error, or a
  finite loss within 5e-2 relative of the fp32 step from the same weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import byol_rs
from conftest import requires_cuda
from floors import K, eps

pytestmark = [pytest.mark.cuda, requires_cuda]

DEVICE = "cuda"  # one name, so the comparisons can be dry-run on the CPU (DEVICE = "cpu")
STATE = ("named_parameters", "target_named_parameters", "named_buffers", "target_named_buffers", "optimizer_state")


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls in full fp32 (the setting is global, so it reaches the engine)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --------------------------------------------------------------------------- loss


def cpu_reference(p, z):
    """solo-learn's byol_loss_func in fp32 on the CPU: value and gradient with respect to p."""
    p = p.detach().float().cpu().requires_grad_()
    loss = 2 - 2 * F.cosine_similarity(p, z.detach().float().cpu(), dim=-1).mean()
    loss.backward()
    return loss.item(), p.grad


@pytest.mark.parametrize("dtype,tol,grad_tol", [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1e-2), (torch.float16, 2e-3, 1e-2)])
@pytest.mark.parametrize("shape", [(256, 128), (4096, 256)])
def test_loss_on_cuda_matches_cpu_reference(dtype, tol, grad_tol, shape):
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    want, want_grad = cpu_reference(p, z)
    pd = p.to(DEVICE).requires_grad_()
    loss = byol_rs.byol_loss(pd, z.to(DEVICE))
    loss.backward()
    assert loss.dtype == dtype and loss.device.type == DEVICE and pd.grad.dtype == dtype
    assert abs(loss.float().item() - want) <= tol
    assert (pd.grad.float().cpu() - want_grad).abs().max() <= grad_tol * want_grad.abs().max()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_symmetric_loss_on_cuda_matches_cpu(dtype, tol):
    g = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(64, 32, generator=g).to(dtype) for _ in range(4))
    want = byol_rs.symmetric_byol_loss(p1.float(), p2.float(), z1.float(), z2.float()).item()
    got = byol_rs.symmetric_byol_loss(*(t.to(DEVICE) for t in (p1, p2, z1, z2)))
    assert abs(got.float().item() - want) <= 2 * tol


# --------------------------------------------------------------------------- EMA


def ema_tensors(dtype, flat, seed, device):
    """ResNet-like shapes, as separate tensors or as views of one flat buffer (the engine's layout)."""
    shapes = [(64, 3, 7, 7), (64,), (64,), (256, 64, 1, 1), (256,), (4096, 2048), (4096,), (256, 4096), (256,)]
    sizes = [torch.Size(s).numel() for s in shapes]
    g = torch.Generator().manual_seed(seed)
    if flat:
        buf = torch.randn(sum(sizes), generator=g).to(dtype).to(device)
        return [v.view(s) for v, s in zip(buf.split(sizes), shapes)]
    return [torch.randn(s, generator=g).to(dtype).to(device) for s in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
@pytest.mark.parametrize("tau", [0.0, 0.996, 1.0])
def test_ema_on_cuda_matches_cpu(dtype, flat, tau):
    """Both devices within K = 10 times the closed-form floor eps(dtype) * (|xi| + |theta|) of
    the formula in float64, per element (test_ema.py's rule; it holds with or without FMA)."""
    target, online = ema_tensors(dtype, flat, 2, "cpu"), ema_tensors(dtype, flat, 3, "cpu")
    target_d, online_d = ema_tensors(dtype, flat, 2, DEVICE), ema_tensors(dtype, flat, 3, DEVICE)
    before = [t.clone() for t in target]
    byol_rs.ema_update_(target, online, tau)
    byol_rs.ema_update_(target_d, online_d, tau)
    for got, cpu, t, o in zip(target_d, target, before, online):
        assert got.device.type == DEVICE and got.dtype == dtype
        t, o = t.double(), o.double()
        want = tau * t + (1 - tau) * o
        bound = K * eps(dtype) * (t.abs() + o.abs())
        assert ((got.cpu().double() - want).abs() <= bound).all()
        assert ((cpu.double() - want).abs() <= bound).all()


# --------------------------------------------------------------------------- augmentations


def uint8_images(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_augment_on_cuda_same_seed_same_views():
    x = uint8_images(16).to(DEVICE)
    a, b = byol_rs.Augment.byol(32, seed=7), byol_rs.Augment.byol(32, seed=7)
    for _ in range(2):
        (a1, a2), (b1, b2) = a(x), b(x)
        assert a1.device.type == DEVICE and a1.shape == (16, 3, 32, 32)
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert a.rng_state == b.rng_state
    c1, _ = byol_rs.Augment.byol(32, seed=8)(x)
    assert not torch.equal(c1, a1)


def test_augment_on_cuda_draws_parameters_per_sample():
    same = uint8_images(1).expand(16, -1, -1, -1).contiguous().to(DEVICE)  # 16 copies of one image
    v1, v2 = byol_rs.Augment.byol(32, seed=9)(same)
    for v in (v1, v2):
        distinct = {tuple(row.tolist()) for row in v.flatten(1)[:, ::97].cpu()}
        assert len(distinct) >= 12, f"only {len(distinct)} distinct views of 16 copies of one image"


# --------------------------------------------------------------------------- engine step


def convnet_learner(device, precision="fp32", **kw):
    return byol_rs.BYOL("convnet", in_channels=1, projector_hidden=64, predictor_hidden=64, projection_dim=32,
                        total_steps=10, seed=0, device=device, precision=precision, **kw)


def copy_state(src, dst):
    """The engine initialises on its own device with that device's generator: copy src's weights,
    BN statistics and optimizer state into dst (the dicts share storage with the engine)."""
    with torch.no_grad():
        for kind in STATE:
            s, d = getattr(src, kind)(), getattr(dst, kind)()
            assert s.keys() == d.keys(), kind
            for k in s:
                d[k].copy_(s[k])


def step_views(n=8, size=28, seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.rand(n, 1, size, size, generator=g)


def test_engine_step_on_cuda_matches_cpu_fp32(no_tf32):
    cpu, dev = convnet_learner("cpu"), convnet_learner(DEVICE)
    copy_state(cpu, dev)
    v1, v2 = step_views()
    m_cpu = cpu.step(v1, v2)
    m_dev = dev.step(v1.to(DEVICE), v2.to(DEVICE))
    assert m_dev["step"] == m_cpu["step"] == 1
    assert m_dev["lr"] == m_cpu["lr"] and m_dev["tau"] == m_cpu["tau"]
    assert abs(m_dev["loss"] - m_cpu["loss"]) <= 1e-4 * abs(m_cpu["loss"])
    assert abs(m_dev["z_std"] - m_cpu["z_std"]) <= 1e-3 * abs(m_cpu["z_std"])
    for kind in ("named_parameters", "target_named_parameters", "named_buffers", "target_named_buffers"):
        want, got = getattr(cpu, kind)(), getattr(dev, kind)()
        for k in want:
            assert got[k].device.type == DEVICE
            torch.testing.assert_close(got[k].detach().cpu(), want[k].detach(), rtol=1e-4, atol=1e-6, msg=lambda m: f"{kind}:{k}: {m}")
    # Relative to each buffer, plus 1e-5 of the largest: a bias just before BN has a gradient
    # that is zero in exact arithmetic, so its buffer is rounding noise (~1e-7) on both devices.
    want, got = cpu.optimizer_state(), dev.optimizer_state()
    largest = max(v.abs().max().item() for v in want.values())
    for k in want:
        scale = want[k].abs().max().item()
        assert (got[k].cpu() - want[k]).abs().max().item() <= 1e-3 * scale + 1e-5 * largest, k


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_engine_step_on_cuda_low_precision(precision):
    try:
        learner = convnet_learner(DEVICE, precision)
    except ValueError as e:  # the documented refusal of this build
        assert "not supported by this build yet" in str(e), str(e)
        pytest.skip(f"precision={precision!r}: {e}")
    reference = convnet_learner(DEVICE)
    copy_state(reference, learner)
    v1, v2 = (v.to(DEVICE) for v in step_views())
    want = reference.step(v1, v2)["loss"]
    got = learner.step(v1, v2)
    assert abs(got["loss"] - want) <= 5e-2 * abs(want)
    # fp16 starts at a loss scale of 65536, which can overflow: such a call skips its update
    # and halves the scale (as torch.amp.GradScaler does); the weights stay as they were.
    scales = [got["loss_scale"]]
    while not got["updated"]:
        assert len(scales) < 20 and precision == "fp16"
        got = learner.step(v1, v2)
        scales.append(got["loss_scale"])
        assert abs(got["loss"] - want) <= 5e-2 * abs(want)
    assert got["step"] == 1
    assert all(b == a / 2 for a, b in zip(scales, scales[1:-1])), scales
    assert all(torch.isfinite(p).all() for p in learner.named_parameters().values())


def test_engine_step_images_on_cuda_moves_the_batch():
    learner = convnet_learner(DEVICE, augment=byol_rs.Augment.small_image(28, seed=1))
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    m1 = learner.step(x)  # on the host: moved to the learner's device
    m2 = learner.step(x.to(DEVICE))
    assert m1["step"] == 1 and m2["step"] == 2
    assert all(0 <= m["loss"] <= 8 for m in (m1, m2))


@pytest.mark.parametrize("precision,images", [("fp32", False), ("bf16", False), ("bf16", True)], ids=["fp32", "bf16", "bf16-augment"])
def test_step_has_no_host_sync(precision, images):
    """With the default nonfinite_check="auto", a CUDA step never waits for the device: no
    loss read-back, no host-side isfinite, parameters uploaded from pinned memory."""
    aug = dict(augment=byol_rs.Augment.small_image(28, seed=1)) if images else {}
    learner = convnet_learner(DEVICE, precision, **aug)
    if images:
        x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, device=DEVICE)
        args = (x,)
    else:
        args = tuple(v.to(DEVICE) for v in step_views())
    learner.step(*args)  # warm-up: cuDNN plans, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metrics = learner.step(*args)
    except BaseException as e:  # a Rust panic surfaces as a BaseException; report it as a failure
        if isinstance(e, Exception):
            raise
        raise AssertionError(f"{type(e).__name__}: {e}") from None
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert metrics["step"] == 4 and 0 <= metrics["loss"] <= 8
