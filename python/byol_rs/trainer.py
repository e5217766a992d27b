"""The main job behind ``byol-rs train``: BYOL on an in-memory image set or a streamed folder
of images (:mod:`byol_rs.sources`) for a time or epoch budget, with live progress, periodic
kNN, checkpoints, exact resume, and a final report against the same backbone at random init.
The heavy work (augmentations, steps, kNN, linear probe) runs in Rust; this module only
orchestrates."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import data as datasets
from . import run_files
from .augment import Augment
from .errors import ByolTypeError
from .eval import LinearProbe, effective_rank, knn_accuracy, z_std
from .learner import BYOL, SCHEMA
from .progress import progress
from .sources import (PERIODIC_BANK, PERIODIC_QUERIES, EpochBatchSampler, Features, InMemorySource, Source,
                      min_side, open_source)
from .sources import view_size  # noqa: F401 - re-exported: it was defined here

CHECKPOINT = "checkpoint.safetensors"
STATE = "trainer_state.json"
# The progress bar shows the loss every this many steps (reading it waits for a GPU), or
# after this many seconds when steps are slow.
POSTFIX_EVERY = 25
POSTFIX_EVERY_SECONDS = 2.0
# A time-budgeted run re-plans its length after this share of the run, then after this share
# of what remains each time, counted in steps or in time (Trainer._replan_after).
FIRST_REPLAN, LATER_REPLANS = 0.15, 0.25
REPLAN_MIN_STEPS = 3  # steps a re-plan's speed is measured over, at the least
# The plan's probe of the step time stops early after this share of the budget (at least
# PROBE_MIN_SECONDS), having timed one step at least.
PROBE_SHARE, PROBE_MIN_SECONDS = 0.05, 5.0
# New rows go to metrics.csv this often, and at each checkpoint.
ROWS_EVERY_SECONDS = 5.0
OUTPUTS = ("metrics.csv", "report.json", "curves.png", CHECKPOINT, STATE)
# Config fields that do not change what a run computes, so a resumed run may change them.
NOT_RESUME_CHECKED = ("minutes", "epochs", "progress", "out", "eval_every_minutes", "checkpoint_every_minutes",
                      "device", "workers", "strict", "stream")
# report.json's final_loss and final_z_std: the means over this many last steps.
FINAL_STEPS = 20
# report.json and the summary name this many skipped files.
SKIPPED_NAMED = 10


#: The trainer's learner recipe: where it departs from ``byol_rs.BYOL``'s defaults (the paper's),
#: unless ``TrainConfig.learner`` overrides it. Measured in benches/RESULTS.md for Fashion-MNIST on
#: 2 CPU cores. ``predictor_hidden`` follows an overridden ``projector_hidden`` (see learner_settings).
RECIPE: Dict[str, Any] = dict(backbone="convnet", lr=4.5, tau_base=0.98, projector_hidden=1024,
                              predictor_hidden=1024, projection_dim=128)
#: The BYOL arguments the trainer sets itself, and where each comes from: ``learner`` may not hold them.
SET_BY_TRAINER = {
    "in_channels": "the images", "small_image": "the images", "total_steps": "the budget (minutes or epochs)",
    "warmup_steps": "warmup_fraction", "steps_per_epoch": "the data and batch_size",
    "augment": "crop_scale, blur_p and view_fraction", "device": "TrainConfig.device", "seed": "TrainConfig.seed",
    "batch_size": "TrainConfig.batch_size", "distributed": "torchrun", "process_group": "torchrun",
}
_BYOL_ARGUMENTS = frozenset(inspect.signature(BYOL).parameters)
# The fields a TrainConfig had for the learner before ``learner``: read back from old run directories.
_OLD_LEARNER_FIELDS = ("backbone", "preset", "optimizer", "lr", "weight_decay", "tau_base", "projector_hidden",
                       "projection_dim")


class TrainError(ValueError):
    """A problem with the run's inputs; the CLI prints it on one line and exits with 2."""


