"""Snapshots of a learner's whole training state, for tests that check it is (un)changed."""

import torch

STATE_KINDS = ["named_parameters", "target_named_parameters", "named_buffers", "target_named_buffers", "optimizer_state"]


def snapshot(learner):
    """Copies of every state tensor, plus the step counter."""
    out = {}
    for kind in STATE_KINDS:
        out.update({f"{kind}:{k}": v.detach().clone() for k, v in getattr(learner, kind)().items()})
    out["step"] = learner.step_count
    return out


def assert_same(a, b):
    """Bit-identical snapshots."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k
