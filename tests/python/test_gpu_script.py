"""benches/gpu/run.sh --cpu-smoke: the GPU check's one script runs here end to end on tiny sizes,
so that it cannot rot between the rare runs on a GPU machine."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECTIONS = {"env", "matmul_peak", "ema", "loss", "augment", "step", "host_sync", "distributed", "cuda_tests"}


@pytest.mark.timeout(600)
def test_gpu_script_cpu_smoke_writes_every_section(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "benches/gpu/run.sh", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((out / "bench_gpu.json").read_text())
    assert result["mode"] == "cpu-smoke"
    sections = result["sections"]
    assert set(sections) == SECTIONS
    assert {name for name, s in sections.items() if s["status"] != "ok"} == set(), {n: s.get("error") for n, s in sections.items()}
    assert {"pytest.log", "bench.log", "env.txt"} <= {p.name for p in out.iterdir()}

    assert sections["ema"]["params"] > 1e6 and sections["ema"]["copy"]["gb_per_s"] > 0
    assert all(r["gb_per_s"] > 0 for r in sections["ema"]["rows"].values())
    assert sections["loss"]["fp32"]["speedup"] > 0 and sections["loss"]["bf16"]["speedup"] > 0
    assert any(k.startswith("byol_rs") and v["pairs_per_s"] > 0 for k, v in sections["augment"]["rows"].items())
    assert len(sections["augment"]["rows"]) == 3  # byol_rs, torchvision v2, lightly (measured or skipped with a reason)
    for name, case in sections["step"]["cases"].items():
        for side in ("byol_rs fp32", "pytorch fp32", "pytorch bf16 autocast"):
            assert case[side]["status"] == "ok" and case[side]["img_per_s"] > 0, (name, side, case[side])
        assert case["flops"]["per_step"] > 0 and "mfu_vs_bf16" in case["byol_rs fp32"]
        bf16 = case["byol_rs bf16"]  # runs, or is refused by a build without bf16
        assert bf16["status"] == "ok" or "not supported by this build yet" in bf16["reason"], bf16
    sync = sections["host_sync"]
    assert sync["byol_rs"]["measured"] is False and "syncs" in sync["pytorch reference"]
    dist = sections["distributed"]
    assert dist["status"] == "ok" and dist["no process group"]["median_ms"] > 0 and "gloo, world size 1" in dist
    tests = sections["cuda_tests"]
    assert tests["ran"] and tests["rc"] == 0 and "skipped" in tests["summary"]
    # The table comes last, before run.sh's one-line status.
    tail = proc.stdout.rstrip().splitlines()
    assert tail[-1].startswith("pytest rc 0, bench rc 0")
    assert any(line.startswith("| issue-6 target |") for line in tail[-20:])
