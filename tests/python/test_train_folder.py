"""`byol-rs train --data DIR` on a folder of images (byol_rs.sources): streamed batches, exact
resume, rank shards, evaluation transform, report fields and every bad input.

The fixtures are cut from scikit-image's photos at test time: 24-48 px JPEG, PNG and WebP files
in RGB, L, RGBA and P modes, in class subfolders (labelled) or flat (unlabelled). Runs use the
ConvNet at 16 px views, batch 8, loader workers 0-1. Each test's docstring names the mutation of
byol_rs/sources.py or trainer.py it was checked, by hand, to fail under."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision")
pytest.importorskip("skimage")
import skimage.data  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from byol_rs import sources  # noqa: E402
from byol_rs.cli import main  # noqa: E402
from byol_rs.data import ImageFolder  # noqa: E402
from byol_rs.sources import EpochBatchSampler, FolderSource, eval_transform  # noqa: E402
from byol_rs.trainer import TrainConfig, Trainer, TrainError  # noqa: E402
from learner_state import full_and_resumed, trainer_weights  # noqa: E402

PHOTOS = {"cat": skimage.data.chelsea, "coffee": skimage.data.coffee, "rocket": skimage.data.rocket}
FORMATS = ((".jpg", "RGB", {"quality": 90}), (".png", "L", {}), (".webp", "RGB", {"lossless": True}),
           (".png", "RGBA", {}), (".jpeg", "L", {"quality": 85}), (".png", "P", {}))
SMALL = dict(batch_size=8, learner=dict(backbone="convnet", projector_hidden=32, projection_dim=16), image_size=16,
             progress=False, eval_every_minutes=0, checkpoint_every_minutes=60)
CLI_SMALL = ["--batch-size", "8", "--image-size", "16", "--no-progress", "--eval-every", "0"]


def _write_photos(folder, photo, n, seed):
    """``n`` files cut from ``photo`` at 24-48 px a side, cycling through FORMATS."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(24, 49, 2))
        y, x = (int(rng.integers(0, s - 160)) for s in photo.shape[:2])
        ext, mode, kw = FORMATS[i % len(FORMATS)]
        image = Image.fromarray(photo[y:y + 160, x:x + 160]).resize((w, h)).convert(mode)
        paths.append(folder / f"{i:02d}{ext}")
        image.save(paths[-1], **kw)
    return paths


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``train``: 3 classes, 32 files (8 / step), of which 3 bad; ``val``: the same classes;
    ``flat``: 16 files, no classes."""
    root = tmp_path_factory.mktemp("folders")
    for k, (name, load) in enumerate(PHOTOS.items()):
        photo = load()
        _write_photos(root / "train" / name, photo, 9 if name == "cat" else 10, seed=k)
        _write_photos(root / "val" / name, photo, 4, seed=10 + k)
    jpg = (root / "train/cat/00.jpg").read_bytes()
    (root / "train/cat/bad_zero.jpg").write_bytes(b"")
    (root / "train/cat/bad_text.jpg").write_text("not an image, though named like one\n")
    (root / "train/rocket/bad_truncated.jpg").write_bytes(jpg[: len(jpg) // 2])  # its header is whole
    _write_photos(root / "flat", skimage.data.astronaut(), 16, seed=20)
    return root


BAD = ("cat/bad_zero.jpg", "cat/bad_text.jpg", "rocket/bad_truncated.jpg")
# where the training folder's bad files are expected and not the point
expected_skips = pytest.mark.filterwarnings("ignore::byol_rs.folder.ImageSkippedWarning")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests check results, not speed; on a loaded 2-core machine two OpenMP threads
    made a 12 x 256 SVD take 2.8 s instead of 5 ms (one thread waits for a descheduled one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(capfd, *args):
    """``byol-rs train ARGS`` in this process: (exit code, stdout, stderr), the loader
    workers' output included (captured at the file descriptors)."""
    try:
        code = main(["train", *args])
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


