"""Schedules against the closed forms of the official BYOL code (utils/schedules.py)."""

import math

import pytest
from hypothesis import given, strategies as st

import byol_rs


@given(k=st.integers(0, 2000), total=st.integers(1, 1000), base=st.floats(0, 1))
def test_cosine_tau_closed_form(k, total, base):
    want = 1 - (1 - base) * (math.cos(math.pi * min(k, total) / total) + 1) / 2
    assert byol_rs.cosine_tau(k, total, base=base) == pytest.approx(want, abs=1e-12)


def test_cosine_tau_end_points():
    assert byol_rs.cosine_tau(0, 100) == pytest.approx(0.996)
    assert byol_rs.cosine_tau(100, 100) == 1.0


@given(k=st.integers(0, 3000), total=st.integers(1, 1000), warm=st.integers(0, 1000), lr=st.floats(0, 10))
def test_warmup_cosine_closed_form(k, total, warm, lr):
    warm = min(warm, total)
    if k < warm:
        want = lr * k / warm
    elif total == warm:
        want = 0.0
    else:
        want = lr * 0.5 * (1 + math.cos(math.pi * min(k - warm, total - warm) / (total - warm)))
    assert byol_rs.warmup_cosine_lr(k, total, warm, lr) == pytest.approx(want, abs=1e-12)


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
