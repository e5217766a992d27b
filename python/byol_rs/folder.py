"""A folder of image files (JPEG, PNG, WebP) as a ``torch.utils.data.Dataset``.

Items are uint8 ``[C, H, W]`` tensors at each file's own size (optionally capped by
``max_side``, or JPEGs reduced towards ``draft_side``), so a batch is ragged:
:func:`collate_images` keeps it as a list. An item is a view of the memory its decoder
wrote, usually interleaved ``[H, W, C]``, so it need not be contiguous (``.contiguous()``
makes a planar copy); byol-rs reads either order.

Decoding is torchvision.io's (libjpeg-turbo, libpng, libwebp); PIL is used only where
torchvision raises, and for JPEG reduced-size (DCT-scaled) decoding under ``max_side`` and
``draft_side``. torchvision is needed at run time (``pip install torchvision``); it brings PIL with it.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .data import DatasetError
from .errors import ByolTypeError, ByolValueError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
EXIF_ORIENTATION = 0x0112  # the EXIF tag


class ImageSkippedWarning(UserWarning):
    """A file could not be read or decoded; another sample was returned in its place."""


class ImageDecodeError(DatasetError):
    """``strict=True``: a file could not be read or decoded. The message names the file."""


class NoReadableImageError(DatasetError):
    """Not one file of the dataset could be read or decoded."""


class _Unreadable(Exception):
    """Internal: the file cannot be read or decoded; the message says why."""


def scaled_size(height: int, width: int, max_side: Optional[int]) -> Tuple[int, int]:
    """``(height, width)`` with the longer side capped at ``max_side``, aspect kept: the longer
    side becomes ``max_side`` and the shorter ``round(shorter * max_side / longer)`` (half up,
    at least 1). Images that fit are left at their size."""
    longer = max(height, width)
    if max_side is None or longer <= max_side:
        return height, width
    short = lambda s: max(1, (2 * s * max_side + longer) // (2 * longer))  # noqa: E731
    return (max_side, short(width)) if height >= width else (short(height), max_side)


def reduced_scale(height: int, width: int, draft_side: Optional[int]) -> int:
    """The JPEG DCT scale denominator (8, 4, 2, or 1 for none) that ``draft_side`` allows: the
    largest whose reduced image keeps its shorter side at ``draft_side`` or more."""
    if draft_side is not None:
        for k in (8, 4, 2):
            if min(height, width) // k >= draft_side:
                return k
    return 1


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma in fixed point, bit-identical to PIL's ``convert("L")``."""
    x = rgb.to(torch.int32)
    y = (x[0] * 19595 + x[1] * 38470 + x[2] * 7471 + 32768) >> 16
    return y.to(torch.uint8).unsqueeze(0)


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    """16-bit samples to 8 bits as round(v / 257) (PIL's own I;16 -> L clips at 255 instead)."""
    if t.dtype == torch.uint8:
        return t
    return ((t.to(torch.int32).clamp_(0, 65535) * 2 + 257) // 514).to(torch.uint8)


def _orientation(im: Any) -> int:
    """The EXIF orientation (1-8) of an open PIL image; 1 where there is none or it is bad."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """``[C, H, W]`` turned upright for its EXIF orientation, as PIL's ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return img.rot90(-1, (-2, -1))
    if orientation == 7:
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return img.rot90(1, (-2, -1))
    return img


def _pil_decode(data: bytes, draft: Optional[Tuple[int, int]]) -> Tuple[torch.Tensor, Optional[Tuple[float, float]], int]:
    """PIL's decode to uint8 [1 or 3, H, W] as stored, its region and its EXIF orientation. With
    ``draft`` (height, width), a JPEG is DCT-scaled (draft mode) to the largest 1/2, 1/4 or
    1/8 scale still at least that size, and the region is the (height, width) the file's pixels
    span in the reduced image: fractional where the last block row or column is partial."""
    import numpy as np
    from PIL import Image

    region = None
    with Image.open(io.BytesIO(data)) as im:
        if draft is not None and im.format == "JPEG":
            drafted = im.draft("RGB", (draft[1], draft[0]))
            region = (drafted[1][3], drafted[1][2]) if drafted else None
        im.load()
        orientation = _orientation(im)
        if im.mode.startswith("I"):  # 16/32-bit grey: I;16, I;16B, I
            return _to_uint8(torch.from_numpy(np.array(im, dtype=np.int32))).unsqueeze(0), region, orientation
        a = np.array(im.convert("L" if im.mode in ("1", "L", "LA", "F") else "RGB"))
    t = torch.from_numpy(a)
    return (t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)), region, orientation