def test_sampler_shards_are_disjoint_and_cover_the_epoch():
    """Two ranks' shards of each global batch are disjoint and together the single-process
    batch; over an epoch they cover the permutation once; iterating from any step gives that
    step's batch. Fails with the rank slice dropped, or with iteration not starting at start_step."""
    n, batch, seed = 53, 8, 3
    one = EpochBatchSampler(n, batch, seed)
    ranks = [EpochBatchSampler(n, batch, seed, rank=r, world=2) for r in range(2)]
    for epoch in range(2):
        seen = []
        for step in range(epoch * one.steps_per_epoch, (epoch + 1) * one.steps_per_epoch):
            a, b = (s.indices(step).tolist() for s in ranks)
            assert len(a) == len(b) == batch // 2 and not set(a) & set(b)
            assert a + b == one.indices(step).tolist()
            seen += a + b
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        assert seen == perm[: one.steps_per_epoch * batch].tolist()  # the trainer's order since 0.1
        assert len(set(seen)) == len(seen) == (n // batch) * batch
    for start in (0, 5, 13):
        it = iter(EpochBatchSampler(n, batch, seed, rank=1, world=2, start_step=start))
        assert [next(it) for _ in range(3)] == [ranks[1].indices(s).tolist() for s in range(start, start + 3)]


def test_a_rank_reads_only_its_shard(folders):
    """A folder source's batches are the files of the rank's shard, decoded at full size.
    Fails with the loader given a sampler other than the one passed in."""
    cfg = TrainConfig(data_dir=str(folders / "flat"), workers=0, **SMALL)
    source = FolderSource(cfg, workers=0, device="cpu")
    folder = ImageFolder(folders / "flat")
    sampler = EpochBatchSampler(source.num_train, 8, 0, rank=1, world=2, start_step=3)
    batches = source.batches(sampler)
    for step in range(3, 6):
        images = next(batches)
        want = [folder.load(i) for i in sampler.indices(step).tolist()]
        assert len(images) == 4 and all(torch.equal(x, y) for x, y in zip(images, want))
    batches.close()


@pytest.mark.parametrize("size", [16, 20, 224])
def test_eval_transform_is_resize_then_centre_crop_at_0_875(folders, size):
    """Equal, exactly, to torchvision's Resize(round(N / 0.875)) + CenterCrop(N), on files of
    every format and on a wide and a tall synthetic image. Fails with the crop ratio 0.9, the
    resize without antialiasing, or both sides resized to round(N / 0.875)."""
    reference = v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)])
    folder = ImageFolder(folders / "val")
    images = [folder.load(i) for i in range(len(folder))]
    images += [torch.randint(0, 256, (3, 30, 97), dtype=torch.uint8), torch.randint(0, 256, (3, 301, 40), dtype=torch.uint8)]
    for image in images:
        out = eval_transform(image, size)
        assert out.shape == (3, size, size) and out.dtype == torch.uint8
        assert torch.equal(out, reference(image))
    item, label = sources.EvalImages(folder, size)[7]
    assert torch.equal(item, reference(folder.load(7))) and label == folder.targets[7]


@expected_skips
def test_val_fraction_holds_out_a_fixed_disjoint_part(folders):
    """The held-out part is round(F * n) files, disjoint from training, the same for any --seed.
    Fails with the split seeded by --seed, or with the two parts overlapping."""
    def split(seed):
        cfg = TrainConfig(data_dir=str(folders / "train"), val_fraction=0.25, seed=seed, **SMALL)
        s = FolderSource(cfg, workers=0, device="cpu")
        return [p for p, _ in s.train.samples], [p for p, _ in s.eval_set.samples]

    train, held_out = split(0)
    assert len(held_out) == 8 and len(train) == 24 and not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(p for p, _ in ImageFolder(folders / "train").samples)
    assert split(5) == (train, held_out)


