"""Loader throughput: a folder of JPEGs to BYOL view pairs, byol_rs against lightly, in one process.

    python benches/bench_data.py [--workers 1] [--batch-size 64] [--batches 10] [--repeats 5]
                                 [--images 2000] [--folder DIR] [--main-threads 1] [--write]
    python benches/bench_data.py --quick          # smoke run, small fixture, one timed round

The fixture (built at run time in a temporary folder, or in --folder, which is reused when it
already holds images) is --images JPEGs cut from scikit-image's colour photos, each side drawn
in 300-640 px, saved by PIL at quality 90, one class subfolder per source photo.

- **byol_rs**: `DataLoader(byol_rs.data.ImageFolder(root), batch_size=B, shuffle=True,
  num_workers=W, collate_fn=collate_images)`: the workers decode (torchvision.io) and send
  each batch as a ragged list of uint8 `[3, H, W]` tensors at the files' sizes; the main
  process then makes both views with `byol_rs.Augment.byol(224)(images)`, each sample's random
  resized crop cut from its own full-resolution image (float32, ImageNet-normalised).
- **lightly** 1.6: `torchvision.datasets.ImageFolder(root, transform=BYOLTransform())` (PIL
  decode, then lightly's default BYOL view 1 / view 2 transforms at 224 px, which are the
  paper's) in a `DataLoader` with the same batch size and shuffle, `--lightly-workers` workers
  (default: W). The views are made in the workers; the main process only receives them.

Each round times each side once, in alternation: a fresh epoch (`drop_last`), `--warmup`
untimed batches while the workers start and fill their prefetch queues, then --batches timed
ones; then that side's workers are shut down, so that none of its work overlaps the other
side's timing. Figures are medians (and ranges) over the rounds, in view pairs per second.

Per-core accounting: byol_rs uses W worker processes (one torch thread each, as DataLoader
sets) plus the main process, where the views are computed on --main-threads torch threads,
so its cores are W + main threads; lightly's are its workers only (its main process does no
transform work). Either count is capped at the machine's CPU count. Since a pipeline's stages
rarely balance (a worker that decodes faster than the main process makes views waits), the
bench also reports pairs per CPU-second: pairs over the CPU time (user + system, from /proc)
that the main process and the side's workers actually spent in the timed batches.

After the loaders, unless --no-profile, a one-thread breakdown in the main process: per image,
decode (byol_rs: ImageFolder.load, torchvision.io; lightly: torchvision's PIL loader) and the
two views (byol_rs: Augment on a ragged batch; lightly: BYOLTransform on each PIL image).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import byol_rs
from byol_rs.data import ImageFolder, collate_images
from common import write_section

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
SIDE_RANGE = (300, 640)
SIZE = 224


# ---------------------------------------------------------------------------------------
# fixture

def build_fixture(root: pathlib.Path, n: int, seed: int = 0, quality: int = 90) -> pathlib.Path:
    """`n` JPEGs under `root/<photo>/<i>.jpg`: random crops of scikit-image's colour photos
    resized (bicubic) to a height and a width each drawn in SIDE_RANGE."""
    import skimage.data

    photos = {name: getattr(skimage.data, name)() for name in PHOTOS}
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        img = photos[name]
        h_out, w_out = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
        sh, sw = img.shape[:2]
        # the largest crop of the source with the output's aspect, then 60-100 % of it
        k = min(sh / h_out, sw / w_out) * float(rng.uniform(0.6, 1.0))
        ch, cw = max(1, int(h_out * k)), max(1, int(w_out * k))
        top, left = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
        crop = Image.fromarray(img[top:top + ch, left:left + cw])
        crop.resize((w_out, h_out), Image.BICUBIC).save(root / name / f"{i:05d}.jpg", quality=quality)
    return root


def fixture(folder: str | None, n: int) -> tuple[pathlib.Path, bool, float]:
    """(root, built now, seconds to build). A --folder that holds images is used as it is."""
    if folder:
        root = pathlib.Path(folder)
        if root.is_dir() and any(root.rglob("*.jpg")):
            return root, False, 0.0
    else:
        root = pathlib.Path(tempfile.mkdtemp(prefix="bench_data_"))
    t0 = time.perf_counter()
    build_fixture(root, n)
    return root, True, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# the two loaders

def byol_rs_side(root, batch: int, workers: int, main_threads: int, seed: int = 0):
    dataset = ImageFolder(root)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         collate_fn=collate_images, drop_last=True)
    aug = byol_rs.Augment.byol(SIZE, seed=seed)

    def consume(batch) -> int:
        images, _ = batch
        threads = torch.get_num_threads()
        torch.set_num_threads(main_threads)
        t0 = time.perf_counter()
        try:
            v1, v2 = aug(images)
        finally:
            consume.views_s += time.perf_counter() - t0
            torch.set_num_threads(threads)
        assert v1.shape == (len(images), 3, SIZE, SIZE) and v2.dtype == torch.float32
        return len(images)

    consume.views_s = 0.0  # the main process's time in Augment, read by stretch()
    return loader, consume


def lightly_side(root, batch: int, workers: int):
    import torchvision
    from lightly.transforms.byol_transform import BYOLTransform

    dataset = torchvision.datasets.ImageFolder(str(root), transform=BYOLTransform())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)

    def consume(batch) -> int:
        (v1, v2), _ = batch
        assert v1.shape[1:] == (3, SIZE, SIZE) and v2.dtype == torch.float32
        return v1.shape[0]

    return loader, consume


def _cpu_seconds(pids) -> float:
    """User + system CPU time of processes `pids` (from /proc; 0 where unreadable)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def stretch(loader, consume, warmup: int, batches: int) -> tuple[int, float, float, float, float]:
    """(pairs, wall seconds, CPU seconds of the main process and the workers, of the workers
    alone, seconds the main process spent making views) over `batches` batches after `warmup`, from a fresh epoch
    whose workers are shut down at the end, so that nothing of this side runs while the other
    is timed."""
    it = iter(loader)
    try:
        for _ in range(warmup):
            consume(next(it))
        pids = [w.pid for w in getattr(it, "_workers", [])]
        views0 = getattr(consume, "views_s", 0.0)
        c0, p0, t0 = _cpu_seconds(pids), time.process_time(), time.perf_counter()
        pairs = sum(consume(next(it)) for _ in range(batches))
        wall = time.perf_counter() - t0
        views = getattr(consume, "views_s", 0.0) - views0
        workers_cpu = _cpu_seconds(pids) - c0
        cpu = time.process_time() - p0 + workers_cpu
    finally:
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        del it
    return pairs, wall, cpu, workers_cpu, views


