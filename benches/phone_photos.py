"""A flat folder of phone-size photos, as `byol-rs train --data ~/photos` meets them.

    python benches/phone_photos.py OUT_DIR [--count 120] [--seed 0]

writes OUT_DIR/IMG_<i>.JPG (quality 92) and, every tenth, OUT_DIR/IMG_<i>.png at a third of the
size: random crops (60-100 % of each side) of scikit-image's colour photos, upscaled (bicubic)
to a phone camera's 4032x3024, one in three in portrait (3024x4032). No EXIF. About 1 MB a JPEG.

For the phone-photo runs in benches/RESULTS.md:
    byol-rs train --data OUT_DIR --minutes 2 --out /tmp/run_photos --force
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "cat")


def write(out: pathlib.Path, count: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    for i in range(count):
        im = sources[i % len(sources)]
        size = (4032, 3024) if i % 3 else (3024, 4032)
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        photo = im.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC)
        if i % 10:
            photo.save(out / f"IMG_{i:04d}.JPG", quality=92)
        else:
            photo.resize((size[0] // 3, size[1] // 3)).save(out / f"IMG_{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, args.count, args.seed)


if __name__ == "__main__":
    main()
