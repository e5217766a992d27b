"""``byol_rs.Augment``: BYOL's two asymmetric views of a batch, each sample with its own
random parameters, computed in Rust on the batch's device (src/augment/)."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _core
from .errors import ByolTypeError, ByolValueError

# The engine's defaults (src/augment/config.rs): the paper's two views and ImageNet's statistics.
_DEFAULTS: Dict[str, Any] = json.loads(_core.augment_defaults())
IMAGENET_MEAN = tuple(_DEFAULTS["mean"])
IMAGENET_STD = tuple(_DEFAULTS["std"])

#: Per-view settings and their types; any of them can be passed to ``Augment`` (both views)
#: or inside ``view1=`` / ``view2=`` dicts (one view).
VIEW_FIELDS = {key: tuple if isinstance(value, list) else type(value) for key, value in _DEFAULTS["view1"].items()}


def smallest_crop_side(size: int, views: Sequence[Dict[str, Any]] = (_DEFAULTS["view1"], _DEFAULTS["view2"])) -> int:
    """The shorter image side at which the smallest random resized crop of ``views`` (area
    ``crop_scale[0]`` of the image, aspect ratio up to ``crop_ratio[1]``) still spans ``size``
    pixels each way: ``ceil(size * sqrt(ratio_max / scale_min))``, 915 for the paper's 224 px
    views. The crop's shorter side is ``sqrt(scale * W * H / ratio) >= H * sqrt(scale / ratio)``
    for an image whose shorter side is H, so from images this large every crop is a
    downsampling: more pixels (a JPEG decoded at full size rather than at reduced scale) add
    no detail at the views' size."""
    scale = min(v["crop_scale"][0] for v in views)
    ratio = max(max(v["crop_ratio"][1], 1 / v["crop_ratio"][0]) for v in views)
    return math.ceil(size * math.sqrt(ratio / scale))


