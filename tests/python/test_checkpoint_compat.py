"""Checkpoints written by earlier builds still load, counters, RNG and weights alike, and the
run continues as the original did.

Each fixture (``fixtures/checkpoint_<name>.json``) holds the header of a checkpoint that
commit 0f15502 wrote (the old flat metadata: counters, RNG, configuration, tensor offsets) and
what that run did next. The tensor payload (6 MB of weights) is not stored: the recipe below
replays the run on this machine and its tensors are put at the header's offsets. The payload's
bits are this CPU's, not the writer's (oneDNN picks its kernels and their rounding per ISA;
the fixture's sha256 is the writing machine's file), but the format under test is the header.
So the loaded old file must continue bit for bit as the replayed learner it was rebuilt from
does, and the fixture's recorded next step must agree in everything that is not a rounding of
floats (step, counters, loss scale, and lr and tau from their float64 closed forms).

    python tests/python/test_checkpoint_compat.py --write   # rewrites the fixtures (old build only)
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import byol_rs
from learner_state import snapshot

FIXTURES = Path(__file__).parent / "fixtures"
HEADS = dict(in_channels=1, projector_hidden=16, projection_dim=8, predictor_hidden=16)


def batch(seed, n=8, side=20):
    return torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def views(seed, n=8, side=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, side, side, generator=g), torch.randn(n, 1, side, side, generator=g)


def fp32_run():
    """Augmented steps, a skipped non-finite step and a re-plan (the per-view backward)."""
    learner = byol_rs.BYOL("convnet", **HEADS, total_steps=20, warmup_steps=2, on_nonfinite="skip",
                           augment=byol_rs.Augment.small_image(16, seed=5))
    learner.step(batch(0))
    learner.step(batch(1))
    weight = learner.named_parameters()["predictor.3.weight"]
    kept = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("inf")
    assert learner.step(batch(9))["skipped_steps"] == 1  # a skipped step changes nothing
    with torch.no_grad():
        weight.copy_(kept)
    learner.set_total_steps(30)
    learner.step(batch(2))
    return learner, lambda l: l.step(batch(3))


def fp16_run():
    """fp16 loss scaling (an overflow, then growth) and a save in the middle of an accumulation
    window (the joint backward)."""
    learner = byol_rs.BYOL("convnet", **HEADS, total_steps=20, precision="fp16", loss_scale=2.0**14,
                           loss_scale_growth_interval=2, accumulate=2)
    for k in range(7):
        learner.step(*views(k))
    return learner, lambda l: l.step(*views(7))


RUNS = {"fp32": fp32_run, "fp16": fp16_run}


def read_header(data):
    n = struct.unpack("<Q", data[:8])[0]
    return data[8:8 + n], json.loads(data[8:8 + n])


def state_hash(learner):
    h = hashlib.sha256()
    for key, value in sorted(snapshot(learner).items()):
        h.update(key.encode())
        h.update(value.contiguous().numpy().tobytes() if isinstance(value, torch.Tensor) else str(value).encode())
    return h.hexdigest()


def metrics(m):
    return {k: float(m[k]) for k in ("loss", "lr", "tau", "step", "z_std", "updated", "skipped_steps", "loss_scale")}


def rebuild(header_text, tensors):
    """The checkpoint with this header, each tensor's bytes at its recorded offsets."""
    header = json.loads(header_text)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    payload = bytearray(max(e["data_offsets"][1] for e in entries.values()))
    for name, e in entries.items():
        start, end = e["data_offsets"]
        payload[start:end] = tensors[name].contiguous().numpy().tobytes()
    raw = header_text.encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(payload)


def write_fixture(name, tmp):
    learner, next_step = RUNS[name]()
    path = tmp / f"{name}.safetensors"
    learner.save(path)
    data = path.read_bytes()
    header_raw, _ = read_header(data)
    after = next_step(learner)
    fixture = {
        "written_by": "commit 0f15502 (flat metadata)",
        "header": header_raw.decode(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "next_step": metrics(after),
        "state_after_next_step": state_hash(learner),
    }
    (FIXTURES / f"checkpoint_{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")


@pytest.mark.parametrize("name", list(RUNS))
def test_old_checkpoint_loads_and_continues_identically(name, tmp_path):
    import safetensors.torch

    fixture = json.loads((FIXTURES / f"checkpoint_{name}.json").read_text())
    replayed, next_step = RUNS[name]()
    replayed.save(tmp_path / "replayed")
    replayed_meta = read_header((tmp_path / "replayed").read_bytes())[1]["__metadata__"]
    old = rebuild(fixture["header"], safetensors.torch.load_file(str(tmp_path / "replayed")))
    (tmp_path / "old").write_bytes(old)
    old_meta = read_header(old)[1]["__metadata__"]
    # The replay reached the state the old build saved (else the comparison below means nothing).
    assert json.loads(replayed_meta["progress"]) == {"step": int(old_meta["step"]), "micro_step": int(old_meta["micro_step"])}
    assert json.loads(replayed_meta["scaler"]) == {"scale": float(old_meta["loss_scale"]), "good_steps": int(old_meta["good_steps"])}

    loaded = byol_rs.BYOL.load(tmp_path / "old")
    assert loaded.step_count == int(old_meta["step"])
    assert loaded.skipped_steps == int(old_meta["skipped_steps"])
    assert loaded.config == json.loads(old_meta["config"]) | {"betas": tuple(json.loads(old_meta["config"])["betas"])}

    # Saved again, the file holds the same counters (in today's layout) and the same tensors.
    loaded.save(tmp_path / "resaved")
    meta = read_header((tmp_path / "resaved").read_bytes())[1]["__metadata__"]
    assert json.loads(meta["progress"]) == {"step": int(old_meta["step"]), "micro_step": int(old_meta["micro_step"])}
    assert json.loads(meta["guard"]) == {"skipped_steps": int(old_meta["skipped_steps"])}
    assert json.loads(meta["scaler"]) == {"scale": float(old_meta["loss_scale"]), "good_steps": int(old_meta["good_steps"])}
    assert meta["replan"] == old_meta["replan"] and meta["augment_rng"] == old_meta["augment_rng"]
    before, after = safetensors.torch.load_file(str(tmp_path / "old")), safetensors.torch.load_file(str(tmp_path / "resaved"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    got, want = metrics(next_step(loaded)), metrics(next_step(replayed))
    assert got == want
    assert state_hash(loaded) == state_hash(replayed)
    recorded = fixture["next_step"]
    assert {k: got[k] for k in ("step", "updated", "skipped_steps", "loss_scale")} == \
           {k: recorded[k] for k in ("step", "updated", "skipped_steps", "loss_scale")}
    assert got["lr"] == pytest.approx(recorded["lr"], rel=1e-12) and got["tau"] == pytest.approx(recorded["tau"], rel=1e-12)


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for run_name in RUNS:
            write_fixture(run_name, Path(tmp))
