"""Pure-PyTorch reference for one BYOL training step.

This module is an independent re-implementation of BYOL -- "Bootstrap Your
Own Latent: A New Approach to Self-Supervised Learning", Grill et al.,
arXiv:2006.07733 -- following the math of the official DeepMind code
(https://github.com/deepmind/deepmind-research/tree/master/byol): the
symmetric normalised-MSE loss, LARS with bias/BatchNorm exclusion, the
warmup + cosine learning-rate schedule and the cosine EMA (tau) schedule.

It uses only ``torch`` and ``torchvision`` and must never import ``byol_rs``:
the tests compare the Rust engine against it, so it has to stay independent.
Everything is written out by hand (no ``torch.optim``) so that each operation
is explicit and matches the engine's order of operations closely enough for a
1e-5 relative comparison.
"""

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

__all__ = [
    "ConvNet",
    "ConvBlock",
    "MLP",
    "ReferenceBYOL",
    "make_backbone",
    "feature_dim",
    "lr_at",
    "tau_at",
    "regression_loss",
]

_RESNETS = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet34": (torchvision.models.resnet34, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
}
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)

# Biases whose output only reaches the loss through a BatchNorm have a true gradient of exactly 0;
# their optimizer state holds only rounding noise (about 1e-8), so tests compare it against an
# absolute 1e-6 rather than relatively.
ZERO_GRAD = {"projector.0.bias", "predictor.0.bias", "projector.3.bias"}
# Only the statistics take part in comparisons and in the optional BN EMA;
# num_batches_tracked is bookkeeping that the engine need not mirror.
_STAT_BUFFERS = ("running_mean", "running_var")


