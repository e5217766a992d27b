"""The engine's training step beside a pure-PyTorch BYOL written the way lightly is used
(foreach EMA, a PyTorch LARS, a Python training loop), same model, same batch, one process.

    python benches/bench_step.py [--steps 5] [--write]
    python benches/bench_step.py --profile [--steps 3] [--write]   # where each side's step goes

Throughput is the median over steps, in images per second (one image = one pair of views).
Peak memory is measured per side in a child process (its peak RSS growth), since both share this one.
--profile splits each side's step into convolutions (the same oneDNN kernels on both sides) and
everything else, with torch.profiler.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "tests" / "python"))
import byol_rs  # noqa: E402
from common import interleaved_median_ms, results_table, write_section  # noqa: E402
from reference_byol import MLP, make_backbone, feature_dim  # noqa: E402

CASES = {
    "resnet18-small-32px-b64": dict(backbone="resnet18", in_channels=3, small_image=True, size=32, batch=64),
    "convnet-28px-b256": dict(backbone="convnet", in_channels=1, small_image=False, size=28, batch=256),
}


class LARS(torch.optim.Optimizer):
    """LARS as lightly/solo-learn write it for torch.optim (official BYOL math)."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=1.5e-6, eta=1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, exclude=False))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["exclude"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    pn, gn = torch.norm(p), torch.norm(g)
                    one = torch.ones_like(pn)
                    g = g * torch.where(pn > 0, torch.where(gn > 0, group["eta"] * pn / gn, one), one)
                buf = self.state[p].setdefault("mu", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])


class TorchBYOL(nn.Module):
    """lightly's BYOL example, with the paper's heads and symmetric loss."""

    def __init__(self, c, channels_last=False):
        super().__init__()
        self.backbone = make_backbone(c["backbone"], c["in_channels"], c["small_image"])
        self.projection_head = MLP(feature_dim(c["backbone"]), 4096, 256)
        self.prediction_head = MLP(256, 4096, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone).requires_grad_(False)
        self.projection_head_momentum = copy.deepcopy(self.projection_head).requires_grad_(False)
        online = list(self.backbone.parameters()) + list(self.projection_head.parameters()) + list(self.prediction_head.parameters())
        decay = [p for p in online if p.ndim > 1]
        no_decay = [p for p in online if p.ndim <= 1]
        self.opt = LARS([{"params": decay}, {"params": no_decay, "exclude": True}], lr=0.2 * c["batch"] / 256)
        self.pairs = (list(self.backbone_momentum.parameters()) + list(self.projection_head_momentum.parameters()),
                      list(self.backbone.parameters()) + list(self.projection_head.parameters()))
        # Not what lightly does; the row that shows how much of the gap is the layout alone.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def step(self, x0, x1, tau=0.996):
        x0, x1 = x0.contiguous(memory_format=self.memory_format), x1.contiguous(memory_format=self.memory_format)
        p0 = self.prediction_head(self.projection_head(self.backbone(x0)))
        p1 = self.prediction_head(self.projection_head(self.backbone(x1)))
        with torch.no_grad():
            z0 = self.projection_head_momentum(self.backbone_momentum(x0))
            z1 = self.projection_head_momentum(self.backbone_momentum(x1))
        loss = (2 - 2 * F.cosine_similarity(p0, z1).mean()) + (2 - 2 * F.cosine_similarity(p1, z0).mean())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():  # lightly.models.utils.update_momentum
            torch._foreach_mul_(self.pairs[0], tau)
            torch._foreach_add_(self.pairs[0], self.pairs[1], alpha=1 - tau)
        return loss.item()


def make(side, c, channels_last=None):
    """One side's step; channels_last=None is each side's own default (lightly: NCHW)."""
    if side == "torch":
        model = TorchBYOL(c, channels_last=bool(channels_last))
        return lambda v1, v2: model.step(v1, v2)
    layout = {} if channels_last is None else dict(channels_last=channels_last)
    learner = byol_rs.BYOL(c["backbone"], in_channels=c["in_channels"], small_image=c["small_image"],
                           total_steps=1000, **layout)
    return learner.step


def views(c):
    torch.manual_seed(0)
    shape = (c["batch"], c["in_channels"], c["size"], c["size"])
    return torch.randn(shape), torch.randn(shape)


