"""The fused BYOL loss and EMA, with autograd wiring. The math is in Rust (src/loss.rs, src/ema.rs)."""

from __future__ import annotations

from typing import Iterable, Union

import torch

from . import _core
from .errors import ByolTypeError

__all__ = ["byol_loss", "symmetric_byol_loss", "ema_update_", "cosine_tau", "warmup_cosine_lr"]

cosine_tau = _core.cosine_tau
warmup_cosine_lr = _core.warmup_cosine_lr


class _ByolLoss(torch.autograd.Function):
    """Rust forward and analytic Rust backward; the gradient reaches ``p`` only."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, z: torch.Tensor, simplified: bool) -> torch.Tensor:
        loss, saved = _core.byol_loss_forward(p, z, simplified)
        ctx.save_for_backward(p, z, saved)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, z, saved = ctx.saved_tensors
        return _core.byol_loss_backward(grad, p, z, saved), None, None


def _tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ByolTypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def byol_loss(p: torch.Tensor, z: torch.Tensor, *, simplified: bool = True) -> torch.Tensor:
    """BYOL regression loss, paper eq. 2: ``2 - 2 * mean_i cos(p_i, sg(z_i))``.

    ``p`` (online predictions) and ``z`` (target projections) are ``[batch, dim]`` floating
    tensors of one dtype on one device. ``z`` is treated as a constant (stop-gradient).
    ``simplified=True`` reproduces ``F.cosine_similarity`` (eps 1e-8), ``False`` the
    ``F.normalize`` form (eps 1e-12), as solo-learn's ``byol_loss_func``.

    >>> p = torch.randn(4, 16, requires_grad=True)
    >>> byol_loss(p, p.detach()).item() < 1e-6
    True
    """
    return _ByolLoss.apply(_tensor("p", p), _tensor("z", z), bool(simplified))


def symmetric_byol_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *, simplified: bool = True
) -> torch.Tensor:
    """The symmetrised loss of the paper: ``L(p1, z2) + L(p2, z1)``.

    ``p1``/``p2`` are the online predictions of views 1 and 2, ``z1``/``z2`` the target projections.
    """
    return byol_loss(p1, z2, simplified=simplified) + byol_loss(p2, z1, simplified=simplified)


_Params = Union[torch.nn.Module, Iterable[torch.Tensor]]


def _tensor_list(name: str, value: _Params) -> list:
    if isinstance(value, torch.nn.Module):
        return list(value.parameters())
    if isinstance(value, torch.Tensor):
        raise ByolTypeError(f"{name}: expected a module or a sequence of tensors, got a single tensor")
    try:
        return list(value)
    except TypeError:
        raise ByolTypeError(
            f"{name}: expected a module or a sequence of tensors, got {type(value).__name__}"
        ) from None


def ema_update_(target: _Params, online: _Params, tau: float) -> None:
    """In place and under no_grad: ``target <- tau * target + (1 - tau) * online`` (paper eq. 1).

    ``target`` and ``online`` are modules or sequences of tensors that pair up one to one.
    The update is one fused kernel over all tensors: a single ``lerp_`` when they are views of
    one flat buffer, else one ``_foreach_lerp_``.

    >>> online, target = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    >>> ema_update_(target, online, tau=0.0)
    >>> torch.equal(target.weight, online.weight)
    True
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise ByolTypeError(f"tau: expected a float, got {type(tau).__name__}")
    _core.ema_update_(_tensor_list("target", target), _tensor_list("online", online), float(tau))
