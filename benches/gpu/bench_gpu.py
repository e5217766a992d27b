"""Every GPU benchmark of issue 6 in one process, each beside its PyTorch reference.

    python3 benches/gpu/bench_gpu.py --out DIR [--budget-s 300] [--sections ...]
    python3 benches/gpu/bench_gpu.py --cpu-smoke --out DIR      # the same code on the CPU, tiny sizes

Run it through benches/gpu/run.sh, which installs the wheel and runs the CUDA tests first. Sections:

- matmul_peak: the measured matmul rate (8192^3) in bf16, TF32 and fp32, the denominators of MFU;
- ema: byol_rs.ema_update_ over ResNet-50 + a 2048-4096-256 projector (about 33 M parameters)
  against solo-learn's per-parameter loop, lightly's foreach mul+add and torch._foreach_lerp_, with
  GB/s counted as 3 buffers moved (lerp reads 2 and writes 1) and as a fraction of a measured
  device-to-device copy (counted as 2 buffers moved);
- loss: forward + backward at 4096 x 256 against 2 - 2 F.cosine_similarity(p, z).mean(), fp32 and bf16;
- augment: byol_rs.Augment.byol(224) on a uint8 batch on the GPU, in view pairs/s, against
  torchvision v2 on the same batch on the GPU (one set of parameters for the whole batch, the usual
  way) and against lightly's per-image BYOLView1/2Transform in a DataLoader with 16 CPU workers;
- step: byol_rs.BYOL against the pure-PyTorch BYOL of benches/bench_step.py (lightly-style) for
  ResNet-50 at 224 px, batch 128, and ResNet-18 small-image at 32 px, batch 512; fp32 on both sides,
  then bf16 (byol_rs with precision="bf16", autocast inside the Rust step; the reference runs
  under torch.autocast). MFU = (3 x online forward FLOPs + target forward FLOPs) x 2 views x batch
  per step time, over the measured matmul rate; forward FLOPs from FlopCounterMode;
- host_sync: the syncs in one step, counted under torch.cuda.set_sync_debug_mode("warn") (from
  Python warnings for ops called from Python, and from libtorch's own stderr log for ops called by
  the Rust engine, which runs with no Python warning handler), and the first one named by "error";
- distributed: the step with a world-size-1 process group joined (NCCL) against none (issue 7);
- cuda_tests: the summary of the pytest run that run.sh did before (--pytest-log, --pytest-rc).

Timing: CUDA events around each call, medians (time.perf_counter on the CPU). The full JSON is written
to DIR/bench_gpu.json after every section (so a run cut short still leaves what it measured); a
Markdown table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE.parent), str(ROOT / "tests" / "python")]  # benches/ and reference_byol.py

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_kernels import loss_steps  # noqa: E402

import byol_rs  # noqa: E402

SECTIONS = ("env", "matmul_peak", "ema", "loss", "augment", "step", "host_sync", "distributed", "cuda_tests")
SYNC_TEXT = "synchronizing CUDA operation"

FULL = dict(
    matmul=dict(n=8192, repeats=10, warmup=3),
    ema=dict(backbone="resnet50", head=(2048, 4096, 256), repeats=30, warmup=3),
    loss=dict(shape=(4096, 256), repeats=100, warmup=10),
    augment=dict(size=224, input=256, batch=256, repeats=10, warmup=2, lightly_images=2048, lightly_batch=64, workers=16),
    step=[
        dict(name="resnet50-224px-b128", backbone="resnet50", small_image=False, size=224, batch=128, warmup=3, repeats=10),
        dict(name="resnet18-small-32px-b512", backbone="resnet18", small_image=True, size=32, batch=512, warmup=3, repeats=20),
    ],
    sync=dict(backbone="resnet18", small_image=True, size=32, batch=128),
    distributed=dict(backbone="resnet18", small_image=True, size=32, batch=512, warmup=3, repeats=20),
)
SMOKE = dict(
    matmul=dict(n=512, repeats=3, warmup=1),
    ema=dict(backbone="resnet18", head=(512, 1024, 128), repeats=2, warmup=1),
    loss=dict(shape=(256, 64), repeats=3, warmup=1),
    augment=dict(size=32, input=40, batch=8, repeats=2, warmup=1, lightly_images=16, lightly_batch=8, workers=2),
    step=[
        # ConvNet and 256-wide heads stand in for the ResNets and the paper's 4096: on this CPU the first
        # steps of a big model take seconds (memory touched for the first time).
        dict(name="convnet-32px-b8", backbone="convnet", small_image=False, size=32, batch=8, warmup=1, repeats=2, head_hidden=256),
        dict(name="convnet-small-16px-b4", backbone="convnet", small_image=True, size=16, batch=4, warmup=1, repeats=2, head_hidden=256),
    ],
    sync=dict(backbone="convnet", small_image=False, size=32, batch=4, head_hidden=256),
    distributed=dict(backbone="convnet", small_image=False, size=32, batch=8, warmup=1, repeats=2, head_hidden=256),
)
# Rough seconds each section needs at full size: it is skipped (with that reason) when less is left.
# The others (env, cuda_tests) take no time and always run.
NEED_S = dict(matmul_peak=10, ema=15, loss=5, augment=40, step=60, host_sync=20, distributed=25)


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.cpu_smoke
        self.dev = torch.device("cpu" if self.smoke else "cuda")
        self.cuda = self.dev.type == "cuda"
        self.sizes = SMOKE if self.smoke else FULL
        if self.smoke:
            # One thread: the smoke figures mean nothing, and on a loaded 2-core machine OpenMP's
            # barriers make the first steps of each model take seconds instead of milliseconds.
            torch.set_num_threads(1)
        self.t0 = time.monotonic()
        self.out = pathlib.Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = {"mode": "cpu-smoke" if self.smoke else "gpu", "sections": {}, "targets": []}

    # ----------------------------------------------------------------- plumbing

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def timed(self, fn, repeats, warmup) -> dict:
        """Median and minimum ms per call: CUDA events around each call, or perf_counter on the CPU."""
        for _ in range(warmup):
            fn()
        self.sync()
        if self.cuda:
            events = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events.append((start, end))
            torch.cuda.synchronize()
            ms = [s.elapsed_time(e) for s, e in events]
        else:
            ms = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t) * 1e3)
        return {"median_ms": statistics.median(ms), "min_ms": min(ms), "repeats": repeats}

    def save(self):
        path = self.out / "bench_gpu.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(path)

    def run(self, name, fn):
        need = NEED_S.get(name, -math.inf) * (0.05 if self.smoke else 1)  # env and cuda_tests always run
        if name not in self.args.sections:
            result = {"status": "skipped", "reason": "not in --sections"}
        elif self.left_s() < need:
            result = {"status": "skipped", "reason": f"time budget: {self.left_s():.0f} s left, about {need:.0f} s needed"}
        else:
            t = time.monotonic()
            print(f"== {name} ({self.left_s():.0f} s of budget left)", flush=True)
            try:
                result = {"status": "ok", **fn()}
            except BaseException as e:  # one broken section must not lose the others (a Rust panic is a BaseException)
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                traceback.print_exc()
                result = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            result["seconds"] = round(time.monotonic() - t, 2)
            if self.cuda:
                result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                torch.cuda.reset_peak_memory_stats()
        self.results["sections"][name] = result
        self.free()
        self.save()
        return result

    # ----------------------------------------------------------------- sections

    def env(self) -> dict:
        info = {
            "device": torch.cuda.get_device_name() if self.cuda else f"CPU ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "byol_rs": byol_rs.__version__, "byol_rs_file": byol_rs.__file__,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "note": "cuDNN and TF32 flags are libtorch's global context, shared by the Rust engine and the PyTorch reference",
        }
        if self.cuda:
            p = torch.cuda.get_device_properties(0)
            info.update(capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count, memory_gb=round(p.total_memory / 2**30, 1))
            try:
                info["nvidia_smi"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20).stdout.strip()
            except Exception as e:  # noqa: BLE001
                info["nvidia_smi"] = f"unavailable: {e}"
        for mod in ("torchvision", "lightly"):
            try:
                info[mod] = __import__(mod).__version__
            except Exception as e:  # noqa: BLE001
                info[mod] = f"not importable: {type(e).__name__}: {e}"
        self.results["device"] = info["device"]
        return info

    def matmul_peak(self) -> dict:
        s = self.sizes["matmul"]
        n = s["n"]
        out = {"n": n}
        saved = torch.backends.cuda.matmul.allow_tf32
        try:
            for name, dtype, tf32 in [("bf16", torch.bfloat16, False), ("tf32", torch.float32, True), ("fp32", torch.float32, False)]:
                torch.backends.cuda.matmul.allow_tf32 = tf32
                a = torch.randn(n, n, device=self.dev).to(dtype)
                b = torch.randn(n, n, device=self.dev).to(dtype)
                t = self.timed(lambda: a @ b, s["repeats"], s["warmup"])
                out[f"{name}_tflops"] = 2 * n**3 / (t["median_ms"] / 1e3) / 1e12
                del a, b
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        self.peaks = {k: out[f"{k}_tflops"] for k in ("bf16", "tf32", "fp32")}
        return out

    def ema(self) -> dict:
        import torchvision
        from bench_kernels import ema_foreach, ema_loop, flat_views

        s = self.sizes["ema"]
        torch.manual_seed(0)
        model = getattr(torchvision.models, s["backbone"])()
        d_in, hidden, d_out = s["head"]
        model.fc = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d_out))
        online = [p.detach() for p in model.to(self.dev).parameters()]
        target = [p.clone() for p in online]
        n = sum(p.numel() for p in online)
        nbytes = n * online[0].element_size()
        tau = 0.996
        src, dst = torch.randn(n, device=self.dev), torch.empty(n, device=self.dev)
        copy = self.timed(lambda: dst.copy_(src), s["repeats"], s["warmup"])
        copy_gbs = 2 * nbytes / (copy["median_ms"] / 1e3) / 1e9
        del src, dst
        ft, fo = flat_views(target), flat_views(online)

        def foreach_lerp():
            torch._foreach_lerp_(target, online, 1 - tau)

        # The same flat buffers the engine's row uses, through PyTorch's two kernels.
        whole_t, whole_o = ft[0]._base, fo[0]._base
        assert whole_t is not None and whole_t.numel() == n

        cases = {
            "per-parameter loop (solo-learn)": lambda: ema_loop(target, online, tau),
            "foreach mul+add (lightly)": lambda: ema_foreach(target, online, tau),
            "torch._foreach_lerp_": foreach_lerp,
            "torch.lerp_ on one flat buffer": lambda: whole_t.lerp_(whole_o, 1 - tau),
            "torch._foreach_lerp_ on one flat buffer": lambda: torch._foreach_lerp_([whole_t], [whole_o], 1 - tau),
            "byol_rs.ema_update_, separate tensors": lambda: byol_rs.ema_update_(target, online, tau),
            "byol_rs.ema_update_, flat-buffer views (engine layout)": lambda: byol_rs.ema_update_(ft, fo, tau),
        }
        rows = {}
        for name, fn in cases.items():
            t = self.timed(fn, s["repeats"], s["warmup"])
            gbs = 3 * nbytes / (t["median_ms"] / 1e3) / 1e9
            rows[name] = {**t, "gb_per_s": gbs, "fraction_of_copy": gbs / copy_gbs}
        ours = rows["byol_rs.ema_update_, flat-buffer views (engine layout)"]
        for name in rows:
            rows[name]["speedup_of_byol_rs_flat"] = rows[name]["median_ms"] / ours["median_ms"]
        return {"params": n, "model": f"{s['backbone']} + {d_in}-{hidden}-{d_out} projector", "bytes_per_buffer": nbytes,
                "copy": {**copy, "gb_per_s": copy_gbs, "counted": "read + write"},
                "counted": "3 buffers (lerp reads target and online, writes target) for every row", "rows": rows}

    def loss(self) -> dict:
        s = self.sizes["loss"]
        out = {"shape": list(s["shape"])}
        for dname, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
            g = torch.Generator().manual_seed(0)
            p = torch.randn(s["shape"], generator=g).to(dtype).to(self.dev).requires_grad_()
            z = torch.randn(s["shape"], generator=g).to(dtype).to(self.dev)
            reference, fused = loss_steps(p, z)

            ref = self.timed(reference, s["repeats"], s["warmup"])
            ours = self.timed(fused, s["repeats"], s["warmup"])
            out[dname] = {"reference F.cosine_similarity": ref, "byol_rs.byol_loss": ours,
                          "speedup": ref["median_ms"] / ours["median_ms"]}
        return out

    def augment(self) -> dict:
        s = self.sizes["augment"]
        n, size, side = s["batch"], s["size"], s["input"]
        try:
            from bench_augment import photo_batch

            arr, source = photo_batch(n, side), "crops of scikit-image photos"
        except Exception as e:  # noqa: BLE001
            import numpy as np

            arr = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
            source = f"random uint8 (photos unavailable: {type(e).__name__})"
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(self.dev)  # uint8 NCHW, as a GPU decoder gives
        out = {"output_px": size, "input_px": side, "batch": n, "images": source, "rows": {}}
        rows = out["rows"]

        aug = byol_rs.Augment.byol(size, seed=0)
        t = self.timed(lambda: aug(x), s["repeats"], s["warmup"])
        rows["byol_rs.Augment.byol, per-sample params, on " + self.dev.type] = {**t, "pairs_per_s": n / (t["median_ms"] / 1e3)}
        ours = n / (t["median_ms"] / 1e3)
        kernel = aug.config["blur_kernel"] or max(round(0.1 * size) | 1, 3)

        try:
            import torchvision.transforms.v2 as v2

            def tv_view(blur_p, solarize_p):
                return v2.Compose([
                    v2.ToDtype(torch.float32, scale=True),
                    v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                    v2.RandomGrayscale(p=0.2),
                    v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p),
                    v2.RandomSolarize(0.5, p=solarize_p),
                    v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                ])

            t1, t2 = tv_view(1.0, 0.0), tv_view(0.1, 0.2)
            t = self.timed(lambda: (t1(x), t2(x)), s["repeats"], s["warmup"])
            rows[f"torchvision v2 batched on {self.dev.type} (one param set per batch)"] = {**t, "pairs_per_s": n / (t["median_ms"] / 1e3)}
            out["speedup_vs_torchvision_batched"] = ours / (n / (t["median_ms"] / 1e3))
        except Exception as e:  # noqa: BLE001
            rows["torchvision v2 batched"] = {"status": "skipped", "reason": f"{type(e).__name__}: {e}"}

        try:
            from bench_augment import lightly_views
            from PIL import Image

            v1t, v2t = lightly_views(size, "byol")
            pool = [Image.fromarray(a) for a in arr]
            pils = [pool[i % len(pool)] for i in range(s["lightly_images"])]
            t = self.lightly_loader(pils, v1t, v2t, s)
            rows[f"lightly BYOLView1/2Transform per image, DataLoader {s['workers']} workers"] = t
            out["speedup_vs_lightly"] = ours / t["pairs_per_s"]
        except ImportError as e:
            rows["lightly per-image"] = {"status": "skipped", "reason": f"lightly is not importable here ({e}); "
                                         "scripts/build_wheel.sh puts its wheel in dist/gpu-deps/ for run.sh to install"}
        return out

    def lightly_loader(self, pils, v1t, v2t, s) -> dict:
        from torch.utils.data import DataLoader

        loader = DataLoader(PairDataset(pils, v1t, v2t), batch_size=s["lightly_batch"], num_workers=s["workers"],
                            persistent_workers=True, multiprocessing_context="fork")
        times = []
        try:
            for i in range(3):  # the first epoch starts the workers
                t = time.perf_counter()
                for _ in loader:
                    pass
                if i:
                    times.append(time.perf_counter() - t)
        finally:
            del loader
        sec = statistics.median(times)
        return {"median_ms_per_epoch": sec * 1e3, "images": len(pils), "pairs_per_s": len(pils) / sec, "epochs_timed": len(times)}

    def step(self) -> dict:
        from bench_step import TorchBYOL
        from torch.utils.flop_counter import FlopCounterMode

        torch.backends.cudnn.benchmark = True  # global: the engine's convolutions get it too
        out = {"cudnn_benchmark": True, "cases": {}}
        peaks = getattr(self, "peaks", {})
        for case in self.sizes["step"]:
            c = dict(case, in_channels=3)
            res = out["cases"][c["name"]] = {"config": c}
            g = torch.Generator().manual_seed(0)
            shape = (c["batch"], 3, c["size"], c["size"])
            v1 = torch.randn(shape, generator=g).to(self.dev)
            v2 = torch.randn(shape, generator=g).to(self.dev)
            flops = None

            def measure(label, make):
                nonlocal flops
                if self.left_s() < (30 if not self.smoke else 0):
                    res[label] = {"status": "skipped", "reason": f"time budget: {self.left_s():.0f} s left"}
                    return
                if self.cuda:
                    torch.cuda.reset_peak_memory_stats()
                try:
                    fn, obj = make()
                except Exception as e:  # noqa: BLE001  (a refused configuration is recorded, not fatal)
                    res[label] = {"status": "not run", "reason": f"{type(e).__name__}: {e}"}
                    print(f"  {c['name']:<26} {label:<26} {fmt_step(res[label])}", flush=True)
                    return
                if flops is None and isinstance(obj, TorchBYOL):
                    try:
                        flops = res["flops"] = count_step_flops(obj, c, self.dev, FlopCounterMode)
                    except Exception as e:  # noqa: BLE001  (no MFU then, but the timings still count)
                        traceback.print_exc()
                        flops, res["flops"] = {}, {"status": "error", "error": f"{type(e).__name__}: {e}"}
                try:
                    t = self.timed(fn, c["repeats"], c["warmup"])
                    r = {"status": "ok", **t, "img_per_s": c["batch"] / (t["median_ms"] / 1e3)}
                    if self.cuda:
                        r["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    if flops:
                        achieved = flops["per_step"] / (t["median_ms"] / 1e3) / 1e12
                        r["achieved_tflops"] = achieved
                        r.update({f"mfu_vs_{k}": achieved / v for k, v in peaks.items()})
                    res[label] = r
                except BaseException as e:  # noqa: BLE001  (a Rust panic is a BaseException)
                    if isinstance(e, (KeyboardInterrupt, SystemExit)):
                        raise
                    traceback.print_exc()
                    res[label] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                finally:
                    del fn, obj
                    self.free()
                print(f"  {c['name']:<26} {label:<26} {fmt_step(res[label])}", flush=True)

            def torch_side(dtype, channels_last=False):
                def make():
                    model = torch_byol(c).to(self.dev)
                    if channels_last:
                        model = model.to(memory_format=torch.channels_last)
                        x1, x2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
                        return (lambda: torch_step_autocast(model, x1, x2, dtype)), model
                    if dtype is None:
                        return (lambda: model.step(v1, v2)), model
                    return (lambda: torch_step_autocast(model, v1, v2, dtype)), model
                return make

            def ours_side(precision):
                def make():
                    learner = ours_byol(c, self.dev, precision)
                    return (lambda: learner.step(v1, v2)), learner
                return make

            measure("pytorch fp32", torch_side(None))
            measure("byol_rs fp32", ours_side("fp32"))
            measure("byol_rs bf16", ours_side("bf16"))
            measure("pytorch bf16 autocast", torch_side(torch.bfloat16))
            if self.cuda:  # not the target's reference: the same PyTorch step tuned by hand
                measure("pytorch bf16 channels_last", torch_side(torch.bfloat16, channels_last=True))
            for prec in ("fp32", "bf16"):
                a, b = res.get(f"byol_rs {prec}", {}), res.get(f"pytorch {prec}" if prec == "fp32" else "pytorch bf16 autocast", {})
                if a.get("status") == "ok" and b.get("status") == "ok":
                    res[f"speedup_{prec}"] = b["median_ms"] / a["median_ms"]
            a, b = res.get("byol_rs bf16", {}), res.get("pytorch bf16 channels_last", {})
            if a.get("status") == "ok" and b.get("status") == "ok":
                res["speedup_bf16_vs_channels_last"] = b["median_ms"] / a["median_ms"]
            del v1, v2
        return out

    def host_sync(self) -> dict:
        s = self.sizes["sync"]
        c = dict(s, in_channels=3, batch=s["batch"])
        g = torch.Generator().manual_seed(0)
        v1, v2 = (torch.randn(c["batch"], 3, c["size"], c["size"], generator=g).to(self.dev) for _ in range(2))
        learner = ours_byol(c, self.dev, "fp32")
        model = torch_byol(c).to(self.dev)
        for _ in range(2):  # warm-up: cuDNN plans, the allocator, lazy state
            learner.step(v1, v2)
            model.step(v1, v2)
        self.sync()
        out = {"case": f"{c['backbone']} small_image={c['small_image']} {c['size']}px b{c['batch']}",
               "byol_rs": count_syncs(lambda: learner.step(v1, v2), self.cuda),
               "pytorch reference": count_syncs(lambda: model.step(v1, v2), self.cuda)}
        if self.cuda:
            err = first_sync_error(lambda: learner.step(v1, v2))
            out["byol_rs"]["first_sync_in_error_mode"] = err
            out["byol_rs"]["syncs_at_least_one"] = bool(out["byol_rs"]["syncs"] or err)
            if err and not out["byol_rs"]["syncs"]:
                out["note"] = "warn mode counted none, yet error mode raised: the count missed a reporting path; the step does sync"
        else:
            out["note"] = "no CUDA: set_sync_debug_mode not set; only the capture path ran (counts are 0 by construction)"
        return out

    def distributed(self) -> dict:
        """Issue 7: the step with a world-size-1 process group (NCCL; Gloo in the smoke run)
        joined, against the same step without one: the distributed path's fixed cost."""
        import torch.distributed as dist

        c = dict(self.sizes["distributed"], in_channels=3)
        g = torch.Generator().manual_seed(0)
        v1, v2 = (torch.randn(c["batch"], 3, c["size"], c["size"], generator=g).to(self.dev) for _ in range(2))
        out = {"case": f"{c['backbone']} small_image={c['small_image']} {c['size']}px b{c['batch']}"}
        out["no process group"] = self.timed(lambda l=ours_byol(c, self.dev, "fp32"): l.step(v1, v2), c["repeats"], c["warmup"])
        self.sync()
        backend = "nccl" if self.cuda else "gloo"
        dist.init_process_group(backend, init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
        try:
            learner = ours_byol(c, self.dev, "fp32", distributed=True)
            out[f"{backend}, world size 1"] = self.timed(lambda: learner.step(v1, v2), c["repeats"], c["warmup"])
        finally:
            dist.destroy_process_group()
        base, dd = out["no process group"]["median_ms"], out[f"{backend}, world size 1"]["median_ms"]
        out["overhead_ms"] = dd - base
        out["overhead_pct"] = (dd / base - 1) * 100
        return out

    def cuda_tests(self) -> dict:
        if not self.args.pytest_log:
            return {"ran": False, "reason": "no --pytest-log given"}
        path = pathlib.Path(self.args.pytest_log)
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = text.splitlines()
        summary = next((l.strip("= ").strip() for l in reversed(lines)
                        if re.search(r"\d+ (passed|failed|skipped|error|errors|deselected|xfailed|xpassed)\b", l)), None)
        return {"ran": True, "rc": self.args.pytest_rc, "command": self.args.pytest_cmd, "summary": summary,
                "failed": [l for l in lines if l.startswith(("FAILED", "ERROR"))][:40],
                "xfailed": [l for l in lines if l.startswith(("XFAIL", "XPASS"))][:20],
                "skipped": [l for l in lines if l.startswith("SKIPPED")][:20]}

    # ----------------------------------------------------------------- targets and table

    def targets(self):
        sec = self.results["sections"]
        t = []

        def add(what, target, measured, met):
            t.append({"what": what, "target": target, "measured": measured, "met": met})

        ema = sec.get("ema", {})
        if ema.get("status") == "ok":
            flat = ema["rows"]["byol_rs.ema_update_, flat-buffer views (engine layout)"]
            fe = ema["rows"]["foreach mul+add (lightly)"]
            add("EMA bandwidth", ">= 0.80 of copy", f"{flat['fraction_of_copy']:.2f}", flat["fraction_of_copy"] >= 0.8)
            add("EMA vs foreach", ">= 3x", f"{fe['speedup_of_byol_rs_flat']:.2f}x", fe["speedup_of_byol_rs_flat"] >= 3)
        aug = sec.get("augment", {})
        if aug.get("status") == "ok":
            for key, what, goal, ok in [("speedup_vs_lightly", "augment vs lightly per-image", ">= 50x", lambda v: v >= 50),
                                        ("speedup_vs_torchvision_batched", "augment vs torchvision v2 batched", "> 1x", lambda v: v > 1)]:
                v = aug.get(key)
                add(what, goal, f"{v:.2f}x" if v is not None else "not measured", ok(v) if v is not None else None)
        step = sec.get("step", {})
        for name, goal in zip([c["name"] for c in self.sizes["step"]], (1.0, 1.3)):
            res = step.get("cases", {}).get(name, {})
            for prec in ("bf16", "fp32"):
                v = res.get(f"speedup_{prec}")
                if v is not None or prec == "bf16":
                    why = res.get("byol_rs bf16", {}).get("reason", "not measured") if v is None else f"{v:.2f}x"
                    add(f"step {name} {prec}", f">= {goal}x" + (" (issue's target is bf16)" if prec == "fp32" else ""),
                        why, (v >= goal) if v is not None else None)
        hs = sec.get("host_sync", {})
        if hs.get("status") == "ok" and self.cuda:
            n, err = hs["byol_rs"]["syncs"], hs["byol_rs"].get("first_sync_in_error_mode")
            add("host syncs per step", "0", f"{n}" + (f"; error mode: {err[:60]}" if err else ""), n == 0 and not err)
        self.results["targets"] = t

    def table(self) -> str:
        sec, res = self.results["sections"], self.results
        lines = [f"Device: {res.get('device')}; mode {res['mode']}; torch {torch.__version__}; "
                 f"byol_rs from {sec.get('env', {}).get('byol_rs_file')}", "",
                 "| benchmark | byol_rs | PyTorch reference(s) | ratio |", "| --- | --- | --- | ---: |"]
        if self.smoke:
            lines.insert(1, "(CPU smoke run: tiny sizes on a CPU; the figures check the plumbing and mean nothing.)")
        mm = sec.get("matmul_peak", {})
        if mm.get("status") == "ok":
            lines.append(f"| matmul {mm['n']}^3 (MFU denominators) | | bf16 {mm['bf16_tflops']:.3g}, TF32 {mm['tf32_tflops']:.3g}, "
                         f"fp32 {mm['fp32_tflops']:.3g} TFLOP/s | |")
        ema = sec.get("ema", {})
        if ema.get("status") == "ok":
            r = ema["rows"]
            flat, sep = r["byol_rs.ema_update_, flat-buffer views (engine layout)"], r["byol_rs.ema_update_, separate tensors"]
            loop, fe, lerp = r["per-parameter loop (solo-learn)"], r["foreach mul+add (lightly)"], r["torch._foreach_lerp_"]
            lines.append(f"| EMA {ema['params'] / 1e6:.1f} M params (copy {ema['copy']['gb_per_s']:.0f} GB/s) | flat {flat['median_ms']:.3f} ms, "
                         f"{flat['gb_per_s']:.0f} GB/s = {flat['fraction_of_copy']:.0%} of copy; separate {sep['median_ms']:.3f} ms "
                         f"| loop {loop['median_ms']:.3f} ms; foreach {fe['median_ms']:.3f} ms; _foreach_lerp_ {lerp['median_ms']:.3f} ms "
                         f"| {fe['speedup_of_byol_rs_flat']:.2f}x foreach, {loop['speedup_of_byol_rs_flat']:.2f}x loop |")
        loss = sec.get("loss", {})
        if loss.get("status") == "ok":
            for d in ("fp32", "bf16"):
                x = loss[d]
                lines.append(f"| loss fwd+bwd {loss['shape'][0]}x{loss['shape'][1]} {d} | {x['byol_rs.byol_loss']['median_ms']:.3f} ms "
                             f"| {x['reference F.cosine_similarity']['median_ms']:.3f} ms | {x['speedup']:.2f}x |")
        aug = sec.get("augment", {})
        if aug.get("status") == "ok":
            rows = aug["rows"]
            ours = next(v for k, v in rows.items() if k.startswith("byol_rs"))
            refs = "; ".join(f"{k}: " + (f"{v['pairs_per_s']:.0f}/s" if "pairs_per_s" in v else f"skipped ({v.get('reason', '')[:60]})")
                             for k, v in rows.items() if not k.startswith("byol_rs"))
            ratio = ", ".join(f"{aug[k]:.1f}x {lbl}" for k, lbl in [("speedup_vs_lightly", "lightly"),
                                                                    ("speedup_vs_torchvision_batched", "tv v2")] if k in aug)
            lines.append(f"| augment {aug['output_px']} px b{aug['batch']} pairs/s | {ours['pairs_per_s']:.0f}/s | {refs} | {ratio} |")
        step = sec.get("step", {})
        for name, res_c in step.get("cases", {}).items():
            for prec, ours_k, ref_k in [("fp32", "byol_rs fp32", "pytorch fp32"), ("bf16", "byol_rs bf16", "pytorch bf16 autocast")]:
                a, b = res_c.get(ours_k, {}), res_c.get(ref_k, {})
                ratio = res_c.get(f"speedup_{prec}")
                lines.append(f"| step {name} {prec} img/s | {fmt_step(a)} | {fmt_step(b)} | {f'{ratio:.2f}x' if ratio else '-'} |")
            if "pytorch bf16 channels_last" in res_c:
                ratio = res_c.get("speedup_bf16_vs_channels_last")
                lines.append(f"| step {name} bf16 img/s vs PyTorch hand-tuned NHWC | {fmt_step(res_c.get('byol_rs bf16', {}))} "
                             f"| {fmt_step(res_c['pytorch bf16 channels_last'])} | {f'{ratio:.2f}x' if ratio else '-'} |")
        hs = sec.get("host_sync", {})
        if hs.get("status") == "ok":
            o, r = hs["byol_rs"], hs["pytorch reference"]
            err = o.get("first_sync_in_error_mode")
            if not o["measured"]:
                lines.append("| host syncs in one step | not measured (no CUDA) | not measured | |")
            else:
                lines.append(f"| host syncs in one step ({hs['case']}) | {o['syncs']} ({', '.join(o['functions'][:4]) or '-'})"
                             f"{'; error mode: ' + err[:80] if err else ''} | {r['syncs']} | |")
        dd = sec.get("distributed", {})
        if dd.get("status") == "ok":
            keys = [k for k in dd if k.endswith("world size 1")]
            lines.append(f"| step ms with a world-size-1 process group ({dd['case']}) | {dd[keys[0]]['median_ms']:.2f} | "
                         f"{dd['no process group']['median_ms']:.2f} (no group) | {dd['overhead_pct']:+.1f} % |")
        ct = sec.get("cuda_tests", {})
        if ct.get("ran"):
            lines.append(f"| pytest -m cuda (rc {ct['rc']}) | {ct['summary']} | | |")
        for name, s in sec.items():
            if s.get("status") not in ("ok", None):
                lines.append(f"| {name} | {s['status']}: {(s.get('reason') or s.get('error') or '')[:100]} | | |")
        if res["targets"]:
            lines += ["", "| issue-6 target | goal | measured | met |", "| --- | --- | --- | --- |"]
            for t in res["targets"]:
                met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
                lines.append(f"| {t['what']} | {t['target']} | {str(t['measured'])[:90]} | {met} |")
        return "\n".join(lines)

    def main(self):
        for name in SECTIONS:
            self.run(name, getattr(self, name))
        self.targets()
        self.results["table"] = self.table()
        self.results["seconds"] = round(time.monotonic() - self.t0, 1)
        self.save()
        print("\n" + self.results["table"], flush=True)
        bad = [n for n, s in self.results["sections"].items() if s.get("status") == "error"]
        return 1 if bad else 0


class PairDataset(torch.utils.data.Dataset):
    """lightly's way: each worker turns one PIL image into its two views."""

    def __init__(self, pils, t1, t2):
        self.pils, self.t1, self.t2 = pils, t1, t2

    def __len__(self):
        return len(self.pils)

    def __getitem__(self, i):
        im = self.pils[i]
        return self.t1(im), self.t2(im)


def torch_byol(c):
    """benches/bench_step.py's TorchBYOL, with heads c["head_hidden"] wide (default the paper's 4096)."""
    import bench_step
    import reference_byol

    hidden = c.get("head_hidden", 4096)
    saved = bench_step.MLP
    bench_step.MLP = lambda d_in, _hidden, d_out: reference_byol.MLP(d_in, hidden, d_out)
    try:
        return bench_step.TorchBYOL(c)
    finally:
        bench_step.MLP = saved


def ours_byol(c, dev, precision, **kw):
    hidden = c.get("head_hidden", 4096)
    return byol_rs.BYOL(c["backbone"], in_channels=3, small_image=c["small_image"], projector_hidden=hidden,
                        predictor_hidden=hidden, total_steps=1000, precision=precision, device=str(dev), **kw)


def torch_step_autocast(m, x0, x1, dtype, tau=0.996):
    """bench_step.TorchBYOL.step with the forward passes and the loss under torch.autocast, as
    Lightning's precision="bf16-mixed" runs it."""
    with torch.autocast(x0.device.type, dtype=dtype):
        p0 = m.prediction_head(m.projection_head(m.backbone(x0)))
        p1 = m.prediction_head(m.projection_head(m.backbone(x1)))
        with torch.no_grad():
            z0 = m.projection_head_momentum(m.backbone_momentum(x0))
            z1 = m.projection_head_momentum(m.backbone_momentum(x1))
    loss = (2 - 2 * F.cosine_similarity(p0.float(), z1.float()).mean()) + (2 - 2 * F.cosine_similarity(p1.float(), z0.float()).mean())
    m.opt.zero_grad()
    loss.backward()
    m.opt.step()
    with torch.no_grad():
        torch._foreach_mul_(m.pairs[0], tau)
        torch._foreach_add_(m.pairs[0], m.pairs[1], alpha=1 - tau)
    return loss.item()


def count_step_flops(model, c, dev, FlopCounterMode) -> dict:
    """Forward FLOPs per image of the online path (backbone, projector, predictor) and of the target
    path (backbone, projector), counted on the PyTorch model; a step is estimated as 3x online
    (forward + backward) + 1x target, for each of the 2 views of each image."""
    x = torch.randn(2, c["in_channels"], c["size"], c["size"], device=dev)
    model.eval()
    try:
        with torch.no_grad():
            with FlopCounterMode(display=False) as fc:
                model.prediction_head(model.projection_head(model.backbone(x)))
            online = fc.get_total_flops() / 2
            with FlopCounterMode(display=False) as fc:
                model.projection_head_momentum(model.backbone_momentum(x))
            target = fc.get_total_flops() / 2
    finally:
        model.train()
    per_image = 2 * (3 * online + target)
    return {"online_forward_per_image_gflop": online / 1e9, "target_forward_per_image_gflop": target / 1e9,
            "per_image_step_gflop": per_image / 1e9, "per_step": per_image * c["batch"],
            "formula": "2 views x (3 x online forward + target forward) x batch"}


def count_syncs(fn, cuda: bool) -> dict:
    """Runs fn once under set_sync_debug_mode('warn') and counts the reported syncs. Ops called from
    Python report through Python warnings; ops called by the Rust engine (no Python warning handler on
    the stack) through libtorch's log on file descriptor 2, which is captured for the call."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
                    torch.cuda.synchronize()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    log.seek(0)
    text = log.read().decode(errors="replace")
    log.close()
    py = [str(w.message) for w in caught if SYNC_TEXT in str(w.message)]
    n_log = text.count(SYNC_TEXT)
    other = [str(w.message)[:200] for w in caught if SYNC_TEXT not in str(w.message)]
    funcs = re.findall(re.escape(SYNC_TEXT) + r"\s*\(function ([^)]*)\)", text)
    return {"syncs": len(py) + n_log, "via_python_warnings": len(py), "via_libtorch_log": n_log,
            "functions": sorted(set(funcs)), "measured": cuda, "other_warnings": other[:5], "log_excerpt": text[:1500]}


def first_sync_error(fn):
    """The first synchronising op under set_sync_debug_mode('error'), as the error it raises (None if none)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001  (a Rust panic surfaces as a BaseException)
        return f"{type(e).__name__}: {str(e)[:400]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


def fmt_step(r: dict) -> str:
    if not r:
        return "-"
    if r.get("status") != "ok":
        return f"{r.get('status')}: {(r.get('reason') or r.get('error') or '')[:90]}"
    s = f"{r['img_per_s']:.1f}"
    if "mfu_vs_bf16" in r:
        s += f" (MFU {r['mfu_vs_bf16']:.1%} of bf16, {r['mfu_vs_tf32']:.1%} of TF32 peak)"
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for bench_gpu.json")
    parser.add_argument("--cpu-smoke", action="store_true", help="run on the CPU with tiny sizes")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip sections that no longer fit in this many seconds")
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--pytest-log", default=None)
    parser.add_argument("--pytest-rc", type=int, default=None)
    parser.add_argument("--pytest-cmd", default=None)
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device is visible: use --cpu-smoke", file=sys.stderr)
        return 2
    return Bench(args).main()


if __name__ == "__main__":
    sys.exit(main())
