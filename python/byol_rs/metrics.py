"""``StepMetrics``: what ``BYOL.step`` returns, read from the device only when asked."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping

import torch


class StepMetrics(Mapping[str, Any]):
    """A read-only mapping ``loss, lr, tau, step, z_std, updated, skipped_steps, loss_scale``.

    On CUDA the step does not wait for the GPU, so ``loss`` and ``z_std`` are still being
    computed when it returns. They are read (and the host waits for the GPU) the first time
    you access them; a loop that logs every 50 steps therefore synchronises every 50 steps,
    not every step. On CPU every value is a plain number already. ``dict(metrics)`` gives
    a plain dict of Python numbers.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        if isinstance(value, torch.Tensor):
            value = self._values[key] = value.item()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"StepMetrics({dict(self)!r})"
