"""Image data for training and evaluation: IDX folders (Fashion-MNIST, MNIST),
scikit-learn's digits, and any ``torch.utils.data.Dataset``. Everything is loaded into
memory as uint8 ``[N, C, H, W]`` tensors, which the Rust augmentations consume directly.

A folder of JPEG, PNG or WebP files is streamed instead: :class:`ImageFolder` and
:func:`collate_images`, defined in :mod:`byol_rs.folder` and re-exported here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Tuple

import torch

from . import _core
from .errors import ByolValueError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HELP = (
    "Fashion-MNIST comes from Debian's package: `sudo apt-get install dataset-fashion-mnist` "
    f"(installs {FASHION_MNIST_DIR}); or pass --data DIR with the four IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz]); or use --dataset digits, which needs only scikit-learn"
)


class DatasetError(ByolValueError):
    """A dataset is missing or unreadable; the message says how to get it."""


@dataclass
class ImageData:
    name: str
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def size(self) -> int:
        return self.train_images.shape[-1]

    @property
    def num_classes(self) -> int:
        return int(self.train_labels.max()) + 1

    def mean_std(self) -> Tuple[list, list]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.train_images.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
        return x.mean(1).tolist(), x.std(1).tolist()


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder}: no {stem}[.gz]. {FASHION_MNIST_HELP}")


def load_idx_dir(folder: "str | os.PathLike[str]", name: str = "") -> ImageData:
    """The MNIST layout: ``train-images-idx3-ubyte`` and friends, gzipped or not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} does not exist or is not a folder. {FASHION_MNIST_HELP}")
    try:
        parts = [_core.read_idx(str(_find(folder, stem))) for stem in (
            "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    except DatasetError:
        raise
    except ValueError as e:
        raise DatasetError(f"{e}. The file is corrupt or not IDX; {FASHION_MNIST_HELP}") from None
    train_x, train_y, test_x, test_y = parts
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise DatasetError(f"{folder}: {split} images {tuple(images.shape)} and labels "
                               f"{tuple(labels.shape)} do not match (expected [N, H, W] and [N])")
    return ImageData(name or folder.name, train_x.unsqueeze(1), train_y.long(),
                     test_x.unsqueeze(1), test_y.long())


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8x8 digits (1797 images, values 0-16) scaled to uint8 and upsampled
    to 16x16, split into train/test with a fixed seed."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).mul_(255 / 16).round_().to(torch.uint8)
    x = x.unsqueeze(1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(x) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return ImageData("digits", x[tr], y[tr], x[te], y[te])


def from_dataset(train: Any, test: Any, name: str = "dataset") -> ImageData:
    """Any map-style ``Dataset`` (or iterable of ``(image, label)``) of PIL images or
    ``[C, H, W]`` tensors (uint8, or float in [0, 1]) with equal sizes."""
    def collect(ds: Any, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        images, labels = [], []
        for i, item in enumerate(ds):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise DatasetError(f"{split}[{i}]: expected (image, label), got {type(item).__name__}")
            img, label = item
            if not isinstance(img, torch.Tensor):
                arr = np.asarray(img)
                img = torch.as_tensor(arr).unsqueeze(0) if arr.ndim == 2 else torch.as_tensor(arr).permute(2, 0, 1)
            if img.is_floating_point():
                img = img.mul(255).round_().clamp_(0, 255).to(torch.uint8)
            images.append(img)
            labels.append(int(label))
        if not images:
            raise DatasetError(f"{split}: the dataset is empty")
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) != 1:
            raise DatasetError(f"{split}: images have different shapes {sorted(shapes)[:3]}; resize them first")
        return torch.stack(images), torch.tensor(labels)

    (trx, try_), (tex, tey) = collect(train, "train"), collect(test, "test")
    return ImageData(name, trx, try_, tex, tey)


def load(dataset: str = "fashion-mnist", data_dir: "str | None" = None) -> ImageData:
    """``fashion-mnist`` (Debian's package), ``digits`` (scikit-learn), or ``data_dir``."""
    if data_dir is not None:
        return load_idx_dir(data_dir)
    if dataset == "fashion-mnist":
        return load_idx_dir(FASHION_MNIST_DIR, "fashion-mnist")
    if dataset == "digits":
        return load_digits()
    raise DatasetError(f"dataset: expected 'fashion-mnist' or 'digits' (or --data DIR), got {dataset!r}")


if TYPE_CHECKING:
    from .folder import ImageFolder, ImageSkippedWarning, collate_images  # noqa: F401

_FOLDER_NAMES = ("ImageFolder", "ImageSkippedWarning", "ImageDecodeError", "NoReadableImageError",
                 "collate_images", "scaled_size", "IMAGE_EXTENSIONS")


def __getattr__(name: str) -> Any:
    # byol_rs.folder imports DatasetError from here, so its names are re-exported lazily
    # (PEP 562) rather than imported at the top, which would be a circular import.
    if name in _FOLDER_NAMES:
        from . import folder
        return getattr(folder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
