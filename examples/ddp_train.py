"""Data-parallel BYOL over torch.distributed, from a DataLoader the user already has.

    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py

Each rank reads its own shard (DistributedSampler), augments it in Rust and steps; inside
``step`` one all-reduce averages the gradients, and SyncBN shares BN statistics across ranks.
Rank 0 prints and saves. Runs on CPU with Gloo (NCCL and one GPU per rank with --device cuda).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import byol_rs
from byol_rs import data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, split over the ranks")
    parser.add_argument("--out", default="runs/ddp_example.safetensors")
    args = parser.parse_args()

    device = args.device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    images = data.load("digits").train_images  # uint8 [N, 1, 8, 8]; any image Dataset works the same
    sampler = DistributedSampler(TensorDataset(images), shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(TensorDataset(images), batch_size=args.batch_size // world, sampler=sampler, drop_last=True)

    augment = byol_rs.Augment.small_image(8, seed=0)
    learner = byol_rs.BYOL("convnet", in_channels=1, projector_hidden=256, predictor_hidden=256, projection_dim=64,
                           lr=1.0, total_steps=args.epochs * len(loader), device=device, augment=augment)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for (batch,) in loader:
            m = learner.step(batch)
        if rank == 0:
            print(f"epoch {epoch}: loss {m['loss']:.3f} (mean over {world} ranks), step {m['step']}")
    if rank == 0:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    learner.save(args.out)  # rank 0 writes; the others return at once
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
