"""Tolerances from measured floors (issue 17).

A numerical tolerance in this suite is never a constant tuned on one machine: it is ``K`` times
a floor that is measured at test time, so that it follows the CPU (oneDNN picks other kernels,
and rounds otherwise, on another CPU):

- the fp32 floor: how far the reference itself (PyTorch, torchvision, a closed formula) run in
  the engine's dtype lands from the same reference run in float64, ``|ref32 - ref64|``;
- bounded below by a closed form: ``sqrt(n)`` ulps of the result's scale, the rounding of a
  correctly rounded length-``n`` sum (``n = 1``: one ulp, the rounding of the result itself), so
  that a reference that happens to round luckily does not make the bound 0.

``K = 10``: each test states the engine's measured error in units of its floor (at most 2 of it
on the development machine, mostly about 1), and that it still fails on the mutations it
guards against (checked by hand once; stated in its docstring).
"""

from __future__ import annotations

import math

import torch

K = 10.0


def eps(dtype: torch.dtype = torch.float32) -> float:
    return torch.finfo(dtype).eps


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def floor(want64: torch.Tensor, ref=None, *, n: int = 1, scale: float | None = None, dtype=torch.float32) -> float:
    """max(|ref - want64|, eps(dtype) * sqrt(n) * scale), scale defaulting to want64's largest entry."""
    scale = want64.detach().abs().max().item() if scale is None else scale
    theirs = 0.0 if ref is None else max_abs(ref, want64)
    return max(theirs, eps(dtype) * math.sqrt(n) * scale)


def assert_near(name: str, got, want64, ref=None, *, n: int = 1, scale: float | None = None, k: float = K,
                dtype=torch.float32) -> None:
    """|got - want64| <= k * floor(want64, ref, n, scale): got within k times the reference's own error."""
    got, want64 = torch.as_tensor(got), torch.as_tensor(want64, dtype=torch.float64)
    ref = None if ref is None else torch.as_tensor(ref)
    err, fl = max_abs(got, want64), floor(want64, ref, n=n, scale=scale, dtype=dtype)
    assert err <= k * fl, f"{name}: max |diff| {err:.3g} > {k:g} x floor {fl:.3g}"
