"""Data parallel on this CPU: the engine's step on 2 Gloo ranks (one thread each, half the batch
each) against 1 process (two threads, the whole batch), same total batch, plus the cost of the
collectives per step.

    python benches/bench_ddp.py [--steps 20] [--write]

The 2-rank side runs under torchrun and reports its medians back through a file; the 1-process
side runs in this process. Medians over steps after warm-up; img/s counts the global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import byol_rs

sys.path.insert(0, str(Path(__file__).parent))
from common import results_table, write_section  # noqa: E402

CASES = {
    "convnet-28px-b256": dict(backbone="convnet", in_channels=1, small_image=False, size=28, batch=256,
                              projector_hidden=1024, projection_dim=128, predictor_hidden=1024),
    "resnet18-small-32px-b64": dict(backbone="resnet18", in_channels=3, small_image=True, size=32, batch=64,
                                    projector_hidden=4096, projection_dim=256, predictor_hidden=4096),
}


def learner(c: dict, **kw) -> byol_rs.BYOL:
    heads = {k: c[k] for k in ("projector_hidden", "projection_dim", "predictor_hidden")}
    return byol_rs.BYOL(c["backbone"], in_channels=c["in_channels"], small_image=c["small_image"], **heads,
                        total_steps=10_000, lr=0.2, **kw)


def views(c: dict, n: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    shape = (n, c["in_channels"], c["size"], c["size"])
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def step_ms(l: byol_rs.BYOL, v1, v2, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        l.step(v1, v2)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        l.step(v1, v2)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def worker(case: str, steps: int, out: str) -> None:
    """One rank: step medians with and without SyncBN, and the bare collectives' cost."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    c = CASES[case]
    v1, v2 = views(c, c["batch"] // world)
    result = {}
    for name, kw in (("sync_bn", {}), ("no_sync_bn", dict(sync_bn=False))):
        l = learner(c, **kw)
        result[name] = step_ms(l, v1, v2, steps)
    # A buffer the size of the flat gradient, for the collective alone.
    grads = torch.zeros(sum(p.numel() for p in l.named_parameters().values()))
    flag = torch.zeros(1, dtype=torch.float64)

    def reduce(t):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(t)
        return time.perf_counter() - t0

    result["grad_allreduce_ms"] = statistics.median(reduce(grads) for _ in range(steps)) * 1e3
    result["small_allreduce_ms"] = statistics.median(reduce(flag) for _ in range(steps)) * 1e3
    result["grad_numel"] = grads.numel()
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.steps, args.worker[1])
    torch.set_num_threads(2)
    rows = []
    for case in args.cases:
        c = CASES[case]
        single = step_ms(learner(c), *views(c, c["batch"]), args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rank0.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   __file__, "--steps", str(args.steps), "--worker", case, out]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            ddp = json.loads(Path(out).read_text())
        img = lambda ms: c["batch"] / ms * 1e3  # noqa: E731
        rows.append(f"| {case} | 1 process, 2 threads | {single:.1f} | {img(single):.0f} | 1.00x | |")
        for name in ("sync_bn", "no_sync_bn"):
            rows.append(f"| {case} | 2 ranks x 1 thread, {name.replace('_', ' ')} | {ddp[name]:.1f} | {img(ddp[name]):.0f} "
                        f"| {single / ddp[name]:.2f}x | |")
        rows.append(f"| {case} | all-reduce of the flat gradient ({ddp['grad_numel'] / 1e6:.1f} M floats) | "
                    f"{ddp['grad_allreduce_ms']:.2f} | | | {ddp['grad_allreduce_ms'] / ddp['sync_bn'] * 100:.1f} % of a step |")
        rows.append(f"| {case} | one small all-reduce (handshake, loss, each SyncBN layer) | "
                    f"{ddp['small_allreduce_ms']:.3f} | | | |")
        print("\n".join(rows[-5:]), flush=True)
    table = results_table(
        f"Command: `python benches/bench_ddp.py --steps {args.steps} --write` (2-core CPU, Gloo, torchrun --standalone). "
        "Same global batch on both sides; median step time after 2 warm-up steps.",
        ["case", "side", "step ms", "img/s (global)", "vs 1 process", "collective"], "llrrrl", rows)
    print(table)
    if args.write:
        write_section("ddp", "## Data parallel: 2 ranks vs 1 process (issue 7)\n\n" + table)


if __name__ == "__main__":
    main()
