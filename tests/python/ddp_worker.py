"""One rank of the data-parallel tests (tests/python/test_distributed.py), run under torchrun
with Gloo. Each case writes what the test checks to ``OUT/<case>.rank<r>.pt``.

    torchrun --standalone --nproc-per-node 2 tests/python/ddp_worker.py CASE OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import byol_rs
from byol_rs.errors import ByolValueError, DistributedError

# NCHW: the parity tests compare two half batches with one full batch at 1e-5, and oneDNN's NCHW
# weight-gradient sums are the more precise (NHWC's land at ~1e-5 relative, summation order).
SMALL = dict(in_channels=1, projector_hidden=64, predictor_hidden=64, projection_dim=32, total_steps=10, warmup_steps=2,
             channels_last=False)
BATCH, STEPS = 16, 3


def views(step: int) -> tuple:
    """The global batch of a step, identical on every rank and in the single-process run."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, 1, 28, 28, generator=g), torch.randn(BATCH, 1, 28, 28, generator=g)


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = x.shape[0] // world
    return x[rank * n : (rank + 1) * n]


def state(learner: byol_rs.BYOL) -> dict:
    out = {}
    for prefix, d in [
        ("online.", learner.named_parameters()),
        ("online.", learner.named_buffers()),
        ("target.", learner.target_named_parameters()),
        ("target.", learner.target_named_buffers()),
        ("optim.", learner.optimizer_state()),
    ]:
        out.update({prefix + k: v.detach().clone() for k, v in d.items()})
    return out


def parity(rank: int, world: int, out: Path) -> None:
    result = {}
    for name, kwargs in [("lars", {}), ("sgd", dict(optimizer="sgd", lr=0.5)), ("no_sync_bn", dict(sync_bn=False))]:
        learner = byol_rs.BYOL("convnet", **SMALL, **kwargs)
        losses = []
        for step in range(STEPS):
            v1, v2 = views(step)
            losses.append(learner.step(shard(v1, rank, world), shard(v2, rank, world))["loss"])
        result[name] = {"losses": losses, "state": state(learner)}
    torch.save(result, out / f"parity.rank{rank}.pt")


def bad_input(rank: int, world: int, out: Path) -> None:
    learner = byol_rs.BYOL("convnet", **SMALL)
    v1, v2 = views(0)
    learner.step(shard(v1, rank, world), shard(v2, rank, world))
    before = state(learner)
    v1, v2 = views(1)
    v1, v2 = shard(v1, rank, world).clone(), shard(v2, rank, world)
    if rank == 1:
        v1[0, 0, 0, 0] = float("nan")
    raised = None
    try:
        learner.step(v1, v2)
    except (ByolValueError, DistributedError) as e:
        raised = (type(e).__name__, str(e))
    unchanged = all(torch.equal(before[k], v) for k, v in state(learner).items())
    # The ranks are still in step: a good call afterwards works everywhere.
    v1, v2 = views(2)
    learner.step(shard(v1, rank, world), shard(v2, rank, world))
    torch.save({"raised": raised, "unchanged": unchanged, "step": learner.step_count, "state": state(learner)}, out / f"bad_input.rank{rank}.pt")


def config_mismatch(rank: int, world: int, out: Path) -> None:
    raised = None
    try:
        byol_rs.BYOL("convnet", **{**SMALL, "projection_dim": 32 + rank})
    except DistributedError as e:
        raised = str(e)
    # An invalid config on one rank: it raises its own error, the others stop too (no hang).
    invalid = None
    try:
        byol_rs.BYOL("convnet", **{**SMALL, "lr": -1.0 if rank == 1 else 0.2})
    except (ByolValueError, DistributedError) as e:
        invalid = (type(e).__name__, str(e))
    torch.save({"raised": raised, "invalid": invalid}, out / f"config_mismatch.rank{rank}.pt")


def resume(rank: int, world: int, out: Path) -> None:
    """Saves a checkpoint at this world size, and loads the one a single process saved."""
    aug = byol_rs.Augment.small_image(28, mean=(0.5,), std=(0.25,))
    learner = byol_rs.BYOL("convnet", **SMALL, augment=aug)
    images = torch.randint(0, 256, (BATCH, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    learner.step(shard(images, rank, world))
    learner.save(out / "ddp.ckpt")
    dist.barrier()
    loaded = byol_rs.BYOL.load(out / "single.ckpt")
    metrics = loaded.step(shard(images, rank, world))
    torch.save({"loaded_world": loaded.world_size, "metrics": metrics, "state": state(loaded)}, out / f"resume.rank{rank}.pt")


def nn_ddp(rank: int, world: int, out: Path) -> None:
    """byol_rs.nn.BYOL inside DistributedDataParallel with torch.optim, as a user would."""
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(rank)  # different inits on purpose: DDP broadcasts rank 0's
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = byol_rs.nn.BYOL(backbone, projector_hidden=32, projection_dim=16, predictor_hidden=32, input_shape=(1, 28, 28))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    losses = []
    for step in range(STEPS):
        v1, v2 = views(step)
        loss = ddp(shard(v1, rank, world), shard(v2, rank, world))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target()
        losses.append(loss.item())
    torch.save({"losses": losses, "state": {k: v.clone() for k, v in model.state_dict().items()}}, out / f"nn_ddp.rank{rank}.pt")


def main() -> None:
    case, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        {"parity": parity, "bad_input": bad_input, "config_mismatch": config_mismatch, "resume": resume,
         "nn_ddp": nn_ddp}[case](rank, world, out)
        dist.barrier()  # no rank tears down its connections while another still uses them
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
