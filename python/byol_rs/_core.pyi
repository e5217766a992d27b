"""Type stubs for the Rust extension (src/bindings). Written by hand."""

from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, final

from torch import Tensor
from typing_extensions import TypeAlias

__all__ = [
    "__torch_version__",
    "_batch_norm_act",
    "_winograd_conv3x3",
    "byol_loss_forward",
    "byol_loss_backward",
    "ema_update_",
    "cosine_tau",
    "warmup_cosine_lr",
    "Augment",
    "resized_crop",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "rgb_to_grayscale",
    "hflip",
    "gaussian_blur",
    "solarize",
    "LinearProbe",
    "knn_predict",
    "knn_accuracy",
    "z_std",
    "effective_rank",
    "read_idx",
    "config_schema",
    "augment_defaults",
    "Learner",
]

__torch_version__: str

def _batch_norm_act(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    residual: Optional[Tensor] = None,
    relu: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Optional[Tensor]:
    """The engine's fused training-mode `relu?(batch_norm(x) + residual?)` (for tests and benches):
    `None` where the inputs are not fp32 CPU rows of channels and the engine would use ATen."""

def _winograd_conv3x3(x: Tensor, weight: Tensor) -> Optional[Tensor]:
    """The engine's Winograd F(2x2, 3x3) convolution, stride 1, padding 1, no bias (for tests and
    benches): `None` where the inputs are not fp32 CPU NHWC with even height and width."""

def byol_loss_forward(p: Tensor, z: Tensor, simplified: bool = True) -> Tuple[Tensor, Tensor]:
    """Forward of the BYOL loss: returns `(loss, saved)`; `saved` feeds the backward."""

def byol_loss_backward(grad: Tensor, p: Tensor, z: Tensor, saved: Tensor) -> Tensor:
    """Analytic gradient of the BYOL loss with respect to `p`."""

def ema_update_(target: List[Tensor], online: List[Tensor], tau: float) -> None:
    """`target[i] <- tau * target[i] + (1 - tau) * online[i]`, in place, under no_grad."""

def cosine_tau(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """The paper's target decay: rises from `base` to `final` on a cosine."""

def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float = 0.0) -> float:
    """Linear warm-up to `base_lr`, then cosine decay to `final_lr`."""

# Stub-only alias (not present at runtime, hence private).
_GroupSpec: TypeAlias = Tuple[Callable[[Tensor], None], int, int, bool]
"""(all_reduce_sum, rank, world_size, sync_bn) of a data-parallel run."""

@final
class Learner:
    def __new__(cls, config_json: str, group: Optional[_GroupSpec] = None) -> "Learner": ...
    def step(self, view1: Tensor, view2: Tensor) -> Dict[str, Any]: ...
    def step_images(self, images: Union[Tensor, List[Tensor]], layout: str = "auto") -> Dict[str, Any]: ...
    def sync(self) -> None: ...
    def set_total_steps(self, total: int) -> None: ...
    def embed(self, x: Tensor) -> Tensor: ...
    def named_parameters(self) -> Dict[str, Tensor]: ...
    def target_named_parameters(self) -> Dict[str, Tensor]: ...
    def named_buffers(self) -> Dict[str, Tensor]: ...
    def target_named_buffers(self) -> Dict[str, Tensor]: ...
    def optimizer_state(self) -> Dict[str, Tensor]: ...
    def backbone_state_dict(self) -> Dict[str, Tensor]: ...
    def config_json(self) -> str: ...
    @property
    def rank_world(self) -> Tuple[int, int]: ...
    @property
    def step_count(self) -> int: ...
    @property
    def skipped_steps(self) -> int: ...
    def save(self, path: Union[str, PathLike[str]]) -> None: ...
    @staticmethod
    def load(path: Union[str, PathLike[str]], device: Optional[str] = None, group: Optional[_GroupSpec] = None) -> "Learner": ...

@final
class Augment:
    """BYOL's two views of a batch with per-sample parameters (see `byol_rs.Augment`)."""
    def __new__(cls, config_json: str) -> "Augment": ...
    def __call__(self, images: Union[Tensor, List[Tensor]], layout: str = "auto", device: Optional[str] = None) -> Tuple[Tensor, Tensor]: ...
    def sample_params(self, n: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None, sizes: Optional[List[Tuple[int, int]]] = None) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]: ...
    def config_json(self) -> str: ...
    rng_state: List[int]

def resized_crop(images: Tensor, boxes: Tensor, size: Tuple[int, int], interpolation: str = "bilinear", method: str = "auto") -> Tensor: ...
def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor: ...
def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor: ...
def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor: ...
def adjust_hue(images: Tensor, shift: Tensor) -> Tensor: ...
def rgb_to_grayscale(images: Tensor) -> Tensor: ...
def hflip(images: Tensor) -> Tensor: ...
def gaussian_blur(images: Tensor, kernel_size: int, sigma: Tensor) -> Tensor: ...
def solarize(images: Tensor, threshold: float) -> Tensor: ...

def knn_predict(train: Tensor, train_labels: Tensor, queries: Tensor, k: int = 200, temperature: float = 0.1, chunk: int = 512) -> Tensor:
    """Weighted kNN (cosine similarity, votes exp(sim / T)) prediction for each query."""

def knn_accuracy(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, k: int = 200, temperature: float = 0.1, chunk: int = 512) -> float: ...
def z_std(embeddings: Tensor) -> float: ...
def effective_rank(embeddings: Tensor) -> float: ...
def config_schema() -> str:
    """The learner's configuration fields as a JSON list (name, section, type, optional, choices, default, doc)."""
def augment_defaults() -> str:
    """The augmentation pipeline's default configuration (the paper's views) as JSON."""
def read_idx(path: Union[str, PathLike[str]]) -> Tensor:
    """A uint8 IDX file (MNIST format), gzipped or not, as a uint8 tensor."""

@final
class LinearProbe:
    @staticmethod
    def fit(features: Tensor, labels: Tensor, c_grid: List[float], val_fraction: float = 0.1, max_iter: int = 100, tol: float = 1e-6, seed: int = 0, select: bool = True) -> "LinearProbe": ...
    def predict_proba(self, features: Tensor) -> Tensor: ...
    def accuracy(self, features: Tensor, labels: Tensor) -> float: ...
    @property
    def c(self) -> float: ...
    @property
    def val_accuracy(self) -> List[float]: ...
    @property
    def coef(self) -> Tuple[Tensor, Tensor]: ...
