"""The non-finite check that runs behind the device (``nonfinite_check``; the default on CUDA).

The same tests run on CPU with ``nonfinite_check="deferred"`` (where the device's answer is
ready at once) and on CUDA with the default ``"auto"``. The reference is a second learner
with the same seed that never sees the bad batch: after the error (or the skip) the two must
hold the same state, bit for bit on CPU and within rtol 1e-5 / atol 1e-7 on CUDA (cuDNN may
pick different algorithms between calls).
"""

from collections.abc import Mapping

import pytest
import torch

import byol_rs
from learner_state import assert_same, snapshot

SMALL = dict(in_channels=1, projector_hidden=32, projection_dim=16, predictor_hidden=32, total_steps=20, seed=3)
DEVICES = [pytest.param("cpu", id="cpu-deferred"),
           pytest.param("cuda", id="cuda-auto", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]


def learner(device, **kw):
    check = "deferred" if device == "cpu" else "auto"
    return byol_rs.BYOL("convnet", device=device, nonfinite_check=check, **{**SMALL, **kw})


def views(device, seed, nan=False):
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(8, 1, 16, 16, generator=g) for _ in range(2)]
    if nan:
        v[0][3, 0, 5, 5] = float("nan")
    return [x.to(device) for x in v]


def assert_state_equal(device, a, b):
    if device == "cpu":
        assert_same(a, b)
        return
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("device", DEVICES)
def test_nan_views_are_caught_on_the_device_and_undone(device):
    ours, reference = learner(device), learner(device)
    ours.step(*views(device, 0))
    reference.step(*views(device, 0))
    before = snapshot(ours)
    m = ours.step(*views(device, 1, nan=True))  # queued: the step does not wait to find out
    assert m["step"] == 2 and m["loss"] != m["loss"]  # NaN, read on access
    with pytest.raises(byol_rs.NonFiniteLossError, match="non-finite loss .* at step 1"):
        ours.step(*views(device, 2))  # the CPU's answer is ready here; on CUDA it may come later
        ours.sync()
    assert_state_equal(device, snapshot(ours), before)
    ours.step(*views(device, 2))
    reference.step(*views(device, 2))
    assert_state_equal(device, snapshot(ours), snapshot(reference))


@pytest.mark.parametrize("device", DEVICES)
def test_skip_mode_counts_the_cancelled_update(device):
    ours, reference = learner(device, on_nonfinite="skip"), learner(device, on_nonfinite="skip")
    for seed in (0, 1):
        reference.step(*views(device, seed))
    ours.step(*views(device, 0))
    ours.step(*views(device, 5, nan=True))
    ours.sync()
    assert ours.skipped_steps == 1 and ours.step_count == 1
    ours.step(*views(device, 1))
    assert ours.step_count == 2
    assert_state_equal(device, snapshot(ours), snapshot(reference))


@pytest.mark.parametrize("device", DEVICES)
def test_failed_step_images_rewinds_the_augmentation_rng(device):
    aug = dict(augment=byol_rs.Augment.small_image(16, seed=9))
    ours, reference = learner(device, **aug), learner(device, **aug)
    x = [torch.randint(0, 256, (8, 1, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    ours.step(x[0])
    reference.step(x[0])
    weight = ours.named_parameters()["predictor.3.weight"]
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("inf")
    ours.step(x[1])
    with pytest.raises(byol_rs.NonFiniteLossError):
        ours.step(x[2])
        ours.sync()
    with torch.no_grad():
        weight.copy_(saved)
    ours.step(x[1])
    reference.step(x[1])
    assert_state_equal(device, snapshot(ours), snapshot(reference))


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_are_read_on_access(device):
    m = learner(device).step(*views(device, 0))
    assert isinstance(m, Mapping) and isinstance(m, byol_rs.StepMetrics)
    plain = dict(m)
    assert all(type(v) in (int, float, bool) for v in plain.values()), plain
    assert 0 <= plain["loss"] <= 8 and 0 < plain["z_std"] <= 1
    assert "StepMetrics(" in repr(m)


@pytest.mark.parametrize("kwargs,message", [
    (dict(nonfinite_check="later"), "nonfinite_check: expected 'auto', 'immediate' or 'deferred'"),
    (dict(nonfinite_check="deferred", precision="fp16"), "nonfinite_check: 'deferred' does not combine with precision='fp16'"),
])
def test_bad_nonfinite_check_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        byol_rs.BYOL("convnet", **{**SMALL, **kwargs})
