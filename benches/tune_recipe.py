"""One probe of the `byol-rs train` recipe search (benches/RESULTS.md, issue 5): train with some
defaults overridden, then full-set weighted kNN and linear probe. Prints one JSON line.

    python benches/tune_recipe.py NAME EPOCHS '{"crop_scale": [0.35, 1.0]}'
    python benches/tune_recipe.py NAME -10 '{"batch_size": 256, "aug": {"blur_p": 0.5}}'   # 10 minutes

EPOCHS > 0 trains that many epochs (accuracy independent of machine load); a negative value is a
wall-time budget in minutes, as `byol-rs train` runs it. Keys are TrainConfig fields or byol_rs.BYOL
arguments (which go to TrainConfig.learner, e.g. "lr"); "aug" holds Augment.small_image overrides
(view settings for both views, or "size", the views' side). No periodic kNN, no checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import torch

import byol_rs.trainer as trainer
from byol_rs.augment import Augment


def evaluate_target_weights(tr) -> dict:
    """kNN / linear of the target (EMA) backbone's weights, with the online BN statistics (the
    target's own running statistics are not kept by default)."""
    online, target = tr.learner.named_parameters(), tr.learner.target_named_parameters()
    keys = [k for k in target if k.startswith("backbone.")]
    saved = {k: online[k].detach().clone() for k in keys}
    with torch.no_grad():
        for k in keys:
            online[k].copy_(target[k])
    try:
        r = trainer.evaluate(tr.learner, tr.data, linear=True)
    finally:
        with torch.no_grad():
            for k in keys:
                online[k].copy_(saved[k])
    return {"knn": r["knn"], "linear": r["linear"]}


def main() -> None:
    name, budget = sys.argv[1], float(sys.argv[2])
    over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    aug_over = over.pop("aug", {})

    def augment(cfg, source):  # trainer._augment's signature
        views = {"blur_p": cfg.blur_p, **aug_over}
        size = views.pop("size", source.view_size)  # evaluation still sees whole images
        return Augment.small_image(size, mean=source.mean, std=source.std, crop_scale=tuple(cfg.crop_scale),
                                   seed=cfg.seed, **views)

    trainer._augment = augment
    length = dict(epochs=budget, minutes=None) if budget > 0 else dict(epochs=None, minutes=-budget)
    own = {f.name for f in dataclasses.fields(trainer.TrainConfig)}
    learner = {k: v for k, v in over.items() if k not in own}
    cfg = trainer.TrainConfig(**length, out=f"/tmp/tune_recipe/{name}", eval_every_minutes=0,
                              checkpoint_every_minutes=1e9, progress=False, learner=learner,
                              **{k: v for k, v in over.items() if k in own})
    tr = trainer.Trainer(cfg, force=True)
    t0 = time.time()
    tr.train()
    seconds = time.time() - t0
    r = trainer.evaluate(tr.learner, tr.data, linear=True)
    target = evaluate_target_weights(tr) if os.environ.get("TUNE_TARGET") else None
    print(json.dumps({"target": target, "name": name, "epochs": round(tr.total_steps / tr.steps_per_epoch, 2), "steps": tr.total_steps,
                      "over": over, "aug": aug_over, "train_s": round(seconds),
                      "img_s": round(tr.total_steps * cfg.batch_size / seconds), "knn": r["knn"], "linear": r["linear"]}))


if __name__ == "__main__":
    main()
