"""The GPU check script runs end to end in its CPU dry mode, so it is ready when a GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_step(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry", "--out", str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-check.json").read_text())
    assert results["ok"] and results["dry"]
    names = [step["name"] for step in results["steps"]]
    assert names == ["bench train tiny-xl 64px", "train tiny-xl 64px --memory low", "apply tiny-xl 64px --memory low",
                     "train tiny-xl 64px --memory auto", "apply tiny-xl 64px --memory auto", "gpu tests"]
    bench = results["steps"][0]["results"]
    for recipe in ("imagic-lora", "classic"):
        assert bench[recipe]["finetune"]["peak_bytes"] > 0
    for sampling in ("plain", "apply", "apply_defaults"):  # the defaults: the stored inversion as start, keep on
        assert bench["imagic-lora"][sampling]["seconds_each"] > 0
    assert "at the defaults (stored inversion, keep)" in "\n".join(results["steps"][0]["tail"])
    low_train, low_apply, train, _ = results["steps"][1:5]
    assert train["peak_cuda_bytes"] == 0, "the peak is read from the command's output (0 on a CPU)"
    assert train["recipe"] == "memory auto on the CPU: no checkpointing, 8-bit AdamW"
    assert low_train["recipe"].startswith("memory low: ") and low_apply["recipe"].startswith("memory: low")
    assert all(step["timing"].startswith("trained in ") for step in (low_train, train))
    for memory in ("low", "auto"):
        assert len(list((tmp_path / f"images-check-tiny-xl-{memory}").glob("*.png"))) == 1
