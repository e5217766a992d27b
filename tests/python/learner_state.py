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


def trainer_weights(trainer):
    """A trainer's online weights, target weights and optimizer state, by prefixed name."""
    l = trainer.learner
    return {**l.named_parameters(), **{"t." + k: v for k, v in l.target_named_parameters().items()},
            **{"o." + k: v for k, v in l.optimizer_state().items()}}


def train_until_interrupted(trainer, steps):
    """Runs ``trainer.train()`` and raises KeyboardInterrupt before its step ``steps + 1``, as
    Ctrl-C between two steps does; the trainer saves its checkpoint on the way out."""
    import pytest

    real_step, calls = trainer.learner.step, []

    def step_then_interrupt(images):
        if len(calls) == steps:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(images)

    trainer.learner.step = step_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        trainer.train()


def full_and_resumed(config, cut_at):
    """``(full, resumed)``: a trainer on ``config("full")`` run to the end, and one on
    ``config("cut")`` interrupted after ``cut_at`` steps, then resumed and run to the end."""
    from byol_rs.trainer import Trainer

    full = Trainer(config("full"))
    full.train()
    cut_cfg = config("cut")
    train_until_interrupted(Trainer(cut_cfg), cut_at)
    resumed = Trainer(cut_cfg, resume=True)
    assert resumed.learner.step_count == cut_at
    resumed.train()
    return full, resumed