def time_rounds(sides: dict, batches: int, warmup: int, repeats: int, log=print) -> dict[str, dict[str, list[float]]]:
    """Per side and round: pairs per wall second and per CPU second. The sides alternate
    within a round, and their order flips from round to round."""
    out = {name: {"rate": [], "cpu_rate": [], "busy": [], "main_views": [], "main_ms": [], "workers_ms": []} for name in sides}
    names = list(sides)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            pairs, wall, cpu, workers_cpu, views = stretch(*sides[name], warmup, batches)
            out[name]["main_ms"].append((cpu - workers_cpu) / pairs * 1e3)
            out[name]["workers_ms"].append(workers_cpu / pairs * 1e3)
            out[name]["main_views"].append(views / wall)
            out[name]["rate"].append(pairs / wall)
            out[name]["cpu_rate"].append(pairs / cpu)
            out[name]["busy"].append(cpu / wall)
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {out[n]['rate'][-1]:.0f} pairs/s ({out[n]['cpu_rate'][-1]:.0f} per CPU-s, {out[n]['busy'][-1]:.2f} cores busy"
            + (f", main in views {out[n]['main_views'][-1]:.0%})" if out[n]["main_views"][-1] else ")")
            for n in names), flush=True)
    return out


# ---------------------------------------------------------------------------------------
# one-thread breakdown: decode vs views, ms per image