def peak_rss_mb(case, side, steps):
    """Peak resident memory a child gains while it builds one side's model and runs `steps` steps:
    its peak RSS (VmHWM, reset through /proc/self/clear_refs once torch and the views are loaded)
    minus its RSS at that point, so that the 3 GB of mapped torch libraries drop out."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r});"
            f"import bench_step as b; c=b.CASES[{case!r}]; v=b.views(c)\n"
            "kb = lambda k: int(next(l for l in open('/proc/self/status') if l.startswith(k)).split()[1])\n"
            "base = kb('VmRSS:'); open('/proc/self/clear_refs', 'w').write('5')\n"
            f"f=b.make({side!r}, c)\n"
            f"for _ in range({steps}): f(*v)\n"
            "print((kb('VmHWM:') - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def switched_off(f, env):
    """The step with one of the engine's own kernels switched off through `env`=0
    (BYOL_RS_FUSED_BN: PyTorch's BN; BYOL_RS_WINOGRAD: oneDNN for every convolution)."""
    def step(v1, v2):
        os.environ[env] = "0"
        try:
            return f(v1, v2)
        finally:
            del os.environ[env]
    return step


# The engine's Winograd convolution, forward and backward; their times include the GEMMs inside.
WINOGRAD_EVENTS = ("byol_rs::winograd_conv3x3", "torch::autograd::CppNode<(anonymous namespace)::Winograd>")


def profiled_split_ms(fns: dict, v1, v2, rounds: int) -> dict[str, tuple[float, float]]:
    """Per side, the median over `rounds` interleaved profiled steps of (wall time, time inside
    convolutions forward and backward), from torch.profiler's times on the calling thread."""
    from torch.profiler import ProfilerActivity, profile

    split: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                f(v1, v2)
                wall = time.perf_counter() - t0
            conv = sum(e.self_cpu_time_total if "convolution" in e.key else e.cpu_time_total
                       for e in prof.key_averages() if "convolution" in e.key or e.key in WINOGRAD_EVENTS) / 1e6
            split[name].append((wall * 1e3, conv * 1e3))
    return {name: (statistics.median(w for w, _ in x), statistics.median(c for _, c in x)) for name, x in split.items()}


def profile_main(args) -> None:
    """How much of each side's step is convolution: both sides call the same oneDNN kernels."""
    rows = []
    for case in args.cases:
        c = CASES[case]
        v1, v2 = views(c)
        fns = {"pytorch (lightly-style)": make("torch", c), "byol_rs": make("ours", c)}
        for f in fns.values():
            f(v1, v2)
        for name, (wall, conv) in profiled_split_ms(fns, v1, v2, args.steps).items():
            rows.append(f"| {case} | {name} | {wall:.0f} | {conv:.0f} | {wall - conv:.0f} | {conv / wall:.0%} |")
        print("\n".join(rows[-len(fns):]), flush=True)
    table = results_table(
        f"Command: `python benches/bench_step.py --profile --steps {args.steps} --write` (CPU, {torch.get_num_threads()} "
        "threads). Medians over profiled steps, the sides interleaved; convolutions are the self time of "
        "`aten::mkldnn_convolution`, `aten::convolution_backward` and the engine's Winograd op, forward and "
        "backward (the profiler adds a little to every op).",
        ["case", "side", "step ms", "convolutions ms", "everything else ms", "convolution share"], "llrrrr", rows)
    print(table)
    if args.write:
        write_section("step_profile", "### Where the step goes\n\n" + table)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--profile", action="store_true", help="split each step into convolutions and the rest")
    args = parser.parse_args()
    if args.profile:
        return profile_main(args)
    rows = []
    for case in args.cases:
        c = CASES[case]
        v1, v2 = views(c)
        sides = {"pytorch (lightly-style)": make("torch", c), "byol_rs": make("ours", c),
                 "byol_rs, channels_last=False": make("ours", c, channels_last=False),
                 "byol_rs, PyTorch's BN (BYOL_RS_FUSED_BN=0)": switched_off(make("ours", c), "BYOL_RS_FUSED_BN"),
                 "byol_rs, oneDNN convolutions only (BYOL_RS_WINOGRAD=0)": switched_off(make("ours", c), "BYOL_RS_WINOGRAD"),
                 "pytorch, hand-tuned channels_last": make("torch", c, channels_last=True)}
        ms = interleaved_median_ms({name: (lambda f=f: f(v1, v2)) for name, f in sides.items()}, args.steps)
        mem = {} if args.no_memory else {"pytorch (lightly-style)": peak_rss_mb(case, "torch", 2), "byol_rs": peak_rss_mb(case, "ours", 2)}
        base = ms["pytorch (lightly-style)"]
        for name, t in ms.items():
            rows.append(f"| {case} | {name} | {c['batch'] / t * 1e3:.1f} | {base / t:.2f}x | {mem.get(name, float('nan')):.0f} |")
        print("\n".join(rows[-len(sides):]), flush=True)
    table = results_table(
        f"Command: `python benches/bench_step.py --steps {args.steps} --write` (CPU, {torch.get_num_threads()} threads). "
        "Median step time over the steps after one warm-up, the sides interleaved step by step. Peak memory: "
        "what a child process's peak RSS grows by while it builds one side's model and runs 2 steps.",
        ["case", "side", "img/s", "speed-up", "peak memory MB"], "llrrr", rows)
    print(table)
    if args.write:
        write_section("step", "## Training step vs pure-PyTorch BYOL (issue 3)\n\n" + table)


if __name__ == "__main__":
    main()