#: A batch ``[N, C, H, W]`` (or NHWC), or a list of ``[C, H, W]`` (or HWC) images of any sizes.
Images = Union[torch.Tensor, Sequence[torch.Tensor]]
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def checked_images(images: Any) -> "torch.Tensor | List[torch.Tensor]":
    """A batch tensor as it is, or a list or tuple of tensors as a list; TypeError otherwise."""
    if isinstance(images, torch.Tensor):
        return images
    if not isinstance(images, (list, tuple)):
        raise ByolTypeError(f"images: expected a torch.Tensor or a list of [C, H, W] tensors, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise ByolTypeError(f"images[{i}]: expected a torch.Tensor, got {type(image).__name__}")
    return list(images)


def _number(arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ByolTypeError(f"{arg}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ByolValueError(f"{arg}: expected a finite number, got {value!r}")
    return float(value)


def _view_overrides(arg: str, values: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in values.items():
        if key not in VIEW_FIELDS:
            raise ByolTypeError(f"{arg}: unknown view setting {key!r}; expected one of {sorted(VIEW_FIELDS)}")
        kind, name = VIEW_FIELDS[key], f"{arg}.{key}"
        if kind is float:
            out[key] = _number(name, value)
        elif kind is tuple:
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ByolTypeError(f"{name}: expected a pair (min, max), got {value!r}")
            out[key] = [_number(name, v) for v in value]
        elif not isinstance(value, str):
            raise ByolTypeError(f"{name}: expected a string, got {value!r}")
        else:
            out[key] = value
    return out


class Augment:
    """BYOL's augmentation pipeline on whole batches (paper, appendix B, table 6).

    Each view applies, with parameters drawn per sample: random resized crop (scale
    0.08-1, ratio 3/4-4/3, bicubic, antialiased) -> horizontal flip (p 0.5) -> colour
    jitter 0.4/0.4/0.2/0.1 in a random order per sample (p 0.8) -> grayscale (p 0.2) ->
    Gaussian blur (kernel ~10 % of the size, sigma 0.1-2) -> solarize (threshold 0.5) ->
    normalise. The defaults are the paper's asymmetric views: blur p 1.0 / 0.1 and
    solarize p 0.0 / 0.2 for views 1 / 2.

    Images: ``[N, C, H, W]`` or ``[N, H, W, C]`` (``layout="auto"`` takes the axis of
    size 1 or 3), uint8 0-255 or float 0-1, 1 or 3 channels, any device. Output: two
    ``[N, C, size, size]`` tensors on the same device, float32 unless ``dtype`` says
    otherwise. On single-channel images brightness, contrast and solarize apply;
    saturation, hue and grayscale are no-ops (there is no colour to change).

    Any per-view setting (``crop_scale``, ``crop_ratio``, ``interpolation``, ``flip_p``,
    ``jitter_p``, ``brightness``, ``contrast``, ``saturation``, ``hue``, ``grayscale_p``,
    ``blur_p``, ``blur_sigma``, ``solarize_p``, ``solarize_threshold``) can be passed as a
    keyword (both views) or in ``view1={...}`` / ``view2={...}`` (one view).

    Randomness comes from a host RNG seeded by ``seed``: the same seed and input give the
    same views on a given device; ``rng_state`` can be saved and restored.

    >>> aug = Augment.byol(size=32, seed=0)
    >>> v1, v2 = aug(torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8))
    >>> v1.shape, v1.dtype
    (torch.Size([4, 3, 32, 32]), torch.float32)
    """

    def __init__(
        self,
        size: "int | Tuple[int, int]" = 224,
        *,
        view1: Optional[Dict[str, Any]] = None,
        view2: Optional[Dict[str, Any]] = None,
        blur_kernel: Optional[int] = None,
        mean: Optional[Sequence[float]] = IMAGENET_MEAN,
        std: Optional[Sequence[float]] = IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        check: bool = True,
        seed: int = 0,
        layout: str = "auto",
        **both: Any,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, (int, tuple, list)):
            raise ByolTypeError(f"size: expected an int or (height, width), got {size!r}")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in hw):
            raise ByolTypeError(f"size: expected an int or (height, width), got {size!r}")
        if dtype not in _DTYPES:
            raise ByolTypeError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        if (mean is None) != (std is None):
            raise ByolTypeError("mean/std: give both or neither")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise ByolTypeError(f"seed: expected an int in [0, 2**64), got {seed!r}")
        if blur_kernel is not None and (isinstance(blur_kernel, bool) or not isinstance(blur_kernel, int)):
            raise ByolTypeError(f"blur_kernel: expected an odd int or None, got {blur_kernel!r}")
        if layout not in ("auto", "NCHW", "NHWC"):
            raise ByolTypeError(f"layout: expected 'auto', 'NCHW' or 'NHWC', got {layout!r}")
        common = _view_overrides("Augment", both)
        config = {
            "size": list(hw),
            "view1": {**_PAPER_VIEW1, **common, **_view_overrides("view1", view1 or {})},
            "view2": {**_PAPER_VIEW2, **common, **_view_overrides("view2", view2 or {})},
            "blur_kernel": blur_kernel,
            "mean": [_number("mean", v) for v in mean] if mean is not None else [],
            "std": [_number("std", v) for v in std] if std is not None else [],
            "dtype": _DTYPES[dtype],
            "check": bool(check),
            "seed": seed,
        }
        self.layout = layout
        self._engine = _core.Augment(json.dumps(config))

    @classmethod
    def byol(cls, size: int = 224, **kwargs: Any) -> "Augment":
        """The paper's ImageNet views at ``size`` (kernel 23 at 224 px), ImageNet mean/std."""
        return cls(size, **kwargs)

    @classmethod
    def small_image(cls, size: int = 32, *, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None, **kwargs: Any) -> "Augment":
        """For 28-64 px images, after solo-learn's CIFAR recipe: no blur on either view
        (it erases what little detail small images have), solarize p 0.0 / 0.2, the
        paper's crop and colour settings. No normalisation unless ``mean``/``std`` given."""
        kwargs.setdefault("blur_p", 0.0)
        return cls(size, mean=mean, std=std, **kwargs)

    @classmethod
    def _from_engine(cls, engine: "_core.Augment", layout: str = "auto") -> "Augment":
        self = cls.__new__(cls)
        self._engine, self.layout = engine, layout
        return self

    def __call__(self, images: "Images", device: "str | torch.device | None" = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of ``images``, each sample with its own parameters: a batch
        tensor, or a list of ``[C, H, W]`` images of any sizes (as
        :func:`byol_rs.data.collate_images` makes), whose crops are cut from each image at
        its own resolution. On equal sizes a list gives the same views as its stacked batch.

        The views are made on ``device`` (default: the images'). A batch is moved there first;
        a list on the CPU is cropped on the CPU, and only the crops are moved."""
        target = None if device is None else str(torch.device(device))
        return self._engine(checked_images(images), self.layout, target)

    def sample_params(self, n: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None, *,
                      sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Draws (and consumes) the per-sample parameters of both views, as ``[n, ...]`` tensors:
        crop boxes (top, left, height, width), flags, jitter order and factors
        (brightness, contrast, saturation, hue; NaN where no jitter), blur sigma (NaN: none).
        For ``n`` images of ``height`` x ``width``, or, with ``sizes``, for a list of images of
        those ``(height, width)`` (what a call on such a list draws)."""
        if sizes is not None:
            return self._engine.sample_params(sizes=[(int(h), int(w)) for h, w in sizes])
        return self._engine.sample_params(n, height, width)

    @property
    def config(self) -> Dict[str, Any]:
        return json.loads(self._engine.config_json())

    @property
    def rng_state(self) -> Tuple[int, int, int, int]:
        return tuple(self._engine.rng_state)

    @rng_state.setter
    def rng_state(self, state: Sequence[int]) -> None:
        state = list(state)
        if len(state) != 4 or not all(isinstance(v, int) and 0 <= v < 2**64 for v in state):
            raise ByolValueError(f"rng_state: expected four ints in [0, 2**64), got {state!r}")
        if not any(state):
            raise ByolValueError("rng_state: the all-zero state is degenerate (the generator would never leave it)")
        self._engine.rng_state = state

    def __repr__(self) -> str:
        c = self.config
        return f"Augment(size={tuple(c['size'])}, seed={c['seed']})"


_PAPER_VIEW1: Dict[str, Any] = _DEFAULTS["view1"]
_PAPER_VIEW2: Dict[str, Any] = _DEFAULTS["view2"]
