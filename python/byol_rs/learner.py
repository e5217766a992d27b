"""``byol_rs.BYOL``: the learner. A thin wrapper over the Rust engine (src/train/)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Literal, Optional, Tuple

import torch

from . import _core
from .augment import Augment, Images, checked_images
from .distributed import group_spec
from .errors import ByolTypeError, ByolValueError
from .metrics import StepMetrics

# Names, types and defaults of the configuration, from the engine (src/config/): the signature
# below repeats them for IDEs, and tests/python/test_config_schema.py holds the two together.
SCHEMA: Dict[str, Dict[str, Any]] = {f["name"]: f for f in json.loads(_core.config_schema())}
_PYTHON_TYPES = {"int": (int,), "float": (float, int), "bool": (bool,), "str": (str,), "float_pair": (tuple, list)}


def _check_type(name: str, value: Any) -> Any:
    """``value`` for field ``name``, ints widened to float where a float is expected; a
    TypeError naming the field otherwise. Values (ranges, choices) are checked by the engine."""
    field = SCHEMA[name]
    if value is None and field["optional"]:
        return None
    # bool is an int to Python, but not to the engine
    if isinstance(value, _PYTHON_TYPES[field["type"]]) and isinstance(value, bool) == (field["type"] == "bool"):
        if field["type"] == "float":
            return float(value)
        if field["type"] == "float_pair":
            if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ByolTypeError(f"{name}: expected a pair of floats, got {value!r}")
            return tuple(float(v) for v in value)
        return value
    names = "tuple" if field["type"] == "float_pair" else field["type"]
    raise ByolTypeError(f"{name}: expected {names}{' or None' if field['optional'] else ''}, got {type(value).__name__}")


class BYOL:
    """A BYOL learner (Grill et al. 2020, arXiv 2006.07733) whose step runs in Rust.

    Online network: backbone f, projector g, predictor q (Linear-BN-ReLU-Linear, 4096/256);
    target network: f and g, an exact copy at start, then an EMA (eq. 1) with tau rising from
    ``tau_base`` to ``tau_final`` on a cosine. Defaults are the paper's: LARS (momentum 0.9,
    eta 1e-3, weight decay 1.5e-6; biases and BN parameters excluded), lr 0.2 x batch/256
    with linear warm-up then cosine decay.

    ``preset="40ep" | "100ep" | "300ep" | "1000ep"`` with ``steps_per_epoch`` applies the
    paper's lr, weight decay and tau for that length, with 10 warm-up epochs.

    ``momentum=False`` is SimSiam (Chen & He, arXiv 2011.10566): the target is the online
    projection of the other view under stop-gradient, with no EMA and no target network in
    memory (``tau`` reports 0).

    Data parallel: under ``torch.distributed`` (``torchrun``) with more than one rank the
    learner joins the default process group (``distributed=None``; ``True`` insists, ``False``
    opts out; ``process_group`` picks another group). Each rank steps on its own shard; the
    step averages the flat gradient buffer with one all-reduce before the update, so weights,
    optimizer state and target stay bit-identical on all ranks. ``sync_bn`` (default: on when
    distributed) computes every BN layer's batch statistics over all ranks, as the paper does;
    without it the running statistics are averaged across ranks at each update.
    If any rank rejects its input, every rank raises and none changes state. Configurations
    must match across ranks (checked at construction). Only rank 0 writes in :meth:`save`.

    ``precision="bf16" | "fp16"`` runs the forward passes under autocast in that dtype (CUDA;
    also CPU, where it is for testing rather than speed). Weights, gradients, optimizer state and
    the loss stay fp32. fp16 scales the loss dynamically: it starts at ``loss_scale``, a step
    whose gradients overflow is skipped (``updated`` False, nothing changed) and halves it, and
    ``loss_scale_growth_interval`` good updates in a row double it. The scale is saved.

    ``nonfinite_check="auto"`` (default): on CUDA the step never waits for the GPU; the loss is
    checked on the device, a non-finite one cancels its update there, and the error or the
    skip is registered by a later call (see :meth:`step`). ``"immediate"`` reads the loss back
    in every step and refuses at once (the behaviour on CPU, with fp16 and when distributed);
    ``"deferred"`` forces the device-side check on any device. The convolutions run NHWC
    (``channels_last=True``, default; always on CUDA): weights and activations channels_last,
    the layout oneDNN and cuDNN are fastest in. ``channels_last=False`` on CPU keeps PyTorch's
    default NCHW layout, and so its summation order.

    ``ema_bn_stats=False`` (default): the target runs in training mode with its own BN batch
    statistics, as in the official code, where the target's running statistics are never used;
    ``True`` makes its running statistics an EMA of the online ones, for using the target in
    eval mode.

    >>> learner = BYOL("convnet", in_channels=1, projector_hidden=64, predictor_hidden=64,
    ...                projection_dim=32, total_steps=10)
    >>> metrics = learner.step(torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28))
    >>> sorted(metrics)
    ['loss', 'loss_scale', 'lr', 'skipped_steps', 'step', 'tau', 'updated', 'z_std']
    """

    def __init__(
        self,
        backbone: Literal["resnet18", "resnet34", "resnet50", "convnet"] = "resnet50",
        *,
        in_channels: int = 3,
        small_image: bool = False,
        projector_hidden: int = 4096,
        projection_dim: int = 256,
        predictor_hidden: int = 4096,
        optimizer: Literal["lars", "sgd", "adamw"] = "lars",
        lr: Optional[float] = None,
        batch_size: Optional[int] = None,
        weight_decay: float = 1.5e-6,
        optimizer_momentum: float = 0.9,
        eta: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        total_steps: int = 1000,
        warmup_steps: int = 0,
        final_lr: float = 0.0,
        tau_base: float = 0.996,
        tau_final: float = 1.0,
        momentum: bool = True,
        accumulate: int = 1,
        ema_bn_stats: bool = False,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        nonfinite_check: Literal["auto", "immediate", "deferred"] = "auto",
        precision: Literal["fp32", "bf16", "fp16"] = "fp32",
        loss_scale: float = 65536.0,
        loss_scale_growth_interval: int = 2000,
        device: str = "cpu",
        seed: int = 0,
        channels_last: bool = True,
        allow_unsafe: bool = False,
        preset: Optional[Literal["40ep", "100ep", "300ep", "1000ep"]] = None,
        steps_per_epoch: Optional[int] = None,
        augment: Optional[Augment] = None,
        distributed: Optional[bool] = None,
        sync_bn: Optional[bool] = None,
        process_group: Any = None,
    ) -> None:
        config = {k: _check_type(k, v) for k, v in locals().items() if k in SCHEMA and k != "augment"}
        if augment is not None and not isinstance(augment, Augment):
            raise ByolTypeError(f"augment: expected byol_rs.Augment or None, got {type(augment).__name__}")
        config["augment"] = augment.config if augment is not None else None
        group = group_spec(distributed, sync_bn, process_group)
        self._engine = _core.Learner(json.dumps(config), group)
        self._layout = augment.layout if augment is not None else "auto"

    @classmethod
    def _wrap(cls, engine: "_core.Learner") -> "BYOL":
        self = cls.__new__(cls)
        self._engine = engine
        self._layout = "auto"
        return self

    def step(self, view1: "Images", view2: Optional[torch.Tensor] = None) -> StepMetrics:
        """One BYOL step on two augmented views ``[N, C, H, W]`` (float, normalised), or,
        with one argument, on raw images that the learner's ``augment`` pipeline turns into
        two views (its RNG state is saved with the learner): a batch tensor, or a list of
        ``[C, H, W]`` images of any sizes, each cropped at its own resolution (on a CUDA
        learner the crops are cut on the host and only they are uploaded).

        Online forward on each view separately, target forward under no_grad, the
        symmetrised loss, backward, the optimizer update and the EMA, all in Rust with the
        GIL released. Returns a :class:`StepMetrics` mapping ``loss, lr, tau, step, z_std,
        updated, skipped_steps, loss_scale``.

        A non-finite loss raises :class:`NonFiniteLossError` and changes nothing
        (``on_nonfinite="skip"`` counts it instead). On CPU (and with fp16 or several ranks)
        that happens in the same call. On CUDA the step never waits for the GPU: the check
        runs on the device, which cancels the failing update and every update after it, and
        the error is raised by the first later call that learns of it (``step``, ``sync``,
        ``save``, ``step_count``), with the learner put back to before the failing step.
        """
        if view2 is None:
            return StepMetrics(self._engine.step_images(checked_images(view1), self._layout))
        return StepMetrics(self._engine.step(view1, view2))

    def sync(self) -> None:
        """Waits for the device to finish every step so far and raises the deferred
        :class:`NonFiniteLossError` of a failed one, if any. A no-op on CPU."""
        self._engine.sync()

    def set_total_steps(self, total_steps: int) -> None:
        """Changes the length of the lr and tau schedules from the current step on, for a run
        whose length is known only once it is under way (``byol-rs train --minutes`` re-plans
        from its measured speed). The warm-up is unchanged; ``config["total_steps"]`` and the
        checkpoint follow. Raises ValueError below the steps done or the warm-up, or with a preset."""
        self._engine.set_total_steps(_check_type("total_steps", total_steps))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode backbone features ``[N, feature_dim]`` without gradients."""
        return self._engine.embed(x)

    def named_parameters(self) -> Dict[str, torch.Tensor]:
        """Online parameters; the tensors share storage with the Rust model."""
        return self._engine.named_parameters()

    def target_named_parameters(self) -> Dict[str, torch.Tensor]:
        """Target parameters (no predictor); shared storage."""
        return self._engine.target_named_parameters()

    def named_buffers(self) -> Dict[str, torch.Tensor]:
        """Online BN running statistics; shared storage."""
        return self._engine.named_buffers()

    def target_named_buffers(self) -> Dict[str, torch.Tensor]:
        """Target BN running statistics; shared storage."""
        return self._engine.target_named_buffers()

    def optimizer_state(self) -> Dict[str, torch.Tensor]:
        """Optimizer state as ``<param>.momentum_buffer`` or ``<param>.exp_avg[_sq]``."""
        return self._engine.optimizer_state()

    def backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """The online backbone under torchvision's keys, without ``fc``.

        >>> import torchvision
        >>> learner = BYOL("resnet18", projector_hidden=8, predictor_hidden=8, projection_dim=4)
        >>> net = torchvision.models.resnet18(); net.fc = torch.nn.Identity()
        >>> net.load_state_dict(learner.backbone_state_dict(), strict=True)
        <All keys matched successfully>

        With ``small_image=True`` first set ``net.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False)``
        and ``net.maxpool = nn.Identity()``.
        """
        return self._engine.backbone_state_dict()

    @property
    def config(self) -> Dict[str, Any]:
        """The resolved configuration as a plain dict."""
        cfg = json.loads(self._engine.config_json())
        cfg["betas"] = tuple(cfg["betas"])
        return cfg

    @property
    def step_count(self) -> int:
        """Optimizer updates done so far."""
        return self._engine.step_count

    @property
    def skipped_steps(self) -> int:
        return self._engine.skipped_steps

    @property
    def rank(self) -> int:
        """This process's rank in the data-parallel run (0 when not distributed)."""
        return self._engine.rank_world[0]

    @property
    def world_size(self) -> int:
        """Number of ranks in the data-parallel run (1 when not distributed)."""
        return self._engine.rank_world[1]

    def save(self, path: "str | os.PathLike[str]") -> None:
        """Writes the full training state atomically (safetensors with JSON metadata).

        In a data-parallel run only rank 0 writes (every rank holds the same state)."""
        if self.rank == 0:
            self._engine.save(os.fspath(path))

    @classmethod
    def load(
        cls,
        path: "str | os.PathLike[str]",
        device: Optional[str] = None,
        *,
        distributed: Optional[bool] = None,
        sync_bn: Optional[bool] = None,
        process_group: Any = None,
        layout: str = "auto",
    ) -> "BYOL":
        """Restores a learner saved with :meth:`save`, optionally onto another device, and
        into a data-parallel run of any world size (as for the constructor)."""
        if layout not in ("auto", "NCHW", "NHWC"):
            raise ByolValueError(f"layout: expected 'auto', 'NCHW' or 'NHWC', got {layout!r}")
        group = group_spec(distributed, sync_bn, process_group)
        self = cls._wrap(_core.Learner.load(os.fspath(path), device, group))
        self._layout = layout
        return self

    def __repr__(self) -> str:
        c = self.config
        return f"BYOL({c['backbone']!r}, optimizer={c['optimizer']!r}, step={self.step_count})"