@dataclass
class TrainConfig:
    """The trainer's own settings; the learner's recipe is :data:`RECIPE` with ``learner`` over it.
    Defaults: the recipe measured in benches/RESULTS.md for Fashion-MNIST on 2 CPU cores."""
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    minutes: Optional[float] = 10.0
    epochs: Optional[float] = None
    #: Images per step: the loader's batch (the global batch under torchrun).
    batch_size: int = 64
    crop_scale: tuple = (0.35, 1.0)
    blur_p: float = 0.5
    #: The views' side as a fraction of the images' (see ``view_size``); evaluation always sees
    #: whole images at their own size.
    view_fraction: float = 0.72
    #: A folder of images only (``--data DIR`` with image files), see byol_rs.sources:
    #: ``val_dir`` a labelled evaluation folder with the training classes, or ``val_fraction``
    #: of ``data_dir`` held out; ``image_size`` the views' side (None: 64 for the ConvNet, 224
    #: for ResNets); ``workers`` loader processes per rank (None: the cores less one);
    #: ``strict`` stops at the first unreadable file instead of skipping it; ``stream`` reads a
    #: folder of small images through the loader every epoch even when it fits in memory.
    val_dir: Optional[str] = None
    val_fraction: Optional[float] = None
    image_size: Optional[int] = None
    workers: Optional[int] = None
    strict: bool = False
    stream: bool = False
    warmup_fraction: float = 0.05
    #: Where the data and the learner live, and the seed of the sampler and the learner.
    device: str = "cpu"
    seed: int = 0
    out: str = "runs/byol"
    eval_every_minutes: float = 5.0
    checkpoint_every_minutes: float = 2.0
    knn_k: int = 200
    knn_temperature: float = 0.1
    progress: bool = True
    #: ``byol_rs.BYOL`` keyword arguments over :data:`RECIPE`, e.g. ``{"backbone": "resnet18", "lr": 2.0}``.
    learner: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.learner:
            if key in SET_BY_TRAINER:
                raise TrainError(f"learner[{key!r}]: the trainer sets it itself, from {SET_BY_TRAINER[key]}")
            if key not in _BYOL_ARGUMENTS:
                raise TrainError(f"learner[{key!r}]: not an argument of byol_rs.BYOL")

    def learner_settings(self) -> Dict[str, Any]:
        """The BYOL arguments of the recipe: :data:`RECIPE` with ``learner`` over it."""
        settings = {**RECIPE, **self.learner}
        if "projector_hidden" in self.learner and "predictor_hidden" not in self.learner:
            settings["predictor_hidden"] = self.learner["projector_hidden"]  # one width for both MLPs
        return settings

    @property
    def backbone(self) -> str:
        return self.learner_settings()["backbone"]


