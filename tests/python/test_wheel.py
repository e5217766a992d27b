"""The built wheel installs into a fresh venv that has torch, imports, and computes the loss:
under this venv's Python (3.11), and under CPython 3.12 with torch 2.11.0 from PyPI, the
interpreter and torch build of the GPU machines (issue 6)."""

import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    # `maturin develop` patches the shared cargo artifact's rpath with absolute build paths;
    # touching the crate root forces a relink, so the wheel gets only $ORIGIN/../torch/lib.
    (ROOT / "src" / "lib.rs").touch()
    subprocess.run(
        ["maturin", "build", "--release", "--compatibility", "linux", "--auditwheel", "skip", "-o", str(dist), "--quiet"],
        cwd=ROOT, check=True, capture_output=True, timeout=900,
    )
    (built,) = dist.glob("byol_rs-*-cp39-abi3-*.whl")
    return built


@pytest.mark.timeout(900)
def test_wheel_installs_and_imports_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # torch comes from the dev venv (a .pth line, whose own .pth files are not processed, so the
    # editable byol_rs stays invisible); byol_rs comes only from the wheel.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    pathlib.Path(site, "dev_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    code = (
        "import byol_rs, torch; "
        "p = torch.randn(4, 8, requires_grad=True); l = byol_rs.byol_loss(p, torch.randn(4, 8)); l.backward(); "
        "print(byol_rs.__file__); print(p.grad.shape)"
    )
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith(site), first
    assert second == "torch.Size([4, 8])"
    # The extension finds torch's libraries relative to itself.
    so = next(pathlib.Path(site, "byol_rs").glob("_core*.so"))
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
    assert "$ORIGIN/../torch/lib" in dyn and str(ROOT) not in dyn


# torch's pure-Python requirements; its CUDA libraries (nvidia-*, Python-independent .so files)
# are borrowed from this venv instead of downloading 3 GB more.
TORCH_PURE_DEPS = ["filelock", "typing-extensions", "setuptools", "sympy", "networkx", "jinja2", "fsspec"]
SMOKE = """
import byol_rs, torch, torch.nn.functional as F
print(byol_rs.__file__)
p, z = torch.randn(16, 32, requires_grad=True), torch.randn(16, 32)
loss = byol_rs.byol_loss(p, z)
q = p.detach().clone().requires_grad_(True)
ref = 2 - 2 * F.cosine_similarity(q, z).mean()
loss.backward(); ref.backward()
# 10x the floor: the reference's own fp32 error against float64, at least one fp32 ulp of the
# loss's scale 2 (tests/python/floors.py's rule, written out: this runs in the wheel's venv).
q64 = p.detach().double().requires_grad_(True)
ref64 = 2 - 2 * F.cosine_similarity(q64, z.double()).mean()
ref64.backward()
e = torch.finfo(torch.float32).eps
assert abs(loss.item() - ref64.item()) <= 10 * max(abs(ref.item() - ref64.item()), 2 * e)
g64 = q64.grad.abs().max().item()
assert (p.grad.double() - q64.grad).abs().max() <= 10 * max((q.grad.double() - q64.grad).abs().max().item(), e * g64)
l = byol_rs.BYOL("convnet", in_channels=1, projector_hidden=32, predictor_hidden=32, projection_dim=16, total_steps=4,
                 augment=byol_rs.Augment.small_image(28, seed=0))
m = l.step(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8))
assert m["step"] == 1 and 0 <= m["loss"] <= 8
print(sys.version_info[:2], torch.__version__)
"""


def python312_with_torch() -> pathlib.Path:
    """A CPython 3.12 venv with torch==2.11.0, kept outside the clone so that CI reuses it."""
    venv = pathlib.Path(os.environ.get("BYOL_RS_PY312_VENV", pathlib.Path.home() / ".cache" / "byol-rs" / "py312-torch"))
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import torch; assert torch.__version__.startswith('2.11.0')"],
                                        capture_output=True).returncode == 0
    if ok:
        return py
    candidates = sorted(pathlib.Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")) + [pathlib.Path("python3.12")]

    def works(c) -> bool:
        try:
            return subprocess.run([str(c), "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                                  capture_output=True).returncode == 0
        except OSError:
            return False
    base = next((c for c in candidates if works(c)), None)
    if base is None:
        pytest.skip("no CPython 3.12 on this machine (pyenv install 3.12 to run this test)")
    subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--no-deps", "torch==2.11.0"], check=True, timeout=1200)
    subprocess.run(pip + TORCH_PURE_DEPS, check=True, timeout=600)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    shared = venv / "borrowed"
    shared.mkdir(exist_ok=True)
    link = shared / "nvidia"
    if not link.exists():
        link.symlink_to(pathlib.Path(sysconfig.get_paths()["purelib"]) / "nvidia")
    pathlib.Path(site, "borrowed_cuda_libs.pth").write_text(str(shared) + "\n")
    return py


@pytest.mark.timeout(1800)
def test_wheel_works_on_python_312_with_torch_from_pypi(wheel, tmp_path):
    py = python312_with_torch()
    target = tmp_path / "site"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    out = subprocess.run([str(py), "-c", "import sys\n" + SMOKE], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target)) and lines[-1].startswith("(3, 12) 2.11.0")
