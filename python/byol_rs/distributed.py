"""Data parallelism through ``torch.distributed``: what the Rust engine needs from a process group.

The engine calls back into Python for one thing only, an in-place sum across ranks
(``torch.distributed.all_reduce``). With it the step averages the flat gradient buffer (one
collective), synchronises BatchNorm statistics when ``sync_bn`` is on, and makes every rank
stop together when any rank rejects its input.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from .errors import ByolTypeError, ByolValueError

__all__ = ["rank_and_world", "group_spec"]


def _dist():
    import torch.distributed as dist

    return dist


def rank_and_world(process_group: Any = None) -> Tuple[int, int]:
    """``(rank, world_size)`` of the process group, or ``(0, 1)`` when none is initialised."""
    dist = _dist()
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(process_group), dist.get_world_size(process_group)


def group_spec(
    distributed: Optional[bool], sync_bn: Optional[bool], process_group: Any = None
) -> Optional[Tuple[Any, int, int, bool]]:
    """What ``_core.Learner`` takes for a data-parallel run, or ``None`` for a single process.

    ``distributed=None`` joins the default process group when one is initialised with more
    than one rank; ``True`` insists (and raises without one); ``False`` never joins.
    ``sync_bn=None`` means on whenever the run is distributed, as in the paper.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise ByolTypeError(f"distributed: expected bool or None, got {type(distributed).__name__}")
    if sync_bn is not None and not isinstance(sync_bn, bool):
        raise ByolTypeError(f"sync_bn: expected bool or None, got {type(sync_bn).__name__}")
    dist = _dist()
    initialised = dist.is_available() and dist.is_initialized()
    if distributed and not initialised:
        raise ByolValueError(
            "distributed=True: torch.distributed has no initialised process group; call "
            "torch.distributed.init_process_group('gloo' or 'nccl') first (torchrun sets the environment)"
        )
    if distributed is False or not initialised:
        if process_group is not None:
            raise ByolValueError("process_group: given, but the learner is not distributed")
        return None
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    if world == 1 and distributed is None:
        return None

    # NCCL reduces CUDA tensors only; the engine's small control values (agreement flags, the
    # loss) come as CPU tensors and make a round trip through the GPU.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(process_group) == "nccl" else None

    def all_reduce_sum(t: torch.Tensor) -> None:
        if device is not None and t.device.type == "cpu":
            on_device = t.to(device)
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=process_group)
            t.copy_(on_device)
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=process_group)

    return all_reduce_sum, rank, world, world > 1 if sync_bn is None else sync_bn