def _refusing_learner_keywords(init: Any) -> Any:
    """``TrainConfig(lr=...)`` names where a learner setting goes, instead of Python's bare
    "unexpected keyword argument" (before ``learner``, some of them were TrainConfig fields)."""
    own = {f.name for f in fields(TrainConfig)}

    @functools.wraps(init)
    def checked(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in own and key in _BYOL_ARGUMENTS:
                raise ByolTypeError(f"TrainConfig: {key} is a byol_rs.BYOL setting; pass it as learner={{{key!r}: ...}}")
        init(self, *args, **kwargs)
    return checked


TrainConfig.__init__ = _refusing_learner_keywords(TrainConfig.__init__)  # type: ignore[method-assign]


def _saved_learner(saved: Dict[str, Any]) -> Dict[str, Any]:
    """The learner settings of a config read back from trainer_state.json. A run from before
    ``learner`` saved them as flat fields, with the other BYOL arguments in ``extra``, and gave
    the predictor the projector's width."""
    if "learner" in saved:
        return dict(saved["learner"])
    settings = {k: saved[k] for k in _OLD_LEARNER_FIELDS if k in saved}
    settings.update(saved.get("extra") or {})
    if "projector_hidden" in settings:
        settings.setdefault("predictor_hidden", settings["projector_hidden"])
    return settings


def _config_record(cfg: TrainConfig) -> Dict[str, Any]:
    """The config as trainer_state.json and report.json hold it: ``learner`` is every recipe
    setting, so that a later change of RECIPE cannot pass for the same run on resume."""
    return {**asdict(cfg), "learner": cfg.learner_settings()}


def _augment(cfg: TrainConfig, source: Source) -> Augment:
    """Photos get the paper's views; small images the small-image recipe (``crop_scale``, ``blur_p``)."""
    if source.paper_views:
        return Augment.byol(source.view_size, mean=source.mean, std=source.std, seed=cfg.seed)
    return Augment.small_image(source.view_size, mean=source.mean, std=source.std, crop_scale=tuple(cfg.crop_scale),
                               blur_p=cfg.blur_p, seed=cfg.seed)


def _learner(cfg: TrainConfig, source: Source, total_steps: int, steps_per_epoch: int,
             distributed: Optional[bool] = None) -> BYOL:
    kwargs: Dict[str, Any] = dict(
        cfg.learner_settings(), in_channels=source.channels, small_image=source.small_image,
        total_steps=total_steps, warmup_steps=int(total_steps * cfg.warmup_fraction),
        device=cfg.device, seed=cfg.seed, augment=_augment(cfg, source), distributed=distributed)
    if kwargs.get("preset"):
        kwargs["steps_per_epoch"] = steps_per_epoch
    return BYOL(**kwargs)


def score(f: Features, *, linear: bool, k: int = 200, temperature: float = 0.1) -> Dict[str, float]:
    """kNN (and optionally linear-probe) accuracy and the collapse diagnostics of features;
    without a labelled set (``f.test`` None) the diagnostics of the training sample alone."""
    if f.test is None:
        return {"effective_rank": effective_rank(f.train[:4096]), "feature_z_std": z_std(f.train)}
    out = {"knn": knn_accuracy(f.train, f.train_labels, f.test, f.test_labels, k=k, temperature=temperature),
           "effective_rank": effective_rank(f.test[:4096]), "feature_z_std": z_std(f.test)}
    if linear:
        probe = LinearProbe.fit(f.train, f.train_labels)
        out.update(linear=probe.accuracy(f.test, f.test_labels), linear_c=probe.c)
    return out


def evaluate(learner: BYOL, d: datasets.ImageData, *, linear: bool, k: int = 200,
             temperature: float = 0.1, max_train: Optional[int] = None,
             max_test: Optional[int] = None) -> Dict[str, float]:
    """kNN (and optionally linear-probe) accuracy of the learner's backbone features on the
    first ``max_train`` training and ``max_test`` test images of ``d``."""
    features = next(InMemorySource(d).features([learner], max_train, max_test))
    return score(features, linear=linear, k=k, temperature=temperature)


def evaluate_folder(learner: BYOL, data_dir: str, *, val_dir: Optional[str] = None,
                    val_fraction: Optional[float] = None, workers: Optional[int] = None, strict: bool = False,
                    linear: bool = True, k: int = 200, temperature: float = 0.1) -> Dict[str, float]:
    """What ``byol-rs train --data data_dir`` reports at the end, for a saved learner: kNN (and
    optionally the linear probe) with ``data_dir`` as the bank and ``val_dir`` (or
    ``val_fraction`` of ``data_dir``) as the queries, each image seen as the run's evaluation
    saw it; without a labelled set, the health metrics. The views' side comes from the learner's
    augmentation pipeline, as the run that saved it used."""
    augment = learner.config.get("augment")
    cfg = TrainConfig(data_dir=data_dir, val_dir=val_dir, val_fraction=val_fraction, workers=workers, strict=strict,
                      image_size=augment["size"][0] if augment else None,
                      learner={"backbone": learner.config["backbone"]})
    source = open_source(cfg, learner.config["device"])
    if source.channels != learner.config["in_channels"]:
        raise TrainError(f"--data {data_dir}: the checkpoint expects {learner.config['in_channels']} channel(s), "
                         f"the folder's images have {source.channels}")
    result = score(next(source.features([learner])), linear=linear, k=k, temperature=temperature)
    return {**result, "skipped_files": len(source.skipped)} if source.skipped else result


def join_torchrun(device: str) -> Tuple[int, int, str]:
    """Under ``torchrun`` (WORLD_SIZE > 1) joins the process group: Gloo on CPU, NCCL on CUDA
    with one GPU per local rank. Returns ``(rank, world_size, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _check_config(cfg: TrainConfig) -> None:
    """The settings that are wrong whatever the data."""
    if not 0 < cfg.view_fraction <= 1:
        raise TrainError(f"view_fraction (--view-fraction): expected a number in (0, 1], got {cfg.view_fraction!r}")
    if cfg.val_fraction is not None:
        if cfg.val_dir is not None:
            raise TrainError("val_fraction (--val-fraction) and val_dir (--val) contradict each other: "
                             "hold out part of --data, or evaluate on --val, not both")
        if not 0 < cfg.val_fraction < 1:
            raise TrainError(f"val_fraction (--val-fraction): expected a number in (0, 1), got {cfg.val_fraction!r}")
    if cfg.image_size is not None and cfg.image_size < min_side(cfg.backbone):
        raise TrainError(f"image_size (--image-size): the {cfg.backbone} backbone needs at least "
                         f"{min_side(cfg.backbone)} px, got {cfg.image_size}")
    if cfg.workers is not None and cfg.workers < 0:
        raise TrainError(f"workers (--workers): expected 0 (load in the main process) or more, got {cfg.workers}")


class Trainer:
    """One run of ``byol-rs train``. Under torchrun every rank runs a Trainer: ``batch_size`` is
    the global batch, each rank steps on its slice of it (a folder's rank reads only its own
    slice), and rank 0 alone evaluates, prints and writes."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, force: bool = False) -> None:
        self.rank, self.world, device = join_torchrun(cfg.device)
        self.cfg = cfg = replace(cfg, device=device)
        _check_config(cfg)
        if cfg.batch_size % self.world:
            raise TrainError(f"--batch-size {cfg.batch_size} does not split evenly over {self.world} ranks")
        self.out = Path(cfg.out)
        self._prepare_out(resume, force)
        self.source = open_source(cfg, device)
        n = self.source.num_train
        if cfg.batch_size > n:
            raise TrainError(f"--batch-size {cfg.batch_size} is larger than the training set ({n} images)")
        self.steps_per_epoch = n // cfg.batch_size
        self.log = run_files.MetricsLog(self.out / "metrics.csv")
        self._unread: List[Tuple[Dict[str, Any], Any]] = []
        self._committed: Optional[Dict[str, Any]] = None  # the state entry of the checkpoint on disk
        self.elapsed = 0.0
        self.data_wait = 0.0  # of elapsed, the seconds spent waiting for the next batch
        self._skipped: List[str] = []  # files any rank skipped, gathered at the end of train()
        if resume:
            self._resume()
        else:
            self.total_steps = self._plan_steps()
            self.learner = _learner(cfg, self.source, self.total_steps, self.steps_per_epoch)
            if self.rank == 0:
                self.log.reset()

    @property
    def data(self) -> Optional[datasets.ImageData]:
        """The in-memory images (Fashion-MNIST, digits, an IDX folder); None for a folder of images."""
        return self.source.data

    def _prepare_out(self, resume: bool, force: bool) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write_test.{self.rank}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise TrainError(f"--out {self.out}: not writable ({e.strerror})") from None
        existing = [name for name in OUTPUTS if (self.out / name).exists()]
        if resume:
            if not (self.out / CHECKPOINT).exists():
                raise TrainError(f"--resume: no {CHECKPOINT} in {self.out}")
        elif existing and not force:
            raise TrainError(f"--out {self.out} already holds {', '.join(existing)}; use --force to overwrite or --resume to continue")

    def _plan_steps(self) -> int:
        """Steps for the budget: epochs directly, or minutes times a measured step rate."""
        if self.cfg.epochs is not None:
            return max(1, int(round(self.cfg.epochs * self.steps_per_epoch)))
        if self.world > 1:
            # Every rank plans alike: rank 0 times itself and tells the others.
            import torch.distributed as dist

            plan = [self._time_steps() if self.rank == 0 else 0]
            dist.broadcast_object_list(plan, src=0)
            return plan[0]
        return self._time_steps()

    def _time_steps(self) -> int:
        probe = _learner(self.cfg, self.source, 10_000, self.steps_per_epoch, distributed=False)
        batch = self.source.probe_batch(self.cfg.batch_size // self.world)
        budget = self.cfg.minutes * 60
        # 3 warm-up steps (the first fault in memory and are slow), then 5 timed, or fewer where
        # steps are slow: the run re-plans from its own speed anyway, and a ResNet-18 at 224 px
        # on 2 cores (12 s a step) spent 96 s probing for a 1-minute run.
        allowed = max(PROBE_MIN_SECONDS, PROBE_SHARE * budget)
        start = time.perf_counter()
        for _ in range(3):
            probe.step(batch)
            if time.perf_counter() > start + allowed / 2:
                break
        deadline = start + allowed
        times: List[float] = []
        while len(times) < 5 and (not times or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            probe.step(batch)
            times.append(time.perf_counter() - t0)
        per_step = sorted(times)[len(times) // 2]  # the median: one slow step must not shrink the plan
        evals = budget / (self.cfg.eval_every_minutes * 60) if self._evaluates() else 0
        eval_cost = evals * self._knn_seconds(per_step)
        return max(1, int((budget - eval_cost) / per_step))

    def _evaluates(self) -> bool:
        """Whether periodic kNN checks run: they need a labelled set."""
        return self.cfg.eval_every_minutes > 0 and self.source.labelled

    def _knn_seconds(self, per_step: float) -> float:
        return self.source.knn_seconds(per_step, self.cfg.batch_size)

    def _resume(self) -> None:
        try:
            saved_cfg = json.loads((self.out / STATE).read_text())
            saved_cfg = (saved_cfg.get("current") or saved_cfg)["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TrainError(f"--resume: cannot read {self.out / STATE} ({e})") from None
        mine = {k: v for k, v in asdict(self.cfg).items() if k not in NOT_RESUME_CHECKED and k != "learner"}
        theirs = {k: v for k, v in saved_cfg.items() if k in mine}
        theirs["crop_scale"] = tuple(theirs.get("crop_scale", ()))
        mine["crop_scale"] = tuple(mine["crop_scale"])
        # The learner's settings as JSON gives them back (tuples as lists); no trainer field has
        # their names. A setting left out means BYOL's default, on either side.
        ours, saved = json.loads(json.dumps(self.cfg.learner_settings())), _saved_learner(saved_cfg)
        for k in ours.keys() | saved.keys():
            default = SCHEMA[k]["default"] if k in SCHEMA else None
            mine[k], theirs[k] = ours.get(k, default), saved.get(k, default)
        diff = [f"{k}: not in that checkpoint (an older byol-rs), {mine[k]!r} now" if k not in theirs
                else f"{k}: {theirs[k]!r} there, {mine[k]!r} now"
                for k in sorted(k for k in mine if mine[k] != theirs.get(k))]
        if diff:
            raise TrainError(f"--resume: the checkpoint in {self.out} was made with a different config ({'; '.join(diff)})")
        for stale in self.out.glob(CHECKPOINT.rsplit(".", 1)[0] + ".tmp-*"):  # a write a kill cut short
            stale.unlink(missing_ok=True)
        self.learner = BYOL.load(self.out / CHECKPOINT, device=self.cfg.device)
        try:
            entry = run_files.read_state(self.out / STATE, self.learner.step_count)
            if self.rank == 0:
                if entry["csv_bytes"] is None:  # an older run: its rows were in the state file
                    self.log.reset()
                    self.log.append(entry.get("rows", []))
                else:
                    self.log.truncate(entry["csv_bytes"])
        except (OSError, ValueError, KeyError) as e:
            raise TrainError(f"--resume: {self.out} is inconsistent ({e})") from None
        self.total_steps = entry["total_steps"]
        self.elapsed = entry["elapsed"]
        self.data_wait = entry.get("data_wait", 0.0)  # not in states from before it was measured
        self._committed = {k: v for k, v in entry.items() if k != "rows"}

    @property
    def rows(self) -> List[Dict[str, Any]]:
        """Every step's row so far (rank 0), read back from ``metrics.csv``."""
        self._write_rows()
        return self.log.read()

    def _write_rows(self, sync: bool = False) -> None:
        """Appends the steps' rows to metrics.csv, reading their loss and z_std (a wait on CUDA)."""
        for row, m in self._unread:
            row.update(loss=m["loss"], z_std=m["z_std"])
        if self.rank == 0:
            self.log.append((row for row, _ in self._unread), sync=sync)
        self._unread.clear()

    def _save(self) -> None:
        self._write_rows(sync=True)
        if self.rank == 0:  # the state goes first: see run_files
            entry = {"step": self.learner.step_count, "config": _config_record(self.cfg), "total_steps": self.total_steps,
                     "elapsed": self.elapsed, "data_wait": self.data_wait, "csv_bytes": self.log.size()}
            run_files.write_state(self.out / STATE, entry, self._committed)
            self._committed = entry
        self.learner.save(self.out / CHECKPOINT)  # rank 0 only writes

    def sampler(self, start_step: int = 0) -> EpochBatchSampler:
        """This rank's batches from ``start_step`` on: epoch-wise permutations derived from the
        seed, so a resumed run sees exactly the batches the uninterrupted run would."""
        return EpochBatchSampler(self.source.num_train, self.cfg.batch_size, self.cfg.seed,
                                 self.rank, self.world, start_step)

    def _due(self, eval_due: bool, ckpt_due: bool) -> Tuple[bool, bool]:
        """Rank 0's clock decides for every rank, so that they checkpoint at the same step."""
        if self.world == 1:
            return eval_due, ckpt_due
        import torch.distributed as dist

        flags = torch.tensor([eval_due, ckpt_due], dtype=torch.int64, device=self.cfg.device)
        dist.broadcast(flags, src=0)
        return bool(flags[0]), bool(flags[1])

    def train(self) -> Dict[str, Any]:
        """Runs to the end of the budget; Ctrl-C saves a checkpoint and raises KeyboardInterrupt."""
        cfg, learner = self.cfg, self.learner
        start_step = learner.step_count
        bar = progress(self.total_steps, start_step, enabled=cfg.progress and self.rank == 0)
        last_rows = time.perf_counter()
        last_eval = last_ckpt = time.perf_counter()
        t_prev = last_postfix = time.perf_counter()
        replan = self._replan_after(start_step, FIRST_REPLAN) if self._replans() else None
        stepping = 0.0  # step time since the last re-plan
        eval_seconds = 0.0  # kNN checks in this call
        step = window_start = start_step
        elapsed_before, wait_before = self.elapsed, self.data_wait
        batches = self.source.batches(self.sampler(start_step))
        stop = _DeferredInterrupt()
        try:
            while step < self.total_steps:
                asked = time.perf_counter()
                images = next(batches)
                self.data_wait += time.perf_counter() - asked
                m = learner.step(images)
                now = time.perf_counter()
                step_seconds = now - t_prev
                self.elapsed += step_seconds
                stepping += step_seconds
                t_prev = now
                step += 1
                # loss and z_std are read later (_write_rows): on CUDA each read waits for the GPU.
                row = {"step": m["step"], "epoch": round(m["step"] / self.steps_per_epoch, 4),
                       "seconds": round(self.elapsed, 2), "loss": None, "lr": m["lr"],
                       "tau": m["tau"], "z_std": None, "knn": ""}
                self._unread.append((row, m))
                if step == start_step + 1:
                    # The call's first step starts the loader's workers and faults in memory (20 s
                    # of a ResNet-18 run's 12 s steps): the re-plans measure from the next one.
                    stepping, window_start = 0.0, step
                if replan is not None and step < self.total_steps and (
                        step >= replan[0] or (stepping >= replan[1] and step - window_start >= REPLAN_MIN_STEPS)):
                    self._replan(step, stepping / (step - window_start), eval_seconds)
                    replan = self._replan_after(step, LATER_REPLANS)
                    stepping, window_start = 0.0, step
                    bar.total = self.total_steps
                eval_due, ckpt_due = self._due(
                    self._evaluates() and now - last_eval >= cfg.eval_every_minutes * 60,
                    now - last_ckpt >= cfg.checkpoint_every_minutes * 60)
                if eval_due:
                    if self.rank == 0:  # the other ranks wait in their next step's first collective
                        features = next(self.source.features([learner], PERIODIC_BANK, PERIODIC_QUERIES))
                        row["knn"] = score(features, linear=False, k=cfg.knn_k, temperature=cfg.knn_temperature)["knn"]
                        bar.write(f"step {m['step']}: kNN (10k bank, 2k queries) {row['knn']:.4f}")
                    eval_seconds += time.perf_counter() - now
                    last_eval = t_prev = time.perf_counter()
                if now - last_rows >= ROWS_EVERY_SECONDS:
                    self._write_rows()
                    last_rows = now
                if ckpt_due:
                    self._save()
                    last_ckpt = t_prev = time.perf_counter()
                if (step % POSTFIX_EVERY == 0 or step in (start_step + 1, self.total_steps)
                        or now - last_postfix >= POSTFIX_EVERY_SECONDS):
                    last_postfix = now
                    waited = (self.data_wait - wait_before) / max(self.elapsed - elapsed_before, 1e-9)
                    bar.set_postfix(loss=f"{m['loss']:.3f}", img_s=f"{cfg.batch_size / max(step_seconds, 1e-9):.0f}",
                                    lr=f"{m['lr']:.3g}", tau=f"{m['tau']:.4f}", wait=f"{100 * waited:.0f}%",
                                    refresh=False)
                bar.update(1)
                if stop.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            self._save()
            raise
        finally:
            stop.restore()
            batches.close()  # a folder's loader workers stop here
        bar.close()
        self._save()
        self._skipped = self._gather_skipped()
        return {"steps": learner.step_count, "seconds": self.elapsed}

    def _gather_skipped(self) -> List[str]:
        """The files every rank skipped: each rank reads its own shard, and keeps its own record."""
        skipped = self.source.skipped
        if self.world == 1:
            return skipped
        import torch.distributed as dist

        per_rank: List[Any] = [None] * self.world
        dist.all_gather_object(per_rank, skipped)
        return sorted({path for paths in per_rank for path in paths})

    def _replans(self) -> bool:
        """Whether the run re-plans its length as it goes: time-budgeted single-process runs."""
        return self.cfg.epochs is None and self.cfg.minutes is not None and self.world == 1

    def _replan_after(self, step: int, fraction: float) -> Tuple[int, float]:
        """When the next re-plan is due, ``(step, seconds)``: ``fraction`` of the remaining steps
        on (at least 50), or once ``fraction`` of the remaining time has been spent stepping
        (after at least REPLAN_MIN_STEPS steps), whichever comes first. The first comes after
        15 % of the run, each later one after a quarter of what remains: the machine's speed
        drifts during a run (one slowed by a fifth half way and overran by 46 s), and the
        probe times the step alone, so a run that waits for its loader (phone photos decoded
        on one core: 8 s a step against 2 s probed) overran its 2 minutes 3.5 times over when
        only the step count could trigger a re-plan."""
        steps = max(50, int(fraction * (self.total_steps - step)))
        return step + steps, fraction * (self.cfg.minutes * 60 - self.elapsed)

    def _replan(self, step: int, per_step: float, eval_seconds: float) -> None:
        """Sets the schedules' length so that the run ends on time at the step time measured
        since the last re-plan, after the `eval_seconds` spent on kNN checks so far: the probe at
        the start sees a few steps, and this machine's speed drifts by 10 % and more (a run
        planned from a slow probe ended 10 % early)."""
        remaining = self.cfg.minutes * 60 - self.elapsed - eval_seconds
        every = self.cfg.eval_every_minutes * 60
        evals = remaining / every if every > 0 else 0.0
        left = int((remaining - evals * self._knn_seconds(per_step)) / per_step)
        total = max(step + left, self.learner.config["warmup_steps"], step, 1)
        self.learner.set_total_steps(total)
        self.total_steps = total

    def close(self) -> None:
        """Under torchrun: waits until every rank (rank 0 reports last) is done, then leaves
        the process group, so that no rank tears down its connections under another."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()

    def report(self) -> Dict[str, Any]:
        """Final kNN and linear probe on the full test set, trained vs random init; writes
        metrics.csv, report.json and curves.png. Without a labelled set: the health metrics
        (final loss and z_std, features' effective rank and z_std on a training sample)."""
        cfg, source = self.cfg, self.source
        kw = dict(k=cfg.knn_k, temperature=cfg.knn_temperature)
        baseline_learner = _learner(cfg, source, self.total_steps, self.steps_per_epoch, distributed=False)
        scores = []
        for features in source.features([self.learner, baseline_learner]):
            scores.append(score(features, linear=True, **kw))
            del features  # in memory: before the next learner's are computed
        trained, baseline = scores
        rows = self.rows
        last = rows[-FINAL_STEPS:]
        skipped = sorted(set(self._skipped) | set(source.skipped))
        report = {
            "dataset": source.name, "backbone": cfg.backbone, "steps": self.learner.step_count,
            "epochs": round(self.learner.step_count / self.steps_per_epoch, 3),
            "train_seconds": round(self.elapsed, 1), "images_per_second": round(self.learner.step_count * cfg.batch_size / max(self.elapsed, 1e-9), 1),
            "data_wait_seconds": round(self.data_wait, 2),
            "data_wait_fraction": round(self.data_wait / max(self.elapsed, 1e-9), 4),
            "skipped_files": len(skipped), "skipped_file_names": skipped[:SKIPPED_NAMED],
            "labelled_evaluation": source.labelled, "no_labelled_set": source.no_labels or None,
            "final_loss": sum(r["loss"] for r in last) / max(len(last), 1),
            "final_z_std": sum(r["z_std"] for r in last) / max(len(last), 1),
            "final_over_steps": len(last),
            "trained": trained, "random_init": baseline,
            **source.report_fields(),
            "world_size": self.world, "config": _config_record(cfg), "learner_config": self.learner.config,
        }
        if source.labelled:
            report["gain"] = {k: trained[k] - baseline[k] for k in ("knn", "linear")}
        (self.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        plot_curves(rows, report, self.out / "curves.png")
        return report


def plot_curves(rows: List[Dict[str, Any]], report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    minutes = [r["seconds"] / 60 for r in rows]
    ax[0].plot(minutes, [r["loss"] for r in rows], lw=0.6)
    ax[0].set(title="BYOL loss", xlabel="training minutes")
    ax[1].plot(minutes, [r["z_std"] for r in rows], lw=0.6)
    d = report["learner_config"]["projection_dim"]
    ax[1].axhline(1 / math.sqrt(d), ls="--", c="gray", label="1/sqrt(d), ideal")
    ax[1].set(title="z_std (collapse signal)", xlabel="training minutes")
    ax[1].legend()
    knn = [(r["seconds"] / 60, r["knn"]) for r in rows if r["knn"] != ""]
    if knn:
        ax[2].plot(*zip(*knn), "o-", label="kNN (10k bank, 2k queries)")
    ax[2].set(title="weighted kNN accuracy (k=200, T=0.1)", xlabel="training minutes")
    if "knn" in report["trained"]:
        ax[2].axhline(report["trained"]["knn"], c="C1", label=f"final kNN {report['trained']['knn']:.3f}")
        ax[2].axhline(report["random_init"]["knn"], c="gray", ls="--", label=f"random init {report['random_init']['knn']:.3f}")
        ax[2].legend(fontsize=8)
    else:
        ax[2].text(0.5, 0.5, "no labelled set given", ha="center", va="center", transform=ax[2].transAxes)
    if minutes:  # the whole run, as in the other panels, however few checks there were
        ax[2].set_xlim(0, minutes[-1] * 1.02)
    fig.suptitle(f"byol-rs on {report['dataset']}: {report['steps']} steps, {report['epochs']} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _DeferredInterrupt:
    """While a run trains, Ctrl-C and SIGTERM stop it at the end of the current step, so that a
    checkpoint never holds a step whose row was lost on the way back from the engine; a second
    Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._old: Dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def install_sigterm_as_interrupt() -> None:
    """SIGTERM (e.g. from a job scheduler) saves a checkpoint like Ctrl-C does."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
