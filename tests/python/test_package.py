"""The package imports cleanly, checks its torch version, and the demo main job runs."""

import subprocess
import sys

import byol_rs


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_alone_in_a_fresh_interpreter():
    out = _python("import byol_rs, sys; print(byol_rs.__version__, 'torch' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [byol_rs.__version__, "True"]


def test_extension_and_python_agree_on_torch_version():
    assert byol_rs._core.__torch_version__ == byol_rs._BUILT_FOR_TORCH


def test_torch_version_mismatch_is_a_clear_import_error():
    out = _python("import torch; torch.__version__ = '2.10.0+cpu'; import byol_rs")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: byol_rs was built for torch 2.11.0")
    assert "2.10.0+cpu" in last


def test_public_names_exist():
    for name in byol_rs.__all__:
        assert hasattr(byol_rs, name), name


def test_demo_runs():
    out = subprocess.run([sys.executable, "-m", "byol_rs", "demo"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "byol_loss:" in out.stdout and "max grad difference" in out.stdout
