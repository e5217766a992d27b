"""Changing a run's length mid-run (``BYOL.set_total_steps``, as a time-budgeted ``byol-rs train``
re-plans) keeps lr and tau continuous: the rest of each cosine is stretched from its current value.

Closed-form bound: no step-to-step change at a re-plan may exceed the largest change between two
ordinary steps, of the same run or of the run without the re-plan (lengthening a plan at a point
where the cosine is still speeding up makes the change into the re-plan the run's largest; it is
an ordinary step of the original plan). Checked by hand: with the former behaviour (only total_steps
changed), cutting 100 steps to 70 at step 40 jumps lr by 2.6x and tau by about 12x the largest ordinary
change, and both tests fail.
"""

import math

import pytest
import torch

import byol_rs


def run(changes, steps=60, total=100, warmup=10):
    torch.manual_seed(0)
    learner = byol_rs.BYOL("convnet", in_channels=1, projector_hidden=32, projection_dim=16, predictor_hidden=32,
                           total_steps=total, warmup_steps=warmup, batch_size=8, tau_base=0.9)
    x = torch.rand(8, 1, 16, 16)
    lrs, taus = [], []
    for k in range(steps):
        if k in changes:
            learner.set_total_steps(changes[k])
        m = learner.step(x, x.flip(-1))
        lrs.append(m["lr"])
        taus.append(m["tau"])
    return learner, lrs, taus


@pytest.mark.parametrize("changes", [{40: 70}, {40: 150}, {5: 70}, {30: 80, 45: 60}], ids=["shorter", "longer", "in-warmup", "twice"])
def test_replan_keeps_lr_and_tau_continuous(changes):
    _, lrs, taus = run(changes)
    _, plain_lrs, plain_taus = run({})
    diffs = lambda values: [abs(b - a) for a, b in zip(values, values[1:])]  # noqa: E731
    at = [k - 1 for k in changes if k > 0]
    for values, plain in ((lrs, plain_lrs), (taus, plain_taus)):
        steps = diffs(values)
        ordinary = max(max(s for i, s in enumerate(steps) if i not in at), max(diffs(plain)))
        for i in at:
            assert steps[i] <= ordinary * (1 + 1e-9), (i, steps[i], ordinary)


def test_replanned_schedules_end_on_time_and_survive_a_checkpoint(tmp_path):
    learner, lrs, taus = run({30: 50}, steps=35)
    path = tmp_path / "c.safetensors"
    learner.save(path)
    resumed = byol_rs.BYOL.load(path)
    x = torch.rand(8, 1, 16, 16)
    tail = [(learner.step(x, x)["lr"], resumed.step(x, x)["lr"]) for _ in range(15)]
    assert all(a == b for a, b in tail)  # the re-plan is part of the saved state
    m = learner.step(x, x)  # step 50: the end of the new plan
    assert m["lr"] == pytest.approx(0.0, abs=1e-12) and m["tau"] == pytest.approx(1.0, abs=1e-12)
    # Before the re-plan the schedules are the plain closed forms of the first plan.
    base = 0.2 * 8 / 256  # LARS default lr x batch / 256
    k = 20
    want = base * 0.5 * (1 + math.cos(math.pi * (k - 10) / (100 - 10)))
    assert lrs[k] == pytest.approx(want, rel=1e-12)
