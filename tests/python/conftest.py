import pytest
import torch

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device; none is visible")


def devices():
    """CPU always; CUDA as a marked case that skips with a reason where absent."""
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]
