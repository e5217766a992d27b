"""Fashion-MNIST's IDX files as a folder of PNGs that `byol_rs.data.ImageFolder` reads.

    python benches/fashion_mnist_png.py OUT_DIR [--idx /usr/share/datasets/fashion-mnist]
                                        [--processes 2] [--verify 0|N|all] [--force]

writes OUT_DIR/train/<class>/<i>.png (60,000) and OUT_DIR/test/<class>/<i>.png (10,000): 8-bit
grayscale 28x28 PNGs (PIL), `<i>` the image's index in its IDX split, zero-padded to 5 digits so
that a class folder's sorted file order is the IDX order. The class folders are named
"<label>_<name>" ("0_tshirt", ..., "9_ankle_boot"), so that their sorted order, which is
ImageFolder's (and torchvision's) label order, is the IDX label order.

Then it reads the folders back with `ImageFolder(split, channels=1)` and checks, for every
image (`--verify all`, the default) or N random ones per split, that pixels and labels equal
the IDX files' exactly, and that the class names and per-class counts match. A split that
already holds the expected number of PNGs is not rewritten (only verified) unless --force.

For `byol-rs train --data OUT_DIR/train --val OUT_DIR/test`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import sys
import time

import numpy as np
import torch

CLASSES = ("0_tshirt", "1_trouser", "2_pullover", "3_dress", "4_coat",
           "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot")
IDX_DIR = "/usr/share/datasets/fashion-mnist"


def png_path(split_dir: pathlib.Path, index: int, label: int) -> pathlib.Path:
    return split_dir / CLASSES[label] / f"{index:05d}.png"


def _write_chunk(job) -> int:
    from PIL import Image

    split_dir, start, images, labels = job
    for k, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img, mode="L").save(png_path(pathlib.Path(split_dir), start + k, int(label)), optimize=False)
    return len(images)


def write_split(split_dir: pathlib.Path, images: torch.Tensor, labels: torch.Tensor, processes: int) -> float:
    """Writes one split; seconds taken."""
    t0 = time.perf_counter()
    for name in CLASSES:
        (split_dir / name).mkdir(parents=True, exist_ok=True)
    arr = images[:, 0].numpy()  # uint8 [N, 28, 28]
    lab = labels.numpy()
    step = 2000
    jobs = [(str(split_dir), s, arr[s:s + step], lab[s:s + step]) for s in range(0, len(arr), step)]
    if processes > 1:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            done = sum(pool.imap_unordered(_write_chunk, jobs))
    else:
        done = sum(map(_write_chunk, jobs))
    assert done == len(arr)
    return time.perf_counter() - t0


def count_pngs(split_dir: pathlib.Path) -> int:
    return sum(1 for _ in split_dir.glob("*/*.png")) if split_dir.is_dir() else 0


def verify_split(split_dir: pathlib.Path, images: torch.Tensor, labels: torch.Tensor, n: int | None, seed: int = 0) -> int:
    """Reads `split_dir` with ImageFolder(channels=1) and compares with the IDX tensors: every
    image when `n` is None, else `n` random ones. Returns how many were compared; raises
    AssertionError on any mismatch."""
    from byol_rs.data import ImageFolder

    ds = ImageFolder(split_dir, channels=1, strict=True)
    assert ds.classes == list(CLASSES), f"classes {ds.classes} != {list(CLASSES)}"
    assert len(ds) == len(images), f"{len(ds)} PNGs, expected {len(images)}"
    counts = torch.bincount(torch.tensor(ds.targets), minlength=len(CLASSES))
    assert torch.equal(counts, torch.bincount(labels, minlength=len(CLASSES))), f"per-class counts {counts.tolist()}"
    positions = range(len(ds)) if n is None else np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False).tolist()
    for j in positions:
        path, label = ds.samples[j]
        index = int(pathlib.Path(path).stem)
        img, got_label = ds[j]
        assert got_label == label == int(labels[index]), f"{path}: label {got_label}, IDX says {int(labels[index])}"
        assert img.dtype == torch.uint8 and img.shape == (1, 28, 28), f"{path}: {img.dtype} {tuple(img.shape)}"
        assert torch.equal(img, images[index]), f"{path}: pixels differ from IDX image {index}"
    assert ds.num_skipped == 0
    return len(positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--idx", default=IDX_DIR, help=f"folder with the four IDX files (default {IDX_DIR})")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--verify", default="all", help="'all' (default), a number of random images per split, or 0")
    parser.add_argument("--force", action="store_true", help="rewrite splits that look complete")
    args = parser.parse_args()
    verify = None if args.verify == "all" else int(args.verify)

    from byol_rs.data import load_idx_dir

    data = load_idx_dir(args.idx)
    assert data.train_images.shape[1:] == (1, 28, 28), data.train_images.shape
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        split_dir = args.out_dir / split
        have = count_pngs(split_dir)
        if have == len(images) and not args.force:
            print(f"{split_dir}: {have} PNGs already there, not rewritten", flush=True)
        else:
            if have:
                print(f"{split_dir}: {have} PNGs there, (re)writing all {len(images)}", flush=True)
            s = write_split(split_dir, images, labels, args.processes)
            print(f"{split_dir}: wrote {len(images)} PNGs in {s:.1f} s ({args.processes} processes)", flush=True)
        if verify != 0:
            t0 = time.perf_counter()
            checked = verify_split(split_dir, images, labels, verify)
            print(f"{split_dir}: verified {checked} images with ImageFolder(channels=1): pixels and labels equal the IDX "
                  f"files' ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