def _webp_orientation(data: bytearray) -> int:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _orientation(im)
    except Exception:  # noqa: BLE001 - torchvision decoded it: the pixels stand as they are
        return 1


def _resize(img: torch.Tensor, size: Tuple[int, int], region: Optional[Tuple[float, float]]) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 ``img`` to ``size``, as torchvision's. With
    ``region``, the top-left ``region`` (fractional height, width) of ``img`` maps onto the
    output, not all of it: a DCT-scaled JPEG's partial last block row and column hold less
    than a full pixel of the file, and stretching them over a whole one would shift the edge
    by up to one output pixel."""
    from torch.nn.functional import interpolate
    from torchvision.transforms.v2.functional import resize

    if region is None or tuple(region) == tuple(img.shape[1:]):
        return resize(img, list(size), antialias=True)
    # scale factors that map the output onto region; (1 + 1e-9) keeps floor(in * scale) at
    # size where region is whole (in * scale is then size, up to rounding), and it stays
    # below size + 1 where it is partial (in < region + 1, scale <= 1/2 since DCT scaling
    # applied); the shift in pixel positions is 1e-9 of a pixel.
    scale = [n / r * (1 + 1e-9) for n, r in zip(size, region)]
    native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")  # as torchvision
    x = img.unsqueeze(0) if native else img.unsqueeze(0).float()
    out = interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=True,
                      recompute_scale_factor=False)[0]
    if tuple(out.shape[1:]) != tuple(size):  # not expected (see above); never fail on it
        return resize(img, list(size), antialias=True)
    return out if native else out.round_().clamp_(0, 255).to(torch.uint8)


def _decode(path: str, channels: int, max_side: Optional[int], draft_side: Optional[int] = None,
            exif_orientation: bool = True) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    except OSError as e:
        raise _Unreadable(f"cannot read it ({e.strerror or e})") from None
    if not data:
        raise _Unreadable("the file is empty (0 bytes)")
    img = target = region = None
    turn = 1  # the EXIF orientation still to apply: PIL's routes and WebP (torchvision's JPEG and PNG apply it)
    # Decode route for JPEGs under max_side. Measured on one core (torch.set_num_threads(1))
    # with max_side=256, ms per image, min of 15-40 runs, same run, shared 2-core machine:
    #                 torchvision full decode + resize   this code: PIL draft (DCT scaling) + resize
    #   427x640       0.91-0.92                           0.81-0.86  (DCT 1/2)
    #   1500x2000     8.5-9.0                             6.3-6.5    (DCT 1/4)
    #   2000x2000     8.5-8.7                             4.9-5.0    (DCT 1/4)
    # (two earlier runs, heavier load: 0.93-1.19 / 0.80-1.22, 9.0-11.2 / 6.1-8.3, 8.7-11.1 /
    # 4.8-7.6). So a JPEG that DCT scaling can shrink is drafted, at the largest 1/2..1/8
    # scale still >= the target; drafting to 2x the target, as PIL's thumbnail does, cost
    # 7.4-7.5 ms at both 2000-px sizes: slower. A JPEG it cannot shrink (target above half
    # size), and every full-size decode, goes through torchvision, whose full decode beats
    # PIL's (0.64-0.77 against 1.16-1.44 ms at 427x640; 7.0-8.8 against 17-31 at 1500x2000).
    # DCT scaling is about a box filter: against PIL's bilinear resize of the full decode,
    # max/mean abs diff 67/3.4 levels, as PIL's BOX resize (77/3.3) differs from it.
    # Under draft_side nothing is resized: the reduced decode is the item (its shorter side
    # draft_side to 2 x draft_side - 1). 4032x3024 photos at quality 92, ms per image on one
    # core: torchvision's full decode 50, PIL's draft to 1/2 35, 1/4 20, 1/8 16 (the entropy
    # decoding of the whole file stays; the inverse DCT, colour conversion and memory shrink).
    if (max_side is not None or draft_side is not None) and data[:3] == b"\xff\xd8\xff":
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if max_side is not None:
                    h, w = scaled_size(im.height, im.width, max_side)
                    shrinks = min(im.width // w, im.height // h) >= 2
                    draft = (h, w)
                else:
                    k = reduced_scale(im.height, im.width, draft_side)
                    shrinks, draft = k > 1, (im.height // k, im.width // k)
            if shrinks:  # sizes as stored; the orientation is applied last
                img, region, turn = _pil_decode(data, draft)
                target = draft if max_side is not None else None
        except Exception:  # noqa: BLE001 - leave the verdict to the full decode below
            img = target = region = None
            turn = 1
    if img is None:
        try:
            img = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB,
                               apply_exif_orientation=exif_orientation)
            img = img[0] if img.dim() == 4 else img  # an animated GIF: its first frame
            img = _to_uint8(img)
            if exif_orientation and data[8:12] == b"WEBP":  # torchvision leaves WebP's EXIF alone
                turn = _webp_orientation(data)
        except Exception as e:  # noqa: BLE001 - any decoder failure means: try PIL
            try:
                img, _, turn = _pil_decode(bytes(data), None)
            except Exception as e2:  # noqa: BLE001 - a decoder may raise anything on bad bytes
                raise _Unreadable(f"not a readable image (torchvision: {_one_line(e)}; "
                                  f"PIL: {_one_line(e2)})") from None
    if img.shape[0] == 4:
        img = img[:3]
    if channels == 1 and img.shape[0] == 3:
        img = _luma(img)
    h, w = target or scaled_size(img.shape[1], img.shape[2], max_side)  # from the full size
    if (h, w) != tuple(img.shape[1:]):
        img = _resize(img, (h, w), region)
    if exif_orientation:
        img = _orient(img, turn)
    if channels == 3 and img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    # The decoders write [H, W, C] memory and hand out a [C, H, W] view of it. It is kept: a
    # copy to planar memory cost 0.45 ms of a 0.87 ms decode at 300-640 px (2.5 of 10 ms at
    # 2000x1500), and the augmentation kernel reads either order to the same bits.
    return img


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_extensions(extensions: Any) -> Tuple[str, ...]:
    items = (extensions,) if isinstance(extensions, str) else tuple(extensions)
    if not items or not all(isinstance(e, str) and e.strip(".") for e in items):
        raise ByolValueError(f"extensions: expected file endings such as '.jpg', got {extensions!r}")
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in items)


class ImageFolder(torch.utils.data.Dataset):
    """Image files under ``root``, labelled by class subfolder as ``torchvision.datasets.ImageFolder``.

    - **Layout.** ``root/<class>/**/<file>``: the sorted names of ``root``'s subfolders are
      the classes (``classes``, ``class_to_idx``), each scanned recursively. ``root/<file>``
      with no subfolder holding images: unlabelled, every label is ``-1`` and ``classes == []``.
      Images directly in ``root`` *and* in subfolders is ambiguous and raises
      :class:`~byol_rs.data.DatasetError`, as do a missing root, a folder with no images and
      a class folder with no images. ``samples`` lists ``(path, label)`` in
      torchvision's order (class, then sorted path); ``targets`` the labels.
    - **Files.** Extensions match case-insensitively. Decoding is torchvision.io's, PIL's
      where torchvision raises. Grey, grey+alpha, RGB, RGBA, palette, CMYK and 16-bit files
      become ``channels`` (1 or 3) channels: alpha is dropped (not composited), 16-bit
      samples are rounded to ``v / 257``, colour to grey is ITU-R 601 luma as PIL's ``"L"``.
      With ``exif_orientation`` (the default) a file's EXIF orientation is applied, as photo
      viewers do, so a phone's portrait photo stored sideways is upright; torchvision's and
      lightly's ImageFolder loaders ignore it (``exif_orientation=False``).
    - **Items** are ``(image, label)``: ``image`` uint8 ``[channels, H, W]``, contiguous, at
      the file's size, or with the longer side scaled down to ``max_side`` if it exceeds it
      (:func:`scaled_size`; JPEGs decoded at reduced DCT scale where that helps, then an
      antialiased bilinear resize to the exact size). With ``draft_side`` instead, a JPEG
      whose shorter side is at least twice ``draft_side`` decodes at the smallest DCT scale
      (1/2, 1/4, 1/8) that keeps its shorter side at ``draft_side`` or more, and is not
      resized (:func:`reduced_scale`); other files decode whole. That is for consumers
      that resample anyway, such as the views' crops: ``byol-rs train`` sets it so that the
      smallest crop still spans the view's size in pixels.
    - **Bad files** (unreadable, empty, truncated, corrupt, not an image): with
      ``strict=False`` each is skipped with an :class:`ImageSkippedWarning` naming it, and the
      next readable sample (index + 1, + 2, ..., wrapping) is returned in its place, so a
      DataLoader worker never dies of one; :class:`NoReadableImageError` if no file at all is
      readable. ``strict=True`` raises :class:`ImageDecodeError` naming the file instead.
      A file found bad is remembered and later passed over without a new attempt or warning.
    - **Counting skips across processes.** The record of bad files is a tensor in shared
      memory, made when the dataset is built; DataLoader workers (fork or spawn) write to the
      same memory, so ``skipped`` / ``num_skipped`` read in the main process count the files
      that any worker skipped, once each, however many epochs met them (each process that
      builds its own dataset, such as a torchrun rank, has its own record). Items carry no
      marker: a substituted sample is an ordinary one (it appears twice that epoch).
      ``load(i)`` decodes ``samples[i]`` with no skipping.
    """

    def __init__(self, root: "str | os.PathLike[str]", *, channels: int = 3,
                 max_side: Optional[int] = None, draft_side: Optional[int] = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, strict: bool = False,
                 exif_orientation: bool = True) -> None:
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ByolValueError(f"channels: expected 1 or 3, got {channels!r}")
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
            raise ByolValueError(f"max_side: expected None or an int >= 1, got {max_side!r}")
        if draft_side is not None and (isinstance(draft_side, bool) or not isinstance(draft_side, int) or draft_side < 1):
            raise ByolValueError(f"draft_side: expected None or an int >= 1, got {draft_side!r}")
        if not isinstance(exif_orientation, bool):
            raise ByolTypeError(f"exif_orientation: expected True or False, got {exif_orientation!r}")
        if max_side is not None and draft_side is not None:
            raise ByolValueError(f"max_side={max_side}, draft_side={draft_side}: give at most one of them")
        try:
            import torchvision.io  # noqa: F401
        except ImportError:
            raise DatasetError("ImageFolder decodes with torchvision.io: pip install torchvision") from None
        self.root = os.path.expanduser(os.fspath(root))
        self.channels, self.max_side, self.draft_side, self.strict = channels, max_side, draft_side, bool(strict)
        self.exif_orientation = exif_orientation
        self.extensions = _check_extensions(extensions)
        self.classes, self.class_to_idx, self.samples = self._scan()
        self.targets = [label for _, label in self.samples]
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool)
        try:
            self._bad.share_memory_()
        except RuntimeError:  # no shared memory here: skips are then counted per process
            pass

    def _is_image(self, name: str) -> bool:
        return name.lower().endswith(self.extensions)

    def _walk(self, folder: str) -> List[str]:
        # torchvision's make_dataset order: sorted os.walk (following links), sorted names
        return [os.path.join(d, name) for d, _, names in sorted(os.walk(folder, followlinks=True))
                for name in sorted(names) if self._is_image(name)]

    def _scan(self) -> Tuple[List[str], dict, List[Tuple[str, int]]]:
        root, exts = self.root, ", ".join(self.extensions)
        if not os.path.exists(root):
            raise DatasetError(f"{root} does not exist")
        if not os.path.isdir(root):
            raise DatasetError(f"{root} is not a folder")
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
        classes = [e.name for e in entries if e.is_dir()]
        loose = [e.name for e in entries if not e.is_dir() and self._is_image(e.name)]
        per_class = {c: self._walk(os.path.join(root, c)) for c in classes}
        if loose:
            labelled = [c for c in classes if per_class[c]]
            if labelled:
                raise DatasetError(
                    f"{root} holds images both directly ({len(loose)}, e.g. {loose[0]}) and in "
                    f"subfolders ({', '.join(labelled[:3])}{', ...' if len(labelled) > 3 else ''}); "
                    f"put every image in a class subfolder (labelled) or none in one (unlabelled)")
            return [], {}, [(os.path.join(root, name), -1) for name in loose]
        if not any(per_class.values()):
            raise DatasetError(f"{root} holds no image files ({exts}), directly or in subfolders{_other_files(root)}")
        empty = [c for c in classes if not per_class[c]]
        if empty:
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise DatasetError(f"class folder {os.path.join(root, empty[0])} holds no image files "
                               f"({exts}){more}{_other_files(os.path.join(root, empty[0]))}; add images or remove it "
                               f"(every subfolder of {root} is a class)")
        class_to_idx = {c: i for i, c in enumerate(classes)}
        return classes, class_to_idx, [(p, class_to_idx[c]) for c in classes for p in per_class[c]]

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int]) -> "ImageFolder":
        """The folder restricted to ``samples[i] for i in indices``, in that order, with the same
        classes and settings. A bad file is replaced by the next readable one *of the subset*
        (``torch.utils.data.Subset`` would reach outside it: from a training split into the
        held-out one), and the subset keeps its own record of skipped files."""
        part = copy.copy(self)
        part.samples = [self.samples[int(i)] for i in indices]
        part.targets = [label for _, label in part.samples]
        part._bad = torch.zeros(len(part.samples), dtype=torch.bool)
        try:
            part._bad.share_memory_()
        except RuntimeError:  # as in __init__
            pass
        return part

    def load(self, index: int) -> torch.Tensor:
        """The image of ``samples[index]``, with no skipping; :class:`ImageDecodeError` if bad."""
        path = self.samples[index][0]
        try:
            return _decode(path, self.channels, self.max_side, self.draft_side, self.exif_orientation)
        except _Unreadable as e:
            raise ImageDecodeError(f"{path}: {e}") from None

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        n = len(self.samples)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for k in range(n):
            j = (index + k) % n
            if self._bad[j]:
                continue
            path, label = self.samples[j]
            try:
                return _decode(path, self.channels, self.max_side, self.draft_side, self.exif_orientation), label
            except _Unreadable as e:
                if self.strict:
                    raise ImageDecodeError(f"{path}: {e}") from None
                self._bad[j] = True
                warnings.warn(f"skipped {path}: {e}", ImageSkippedWarning, stacklevel=2)
        raise NoReadableImageError(f"{self.root}: none of its {n} image files could be read or decoded")

    @property
    def skipped(self) -> List[str]:
        """The paths skipped so far as unreadable, in this process or any DataLoader worker."""
        return [self.samples[i][0] for i in self._bad.nonzero().flatten().tolist()]

    @property
    def num_skipped(self) -> int:
        return int(self._bad.sum())

    def __repr__(self) -> str:
        kind = f"{len(self.classes)} classes" if self.classes else "unlabelled"
        return (f"ImageFolder({self.root!r}, {len(self)} images, {kind}, channels={self.channels}, "
                f"max_side={self.max_side}, draft_side={self.draft_side}, strict={self.strict})")


def _other_files(folder: str) -> str:
    """What a folder without readable extensions holds instead, for its error: iPhone photos
    (.heic), say, or TIFF scans (``extensions=`` can name endings that PIL reads)."""
    counts: Dict[str, int] = {}
    for _, _, names in os.walk(folder, followlinks=True):
        for name in names:
            ext = os.path.splitext(name)[1].lower() or "(no extension)"
            counts[ext] = counts.get(ext, 0) + 1
    if not counts:
        return ""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ", ".join(f"{n} {ext}" for ext, n in top[:3]) + (", ..." if len(top) > 3 else "")
    return f" (it holds {listed} files instead; convert them to JPEG, PNG or WebP)"


def collate_images(batch: Sequence[Tuple[torch.Tensor, int]]) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """``DataLoader(collate_fn=collate_images)``: ``(images, labels)``, with ``images`` a list
    of the samples' ``[C, H, W]`` tensors, sizes and values as they are, and ``labels`` int64.

    In the main process the list holds the samples' own tensors. In a DataLoader worker it
    holds views of one shared-memory buffer instead, each image in the memory order its decoder
    wrote (HWC for torchvision's, so such a ``[C, H, W]`` view is not contiguous): each separate tensor would
    travel to the main process on a file descriptor of its own, and a batch of hundreds of
    them exhausts a low open-file limit (measured: 16-22 px images, ``ulimit -n 128``, two
    workers: separate tensors fail at batch 32 with "received 0 items of ancdata"; packed,
    batch 128 runs). The views keep the whole batch's buffer alive while any is."""
    images, labels = [], []
    for i, item in enumerate(batch):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ByolTypeError(f"batch[{i}]: expected (image, label), got {type(item).__name__}")
        image, label = item
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            what = f"shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ByolTypeError(f"batch[{i}]: expected a [C, H, W] image tensor, got {what}")
        images.append(image)
        labels.append(int(label))
    labels_t = torch.tensor(labels, dtype=torch.int64)
    if (torch.utils.data.get_worker_info() is None or not images
            or any(t.device.type != "cpu" or t.dtype != images[0].dtype for t in images)):
        return images, labels_t
    # Each image is copied in its own memory order: torchvision's decoders write HWC and hand
    # out a CHW view of it, whose transposing copy cost 0.45 ms of a 0.87 ms decode (measured,
    # 300-640 px JPEGs). The kernel reads either order through the strides, to the same bits.
    stored = [_memory_order(t) for t in images]
    sizes = [t.numel() for t, _ in stored]
    # as default_collate does in a worker: write straight into shared memory
    flat = images[0].new(images[0]._typed_storage()._new_shared(sum(sizes), device="cpu")).resize_(sum(sizes))
    torch.cat([t.reshape(-1) for t, _ in stored], out=flat)
    return [v.view(t.shape).permute(*order) for v, (t, order) in zip(flat.split(sizes), stored)], labels_t


def _memory_order(image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """``image`` as a contiguous tensor without copying where its memory allows (CHW, or HWC
    seen as CHW), and the permutation that turns it back into ``[C, H, W]``."""
    hwc = image.permute(1, 2, 0)
    if not image.is_contiguous() and hwc.is_contiguous():
        return hwc, (2, 0, 1)
    return image.contiguous(), (0, 1, 2)


__all__ = ["ImageFolder", "ImageSkippedWarning", "ImageDecodeError", "NoReadableImageError",
           "collate_images", "scaled_size", "reduced_scale", "IMAGE_EXTENSIONS"]