# --------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """conv3x3 (no bias) -> BN -> ReLU, then an optional 2x2 max-pool."""

    def __init__(self, c_in, c_out, pool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if self.pool:
            x = F.max_pool2d(x, 2)
        return x


class ConvNet(nn.Module):
    """Small 4-block conv net (32-64-128-256) for tiny images; 256 features."""

    CHANNELS = (32, 64, 128, 256)

    def __init__(self, in_channels=3):
        super().__init__()
        blocks = []
        c_in = in_channels
        for i, c_out in enumerate(self.CHANNELS):
            # The last block is not pooled; global average pooling follows.
            blocks.append(ConvBlock(c_in, c_out, pool=i < len(self.CHANNELS) - 1))
            c_in = c_out
        self.layers = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def feature_dim(name):
    """Width of the representation y produced by backbone ``name``."""
    if name == "convnet":
        return ConvNet.CHANNELS[-1]
    if name in _RESNETS:
        return _RESNETS[name][1]
    raise ValueError(f"unknown backbone {name!r}")


def make_backbone(name, in_channels=3, small_image=False):
    """Backbone returning flat features (the classifier head is removed)."""
    if name == "convnet":
        return ConvNet(in_channels)
    if name not in _RESNETS:
        raise ValueError(f"unknown backbone {name!r}")
    net = _RESNETS[name][0](weights=None)
    net.fc = nn.Identity()
    if small_image:
        # CIFAR-style stem: 3x3 stride-1 conv and no max-pool, so that
        # 32x32 inputs are not downsampled 4x before the first stage.
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return net


def MLP(in_dim, hidden, out):
    """Projector / predictor head: Linear -> BN -> ReLU -> Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, out),
    )


# --------------------------------------------------------------------------
# Schedules (closed form; k = number of optimizer steps already done)
# --------------------------------------------------------------------------


def lr_at(k, total_steps, warmup_steps, base_lr, batch_size, final_lr=0.0):
    """Linear warmup then cosine decay; base_lr scaled by batch_size / 256.

    ``final_lr`` is an absolute value and is NOT batch-scaled.
    """
    scaled = base_lr * batch_size / 256.0
    if k < warmup_steps:
        return scaled * k / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return final_lr
    t = min(k - warmup_steps, decay_steps)
    return final_lr + (scaled - final_lr) * 0.5 * (1.0 + math.cos(math.pi * t / decay_steps))


def tau_at(k, total_steps, base=0.996, final=1.0):
    """Target EMA decay: cosine ramp from ``base`` (k=0) to ``final`` (k>=total)."""
    if total_steps <= 0:
        # Degenerate schedule: treat training as already finished.
        return final
    t = min(k, total_steps)
    return final - (final - base) * 0.5 * (1.0 + math.cos(math.pi * t / total_steps))


def regression_loss(p, z):
    """BYOL loss 2 - 2 * cos(p, z), averaged over the batch; z is a constant."""
    return 2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


# --------------------------------------------------------------------------
# BYOL
# --------------------------------------------------------------------------


class ReferenceBYOL(nn.Module):
    """Online (backbone, projector, predictor) + EMA target (backbone, projector).

    Online parameter names are those of ``named_parameters()`` on the online
    submodules: ``backbone.<...>``, ``projector.{0,1,3}.{weight,bias}``,
    ``predictor.{0,1,3}.{weight,bias}``. Target names drop the ``target_``
    prefix so they line up one-to-one with the online backbone/projector.
    """

    _ONLINE = ("backbone", "projector", "predictor")
    # target module attribute -> online module attribute it shadows
    _TARGET = (("target_backbone", "backbone"), ("target_projector", "projector"))

    def __init__(
        self,
        backbone="resnet18",
        in_channels=3,
        small_image=False,
        proj_hidden=4096,
        proj_out=256,
        pred_hidden=4096,
        optimizer="lars",
        base_lr=0.2,
        batch_size=256,
        weight_decay=1.5e-6,
        momentum=0.9,
        eta=1e-3,
        betas=(0.9, 0.999),
        adam_eps=1e-8,
        total_steps=1000,
        warmup_steps=0,
        tau_base=0.996,
        tau_final=1.0,
        ema_bn_stats=False,
        simsiam=False,
        autocast=None,
        channels_last=False,
    ):
        super().__init__()
        if optimizer not in ("lars", "sgd", "adamw"):
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.backbone = make_backbone(backbone, in_channels, small_image)
        self.projector = MLP(feature_dim(backbone), proj_hidden, proj_out)
        self.predictor = MLP(proj_out, pred_hidden, proj_out)
        # The target starts as an exact copy of the online network and is
        # only ever changed by the EMA, never by gradients.
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self._target_param_list():
            p.requires_grad_(False)
        # NHWC weights and inputs: oneDNN then runs its NHWC kernels, as the engine does.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

        self.optimizer = optimizer
        self.base_lr = base_lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.eta = eta
        self.betas = tuple(betas)
        self.adam_eps = adam_eps
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.tau_base = tau_base
        self.tau_final = tau_final
        self.ema_bn_stats = ema_bn_stats
        # SimSiam (Chen & He 2020, algorithm 1): the target is the online projection of the
        # other view, detached; the EMA copy is not used.
        self.simsiam = simsiam
        # Mixed precision as torch.autocast gives it: forward in this dtype, the loss in fp32.
        self.autocast = autocast
        self.step_count = 0

        self._excluded = self._find_excluded()
        # Optimizer state, zero before the first step (so the first SGD/LARS
        # momentum buffer equals the first update).
        self._state = {}
        for name, p in self.online_named_parameters():
            if optimizer == "adamw":
                self._state[name + ".exp_avg"] = torch.zeros_like(p)
                self._state[name + ".exp_avg_sq"] = torch.zeros_like(p)
            else:
                self._state[name] = torch.zeros_like(p)

    # ---- naming helpers -------------------------------------------------

    def online_named_parameters(self):
        """List of (name, parameter) for the online network, in module order."""
        return [
            (f"{mod}.{n}", p)
            for mod in self._ONLINE
            for n, p in getattr(self, mod).named_parameters()
        ]

    def target_named_parameters(self):
        """List of (name, parameter) for the target, named like the online ones."""
        return [
            (f"{online}.{n}", p)
            for target, online in self._TARGET
            for n, p in getattr(self, target).named_parameters()
        ]

    def online_named_buffers(self):
        """(name, tensor) of online BN running_mean / running_var."""
        return self._stat_buffers(self._ONLINE, self._ONLINE)

    def target_named_buffers(self):
        """(name, tensor) of target BN running_mean / running_var, online-style names."""
        return self._stat_buffers([t for t, _ in self._TARGET], [o for _, o in self._TARGET])

    def _stat_buffers(self, modules, prefixes):
        return [
            (f"{prefix}.{n}", b)
            for mod, prefix in zip(modules, prefixes)
            for n, b in getattr(self, mod).named_buffers()
            if n.rsplit(".", 1)[-1] in _STAT_BUFFERS
        ]

    def _target_param_list(self):
        return [p for _, p in self.target_named_parameters()]

    def _find_excluded(self):
        """Names excluded from weight decay and LARS adaptation.

        Biases (by name) and every parameter of a BatchNorm layer (by module
        type, so naming conventions cannot hide a BN weight).
        """
        excluded = set()
        for mod in self._ONLINE:
            for mname, m in getattr(self, mod).named_modules():
                if isinstance(m, _BN_TYPES):
                    for pname, _ in m.named_parameters(recurse=False):
                        full = ".".join(x for x in (mod, mname, pname) if x)
                        excluded.add(full)
        for name, _ in self.online_named_parameters():
            if name.endswith(".bias"):
                excluded.add(name)
        return excluded

    def excluded_names(self):
        """Set of online parameter names without weight decay / LARS scaling."""
        return set(self._excluded)

    def optimizer_state(self):
        """dict name -> state tensor (momentum buffers or AdamW moments)."""
        return dict(self._state)

    @torch.no_grad()
    def copy_online_to_target(self):
        """Make the target an exact copy of the online backbone + projector."""
        for target, online in self._TARGET:
            t_mod, o_mod = getattr(self, target), getattr(self, online)
            for t, o in zip(t_mod.parameters(), o_mod.parameters()):
                t.copy_(o)
            for t, o in zip(t_mod.buffers(), o_mod.buffers()):
                t.copy_(o)

    # ---- training step --------------------------------------------------

    def lr(self, k=None):
        k = self.step_count if k is None else k
        return lr_at(k, self.total_steps, self.warmup_steps, self.base_lr, self.batch_size)

    def tau(self, k=None):
        k = self.step_count if k is None else k
        return tau_at(k, self.total_steps, self.tau_base, self.tau_final)

    def step(self, view1, view2):
        """One BYOL step on two augmented views; returns loss, lr and tau."""
        k = self.step_count
        lr, tau = self.lr(k), self.tau(k)
        self.train()
        view1 = view1.contiguous(memory_format=self.memory_format)
        view2 = view2.contiguous(memory_format=self.memory_format)

        # Each view gets its own forward pass, so BatchNorm batch statistics
        # (and running-stat updates) are per view, as in the official code.
        with torch.autocast(view1.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            z1 = self.projector(self.backbone(view1))
            z2 = self.projector(self.backbone(view2))
            p1, p2 = self.predictor(z1), self.predictor(z2)
            if self.simsiam:
                zt1, zt2 = z1.detach(), z2.detach()
            else:
                with torch.no_grad():
                    # Target also runs in train mode: batch statistics, and its own
                    # running statistics get updated.
                    zt1 = self.target_projector(self.target_backbone(view1))
                    zt2 = self.target_projector(self.target_backbone(view2))
        p1, p2, zt1, zt2 = p1.float(), p2.float(), zt1.float(), zt2.float()

        loss = regression_loss(p1, zt2) + regression_loss(p2, zt1)
        for _, p in self.online_named_parameters():
            p.grad = None
        loss.backward()
        loss_value = loss.item()

        with torch.no_grad():
            self._apply_update(lr, k + 1)
            if not self.simsiam:
                self._ema_update(tau)

        self.step_count = k + 1
        return {"loss": loss_value, "lr": lr, "tau": tau}

    def _apply_update(self, lr, t):
        """Hand-written LARS / SGD / AdamW update; t is the 1-based step."""
        wd = self.weight_decay
        for name, w in self.online_named_parameters():
            g = w.grad
            if g is None:
                g = torch.zeros_like(w)
            excluded = name in self._excluded
            if self.optimizer in ("lars", "sgd"):
                if not excluded:
                    g = g + wd * w
                if self.optimizer == "lars" and not excluded:
                    # Layer-wise trust ratio; falls back to 1 when either
                    # norm is zero (official byol/utils/optimizers.py).
                    pn = torch.linalg.vector_norm(w)
                    gn = torch.linalg.vector_norm(g)
                    one = torch.ones_like(pn)
                    trust = torch.where(
                        pn > 0, torch.where(gn > 0, self.eta * pn / gn, one), one
                    )
                    g = g * trust
                buf = self._state[name]
                buf.mul_(self.momentum).add_(g)
                w.sub_(lr * buf)
            else:
                b1, b2 = self.betas
                if not excluded:
                    # Decoupled weight decay, applied before the Adam step.
                    w.mul_(1.0 - lr * wd)
                m = self._state[name + ".exp_avg"]
                v = self._state[name + ".exp_avg_sq"]
                m.mul_(b1).add_((1.0 - b1) * g)
                v.mul_(b2).add_((1.0 - b2) * g * g)
                mhat = m / (1.0 - b1**t)
                vhat = v / (1.0 - b2**t)
                w.sub_(lr * mhat / (vhat.sqrt() + self.adam_eps))

    def _ema_update(self, tau):
        """xi <- tau * xi + (1 - tau) * theta, with the freshly updated theta."""
        online = dict(self.online_named_parameters())
        for name, xi in self.target_named_parameters():
            xi.lerp_(online[name], 1.0 - tau)
        if self.ema_bn_stats:
            online_bufs = dict(self.online_named_buffers())
            for name, b in self.target_named_buffers():
                b.lerp_(online_bufs[name], 1.0 - tau)


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ReferenceBYOL(
        "convnet",
        in_channels=1,
        proj_hidden=64,
        proj_out=32,
        pred_hidden=64,
        optimizer="lars",
        base_lr=0.2,
        batch_size=16,
        weight_decay=1.5e-6,
        total_steps=10,
        warmup_steps=0,
    )

    online = model.online_named_parameters()
    target = model.target_named_parameters()
    online_names = {n for n, _ in online}
    assert [n for n, _ in target] == [n for n, _ in online if not n.startswith("predictor.")]
    for (_, o), (_, t) in zip(online, target):
        assert torch.equal(o, t) and not t.requires_grad
    for (_, o), (_, t) in zip(model.online_named_buffers(), model.target_named_buffers()):
        assert torch.equal(o, t)

    excluded = model.excluded_names()
    for name in online_names:
        is_bias = name.endswith(".bias")
        is_bn = ".bn." in name or name.startswith(("projector.1.", "predictor.1."))
        assert (name in excluded) == (is_bias or is_bn), name
    print(f"{len(online_names)} online parameters, {len(excluded)} excluded")

    for _ in range(3):
        v1 = torch.randn(16, 1, 28, 28)
        v2 = torch.randn(16, 1, 28, 28)
        out = model.step(v1, v2)
        print(f"loss={out['loss']:.6f} lr={out['lr']:.6f} tau={out['tau']:.6f}")
