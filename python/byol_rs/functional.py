"""Batched image ops with one parameter per sample, as used by :class:`byol_rs.Augment`.

Images are ``[N, C, H, W]`` float in [0, 1] (uint8 is divided by 255) on any device;
per-sample parameters are ``[N]`` tensors. Each op equals the matching
``torchvision.transforms.v2.functional`` op applied image by image.
"""

from __future__ import annotations

from typing import Tuple

import torch

from . import _core
from .errors import ByolTypeError


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: "int | Tuple[int, int]",
                 interpolation: str = "bilinear", method: str = "auto") -> torch.Tensor:
    """Crops ``boxes[n] = (top, left, height, width)`` from image n and resizes it to ``size``
    (antialiased, like ``v2.functional.resized_crop``).

    ``method`` picks how, all with the same filter taps (so the same result up to float
    rounding): ``"matmul"``, two batched matrix products for the whole batch (CUDA's default,
    no kernel per image); ``"cpu"``, byol-rs's own separable kernel image by image (the CPU's
    default); ``"aten"``, ATen's antialiased resampling once per image (what torchvision runs);
    ``"auto"``, the device's default."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if isinstance(boxes, torch.Tensor) and boxes.is_floating_point():
        raise ByolTypeError("boxes: expected integer pixel coordinates, got a floating-point tensor")
    return _core.resized_crop(images, boxes, hw, interpolation, method)


def hflip(images: torch.Tensor) -> torch.Tensor:
    return _core.hflip(images)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _core.adjust_brightness(images, factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _core.adjust_contrast(images, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _core.adjust_saturation(images, factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return _core.adjust_hue(images, shift)


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma replicated to three channels (``num_output_channels=3``)."""
    return _core.rgb_to_grayscale(images)


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    return _core.gaussian_blur(images, kernel_size, sigma)


def solarize(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    return _core.solarize(images, threshold)
