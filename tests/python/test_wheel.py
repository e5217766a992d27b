"""The built wheel installs into a fresh venv that has torch, imports, and computes the loss."""

import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    # `maturin develop` patches the shared cargo artifact's rpath with absolute build paths;
    # touching the crate root forces a relink, so the wheel gets only $ORIGIN/../torch/lib.
    (ROOT / "src" / "lib.rs").touch()
    subprocess.run(
        ["maturin", "build", "--release", "--compatibility", "linux", "--auditwheel", "skip", "-o", str(dist), "--quiet"],
        cwd=ROOT, check=True, capture_output=True, timeout=900,
    )
    (wheel,) = dist.glob("byol_rs-*-cp39-abi3-*.whl")
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