def test_folder_run_trains_reports_waits_and_skips(folders, capfd, monkeypatch):
    """A labelled run with --val: exit 0, kNN and linear numbers, the data-wait fields, every bad
    file skipped with a one-line warning naming it and counted in report.json (also those met by
    a loader worker) and in the summary; the progress line shows the wait. Fails with the
    record of skipped files not in shared memory (folder.py), or data_wait never accumulated."""
    out = folders / "run_val"
    # plain progress lines on stdout even where an earlier test imported ipykernel (tqdm otherwise)
    monkeypatch.setattr("byol_rs.progress._interactive", lambda stream: False)
    code, stdout, stderr = _run(capfd, "--data", str(folders / "train"), "--val", str(folders / "val"),
                                "--epochs", "2", "--workers", "1", "--stream", "--out", str(out),
                                *(a for a in CLI_SMALL if a != "--no-progress"))
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    bad = sorted(str(folders / "train" / b) for b in BAD)
    assert report["skipped_files"] == 3 and report["skipped_file_names"] == bad
    for path in bad:
        assert f"warning: skipped {path}" in stderr
    assert "skipped 3 unreadable file(s)" in stdout
    assert 0 < report["data_wait_seconds"] <= report["train_seconds"] + 0.05
    # the fraction is of the unrounded train seconds; train_seconds is rounded to 0.1 s
    assert 0 < report["data_wait_fraction"] < 1
    assert abs(report["data_wait_fraction"] * report["train_seconds"] - report["data_wait_seconds"]) <= 0.06
    assert "wait" in [line for line in stdout.splitlines() if line.startswith("step ")][-1]
    assert report["labelled_evaluation"] and report["steps"] == 8 and report["data"]["evaluation_images"] == 12
    for side in ("trained", "random_init"):
        assert 0 <= report[side]["knn"] <= 1 and 0 <= report[side]["linear"] <= 1
    # 24-48 px files are small images: evaluated whole, at their median shorter side
    median = report["data"]["eval_transform"].split("round(")[1].split(" /")[0]
    assert f"crop ratio 1.0" in report["data"]["eval_transform"] and 24 <= int(median) <= 48
    assert [line for line in stdout.splitlines() if line.startswith(("kNN", "linear"))]


@expected_skips
def test_eval_of_a_folder_run_repeats_its_final_evaluation(folders, capfd):
    """``byol-rs eval CHECKPOINT --data DIR --val DIR`` scores a saved folder run as the run's
    own report did: same bank, queries and evaluation transform, so the same kNN and probe.
    Without --val, the health metrics; --val on an IDX dataset is refused. Fails with eval
    reading --data as an IDX folder, or with another evaluation size or normalisation."""
    out = folders / "run_eval"
    code, _, stderr = _run(capfd, "--data", str(folders / "train"), "--val", str(folders / "val"), "--epochs", "1",
                           "--workers", "0", "--out", str(out), *CLI_SMALL)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())

    def evaluate(*args):
        try:
            code = main(["eval", str(out / "checkpoint.safetensors"), *args])
        except SystemExit as e:
            code = e.code
        stdout, stderr = capfd.readouterr()
        return code, stdout, stderr

    code, stdout, stderr = evaluate("--data", str(folders / "train"), "--val", str(folders / "val"), "--workers", "0")
    assert code == 0, stderr
    got = json.loads(stdout)
    assert got["skipped_files"] == 3
    assert {k: got[k] for k in report["trained"]} == pytest.approx(report["trained"], rel=1e-6, abs=1e-9)
    code, stdout, stderr = evaluate("--data", str(folders / "flat"), "--workers", "0")
    assert code == 0, stderr
    assert set(json.loads(stdout)) == {"effective_rank", "feature_z_std"}
    code, _, stderr = evaluate("--dataset", "digits", "--val", str(folders / "val"))
    assert code == 2 and "--val and --val-fraction are for a folder of images" in stderr


def test_unlabelled_run_reports_health_metrics_only(folders, capfd):
    """A flat folder and no --val: health metrics (final loss, z_std, effective rank of a
    training sample's features), no kNN or linear numbers, and both report and summary say no
    labelled set was given. An older checkpoint without the folder fields resumes; one with
    another --image-size does not. Fails with the periodic kNN not skipped without labels (it
    would raise), or with image_size left out of the resume check."""
    out = folders / "run_flat"
    args = ["--data", str(folders / "flat"), "--workers", "0", "--out", str(out), *CLI_SMALL]
    code, stdout, stderr = _run(capfd, *args[:-2], "--epochs", "2", "--eval-every", "0.00001")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert not report["labelled_evaluation"] and "no labelled set given" in report["no_labelled_set"]
    assert "no labelled set given" in stdout and "effective rank" in stdout
    assert not [line for line in stdout.splitlines() if line.startswith(("kNN", "linear"))]
    assert "gain" not in report
    for side in ("trained", "random_init"):
        assert set(report[side]) == {"effective_rank", "feature_z_std"} and report[side]["effective_rank"] >= 1
    assert report["final_loss"] > 0 and 0 < report["final_z_std"] <= 1 and report["final_over_steps"] == 4
    assert report["skipped_files"] == 0 and report["data_wait_fraction"] >= 0

    state_path = out / "trainer_state.json"
    state = json.loads(state_path.read_text())
    for key in ("val_dir", "val_fraction"):  # as written before these fields existed
        del state["current"]["config"][key]
    state_path.write_text(json.dumps(state))
    cfg = TrainConfig(data_dir=str(folders / "flat"), out=str(out), epochs=2, batch_size=8, image_size=16,
                      progress=False)  # as the CLI made it
    assert Trainer(cfg, resume=True).learner.step_count == 4
    with pytest.raises(TrainError, match="image_size: 16 there, 24 now"):
        Trainer(replace(cfg, image_size=24), resume=True)


