"""A picture of BYOL's two views: three scikit-image photos, each with four view-1 and four
view-2 samples from `byol_rs.Augment.byol` (un-normalised so that they display).

    python examples/augment_grid.py [--out docs/augment_grid.png] [--size 160] [--seed 0]

View 1 is always blurred and never solarized; view 2 is rarely blurred (p 0.1) and sometimes
solarized (p 0.2). Both crop, flip, jitter colour and turn grey at the paper's rates.
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import byol_rs  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")
PER_VIEW = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/augment_grid.png", help="PNG to write")
    parser.add_argument("--size", type=int, default=160, help="side of the views in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    aug = byol_rs.Augment.byol(size=args.size, mean=None, std=None, seed=args.seed)
    cols = 1 + 2 * PER_VIEW
    fig, axes = plt.subplots(len(PHOTOS), cols, figsize=(1.6 * cols, 1.75 * len(PHOTOS)), squeeze=False)
    for row, name in enumerate(PHOTOS):
        photo = getattr(skimage.data, name)()  # uint8 [H, W, 3]
        # The same photo PER_VIEW times: each copy gets its own crop, flip, jitter, ... per view.
        batch = torch.from_numpy(photo).unsqueeze(0).expand(PER_VIEW, -1, -1, -1).contiguous()  # NHWC uint8
        v1, v2 = aug(batch)
        side = args.size
        h, w = photo.shape[:2]
        original = Image.fromarray(photo).resize((round(w * side / max(h, w)), round(h * side / max(h, w))), Image.BICUBIC)
        tiles = [np.asarray(original)]
        tiles += [v.permute(1, 2, 0).clamp(0, 1).numpy() for v in (*v1, *v2)]
        for col, (ax, tile) in enumerate(zip(axes[row], tiles)):
            ax.imshow(tile)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if col == 0 else f"view {1 if col <= PER_VIEW else 2}, #{(col - 1) % PER_VIEW + 1}", fontsize=9)
        axes[row][0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"byol_rs.Augment.byol(size={args.size}): view 1 (blur p 1.0) and view 2 (blur p 0.1, solarize p 0.2)", fontsize=10)
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
