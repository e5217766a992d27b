"""byol_rs: BYOL self-supervised learning with a Rust engine on libtorch.

Grill et al., "Bootstrap Your Own Latent", arXiv 2006.07733.

>>> import torch, byol_rs
>>> p, z = torch.randn(8, 256, requires_grad=True), torch.randn(8, 256)
>>> loss = byol_rs.byol_loss(p, z)
>>> loss.backward()
"""

_BUILT_FOR_TORCH = "2.11.0"

import torch as _torch  # noqa: E402  (must be imported before the extension: tch-rs #723)

_installed = _torch.__version__.split("+")[0]
if _installed != _BUILT_FOR_TORCH:
    raise ImportError(
        f"byol_rs was built for torch {_BUILT_FOR_TORCH}, but torch {_torch.__version__} is "
        f"installed. Install torch=={_BUILT_FOR_TORCH} (pip install torch=={_BUILT_FOR_TORCH})."
    )

from . import _core  # noqa: E402
from .errors import (  # noqa: E402
    ByolError,
    ByolTypeError,
    ByolValueError,
    CheckpointError,
    ByolRuntimeError,
    DistributedError,
    NonFiniteLossError,
)
from .augment import Augment  # noqa: E402
from .learner import BYOL  # noqa: E402
from .metrics import StepMetrics  # noqa: E402
from . import functional  # noqa: E402
from . import nn  # noqa: E402
from .kernels import (  # noqa: E402
    byol_loss,
    cosine_tau,
    ema_update_,
    symmetric_byol_loss,
    warmup_cosine_lr,
)

__version__ = "0.1.0"

__all__ = [
    "StepMetrics",
    "Augment",
    "BYOL",
    "ByolError",
    "ByolTypeError",
    "ByolValueError",
    "CheckpointError",
    "ByolRuntimeError",
    "DistributedError",
    "NonFiniteLossError",
    "byol_loss",
    "cosine_tau",
    "ema_update_",
    "functional",
    "nn",
    "symmetric_byol_loss",
    "warmup_cosine_lr",
]
