"""Where a training run's images come from, behind the one small interface the Trainer uses
(:class:`Source`): the batch of each optimizer step, features for evaluation, and counts.

- :class:`InMemorySource`: an :class:`~byol_rs.data.ImageData` (Fashion-MNIST, digits, an IDX
  folder) held as one uint8 ``[N, C, H, W]`` tensor; a batch is an index into it.
- :class:`FolderSource`: a folder of image files (:class:`~byol_rs.folder.ImageFolder`)
  streamed through DataLoader workers. A training batch is a list of uint8 ``[C, H, W]``
  tensors at the files' own sizes: the learner's augment draws each sample's random resized
  crop from its own size and cuts it from its full-resolution pixels. Evaluation images are
  resized and centre-cropped in the workers (:func:`eval_transform`) and embedded a batch at a
  time, so no evaluation set is ever held in memory at full resolution.

Both take their batches from :class:`EpochBatchSampler`, a pure function of the step, so a run
resumed at step s sees the batches the uninterrupted run saw from s on.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from . import data as datasets
from .augment import smallest_crop_side
from .data import DatasetError, ImageData
from .eval import embed_all
from .folder import ImageDecodeError, ImageFolder, collate_images

if TYPE_CHECKING:
    from .learner import BYOL
    from .trainer import TrainConfig

#: A training batch: one uint8 tensor [B, C, H, W] (in memory) or a list of [C, H, W] (a folder).
Batch = Union[torch.Tensor, List[torch.Tensor]]

#: Periodic kNN during training: a bank of this many training images, this many queries.
PERIODIC_BANK, PERIODIC_QUERIES = 10_000, 2_000
#: Evaluation images are resized on the shorter side to round(N / EVAL_CROP_RATIO), then
#: centre-cropped to N: the standard ImageNet evaluation transform (256 -> 224).
EVAL_CROP_RATIO = 0.875
#: Folders whose median shorter side is at most this are small images (Fashion-MNIST, CIFAR,
#: STL-10 at 96 is not): they train with the small-image recipe on views of ``view_fraction`` of
#: their side and are evaluated whole at their own size (crop ratio 1), as the IDX path and
#: solo-learn's CIFAR recipe do. A 0.875 centre crop of 28 px images costs 0.6 kNN points
#: (benches/RESULTS.md).
SMALL_IMAGES_UP_TO = 64
#: A folder of small images whose decoded pixels fit in this many bytes is decoded once, by the
#: loader workers, and trained from memory as an IDX set is (unless --stream): a 28 px PNG
#: decodes in ~40 us, and a worker process beside the 2-thread step cost the Fashion-MNIST
#: folder run 1/3 of its img/s (benches/RESULTS.md).
MEMORY_BYTES = 1 << 30
#: Images per loader batch when a folder is decoded into memory.
DECODE_BATCH = 512
#: PIL modes of one-channel files.
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
#: Training images whose features give the health metrics of a run with no labelled set.
HEALTH_SAMPLE = 2048
#: Decoded training images whose pixels give the normalisation's mean and std.
MEAN_STD_SAMPLE = 256
#: Images per evaluation batch from a folder (a 224 px float batch of 256 is 154 MB).
EVAL_BATCH_SIZE = 256
#: Seed of the held-out split and of the samples above, fixed rather than --seed so that runs
#: with different seeds train, normalise and evaluate on the same images.
SAMPLE_SEED = 0
#: A ResNet below this view side gets the small-image stem (3x3 stride-1 conv, no max-pool), as
#: for CIFAR; at and above it the ImageNet stem (7x7 stride 2 and max-pool, 16x fewer pixels).
SMALL_STEM_BELOW = 96


def default_image_size(backbone: str) -> int:
    """The training views' side for a folder of photos when --image-size is not given: 224, the
    paper's, for ResNets; 64 for the ConvNet, a small-image network (four conv blocks, three
    pools) whose cost grows with the pixels and which was tuned on 20-28 px views."""
    return 64 if backbone == "convnet" else 224


def min_side(backbone: str) -> int:
    """The smallest image side (and --image-size) accepted: 8 px for the ConvNet (its three 2x2
    max-pools), 32 px for ResNets, whose ImageNet stem and stages divide the side by 32."""
    return 8 if backbone == "convnet" else 32


def default_workers() -> int:
    """Loader worker processes per rank: the cores this process may use, shared among the
    ranks on this machine (torchrun's LOCAL_WORLD_SIZE), less one for the rank's own process,
    which runs the training step; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // ranks_here - 1)


def view_size(cfg: "TrainConfig", d: ImageData) -> int:
    """The training views' side for in-memory images: ``view_fraction`` of the images', rounded,
    at least 8 px (the ConvNet's three 2x2 pools) and at most the images' own. Random resized
    crops enlarge objects, so views smaller than the test images show objects at about their
    test size (the FixRes effect), and each step costs fewer pixels: 20 px views of 28 px
    Fashion-MNIST train about 1.6x as many images in the same time (benches/RESULTS.md,
    probes AA-AD)."""
    return min(d.size, max(8, round(cfg.view_fraction * d.size)))


class EpochBatchSampler:
    """Dataset positions of the batch of every optimizer step from ``start_step`` on, forever.

    Epoch ``e`` is ``torch.randperm(n)`` seeded with ``seed * 1_000_003 + e``, cut into
    ``n // batch_size`` global batches (the remainder is dropped); each of ``world`` ranks takes
    its slice ``[rank * B / world, (rank + 1) * B / world)`` of every global batch. So the
    batches are a pure function of the step, and a resumed run continues from the same batch.
    Iterating yields lists of ints, as ``DataLoader(batch_sampler=...)`` expects."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0) -> None:
        if not 0 < batch_size <= n or batch_size % world or not 0 <= rank < world:
            raise ValueError(f"EpochBatchSampler: need 0 < batch_size ({batch_size}) <= n ({n}), "
                             f"batch_size divisible by world ({world}) and 0 <= rank ({rank}) < world")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self.steps_per_epoch = n // batch_size
        self._perm: Tuple[int, Optional[torch.Tensor]] = (-1, None)  # the current epoch's order

    def indices(self, step: int) -> torch.Tensor:
        """This rank's positions for optimizer step ``step`` (int64)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm[0] != epoch:  # one permutation an epoch, not one a step
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        batch = self._perm[1][i * self.batch_size:(i + 1) * self.batch_size]
        per_rank = self.batch_size // self.world
        return batch[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[List[int]]:
        for step in itertools.count(self.start_step):
            yield self.indices(step).tolist()


@dataclass
class Features:
    """Backbone features for evaluation. ``test`` is None where there is no labelled set:
    ``train`` then holds a sample of training images, for the health metrics only."""
    train: torch.Tensor
    train_labels: Optional[torch.Tensor] = None
    test: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None


def model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: str) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` to the normalised float input of ``learner.embed`` on ``device``."""
    x = images.to(device).float().div_(255)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


class Source(ABC):
    """What the Trainer needs from its images. Attributes: ``name``; ``channels``;
    ``num_train`` (the images training draws from); ``num_eval`` (labelled evaluation images,
    0 when there are none); ``labelled`` (kNN and the linear probe can be computed);
    ``no_labels`` (why not, when not); ``view_size`` (training views' side); ``small_image``
    (the ResNets' small-image stem); ``mean`` / ``std`` (normalisation, [0, 1] units); ``data``
    (the in-memory :class:`ImageData`, None when streamed)."""

    name: str
    channels: int
    num_train: int
    num_eval: int
    labelled: bool
    no_labels: str = ""
    view_size: int
    small_image: bool
    #: The paper's views (photos) rather than the small-image recipe.
    paper_views: bool = False
    mean: List[float]
    std: List[float]
    data: Optional[ImageData] = None

    @abstractmethod
    def batches(self, sampler: EpochBatchSampler) -> Iterator[Batch]:
        """The batches of ``sampler``'s steps, in order; ``close()`` the iterator when done."""

    @abstractmethod
    def probe_batch(self, n: int) -> Batch:
        """``n`` training images, for timing steps."""

    @abstractmethod
    def features(self, learners: Sequence["BYOL"], max_train: Optional[int] = None,
                 max_test: Optional[int] = None) -> Iterator[Features]:
        """Each learner's features, in turn, of the kNN bank (at most ``max_train`` training
        images) and queries (at most ``max_test`` evaluation images). In memory each learner's
        are computed when asked for, so a caller that drops one set before asking for the next
        holds one at a time; a folder's images are read once for all learners."""

    @abstractmethod
    def knn_seconds(self, per_step: float, batch_size: int) -> float:
        """An estimate of one periodic kNN check's seconds, at ``per_step`` seconds a step."""

    @property
    def skipped(self) -> List[str]:
        """Files skipped so far as unreadable."""
        return []

    @abstractmethod
    def describe(self) -> str:
        """One line for the start of a run."""

    @abstractmethod
    def report_fields(self) -> Dict[str, Any]:
        """What report.json records about the data."""


class InMemorySource(Source):
    """An :class:`ImageData` in memory: Fashion-MNIST, digits or an IDX folder."""

    def __init__(self, data: ImageData, cfg: Optional["TrainConfig"] = None) -> None:
        self.data = data
        self.name, self.channels = data.name, data.channels
        self.num_train, self.num_eval = len(data.train_images), len(data.test_images)
        self.labelled = True
        self.view_size = view_size(cfg, data) if cfg is not None else data.size
        self.small_image = True
        self.mean, self.std = data.mean_std()

    def batches(self, sampler: EpochBatchSampler) -> Iterator[torch.Tensor]:
        images = self.data.train_images
        return (images[sampler.indices(step)] for step in itertools.count(sampler.start_step))

    def probe_batch(self, n: int) -> torch.Tensor:
        return self.data.train_images[:n]

    def features(self, learners: Sequence["BYOL"], max_train: Optional[int] = None,
                 max_test: Optional[int] = None) -> Iterator[Features]:
        d = self.data
        trx, try_ = d.train_images[:max_train], d.train_labels[:max_train]
        tex, tey = d.test_images[:max_test], d.test_labels[:max_test]
        for learner in learners:
            dev = learner.config["device"]
            embed = lambda x: learner.embed(model_input(x, self.mean, self.std, dev)).cpu()  # noqa: E731
            yield Features(embed_all(embed, trx), try_, embed_all(embed, tex), tey)

    def knn_seconds(self, per_step: float, batch_size: int) -> float:
        # about (12k / batch) forward passes, ~1/4 of a step each
        return (PERIODIC_BANK + PERIODIC_QUERIES) / batch_size * per_step / 4 + 1.0

    def describe(self) -> str:
        return f"{self.name} ({self.num_train} train / {self.num_eval} test)"

    def report_fields(self) -> Dict[str, Any]:
        return {"data": {"kind": "in-memory", "train_images": self.num_train, "test_images": self.num_eval}}


def eval_resize_side(size: int, ratio: float = EVAL_CROP_RATIO) -> int:
    """The shorter side evaluation images are resized to before the centre crop of ``size``."""
    return round(size / ratio)


def eval_transform(image: torch.Tensor, size: int, ratio: float = EVAL_CROP_RATIO) -> torch.Tensor:
    """uint8 ``[C, H, W]`` of any size to ``[C, size, size]``: the shorter side resized to
    ``round(size / ratio)`` (antialiased bilinear; skipped when it already is), then the centre
    ``size x size`` crop."""
    from torchvision.transforms.v2 import functional as F

    side = eval_resize_side(size, ratio)
    if min(image.shape[-2:]) != side:
        image = F.resize(image, [side], antialias=True)
    return F.center_crop(image, [size, size])


class EvalImages(torch.utils.data.Dataset):
    """An :class:`ImageFolder`'s items as evaluation sees them: ``(eval_transform(image), label)``.
    Unless the folder caps sizes itself (``max_side``), JPEGs decode at reduced DCT scale down
    to the side the transform resizes to (``draft_side``), as its resize would shrink them anyway."""

    def __init__(self, folder: ImageFolder, size: int, ratio: float = EVAL_CROP_RATIO) -> None:
        if folder.max_side is None:
            folder = copy.copy(folder)  # the same files and record of skipped ones
            folder.draft_side = eval_resize_side(size, ratio)
        self.folder, self.size, self.ratio = folder, size, ratio

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image, label = self.folder[index]
        return eval_transform(image, self.size, self.ratio), label


def _sample(n: int, k: Optional[int]) -> List[int]:
    """All of ``range(n)`` when ``k`` is None or covers it, else ``k`` positions drawn with SAMPLE_SEED."""
    if k is None or k >= n:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(SAMPLE_SEED))[:k].tolist()


_WORKER_ERROR_PREFIX = re.compile(r"^(?:[\w.]*\.)?ImageDecodeError: ")


def strict_error(e: ImageDecodeError) -> DatasetError:
    """``--strict``'s error on one line. Raised in a DataLoader worker, the message comes back
    wrapped in the worker's traceback, whose last line is the original message."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return ImageDecodeError(f"--strict: {_WORKER_ERROR_PREFIX.sub('', lines[-1] if lines else '')}")


def _iterate(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """``loader``'s batches; --strict's error comes out on one line and the workers stop at
    once: left to the garbage collector, the iterator the error's traceback holds stalled
    for 5 s in DataLoader's worker join."""
    it = iter(loader)
    try:
        yield from it
        return
    except ImageDecodeError as e:
        error = strict_error(e)
        traceback.clear_frames(e.__traceback__)
    del it, loader
    raise error


def _open_folder(arg: str, root: str, strict: bool) -> ImageFolder:
    try:
        return ImageFolder(root, channels=3, strict=strict)
    except DatasetError as e:
        raise DatasetError(f"{arg}: {e}") from None


def _select(images: Batch, positions: torch.Tensor) -> Batch:
    """The images at ``positions`` of a decoded set: a tensor's rows, or a list's items."""
    if isinstance(images, torch.Tensor):
        return images[positions]
    return [images[i] for i in positions.tolist()]


def _is_idx_dir(root: str) -> bool:
    """A folder holding MNIST-layout IDX files (``*-idx1-ubyte``, ``*-idx3-ubyte``, gzipped or not)."""
    try:
        return any(re.search(r"-idx\d-ubyte(\.gz)?$", name) for name in os.listdir(root))
    except OSError:
        return False


class FolderSource(Source):
    """A folder of image files, streamed. ``--data`` with class subfolders is labelled; a
    labelled evaluation set is ``--val DIR`` (the same classes) or ``--val-fraction F`` of
    ``--data`` held out; without one, evaluation gives the health metrics only.

    Normalisation: per-channel mean and std of a seeded sample of MEAN_STD_SAMPLE training
    images as evaluation sees them (resized and centre-cropped), as the in-memory datasets use
    their own statistics: ImageNet's are right only for photos like ImageNet's (not for
    scans, drawings, satellite or medical images). One channel when every file is grey (PIL's
    mode from its header), else three (a grey file then becomes three equal channels).

    Recipe, by the median shorter side of the files: small images (at most 64 px) train as the
    IDX path does, on small-image views of ``view_fraction`` of their side, and are evaluated
    whole at their own size; photos train on the paper's views (``Augment.byol``) at
    ``--image-size`` and are evaluated with the standard 0.875 centre crop. Large JPEGs (phone
    photos) decode at reduced DCT scale: for training down to the side at which the smallest
    crop still spans the views' size (:func:`~byol_rs.augment.smallest_crop_side`, 915 px
    for 224 px views), for evaluation down to the side it resizes to."""

    def __init__(self, cfg: "TrainConfig", workers: int, device: str) -> None:
        self.root = os.path.expanduser(cfg.data_dir)
        self.strict, self.workers = cfg.strict, workers
        self.pin_memory = device.startswith("cuda")
        self.image_size = cfg.image_size or default_image_size(cfg.backbone)
        data = _open_folder("--data", self.root, cfg.strict)
        self.classes = data.classes
        self.eval_set: Optional[ImageFolder] = None
        if cfg.val_fraction is not None:
            if not data.classes:
                raise DatasetError(f"--val-fraction: --data {self.root} is unlabelled (no class subfolders), "
                                   f"so a held-out part of it cannot be scored; give a labelled --val DIR or neither")
            perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(SAMPLE_SEED))
            n_val = max(1, round(cfg.val_fraction * len(data)))
            if n_val >= len(data):
                raise DatasetError(f"--val-fraction {cfg.val_fraction} of {len(data)} images leaves none to train on")
            # sorted back into folder order: a bad file's substitute is its folder neighbour
            self.train = data.subset(sorted(perm[n_val:].tolist()))
            self.eval_set = data.subset(sorted(perm[:n_val].tolist()))
            self.eval_from = f"--val-fraction {cfg.val_fraction}: {n_val} of {len(data)} images of --data held out"
        elif cfg.val_dir is not None:
            val = _open_folder("--val", os.path.expanduser(cfg.val_dir), cfg.strict)
            if not val.classes:
                raise DatasetError(f"--val {val.root} is unlabelled (no class subfolders); kNN and the linear probe need labels")
            if not data.classes:
                raise DatasetError(f"--val: --data {self.root} is unlabelled (no class subfolders), so there is no labelled "
                                   f"kNN bank or probe training set; put its images in the class subfolders of --val")
            if val.classes != data.classes:
                only_val = sorted(set(val.classes) - set(data.classes))
                only_train = sorted(set(data.classes) - set(val.classes))
                parts = [f"only in --val: {', '.join(only_val)}" if only_val else "",
                         f"only in --data: {', '.join(only_train)}" if only_train else ""]
                raise DatasetError(f"--val {val.root}: its classes differ from those of --data {self.root} "
                                   f"({'; '.join(p for p in parts if p)})")
            self.train, self.eval_set = data, val
            self.eval_from = f"--val {val.root}"
        else:
            self.train = data
            self.eval_from = ""
        self.name = os.path.basename(os.path.normpath(self.root)) or self.root
        self.num_train = len(self.train)
        self.num_eval = len(self.eval_set) if self.eval_set is not None else 0
        self.labelled = self.eval_set is not None
        self.no_labels = "" if self.labelled else (
            "no labelled set given (--data has class subfolders: add --val DIR or --val-fraction F for kNN and linear-probe accuracy)"
            if data.classes else
            "no labelled set given (--data has no class subfolders and there is no --val DIR): health metrics only")
        least = min_side(cfg.backbone)
        headers = self._check_sides("--data", self.train, least, cfg.backbone)
        if self.eval_set is not None:
            headers += self._check_sides("--val" if cfg.val_dir is not None else "--data", self.eval_set, least, cfg.backbone)
        # Grey folders train on one channel (a third of the pixels); any colour file makes it three.
        self.channels = 1 if headers and all(mode in GREY_MODES for _, _, mode in headers) else 3
        for folder in (self.train, self.eval_set):
            if folder is not None:
                folder.channels = self.channels
        shorter = sorted(min(w, h) for w, h, _ in headers)
        median = shorter[len(shorter) // 2] if shorter else least
        self.small_images = median <= SMALL_IMAGES_UP_TO
        if self.small_images:
            # as the IDX path: views of view_fraction of the side, whole images evaluated at their size
            self.image_size = cfg.image_size or max(least, round(cfg.view_fraction * median))
            self.eval_size, self.eval_ratio = median, 1.0
        else:
            self.image_size = cfg.image_size or default_image_size(cfg.backbone)
            self.eval_size, self.eval_ratio = self.image_size, EVAL_CROP_RATIO
        self.view_size = self.image_size
        self.small_image = self.image_size < SMALL_STEM_BELOW
        self.paper_views = not self.small_images
        if self.paper_views:  # JPEGs decode at reduced scale while every crop stays a downsampling
            self.train.draft_side = smallest_crop_side(self.view_size)
        fits = sum(w * h for w, h, _ in headers) * self.channels <= MEMORY_BYTES
        self.in_memory = self.small_images and fits and not cfg.stream
        self.mean, self.std, self.decode_seconds = self._mean_std()
        if self.in_memory:  # the same images and statistics as streamed, so results do not depend on it
            self._train_images, self._train_labels = self._decode_all(self.train)
            if self.eval_set is not None:
                self._eval_images, self._eval_labels = self._decode_all(self.eval_set)
            self.decode_seconds = 0.0

    @staticmethod
    def _check_sides(arg: str, folder: ImageFolder, least: int, backbone: str) -> List[Tuple[int, int, str]]:
        """Each readable file's width, height and PIL mode; refuses files whose shorter side is
        below ``least``, from their headers (PIL's
        ``Image.open(...).size`` reads no pixels: ~30 us a file, about 40 s for ImageNet's 1.28M
        from a warm cache). A file whose header PIL cannot read is decoded: if that fails too it
        is skipped now (ImageFolder's warning, counted), or under --strict refused. A file with a
        good header and bad pixels (a truncated one) is skipped when a batch meets it."""
        from PIL import Image

        headers = []
        for i, (path, _) in enumerate(folder.samples):
            try:
                with Image.open(path) as im:
                    (w, h), mode = im.size, im.mode
            except Exception:  # noqa: BLE001 - no header PIL can read: decode it to be sure
                try:
                    image = folder.load(i)
                    (h, w), mode = image.shape[1:], "L" if image.shape[0] == 1 else "RGB"
                except ImageDecodeError as e:
                    if folder.strict:
                        raise strict_error(e) from None
                    folder[i]  # records the skip, with its warning, now rather than when a batch meets it
                    continue
            if min(w, h) < least:
                raise DatasetError(f"{arg}: {path} is {w}x{h} px; the {backbone} backbone needs images of at "
                                   f"least {least} px on the shorter side")
            headers.append((w, h, mode))
        return headers

    def _loader(self, dataset: torch.utils.data.Dataset, **kwargs: Any) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, num_workers=self.workers, **kwargs)

    def _eval_batches(self, folder: ImageFolder, positions: List[int]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """uint8 ``[B, 3, N, N]`` evaluation images of ``folder[positions]`` with their labels."""
        return _iterate(self._loader(torch.utils.data.Subset(EvalImages(folder, self.eval_size, self.eval_ratio), positions),
                                     batch_size=EVAL_BATCH_SIZE))

    def _mean_std(self) -> Tuple[List[float], List[float], float]:
        """Per-channel mean and std ([0, 1] units) of a sample of training images, and the wall
        seconds per image it took to read them (the decode cost estimate of a kNN check)."""
        positions = _sample(self.num_train, MEAN_STD_SAMPLE)
        start = time.perf_counter()
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        count = 0
        for images, _ in self._eval_batches(self.train, positions):
            x = images.to(torch.float64).div_(255).transpose(0, 1).reshape(self.channels, -1)
            total += x.sum(1)
            squares += x.square().sum(1)
            count += x.shape[1]
        mean = total / count
        var = (squares - count * mean.square()) / max(count - 1, 1)
        # a constant channel (an all-black sample) would divide by zero
        std = var.clamp_min(0).sqrt().clamp_min(1e-3)
        return mean.tolist(), std.tolist(), (time.perf_counter() - start) / len(positions)

    def _decode_all(self, folder: ImageFolder) -> Tuple[Batch, torch.Tensor]:
        """Every image of ``folder`` in order (a bad file's place taken by the next readable one,
        as in a streamed batch) and its label: one tensor when all share a size, else a list."""
        images: List[torch.Tensor] = []
        labels = []
        for batch, y in _iterate(self._loader(folder, batch_size=DECODE_BATCH, collate_fn=collate_images)):
            images += [t.clone() for t in batch]  # own memory, not the batch's shared buffer
            labels.append(y)
        if len({t.shape for t in images}) == 1:
            return torch.stack(images), torch.cat(labels)
        return images, torch.cat(labels)

    def _eval_view(self, images: Batch, positions: Sequence[int]) -> torch.Tensor:
        """uint8 ``[N, C, S, S]``: the decoded images at ``positions`` as evaluation sees them."""
        if isinstance(images, torch.Tensor):
            return eval_transform(images[torch.as_tensor(list(positions))], self.eval_size, self.eval_ratio)
        return torch.stack([eval_transform(images[i], self.eval_size, self.eval_ratio) for i in positions])

    def batches(self, sampler: EpochBatchSampler) -> Iterator[Batch]:
        if self.in_memory:
            return (_select(self._train_images, sampler.indices(step)) for step in itertools.count(sampler.start_step))
        loader = self._loader(self.train, batch_sampler=sampler, collate_fn=collate_images,
                              persistent_workers=self.workers > 0, pin_memory=self.pin_memory)
        return (images for images, _ in _iterate(loader))

    def probe_batch(self, n: int) -> Batch:
        if self.in_memory:
            return _select(self._train_images, torch.as_tensor(_sample(self.num_train, n)))
        try:
            return [self.train[i][0] for i in _sample(self.num_train, n)]
        except ImageDecodeError as e:
            raise strict_error(e) from None

    def features(self, learners: Sequence["BYOL"], max_train: Optional[int] = None,
                 max_test: Optional[int] = None) -> Iterator[Features]:
        if self.eval_set is None:
            train, _ = self._embed(learners, self.train, _sample(self.num_train, HEALTH_SAMPLE))
            return iter([Features(f) for f in train])
        train, train_labels = self._embed(learners, self.train, _sample(self.num_train, max_train))
        test, test_labels = self._embed(learners, self.eval_set, _sample(self.num_eval, max_test))
        return iter([Features(a, train_labels, b, test_labels) for a, b in zip(train, test)])

    def _embed(self, learners: Sequence["BYOL"], folder: ImageFolder,
               positions: List[int]) -> Tuple[List[torch.Tensor], torch.Tensor]:
        if self.in_memory:
            images, labels = ((self._train_images, self._train_labels) if folder is self.train
                              else (self._eval_images, self._eval_labels))
            x = self._eval_view(images, positions)
            embedded = [embed_all(lambda b, l=learner: l.embed(model_input(b, self.mean, self.std, l.config["device"])).cpu(), x)
                        for learner in learners]
            return embedded, labels[torch.as_tensor(positions)]
        features: List[List[torch.Tensor]] = [[] for _ in learners]
        labels = []
        for images, y in self._eval_batches(folder, positions):
            for out, learner in zip(features, learners):
                x = model_input(images, self.mean, self.std, learner.config["device"])
                out.append(learner.embed(x).cpu())
            labels.append(y)
        return [torch.cat(f) for f in features], torch.cat(labels)

    def knn_seconds(self, per_step: float, batch_size: int) -> float:
        images = min(PERIODIC_BANK, self.num_train) + min(PERIODIC_QUERIES, self.num_eval)
        return images * (per_step / batch_size / 4 + self.decode_seconds) + 1.0

    @property
    def skipped(self) -> List[str]:
        return self.train.skipped + (self.eval_set.skipped if self.eval_set is not None else [])

    def describe(self) -> str:
        kind = f"{len(self.classes)} classes" if self.classes else "unlabelled"
        evaluation = f"{self.num_eval} evaluation images ({self.eval_from})" if self.labelled else "no labelled set"
        loading = "decoded into memory" if self.in_memory else f"{self.workers} loader worker{'' if self.workers == 1 else 's'}"
        return (f"{self.root} ({self.num_train} training images, {kind}; {evaluation}; {self.image_size} px views; "
                f"{loading})")

    def report_fields(self) -> Dict[str, Any]:
        n, side = self.eval_size, eval_resize_side(self.eval_size, self.eval_ratio)
        return {"data": {
            "kind": "image folder", "root": self.root, "train_images": self.num_train,
            "classes": self.classes or None, "evaluation_set": self.eval_from or None,
            "evaluation_images": self.num_eval, "image_size": self.image_size, "eval_size": n,
            "in_memory": self.in_memory,
            "eval_transform": f"resize the shorter side to round({n} / {self.eval_ratio}) = {side} px "
                              f"(antialiased bilinear), centre crop {n}x{n} (crop ratio {self.eval_ratio})",
            "recipe": "small images (median side <= 64 px): small-image views, whole images evaluated"
                      if self.small_images else "photos: the paper's views (Augment.byol)",
            "channels": self.channels,
            "normalisation": f"mean and std of {min(MEAN_STD_SAMPLE, self.num_train)} training images "
                             f"(seeded sample, evaluation transform)",
            "mean": self.mean, "std": self.std, "small_image_stem": self.small_image,
            "loader_workers": self.workers,
        }}


def is_image_folder(root: str) -> bool:
    """A folder that is not an IDX folder: ``--data`` is then read as image files."""
    return os.path.isdir(root) and not _is_idx_dir(root)


def open_source(cfg: "TrainConfig", device: str) -> Source:
    """``--data DIR`` as an IDX folder (the four MNIST files) or a folder of images, told apart
    by the IDX file names; without ``--data``, ``cfg.dataset`` (Fashion-MNIST or digits)."""
    folder = cfg.data_dir is not None and is_image_folder(cfg.data_dir)
    if not folder:
        given = [flag for flag, value in (("--val", cfg.val_dir), ("--val-fraction", cfg.val_fraction),
                                          ("--image-size", cfg.image_size)) if value is not None]
        if given:
            what = f"the IDX folder {cfg.data_dir}" if cfg.data_dir is not None else f"--dataset {cfg.dataset}"
            raise DatasetError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for a folder of images "
                               f"(--data DIR), not {what}, which has its own test set and views that follow --view-fraction")
        return InMemorySource(datasets.load(cfg.dataset, cfg.data_dir), cfg)
    return FolderSource(cfg, cfg.workers if cfg.workers is not None else default_workers(), device)


__all__ = ["Source", "InMemorySource", "FolderSource", "EpochBatchSampler", "Features", "EvalImages",
           "eval_transform", "eval_resize_side", "open_source", "is_image_folder", "default_image_size", "default_workers",
           "min_side", "view_size", "model_input", "EVAL_CROP_RATIO"]