@expected_skips
@pytest.mark.parametrize("stream", [True, False])
def test_interrupted_folder_run_resumes_bit_identically(folders, stream):
    """Stopped after 5 steps and resumed from its checkpoint, a folder run (held-out split,
    one loader worker, streamed or decoded into memory) ends with the weights, optimizer state
    and losses of the run that was never stopped, and streamed and in-memory runs end alike.
    Fails with the resumed sampler started at step 0."""
    cfg = dict(data_dir=str(folders / "train"), val_fraction=0.25, epochs=2, workers=1, stream=stream, **SMALL)
    full, resumed = full_and_resumed(lambda name: TrainConfig(out=str(folders / f"{name}{stream}"), **cfg), 5)
    a, b = trainer_weights(full), trainer_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on CPU
    assert [r["loss"] for r in full.rows] == [r["loss"] for r in resumed.rows]
    assert resumed.learner.step_count == full.learner.step_count == 6
    assert full.source.in_memory == (not stream)
    _ENDS[stream] = a
    if len(_ENDS) == 2:
        assert all(torch.equal(_ENDS[True][k], _ENDS[False][k]) for k in a)


_ENDS = {}


def test_two_gloo_ranks_train_a_folder(folders):
    """torchrun, 2 Gloo ranks, each streaming its shard through a loader worker: exit 0, a
    report of world size 2 with the bad files counted. Fails (by its timeout) with the skipped
    files gathered on rank 0 alone, a collective the other rank never joins."""
    out = folders / "run_ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "byol_rs",
           "train", "--data", str(folders / "train"), "--val", str(folders / "val"), "--epochs", "1",
           "--workers", "1", "--stream", "--out", str(out), *CLI_SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.terminate()  # torchrun's agent passes it on to the ranks, then kills them after 30 s
        stdout, stderr = p.communicate(timeout=90)
    assert p.returncode == 0, stdout[-2000:] + stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 4 and report["skipped_files"] == 3


def test_in_memory_run_reports_its_data_wait(tmp_path):
    """The in-memory path records the wait too (an index into a tensor: about 0). Fails with
    data_wait never accumulated."""
    t = Trainer(TrainConfig(dataset="digits", epochs=1, out=str(tmp_path), batch_size=128,
                            learner=dict(backbone="convnet", projector_hidden=32, projection_dim=16),
                            progress=False, eval_every_minutes=0))
    t.train()
    assert 0 < t.data_wait < 0.05 * t.elapsed


def _empty_class(root):
    _write_photos(root / "a", skimage.data.coffee(), 3, seed=0)
    (root / "b" / "sub").mkdir(parents=True)
    (root / "b" / "readme.txt").write_text("no images here")


def _tiny_image(root):
    _write_photos(root / "a", skimage.data.coffee(), 3, seed=0)
    Image.fromarray(skimage.data.coffee()[:7, :30]).save(root / "a" / "tiny.png")


def _only_text(root):
    (root / "notes.txt").write_text("hello")


def _strict_zero(root):
    _write_photos(root, skimage.data.coffee(), 9, seed=0)
    (root / "zero.jpg").write_bytes(b"")


