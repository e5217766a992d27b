"""``byol_rs.nn.BYOL``: BYOL around any ``torch.nn.Module`` backbone.

For users who already have their own network and training loop: the online and target networks
are ordinary PyTorch modules (so ``torch.optim``, ``DistributedDataParallel``, ``state_dict``,
AMP and hooks all work as usual), while the loss, the target EMA, the tau schedule and the
augmentations run in byol-rs's Rust kernels. Unlike byol-pytorch it takes the backbone's output
as the representation (no forward hooks on hidden layers, which break under multi-GPU), uses the
paper's Linear-BN-ReLU-Linear heads, per-view BN statistics and a target in training mode.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import nn

from .augment import Augment
from .errors import ByolTypeError, ByolValueError
from .kernels import cosine_tau, ema_update_, symmetric_byol_loss

__all__ = ["BYOL", "MLP"]


def MLP(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """The paper's projector / predictor: Linear-BN-ReLU-Linear (section 3.3)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ByolValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = backbone(x)
    if not isinstance(h, torch.Tensor) or h.dim() != 2:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ByolValueError(
            f"backbone: returned {shape}; byol_rs.nn.BYOL needs a 2-D [batch, features] tensor "
            "(end the backbone with pooling and nn.Flatten(), or replace its classifier with nn.Identity())"
        )
    return h


class BYOL(nn.Module):
    """BYOL (Grill et al. 2020) around ``backbone``, which maps images to ``[batch, features]``.

    ``forward(view1, view2)`` returns the symmetrised loss ``L(q(g(f(v1))), sg(g'(f'(v2)))) +
    L(q(g(f(v2))), sg(g'(f'(v1))))`` (paper eq. 2), computed by the fused Rust kernel;
    ``forward(images)`` first makes the two views with ``augment``. After ``optimizer.step()``
    call :meth:`update_target`, which moves the target by the paper's EMA (eq. 1) with tau on
    the cosine schedule from ``tau_base`` to ``tau_final`` over ``total_steps``, in one fused
    kernel. ``momentum=False`` is SimSiam: the target is the detached online projection and no
    target copy exists.

    ``feature_dim`` is found with a dry run on ``input_shape`` (``(C, H, W)``; the augment's
    size with 3 channels by default) when omitted. The step counter is a buffer, so
    ``state_dict`` / ``load_state_dict`` resume the tau schedule.

    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=10); net.fc = nn.Identity()
    >>> model = BYOL(net, projector_hidden=64, projection_dim=32, predictor_hidden=64,
    ...              input_shape=(3, 32, 32), total_steps=100)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    >>> loss = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    >>> loss.backward(); opt.step(); tau = model.update_target()
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: Optional[int] = None,
        *,
        projector_hidden: int = 4096,
        projection_dim: int = 256,
        predictor_hidden: int = 4096,
        tau_base: float = 0.996,
        tau_final: float = 1.0,
        total_steps: int = 1000,
        momentum: bool = True,
        augment: Optional[Augment] = None,
        input_shape: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ByolTypeError(f"backbone: expected a torch.nn.Module, got {type(backbone).__name__}")
        if augment is not None and not isinstance(augment, Augment):
            raise ByolTypeError(f"augment: expected byol_rs.Augment or None, got {type(augment).__name__}")
        if not isinstance(momentum, bool):
            raise ByolTypeError(f"momentum: expected bool, got {type(momentum).__name__}")
        for name, v in (("tau_base", tau_base), ("tau_final", tau_final)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ByolValueError(f"{name}: expected a float in [0, 1], got {v!r}")
        self.total_steps = _positive_int("total_steps", total_steps)
        self.tau_base, self.tau_final, self.momentum = float(tau_base), float(tau_final), momentum
        self.augment = augment
        if feature_dim is None:
            feature_dim = self._infer_feature_dim(backbone, input_shape)
        feature_dim = _positive_int("feature_dim", feature_dim)
        self.backbone = backbone
        self.projector = MLP(feature_dim, _positive_int("projector_hidden", projector_hidden),
                             _positive_int("projection_dim", projection_dim))
        self.predictor = MLP(projection_dim, _positive_int("predictor_hidden", predictor_hidden), projection_dim)
        if momentum:
            # The target starts as an exact copy and only ever moves by the EMA.
            self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _infer_feature_dim(self, backbone: nn.Module, input_shape: Optional[Sequence[int]]) -> int:
        if input_shape is None:
            size = tuple(self.augment.config["size"]) if self.augment is not None else (224, 224)
            input_shape = (3, *size)
        if len(tuple(input_shape)) != 3:
            raise ByolValueError(f"input_shape: expected (channels, height, width), got {tuple(input_shape)}")
        param = next(iter(backbone.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = backbone.training
        backbone.eval()  # no BN statistics are touched by the dry run
        try:
            with torch.no_grad():
                h = _features(backbone, torch.zeros(2, *input_shape, device=device))
        finally:
            backbone.train(was_training)
        return h.shape[1]

    def _online(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(_features(self.backbone, x))
        return z, self.predictor(z)

    def forward(self, view1: torch.Tensor, view2: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The symmetrised BYOL loss of two views, or of ``augment(view1)`` when ``view2`` is None."""
        if view2 is None:
            if self.augment is None:
                raise ByolValueError("view2: missing; pass two views or build BYOL with augment=Augment(...)")
            view1, view2 = self.augment(view1)
        if not isinstance(view1, torch.Tensor) or not isinstance(view2, torch.Tensor):
            raise ByolTypeError("view1/view2: expected torch.Tensor")
        if view1.shape != view2.shape:
            raise ByolValueError(f"view2: shape {tuple(view2.shape)} does not match view1 shape {tuple(view1.shape)}")
        # Each view on its own, so that BN statistics are per view as in the official code.
        z1, p1 = self._online(view1)
        z2, p2 = self._online(view2)
        if self.momentum:
            with torch.no_grad():
                t1 = self.target_projector(_features(self.target_backbone, view1))
                t2 = self.target_projector(_features(self.target_backbone, view2))
        else:
            t1, t2 = z1.detach(), z2.detach()
        return symmetric_byol_loss(p1, p2, t1, t2)

    def tau(self) -> float:
        """The EMA coefficient at the current step (0 in SimSiam mode)."""
        if not self.momentum:
            return 0.0
        return cosine_tau(min(int(self.step), self.total_steps), self.total_steps, self.tau_base, self.tau_final)

    @torch.no_grad()
    def update_target(self) -> float:
        """``xi <- tau * xi + (1 - tau) * theta`` over the target's parameters (one fused
        kernel), then advances the step; returns the tau used. Call after ``optimizer.step()``."""
        tau = self.tau()
        if self.momentum:
            online = list(self.backbone.parameters()) + list(self.projector.parameters())
            target = list(self.target_backbone.parameters()) + list(self.target_projector.parameters())
            ema_update_(target, online, tau)
        self.step += 1
        return tau

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features in eval mode, without gradients."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                return _features(self.backbone, x)
        finally:
            self.backbone.train(was_training)
