"""`byol_rs.Augment` beside lightly's per-image BYOL views, in one process.

    python benches/bench_augment.py [--repeats 5] [--threads N] [--write]
    python benches/bench_augment.py --quick          # smoke run, a few seconds
    python benches/bench_augment.py --profile [--threads 1]   # where byol_rs's time goes, stage by stage

lightly 1.6.0 (`BYOLView1Transform` / `BYOLView2Transform`) is timed the way a DataLoader
worker runs it: one PIL image at a time through both views, on one core (torch limited to
one thread, as in a worker). byol_rs is timed on the whole uint8 batch `[N, 3, H, W]`, with
torch's default number of threads unless `--threads` says otherwise, and again on one thread.
The sides are timed in alternation, batch by batch, and each figure is the median over the
timed batches. Throughput is in view pairs per second; "per core" divides byol_rs's figure by
`torch.get_num_threads()`. On a machine busy with other work, run it with
`OMP_WAIT_POLICY=PASSIVE`: otherwise libgomp's spinning threads make the multi-thread column
collapse (benches/RESULTS.md, notes).

Settings matched on both sides: crop scale 0.08-1 and ratio 3/4-4/3, flip 0.5, jitter
0.4/0.4/0.2/0.1 with p 0.8, grayscale 0.2, blur sigma 0.1-2, solarize 0 / 0.2. Paper views:
blur p 1.0 / 0.1, ImageNet normalisation. Small-image views (`Augment.small_image`): no blur,
no normalisation. Not matchable: lightly's crop resizes bilinearly (torchvision's default)
where byol_rs uses the paper's bicubic, and lightly blurs with PIL's box-blur approximation
(radius = sigma) where byol_rs uses a true Gaussian with a kernel of 10 % of the size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image

import byol_rs
from common import median_ms, write_section

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")

# (name, output px, input px, preset); each runs at every batch size.
CASES = [
    ("32px paper", 32, 32, "byol"),
    ("32px small_image", 32, 32, "small_image"),
    ("28px paper", 28, 28, "byol"),
    ("28px small_image", 28, 28, "small_image"),
    ("224px paper", 224, 256, "byol"),
]
BATCHES = (256, 64)
CASE_BUDGET_S = 15.0


def photo_batch(n: int, side: int, seed: int = 0) -> np.ndarray:
    """`n` RGB crops of scikit-image photos, resized to `side` x `side`: uint8 [n, side, side, 3]."""
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    rng = np.random.default_rng(seed)
    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = Image.fromarray(img[top : top + s, left : left + s])
        out[i] = np.asarray(crop.resize((side, side), Image.BICUBIC))
    return out


def lightly_views(size: int, preset: str):
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    if preset == "byol":
        return BYOLView1Transform(input_size=size), BYOLView2Transform(input_size=size)
    return (BYOLView1Transform(input_size=size, gaussian_blur=0.0, normalize=None),
            BYOLView2Transform(input_size=size, gaussian_blur=0.0, normalize=None))


def byol_rs_augment(size: int, preset: str) -> byol_rs.Augment:
    return byol_rs.Augment.byol(size) if preset == "byol" else byol_rs.Augment.small_image(size)


def time_sides(pils, views, aug, x, repeats: int, warmup: int, budget_s: float = CASE_BUDGET_S) -> tuple[float, float, float]:
    """Median ms of lightly over `pils`, of `aug(x)` on torch's threads and of `aug(x)` on one
    thread, the three timed in alternation so that load from elsewhere on the machine falls
    on all of them alike. Stops early (after at least 3 timed rounds) once the case has run
    `budget_s` seconds, so that a busy machine cannot stretch the run without bound."""
    v1, v2 = views
    threads = torch.get_num_threads()

    def on_threads(n, fn):
        def run():
            torch.set_num_threads(n)
            try:
                fn()
            finally:
                torch.set_num_threads(threads)
        return run

    def lightly():
        for im in pils:
            v1(im)
            v2(im)

    # A DataLoader worker runs torch on one thread.
    sides = [on_threads(1, lightly), lambda: aug(x)]
    if threads > 1:
        sides.append(on_threads(1, lambda: aug(x)))
    times: list[list[float]] = [[] for _ in sides]
    start = time.perf_counter()
    for i in range(warmup + repeats):
        if i >= warmup + min(3, repeats) and time.perf_counter() - start > budget_s:
            break
        for side, fn in enumerate(sides):
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[side].append(time.perf_counter() - t0)
    ms = [statistics.median(t) * 1e3 for t in times]
    return ms[0], ms[1], ms[-1]


def run_cases(cases, batches, repeats: int, warmup: int) -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    for name, size, side, preset in cases:
        pool = photo_batch(max(batches), side)
        for n in batches:
            arr = pool[:n]
            pils = [Image.fromarray(a) for a in arr]
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW, as PILToTensor + stack gives
            ms_l, ms_r, ms_1 = time_sides(pils, lightly_views(size, preset), byol_rs_augment(size, preset), x, repeats, warmup)
            row = dict(case=f"{name} b{n}", input=f"{side}x{side}", n=n, threads=threads,
                       lightly=n / ms_l * 1e3, byol_rs=n / ms_r * 1e3, one_thread=n / ms_1 * 1e3)
            row["per_core"] = row["byol_rs"] / threads
            row["ratio"] = row["per_core"] / row["lightly"]
            row["ratio_1"] = row["one_thread"] / row["lightly"]
            rows.append(row)
            print(f"  {row['case']:<24} lightly {row['lightly']:7.0f}/s | byol_rs {row['byol_rs']:7.0f}/s on {threads} thr "
                  f"= {row['per_core']:.0f}/s/core, {row['ratio']:.2f}x | on 1 thr {row['one_thread']:.0f}/s, {row['ratio_1']:.2f}x", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    t = rows[0]["threads"]
    lines = [
        f"| case | input | lightly pairs/s (1 core) | byol_rs pairs/s ({t} threads) | per core | per-core ratio "
        f"| byol_rs pairs/s (1 thread) | 1-thread ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['input']} | {r['lightly']:.0f} | {r['byol_rs']:.0f} | {r['per_core']:.0f} | "
                     f"{r['ratio']:.2f}x | {r['one_thread']:.0f} | {r['ratio_1']:.2f}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# --profile: on the CPU, Augment() runs each sample through one fused Rust kernel
# (src/augment/cpu_view.rs), so there are no ATen ops to trace. Each stage's cost is measured
# by adding the stages one at a time to a pipeline that starts as the crop alone.

STAGES = [
    ("resized crop (+ clamp, uint8 read, output)", dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                                                         view2=dict(blur_p=0.0, solarize_p=0.0), mean=None, std=None)),
    ("+ flip", dict(flip_p=0.5)),
    ("+ colour jitter", dict(jitter_p=0.8)),
    ("+ grayscale", dict(grayscale_p=0.2)),
    ("+ blur", dict(blur_p=1.0, view2=dict(blur_p=0.1, solarize_p=0.0))),
    ("+ solarize", dict(view2=dict(blur_p=0.1, solarize_p=0.2))),
    ("+ normalise (the full paper pipeline)", dict(mean=byol_rs.augment.IMAGENET_MEAN, std=byol_rs.augment.IMAGENET_STD)),
]


def profile(threads: int, repeats: int) -> None:
    for name, size, side, n in [("224px paper", 224, 256, 64), ("32px paper", 32, 32, 256)]:
        x = torch.from_numpy(photo_batch(n, side)).permute(0, 3, 1, 2).contiguous()
        print(f"\n## {name}, batch {n}, {threads} threads: median of {repeats} calls, ms per call")
        print("| pipeline | ms per call | added by the stage |\n| --- | ---: | ---: |")
        kwargs: dict = {}
        before = 0.0
        for stage, extra in STAGES:
            kwargs = {**kwargs, **extra}
            aug = byol_rs.Augment(size, seed=0, **kwargs)
            ms = median_ms(lambda: aug(x), repeats)
            print(f"| {stage} | {ms:.1f} | {ms - before:+.1f} |")
            before = ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for byol_rs (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (batch 4, one timed batch, no warm-up); never written")
    parser.add_argument("--profile", action="store_true", help="break byol_rs's time down by stage")
    parser.add_argument("--write", action="store_true", help="record the table in benches/RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.profile:
        profile(threads, args.repeats)
        return
    if args.quick:
        cases, batches, repeats, warmup = [CASES[0], CASES[4]], (4,), 1, 0
    else:
        cases, batches, repeats, warmup = CASES, BATCHES, args.repeats, 1
    load = os.getloadavg()[0]
    omp = os.environ.get("OMP_WAIT_POLICY", "")
    t0 = time.perf_counter()
    rows = run_cases(cases, batches, repeats, warmup)
    cmd = (f"OMP_WAIT_POLICY={omp} " if omp else "") + "python benches/bench_augment.py" + (" --quick" if args.quick else "") + \
          (f" --repeats {args.repeats}" if args.repeats != 5 and not args.quick else "") + \
          (f" --threads {args.threads}" if args.threads else "") + (" --write" if args.write and not args.quick else "")
    text = "\n".join([
        f"Command: `{cmd}` (CPU, byol_rs on {threads} torch threads, lightly on 1; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}). Median of up to {repeats} timed batches after {warmup} warm-up "
        f"(fewer once a case has run {CASE_BUDGET_S:.0f} s), "
        f"in view pairs per second; inputs are crops of scikit-image photos, uint8. Per-core ratio = "
        f"(byol_rs pairs/s / {threads}) / lightly pairs/s; 1-thread ratio = byol_rs on one torch thread / lightly. Load average at start: {load:.2f} on {os.cpu_count()} CPUs.",
        "",
        table(rows),
    ])
    print()
    print(text)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.write and not args.quick:
        write_section("augment", "## Augmentations: byol_rs.Augment vs lightly's per-image views (issue 4)\n\n" + text)


if __name__ == "__main__":
    main()