def _strict_truncated(root):
    paths = _write_photos(root, skimage.data.coffee(), 9, seed=0)
    data = paths[0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("setup,extra,needle", [
    (lambda root: None, [], "holds no image files"),
    (_only_text, [], "holds no image files"),
    (_empty_class, [], "class folder {root}/b holds no image files"),
    (_tiny_image, [], "--data: {root}/a/tiny.png is 30x7 px; the convnet backbone needs images of at least 8 px"),
    (_strict_zero, ["--strict"], "--strict: {root}/zero.jpg: the file is empty (0 bytes)"),
    (_strict_truncated, ["--strict", "--workers", "1"], "--strict: {root}/truncated.jpg: not a readable image"),
    (None, ["--image-size", "4"], "image_size (--image-size): the convnet backbone needs at least 8 px, got 4"),
    (None, ["--image-size", "24", "--backbone", "resnet18"], "the resnet18 backbone needs at least 32 px"),
    (None, ["--val-fraction", "1.5"], "val_fraction (--val-fraction): expected a number in (0, 1), got 1.5"),
    (None, ["--val-fraction", "0"], "expected a number in (0, 1), got 0.0"),
    (None, ["--val-fraction", "0.2", "--val", "VAL"], "--val-fraction) and val_dir (--val) contradict each other"),
    ("flat", ["--val-fraction", "0.2"], "--val-fraction: --data {root} is unlabelled (no class subfolders)"),
    ("flat", ["--val", "VAL"], "--val: --data {root} is unlabelled"),
    (None, ["--val", "FLAT"], "--val {flat} is unlabelled (no class subfolders)"),
    (None, ["--val", "MISMATCH"], "its classes differ from those of --data {root} (only in --val: dog; only in --data: rocket)"),
    ("digits", ["--image-size", "16"], "--image-size is for a folder of images (--data DIR), not --dataset digits"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(folders, tmp_path, capfd, setup, extra, needle):
    """Each bad input names the argument (and the file or the classes) on one line, exit 2.
    Checked by hand: the class mismatch fails when only one side of the difference is named;
    the tiny image when the check reads no headers; --strict truncated when the worker's
    traceback is not cut to its last line."""
    root = tmp_path / "data"
    root.mkdir()
    data = ["--data", str(root)]
    if setup is None:
        root = folders / "train"
        data = ["--data", str(root)]
    elif setup == "flat":
        root = folders / "flat"
        data = ["--data", str(root)]
    elif setup == "digits":
        data = ["--dataset", "digits"]
    else:
        setup(root)
    mismatch = tmp_path / "mismatch"
    for name in ("cat", "coffee", "dog"):
        _write_photos(mismatch / name, skimage.data.coffee(), 1, seed=0)
    swap = {"VAL": str(folders / "val"), "FLAT": str(folders / "flat"), "MISMATCH": str(mismatch)}
    extra = [swap.get(a, a) for a in extra]
    code, stdout, stderr = _run(capfd, *data, "--epochs", "1", "--out", str(tmp_path / "out"), *CLI_SMALL, *extra)
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("byol-rs train: warning:")]
    assert len(lines) == 1 and lines[0].startswith("byol-rs train: error: "), stderr
    assert needle.format(root=root, flat=folders / "flat") in lines[0], lines[0]


def test_default_workers_leave_a_core_for_the_step(monkeypatch):
    """The usable cores less one per rank, at least 1; torchrun's ranks on a machine share them.
    Fails with LOCAL_WORLD_SIZE ignored."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert sources.default_workers() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert sources.default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert sources.default_workers() == 1


def _grey_or_photo_folder(root, side, modes):
    """Files of ``side`` px (and a little more) in the given PIL modes, one class folder."""
    photo = skimage.data.coffee()
    (root / "c").mkdir(parents=True, exist_ok=True)
    for i, mode in enumerate(modes):
        image = Image.fromarray(photo[:300, i * 20:i * 20 + 300]).resize((side + i, side + 2 * i)).convert(mode)
        image.save(root / "c" / f"{i}.png")
    return root


def test_recipe_follows_the_image_size(tmp_path):
    """Small images (median shorter side <= 64 px) train on view_fraction of their side with the
    small-image views and are evaluated whole at that side; photos train on the paper's views at
    --image-size (default 64 for the ConvNet) with the 0.875 centre crop. Fails with the
    threshold moved below 28 px, or with photos given the small-image recipe."""
    from byol_rs.trainer import _augment

    small = FolderSource(TrainConfig(data_dir=str(_grey_or_photo_folder(tmp_path / "s", 28, ["RGB"] * 5)),
                                     **{**SMALL, "image_size": None}), workers=0, device="cpu")
    assert (small.image_size, small.eval_size, small.eval_ratio) == (round(0.72 * 30), 30, 1.0)
    assert not small.paper_views and _augment(TrainConfig(), small).config["view1"]["blur_p"] == 0.5
    photos = FolderSource(TrainConfig(data_dir=str(_grey_or_photo_folder(tmp_path / "p", 100, ["RGB"] * 5)),
                                      **{**SMALL, "image_size": None}), workers=0, device="cpu")
    assert (photos.image_size, photos.eval_size, photos.eval_ratio) == (64, 64, 0.875)
    views = _augment(TrainConfig(), photos).config
    assert photos.paper_views and (views["view1"]["blur_p"], views["view2"]["blur_p"], views["view2"]["solarize_p"]) == (1.0, 0.1, 0.2)
    assert tuple(views["view1"]["crop_scale"]) == (0.08, 1.0)


@pytest.mark.parametrize("view", [16, 64, 96, 224])
def test_smallest_crop_side_is_the_closed_form_boundary(view):
    """At ``smallest_crop_side(view)`` the paper's smallest crop (area 0.08, aspect 4/3) spans
    ``view`` px on its shorter side, one pixel less and it does not. Fails with the aspect bound
    or the scale bound left out, or with floor for ceil."""
    from byol_rs.augment import smallest_crop_side

    side = smallest_crop_side(view)
    crop_short = lambda h: np.sqrt(0.08 * h * h / (4 / 3))  # noqa: E731 - square image, widest crop
    assert crop_short(side) >= view > crop_short(side - 1)


def test_large_jpegs_decode_at_reduced_scale_for_training_and_evaluation(tmp_path):
    """Photos much larger than the views: a JPEG trains from its DCT-reduced decode down to
    ``smallest_crop_side(view)`` (262 px for 64 px views: 1200x1600 at 1/4 is 300x400), a PNG
    from its full decode; evaluation decodes down to its resize side (73 px: 1/8) and gives
    what the full decode's transform gives within DCT rounding (mean 2 levels; measured 0.45-0.51).
    Fails without the training
    folder's draft_side, without the evaluation's own, or with the evaluation's set on the
    training folder itself (it would shrink training decodes to 1/8)."""
    from byol_rs.augment import smallest_crop_side
    from byol_rs.sources import EvalImages

    photo = skimage.data.coffee()
    (tmp_path / "c").mkdir()
    for i, ext in enumerate((".jpg", ".jpg", ".png")):
        Image.fromarray(photo[:, i * 50:i * 50 + 400]).resize((1600, 1200), Image.BICUBIC).save(tmp_path / "c" / f"{i}{ext}", quality=95)
    src = FolderSource(TrainConfig(data_dir=str(tmp_path), **{**SMALL, "image_size": 64}), workers=0, device="cpu")
    assert src.paper_views and src.train.draft_side == smallest_crop_side(64) == 262
    shapes = [tuple(src.train[i][0].shape) for i in range(3)]
    assert shapes == [(3, 300, 400), (3, 300, 400), (3, 1200, 1600)]
    ev = EvalImages(src.train, 64, 0.875)
    assert ev.folder.draft_side == 73 and src.train.draft_side == 262
    full = ImageFolder(tmp_path)
    for i in range(3):
        got, want = ev[i][0].int(), eval_transform(full[i][0], 64, 0.875).int()
        assert got.shape == (3, 64, 64) and (got - want).abs().float().mean() <= 2.0, i


def test_grey_folders_train_on_one_channel(tmp_path):
    """Every file grey (L, 16-bit I;16): one channel, and batches of [1, H, W]; one RGB file
    among them: three. Fails with the channel count fixed at 3."""
    grey = FolderSource(TrainConfig(data_dir=str(_grey_or_photo_folder(tmp_path / "g", 30, ["L", "L", "I;16", "L"])), **SMALL),
                        workers=0, device="cpu")
    assert grey.channels == 1 and grey.train.channels == 1
    batch = next(grey.batches(EpochBatchSampler(grey.num_train, 2, 0)))
    assert all(t.shape[0] == 1 for t in batch)
    mixed = FolderSource(TrainConfig(data_dir=str(_grey_or_photo_folder(tmp_path / "m", 30, ["L", "RGB", "L"])), **SMALL),
                         workers=0, device="cpu")
    assert mixed.channels == 3