def profile(root, n: int, batch: int, repeats: int) -> dict[str, float]:
    import torchvision
    from lightly.transforms.byol_transform import BYOLTransform

    ours = ImageFolder(root)
    theirs = torchvision.datasets.ImageFolder(str(root))
    idx = np.random.default_rng(1).permutation(len(ours))[:n].tolist()
    tensors = [ours.load(i) for i in idx]
    pils = [theirs.loader(theirs.samples[i][0]) for i in idx]
    aug, transform = byol_rs.Augment.byol(SIZE, seed=0), BYOLTransform()

    def views_rs():
        for k in range(0, n, batch):
            aug(tensors[k:k + batch])

    fns = {
        "byol_rs decode (torchvision.io)": lambda: [ours.load(i) for i in idx],
        "lightly decode (PIL loader)": lambda: [theirs.loader(theirs.samples[i][0]) for i in idx],
        f"byol_rs views (Augment.byol, ragged batches of {batch})": views_rs,
        "lightly views (BYOLTransform per PIL image)": lambda: [transform(p) for p in pils],
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = {name: [] for name in fns}
        for r in range(repeats + 1):  # the first round warms up
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if r:
                    times[name].append((time.perf_counter() - t0) / n * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(t) for name, t in times.items()} | \
        {name + " range": (min(t), max(t)) for name, t in times.items()}


# ---------------------------------------------------------------------------------------

def r_fmt(lo_hi) -> str:
    return f"{lo_hi[0]:.0f}-{lo_hi[1]:.0f}"


def _version(package: str) -> str:
    from importlib.metadata import version

    try:
        return version(package)
    except Exception:  # noqa: BLE001
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for byol_rs (default 1)")
    parser.add_argument("--lightly-workers", type=int, default=None, help="DataLoader workers for lightly (default: --workers)")
    parser.add_argument("--main-threads", type=int, default=1, help="torch threads for byol_rs's views in the main process")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per side per round")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches before each timed stretch "
                        "(default: 2 x workers + 1: the workers start and fill their prefetch queues)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in a fixture built now")
    parser.add_argument("--folder", default=None, help="image folder to use (built there if it holds no JPEGs; kept)")
    parser.add_argument("--profile-images", type=int, default=256)
    parser.add_argument("--no-profile", action="store_true", help="skip the one-thread decode / views breakdown")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 images, batch 8, 2 batches, 1 round; never written")
    parser.add_argument("--write", action="store_true", help="record the tables in benches/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.images, args.batch_size, args.batches, args.repeats, args.profile_images = 64, 8, 2, 1, 16
    lw = args.workers if args.lightly_workers is None else args.lightly_workers
    warmup = args.warmup if args.warmup is not None else 2 * max(args.workers, lw) + 1

    try:
        byol_rs.Augment.byol(SIZE)([torch.zeros(3, 300, 400, dtype=torch.uint8), torch.zeros(3, 500, 330, dtype=torch.uint8)])
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"this byol_rs cannot augment a ragged list of images ({type(e).__name__}: {e})")

    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    t_start = time.perf_counter()
    root, built, build_s = fixture(args.folder, args.images)
    try:
        files = sorted(root.rglob("*.jpg"))
        sizes = [Image.open(f).size for f in files[:200]]
        mean_px = statistics.mean(w * h for w, h in sizes)
        print(f"fixture: {len(files)} JPEGs in {root}" + (f" (built in {build_s:.0f} s)" if built else " (reused)") +
              f"; mean {mean_px / 1e3:.0f} kpx per image", flush=True)

        sides = {"byol_rs": byol_rs_side(root, args.batch_size, args.workers, args.main_threads),
                 "lightly": lightly_side(root, args.batch_size, lw)}
        per_epoch = len(sides["byol_rs"][0])
        if warmup + args.batches > per_epoch:
            raise SystemExit(f"{warmup} warm-up + {args.batches} timed batches exceed one epoch ({per_epoch} batches "
                             f"of {args.batch_size}); pass more --images or fewer --batches")
        res = time_rounds(sides, args.batches, warmup, args.repeats)
        skipped = sides["byol_rs"][0].dataset.num_skipped
        if skipped:
            print(f"warning: byol_rs skipped {skipped} files")

        cores = {"byol_rs": min(args.workers + args.main_threads, cpus), "lightly": min(max(lw, 1), cpus)}
        med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in res.items()}
        rng = {n: {k: (min(v), max(v)) for k, v in r.items()} for n, r in res.items()}
        per_core = {n: med[n]["rate"] / cores[n] for n in med}
        ratio = per_core["byol_rs"] / per_core["lightly"]
        ratios = [a / cores["byol_rs"] / (b / cores["lightly"]) for a, b in zip(res["byol_rs"]["rate"], res["lightly"]["rate"])]
        cpu_ratio = med["byol_rs"]["cpu_rate"] / med["lightly"]["cpu_rate"]
        labels = {"byol_rs": (f"byol_rs: ImageFolder + collate_images, Augment.byol({SIZE}) in the main process",
                              f"{args.workers} + main ({args.main_threads} thr)", ratio, cpu_ratio),
                  "lightly": ("lightly: torchvision ImageFolder + BYOLTransform() in the workers", f"{lw}", 1.0, 1.0)}
        rows = []
        for n, (label, workers, r, cr) in labels.items():
            lo, hi = rng[n]["rate"]
            rows.append(f"| {label} | {workers} | {cores[n]} | {med[n]['rate']:.0f} | {lo:.0f}-{hi:.0f} | {per_core[n]:.0f} | "
                        f"{r:.2f}x | {med[n]['cpu_rate']:.0f} | {r_fmt(rng[n]['cpu_rate'])} | {cr:.2f}x | {med[n]['busy']:.2f} |")
        table = "\n".join([
            "| side | workers | cores counted | pairs/s | range | pairs/s per core counted | per-core ratio "
            "| pairs per CPU-second | range | per-CPU-second ratio | cores busy |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows])
        cmd = "python benches/bench_data.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in (("workers", args.workers), ("lightly_workers", args.lightly_workers),
                                                        ("main_threads", args.main_threads), ("batch_size", args.batch_size),
                                                        ("batches", args.batches), ("repeats", args.repeats), ("images", args.images))
            if v is not None and v != parser.get_default(k) and not args.quick) + \
            (" --quick" if args.quick else "") + (" --write" if args.write and not args.quick else "")
        omp = os.environ.get("OMP_WAIT_POLICY", "")
        text = "\n".join([
            f"Command: `{('OMP_WAIT_POLICY=' + omp + ' ') if omp else ''}{cmd}` (CPU, {cpus} CPUs, torch {torch.__version__}, "
            f"lightly {_version('lightly')}, {platform.processor() or platform.machine()}; load average at start {load:.2f}). "
            f"Fixture: {len(files)} JPEGs, sides {SIDE_RANGE[0]}-{SIDE_RANGE[1]} px (mean {mean_px / 1e3:.0f} kpx), quality 90, "
            f"{len(PHOTOS)} classes. Batch {args.batch_size}; per side and round a fresh epoch, {warmup} warm-up then "
            f"{args.batches} timed batches, workers shut down after; {args.repeats} rounds, sides alternating. View pairs "
            f"per second at {SIZE} px, median and range over the rounds. Cores counted: byol_rs = workers + the main "
            f"process's torch threads (the views are made there), lightly = workers (its main process only receives the "
            f"views); capped at {cpus}. Per-core ratio = (byol_rs pairs/s / its cores) / (lightly pairs/s / its cores); "
            f"per round it ranged {min(ratios):.2f}-{max(ratios):.2f}x. Pairs per CPU-second divides by the CPU time "
            f"(user + system) that the main process and the workers actually used over the timed batches; cores busy "
            f"= that CPU time / wall time.",
            "",
            table,
            "",
            f"byol_rs's main process spent {med['byol_rs']['main_views']:.0%} of the timed wall time (median; range "
            f"{rng['byol_rs']['main_views'][0]:.0%}-{rng['byol_rs']['main_views'][1]:.0%}) inside `Augment`, the rest "
            f"waiting for and receiving batches: near 100 % the views bound the loader, well below it the decoding workers do. "
            f"CPU time per pair inside the loaders (median): byol_rs {med['byol_rs']['workers_ms']:.2f} ms in the workers "
            f"(decode, collate into shared memory) + {med['byol_rs']['main_ms']:.2f} ms in the main process (receive, views); "
            f"lightly {med['lightly']['workers_ms']:.2f} ms in the workers + {med['lightly']['main_ms']:.2f} ms in the main process.",
        ])
        print()
        print(text, flush=True)

        prof_text = ""
        if not args.no_profile:
            p = profile(root, min(args.profile_images, len(files)), args.batch_size, max(3, args.repeats if not args.quick else 1))
            keys = [k for k in p if not k.endswith(" range")]
            d_rs, d_li, v_rs, v_li = (p[k] for k in keys)
            lines = ["| stage (one torch thread, main process) | ms per image (median) | range |", "| --- | ---: | ---: |"]
            lines += [f"| {k} | {p[k]:.2f} | {p[k + ' range'][0]:.2f}-{p[k + ' range'][1]:.2f} |" for k in keys]
            lines += [f"| byol_rs decode + views | {d_rs + v_rs:.2f} | |", f"| lightly decode + views | {d_li + v_li:.2f} | |"]
            rs_bound = 1e3 / max(d_rs / max(args.workers, 1), v_rs / args.main_threads)
            prof_text = "\n".join([
                f"One-thread breakdown over {min(args.profile_images, len(files))} of the fixture's images (median of the rounds): "
                f"per core, byol_rs's decode + views take {d_rs + v_rs:.2f} ms against lightly's {d_li + v_li:.2f} "
                f"({(d_li + v_li) / (d_rs + v_rs):.2f}x); decode alone {d_li / d_rs:.2f}x, views alone {v_li / v_rs:.2f}x. "
                f"Decode is {d_rs / (d_rs + v_rs):.0%} of byol_rs's work and {d_li / (d_li + v_li):.0%} of lightly's. "
                f"With {args.workers} worker(s) decoding and {args.main_threads} main thread(s) on views, the slower stage bounds "
                f"byol_rs's loader at {rs_bound:.0f} pairs/s (measured: {med['byol_rs']['rate']:.0f}); lightly's {lw} worker(s) at "
                f"{1e3 * max(lw, 1) / (d_li + v_li):.0f} (measured: {med['lightly']['rate']:.0f}).",
                "",
                *lines,
            ])
            print()
            print(prof_text)
        print(f"\n({time.perf_counter() - t_start:.0f} s)")
        if args.write and not args.quick:
            write_section("data", "## Loader throughput: JPEG folder to view pairs, byol_rs vs lightly (ImageFolder)\n\n" + text +
                          ("\n\n" + prof_text if prof_text else ""))
    finally:
        if built and not args.folder:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
