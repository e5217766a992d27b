"""A short tour of the kernels on real photos, each beside its PyTorch formula."""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from . import byol_loss, cosine_tau, ema_update_


def _photos(size: int = 64) -> torch.Tensor:
    """scikit-image's sample photos as a float batch; random noise when scikit-image is absent."""
    try:
        from skimage import data

        names = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]
        imgs = [torch.from_numpy(getattr(data, n)()).permute(2, 0, 1).float() / 255 for n in names]
        return torch.stack([F.interpolate(i[None], size=(size, size), mode="bilinear")[0] for i in imgs])
    except ImportError:
        return torch.rand(5, 3, size, size)


def run() -> None:
    import torchvision

    torch.manual_seed(0)
    images = _photos()
    print(f"images: {tuple(images.shape)} from scikit-image")
    net = torchvision.models.resnet18(num_classes=256)
    target = copy.deepcopy(net)
    flipped = images.flip(-1)
    p = net(images)
    with torch.no_grad():
        z = target(flipped)
    ours = byol_loss(p, z)
    ours.backward()
    grad_ours = net.fc.weight.grad.clone()
    net.zero_grad()
    ref = 2 - 2 * F.cosine_similarity(net(images), z, dim=-1).mean()
    ref.backward()
    err = (grad_ours - net.fc.weight.grad).abs().max().item()
    print(f"byol_loss: {ours.item():.6f}  PyTorch: {ref.item():.6f}  max grad difference: {err:.2e}")

    big = torchvision.models.resnet50()
    big_target = copy.deepcopy(big)
    params = sum(p.numel() for p in big.parameters())
    for label, fn in [
        ("byol_rs.ema_update_", lambda: ema_update_(big_target, big, 0.996)),
        ("torch foreach mul+add", lambda: _foreach_ema(big_target, big, 0.996)),
    ]:
        fn()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        print(f"{label:>22}: {(time.perf_counter() - t0) / 5 * 1e3:6.1f} ms over {params / 1e6:.1f} M params")
    print(f"tau schedule: {[round(cosine_tau(k, 4), 5) for k in range(5)]}")


@torch.no_grad()
def _foreach_ema(target, online, tau):
    t, o = list(target.parameters()), list(online.parameters())
    torch._foreach_mul_(t, tau)
    torch._foreach_add_(t, o, alpha=1 - tau)
