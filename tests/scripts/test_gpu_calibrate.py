"""scripts/gpu_calibrate.py: importable, and a no-op that says why, without a CUDA GPU."""

import importlib.util
from pathlib import Path

import pytest


def test_gpu_calibrate_is_import_safe_without_a_gpu(tmp_path):
    path = Path(__file__).parents[2] / "scripts" / "gpu_calibrate.py"
    spec = importlib.util.spec_from_file_location("gpu_calibrate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.torch is not None and module.torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would measure")
    assert module.main(["--out", str(tmp_path / "c.json")]) == 0
    assert not (tmp_path / "c.json").exists()
