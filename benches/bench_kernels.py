"""The fused EMA, loss and batch norm and the Winograd convolution beside their PyTorch references,
in one process.

    python benches/bench_kernels.py [--repeats 30] [--write]

EMA: ResNet-50 + 2048-4096-256 projector (about 33 M params), against solo-learn's
per-parameter loop and lightly's foreach mul + add. Loss: forward + backward at 4096 x 256
against `2 - 2 * F.cosine_similarity(p, z.detach()).mean()`. Batch norm: the engine's fused
training-mode BN + ReLU, forward + backward on channels_last activations, against
`F.batch_norm(...).relu_()`. Convolution: the engine's Winograd 3x3 convolution, forward +
backward, against `F.conv2d` (oneDNN) at ResNet-18's layer 3 and 4 shapes at 32 px.
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import byol_rs
from common import median_ms, write_section


def ema_model() -> nn.Module:
    backbone = torchvision.models.resnet50()
    backbone.fc = nn.Sequential(nn.Linear(2048, 4096), nn.BatchNorm1d(4096), nn.ReLU(), nn.Linear(4096, 256))
    return backbone


@torch.no_grad()
def ema_loop(target, online, tau):  # solo-learn: MomentumUpdater.update
    for op, mp in zip(online, target):
        mp.data = tau * mp.data + (1 - tau) * op.data


@torch.no_grad()
def ema_foreach(target, online, tau):  # lightly: update_momentum
    torch._foreach_mul_(target, tau)
    torch._foreach_add_(target, online, alpha=1 - tau)


def flat_views(params):
    """The engine's layout: every parameter a view of one flat buffer."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    views, at = [], 0
    for p in params:
        views.append(flat[at : at + p.numel()].view_as(p))
        at += p.numel()
    return views


def bench_ema(repeats: int) -> list[tuple[str, float]]:
    online = list(ema_model().parameters())
    target = [p.detach().clone() for p in online]
    n = sum(p.numel() for p in online)
    tau = 0.996
    rows = [
        (f"EMA per-parameter loop (solo-learn), {n / 1e6:.1f} M params", median_ms(lambda: ema_loop(target, online, tau), repeats)),
        ("EMA foreach mul+add (lightly)", median_ms(lambda: ema_foreach(target, online, tau), repeats)),
        ("byol_rs.ema_update_, separate tensors (_foreach_lerp_)", median_ms(lambda: byol_rs.ema_update_(target, online, tau), repeats)),
    ]
    ft, fo = flat_views(target), flat_views(online)
    rows.append(("byol_rs.ema_update_, flat-buffer views (one lerp_)", median_ms(lambda: byol_rs.ema_update_(ft, fo, tau), repeats)))
    return rows


def loss_steps(p: torch.Tensor, z: torch.Tensor):
    """Forward + backward of the loss: PyTorch's formula and byol_rs's fused kernel."""

    def reference():
        p.grad = None
        (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()).backward()

    def fused():
        p.grad = None
        byol_rs.byol_loss(p, z).backward()

    return reference, fused


def bench_loss(repeats: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    p = torch.randn(4096, 256, requires_grad=True)
    z = torch.randn(4096, 256)
    reference, fused = loss_steps(p, z)
    return [
        ("loss fwd+bwd F.cosine_similarity, 4096 x 256", median_ms(reference, repeats)),
        ("loss fwd+bwd byol_rs.byol_loss, 4096 x 256", median_ms(fused, repeats)),
    ]


def bench_batch_norm(repeats: int) -> list[tuple[str, float]]:
    rows = []
    for shape in [(64, 64, 32, 32), (256, 32, 28, 28)]:
        torch.manual_seed(0)
        c = shape[1]
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        w, b = torch.rand(c, requires_grad=True), torch.randn(c, requires_grad=True)
        rm, rv = torch.zeros(c), torch.ones(c)
        g = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        label = "x".join(map(str, shape))
        rows.append((f"BN+ReLU fwd+bwd F.batch_norm().relu_(), {label}",
                     median_ms(lambda: F.batch_norm(x, rm, rv, w, b, True).relu_().backward(g), repeats)))
        rows.append((f"BN+ReLU fwd+bwd byol_rs fused (engine), {label}",
                     median_ms(lambda: byol_rs._core._batch_norm_act(x, w, b, rm, rv).backward(g), repeats)))
    return rows


def bench_winograd(repeats: int) -> list[tuple[str, float]]:
    """ResNet-18's layer-4 3x3 convolution at 32 px (4x4 pixels), and layer 3's (8x8)."""
    rows = []
    for shape in [(64, 512, 4, 4), (64, 256, 8, 8)]:
        torch.manual_seed(0)
        c = shape[1]
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = (torch.randn(c, c, 3, 3) * 0.02).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        label = f"{'x'.join(map(str, shape))}, {c} filters"
        rows.append((f"conv 3x3 fwd+bwd F.conv2d (oneDNN), {label}",
                     median_ms(lambda: F.conv2d(x, w, padding=1).backward(g), repeats)))
        rows.append((f"conv 3x3 fwd+bwd byol_rs Winograd F(2x2,3x3), {label}",
                     median_ms(lambda: byol_rs._core._winograd_conv3x3(x, w).backward(g), repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--write", action="store_true", help="record the table in benches/RESULTS.md")
    args = parser.parse_args()
    ema = bench_ema(args.repeats)
    loss = bench_loss(args.repeats * 3)
    norm = bench_batch_norm(args.repeats) + bench_winograd(args.repeats)
    lines = [
        f"Command: `python benches/bench_kernels.py --repeats {args.repeats} --write` "
        f"(CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}). Medians.",
        "",
        "| case | median ms | speed-up vs loop | vs foreach / reference |",
        "| --- | ---: | ---: | ---: |",
    ]
    loop, foreach = ema[0][1], ema[1][1]
    for name, ms in ema:
        lines.append(f"| {name} | {ms:.2f} | {loop / ms:.2f}x | {foreach / ms:.2f}x |")
    ref = loss[0][1]
    for name, ms in loss:
        lines.append(f"| {name} | {ms:.3f} | | {ref / ms:.2f}x |")
    for (ref_name, ref_ms), (name, ms) in zip(norm[::2], norm[1::2]):
        lines.append(f"| {ref_name} | {ref_ms:.2f} | | 1.00x |")
        lines.append(f"| {name} | {ms:.2f} | | {ref_ms / ms:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("kernels", "## Kernels: fused EMA, loss (issue 2), batch norm and convolution (issue 3)\n\n" + table)


if __name__ == "__main__":
    main()
