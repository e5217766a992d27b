"""Exception classes raised by byol_rs.

Every error derives from :class:`ByolError`, and also from the builtin a caller would expect
(``ValueError``, ``TypeError``), so ``except ValueError`` keeps working.
"""


class ByolError(Exception):
    """Base class of every error raised by byol_rs."""


class ByolValueError(ByolError, ValueError):
    """An argument has the right type but a wrong value (shape, dtype, range, device)."""


class ByolTypeError(ByolError, TypeError):
    """An argument has the wrong type."""


class NonFiniteLossError(ByolValueError, FloatingPointError):
    """The loss was NaN or infinite; no weight, optimizer state or counter was changed."""


class CheckpointError(ByolValueError):
    """A checkpoint is missing, truncated, foreign or could not be written."""


class ByolRuntimeError(ByolError, RuntimeError):
    """libtorch failed while running a valid call: out of memory, a CUDA or cuDNN error. A failed
    training step leaves the weights, the optimizer state and the counters as they were."""


class DistributedError(ByolRuntimeError):
    """A collective failed, or another rank rejected its input, so every rank stopped this step
    with no weight, optimizer state or counter changed."""


__all__ = ["ByolError", "ByolValueError", "ByolTypeError", "ByolRuntimeError", "NonFiniteLossError", "CheckpointError",
           "DistributedError"]
