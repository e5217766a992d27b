"""Command line: ``byol-rs <command>`` (also ``python -m byol_rs <command>``).

  train   BYOL on Fashion-MNIST (default), scikit-learn's digits, an IDX folder or a folder of images
  eval    kNN and linear-probe accuracy of a saved run
  export  a saved run's backbone as a torchvision-loadable state dict
  demo    the fused loss and EMA on real photos, beside PyTorch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(f"{self.prog}: error: {message}")


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _one_line_warnings(command: str) -> None:
    """A skipped file is one line on stderr (DataLoader workers, forked, inherit this)."""
    import warnings

    from .folder import ImageSkippedWarning

    plain = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, ImageSkippedWarning):
            print(f"byol-rs {command}: warning: {message}", file=sys.stderr, flush=True)
        else:
            plain(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


#: The train flags that are byol_rs.BYOL arguments (their argparse names): given ones go to
#: TrainConfig.learner, over the trainer's RECIPE.
LEARNER_FLAGS = ("backbone", "preset", "optimizer", "lr")


def _train(args: argparse.Namespace) -> int:
    from .data import DatasetError
    from .errors import ByolError
    from .trainer import TrainConfig, Trainer, TrainError, install_sigterm_as_interrupt

    fields = dict(dataset=args.dataset, data_dir=args.data, batch_size=args.batch_size,
                  view_fraction=args.view_fraction, device=args.device, seed=args.seed, out=args.out,
                  eval_every_minutes=args.eval_every, checkpoint_every_minutes=args.checkpoint_every,
                  progress=not args.no_progress, val_dir=args.val, val_fraction=args.val_fraction,
                  image_size=args.image_size, workers=args.workers, strict=args.strict, stream=args.stream)
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.epochs is not None:
        fields.update(epochs=args.epochs, minutes=None)
    elif args.minutes is not None:
        fields["minutes"] = args.minutes
    learner = {k: getattr(args, k) for k in LEARNER_FLAGS if getattr(args, k) is not None}
    cfg = TrainConfig(learner=learner, **fields)
    _one_line_warnings("train")
    bad_input = (TrainError, DatasetError, ByolError)
    try:
        trainer = Trainer(cfg, resume=args.resume, force=args.force)
    except bad_input as e:
        _fail(f"byol-rs train: error: {e}")
    install_sigterm_as_interrupt()
    lead = trainer.rank == 0
    budget = f"{cfg.epochs} epochs" if cfg.epochs is not None else f"{cfg.minutes} minutes"
    ranks = f" on {trainer.world} ranks" if trainer.world > 1 else ""
    if lead:
        print(f"byol-rs: {trainer.source.describe()}, "
              f"{cfg.backbone}, batch {cfg.batch_size}{ranks}, {trainer.total_steps} steps ({budget}) -> {cfg.out}")
    try:
        trainer.train()
    except KeyboardInterrupt:
        if lead:
            print(f"\ninterrupted: checkpoint saved at step {trainer.learner.step_count}; continue with --resume --out {cfg.out}")
        return 130
    except bad_input as e:  # --strict meeting an unreadable file
        _fail(f"byol-rs train: error: {e}")
    if not lead:
        trainer.close()
        return 0
    labelled = trainer.source.labelled
    print(f"final evaluation ({'full test set' if labelled else 'no labelled set'}, trained vs random init) ...")
    report = trainer.report()
    trainer.close()
    _print_summary(report, cfg.out)
    return 0


def _print_summary(report: dict, out: str) -> None:
    t, r = report["trained"], report["random_init"]
    if report["labelled_evaluation"]:
        print(f"kNN    {t['knn']:.4f}  (random init {r['knn']:.4f}, {t['knn'] - r['knn']:+.4f})")
        print(f"linear {t['linear']:.4f}  (random init {r['linear']:.4f}, {t['linear'] - r['linear']:+.4f})")
    else:
        print(f"{report['no_labelled_set']}: no kNN or linear-probe accuracy")
        print(f"final loss {report['final_loss']:.4f}, z_std {report['final_z_std']:.4f} (mean of the last "
              f"{report['final_over_steps']} steps); features: effective rank {t['effective_rank']:.1f} "
              f"(random init {r['effective_rank']:.1f}), z_std {t['feature_z_std']:.4f} (random init {r['feature_z_std']:.4f})")
    if report["skipped_files"]:
        names = ", ".join(report["skipped_file_names"])
        more = ", ..." if report["skipped_files"] > len(report["skipped_file_names"]) else ""
        print(f"skipped {report['skipped_files']} unreadable file(s): {names}{more}")
    print(f"{report['steps']} steps, {report['epochs']} epochs, {report['images_per_second']} img/s, "
          f"{100 * report['data_wait_fraction']:.0f} % of the time waiting for data; "
          f"wrote metrics.csv, report.json, curves.png, checkpoint.safetensors to {out}")


def _load_learner(path: str):
    from .errors import ByolError
    from .learner import BYOL

    if not Path(path).is_file():
        _fail(f"byol-rs: error: no checkpoint at {path}")
    try:
        return BYOL.load(path)
    except ByolError as e:
        _fail(f"byol-rs: error: {e}")


def _eval(args: argparse.Namespace) -> int:
    from .data import DatasetError, load
    from .sources import is_image_folder
    from .trainer import TrainError, evaluate, evaluate_folder

    learner = _load_learner(args.checkpoint)
    if args.data is not None and is_image_folder(args.data):
        _one_line_warnings("eval")
        try:
            result = evaluate_folder(learner, args.data, val_dir=args.val, val_fraction=args.val_fraction,
                                     workers=args.workers, strict=args.strict, linear=not args.knn_only)
        except (DatasetError, TrainError) as e:
            _fail(f"byol-rs eval: error: {e}")
        print(json.dumps(result, indent=2))
        return 0
    if args.val is not None or args.val_fraction is not None:
        _fail("byol-rs eval: error: --val and --val-fraction are for a folder of images (--data DIR); "
              f"{args.data or '--dataset ' + args.dataset} has its own test set")
    try:
        data = load(args.dataset, args.data)
    except DatasetError as e:
        _fail(f"byol-rs eval: error: {e}")
    if data.channels != learner.config["in_channels"]:
        _fail(f"byol-rs eval: error: the checkpoint expects {learner.config['in_channels']} channel(s), {data.name} has {data.channels}")
    print(json.dumps(evaluate(learner, data, linear=not args.knn_only), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    learner = _load_learner(args.checkpoint)
    torch.save(learner.backbone_state_dict(), args.output)
    c = learner.config
    stem = " (small-image stem: conv1 3x3 stride 1, no max-pool)" if c["small_image"] and c["backbone"] != "convnet" else ""
    print(f"wrote the {c['backbone']} backbone{stem} to {args.output}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .learner import SCHEMA
    from .trainer import RECIPE

    recipe = {**{k: SCHEMA[k]["default"] for k in LEARNER_FLAGS}, **RECIPE}
    parser = _Parser(prog="byol-rs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train BYOL and report kNN / linear-probe accuracy")
    t.add_argument("--dataset", choices=["fashion-mnist", "digits"], default="fashion-mnist")
    t.add_argument("--data", metavar="DIR",
                   help="instead of --dataset: an IDX folder (the four MNIST files), or a folder of JPEG / PNG / "
                        "WebP images (decoded by loader workers; small ones once into memory); class subfolders give labels")
    t.add_argument("--val", metavar="DIR", help="image folder: a labelled folder with the classes of --data, for "
                                                "kNN and linear-probe evaluation (without one, or --val-fraction, "
                                                "the report gives health metrics only)")
    t.add_argument("--val-fraction", type=float, metavar="F",
                   help="image folder: hold out this fraction (0 < F < 1, a fixed seeded split) of a labelled "
                        "--data for evaluation instead of --val")
    t.add_argument("--image-size", type=_positive(int), metavar="N",
                   help="image folder: the training views' side (at least 8 for convnet, 32 for resnets). "
                        "Photos (median shorter side > 64 px): default 64 for convnet, 224 for resnets, the "
                        "paper's views, and evaluation resizes the shorter side to round(N / 0.875) and "
                        "centre-crops N (the standard 0.875 crop ratio). Small images: default --view-fraction "
                        "of their side, the small-image views, and evaluation sees them whole (ratio 1)")
    t.add_argument("--workers", type=_non_negative_int, metavar="N",
                   help="image folder: loader processes per rank (default: the usable cores, less one per "
                        "rank, at least 1; 0: load in the main process)")
    t.add_argument("--strict", action="store_true",
                   help="image folder: stop at the first unreadable file (default: skip it with a warning)")
    t.add_argument("--stream", action="store_true",
                   help="image folder of small images (median side <= 64 px): decode every epoch in the loader "
                        "workers instead of once into memory (default: into memory when it fits in 1 GiB)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_positive(float), help="wall-time budget for training (default 10)")
    budget.add_argument("--epochs", type=_positive(float), help="train for this many epochs instead")
    t.add_argument("--backbone", choices=SCHEMA["backbone"]["choices"], help=f"default {recipe['backbone']}")
    t.add_argument("--batch-size", type=_positive(int))
    t.add_argument("--preset", choices=SCHEMA["preset"]["choices"],
                   help=f"the paper's lr / weight decay / tau for that length (default {recipe['preset'] or 'none'})")
    t.add_argument("--optimizer", choices=SCHEMA["optimizer"]["choices"], help=f"default {recipe['optimizer']}")
    t.add_argument("--lr", type=_positive(float), help=f"base learning rate per 256 images (default {recipe['lr']})")
    t.add_argument("--view-fraction", type=_positive(float), metavar="F",
                   help="IDX, --dataset and folders of small images: training views' side as a fraction of the images' (default 0.72; 1: full size)")
    t.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    t.add_argument("--seed", type=int)
    t.add_argument("--out", metavar="DIR", help="where metrics, report, plot and checkpoint go (default runs/byol)")
    t.add_argument("--force", action="store_true", help="overwrite a previous run in --out")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--eval-every", type=float, metavar="MIN", help="minutes between kNN checks (0: never)")
    t.add_argument("--checkpoint-every", type=_positive(float), metavar="MIN", help="minutes between checkpoints")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="kNN and linear probe of a saved run on a test set, or on a folder of images")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", choices=["fashion-mnist", "digits"], default="fashion-mnist")
    e.add_argument("--data", metavar="DIR", help="an IDX folder, or a folder of images (the kNN bank and probe training set)")
    e.add_argument("--val", metavar="DIR", help="folder of images: the labelled queries (the classes of --data)")
    e.add_argument("--val-fraction", type=_positive(float), metavar="F",
                   help="folder of images: score this fraction of --data held out, as train --val-fraction does")
    e.add_argument("--workers", type=_non_negative_int, help="folder of images: decoding processes (default: the cores less one)")
    e.add_argument("--strict", action="store_true", help="folder of images: stop at the first unreadable file")
    e.add_argument("--knn-only", action="store_true")
    e.set_defaults(func=_eval)

    x = sub.add_parser("export", help="write the backbone as a torchvision state dict (torch.save)")
    x.add_argument("checkpoint")
    x.add_argument("output")
    x.set_defaults(func=_export)

    d = sub.add_parser("demo", help="the fused loss and EMA on real images, against PyTorch")
    d.set_defaults(func=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "resume", False) and args.force:
        _fail("byol-rs train: error: --resume and --force contradict each other")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
