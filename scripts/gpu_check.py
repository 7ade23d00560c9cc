"""The GPU check: what only a CUDA machine can tell, in one run of under 9 minutes, written as JSON.

On a lent GPU machine (see the README, "Measuring on a GPU"):

    python scripts/gpu_check.py --out "$OUT"

1. ``imagic-lora bench train`` for SDXL at 1024 px (random weights, real architecture), imagic-lora
against classic Imagic; 2. one end-to-end ``train`` + ``apply`` on CUDA with the default schedule
on SDXL's architecture at 1024 px, with each command's peak CUDA memory; 3. ``bench train`` for
SD 1.5 at 512 px and SD 2.1 at 768 px; 4. the ``gpu``-marked tests; 5. the end-to-end run on SD 1.5
at 512 px. The JSON is rewritten after every step, so a run cut short still reports what it measured.

``--dry`` runs the same steps on this CPU at toy sizes (the built-in tiny models, 64 px, 2 steps),
so the script is exercised by the test suite and does not rot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEAK_PREFIX = "peak_cuda_bytes="
BENCH = ["--steps", "3", "--apply-steps", "10"]
FULL = {
    "device": "cuda",
    "plan": [("bench", "sdxl", 1024), ("e2e", "sdxl", 1024), ("bench", "sd15", 512), ("bench", "sd21", 768),
             ("tests", None, None), ("e2e", "sd15", 512)],
    "bench_steps": BENCH, "e2e_train": [], "e2e_apply": [],
}
DRY = {
    "device": "cpu",
    "plan": [("bench", "tiny-xl", 64), ("e2e", "tiny-xl", 64), ("tests", None, None)],
    "bench_steps": ["--steps", "1", "--apply-steps", "2", "--apply-images", "1"],
    "e2e_train": ["--embedding-steps", "2", "--lora-steps", "2"], "e2e_apply": ["--steps", "2"],
}
BUILTIN = {"tiny": "builtin:tiny", "tiny-xl": "builtin:tiny-xl"}


def step(name: str, command: list[str], env: dict[str, str]) -> dict:
    """Run one command, echo its output, and return its exit code, seconds, peak CUDA memory and closing lines."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    print(done.stdout[-4000:], flush=True)
    lines = done.stdout.strip().splitlines()
    peaks = [int(line[len(PEAK_PREFIX):]) for line in lines if line.startswith(PEAK_PREFIX)]
    recipe = next((line for line in lines if line.startswith("memory ")), None)  # train's --memory choice
    return {"name": name, "command": command, "exit_code": done.returncode, "seconds": round(seconds, 1),
            "peak_cuda_bytes": peaks[-1] if peaks else None, "recipe": recipe, "tail": lines[-15:]}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "imagic_lora.cli", *args]


def cli_with_peak(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "cuda_peak.py"), *args]


def save_random_model(family: str, folder: Path) -> None:
    """A diffusers folder of ``family``'s architecture with random weights (fp16), as a user's model would be."""
    import torch

    from imagic_lora.bench.architectures import random_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    random_pipeline(family, device=device, dtype=torch.float16).save_pretrained(folder, safe_serialization=True)


def bench(settings: dict, family: str, resolution: int, out: Path, env: dict) -> dict:
    bench_out = out / f"bench-{family}-{resolution}"
    result = step(f"bench train {family} {resolution}px",
                  cli("bench", "train", "--family", family, "--resolution", str(resolution), "--device",
                      settings["device"], *settings["bench_steps"], "--out", str(bench_out)), env)
    train_json = bench_out / "train.json"
    result["results"] = json.loads(train_json.read_text()) if train_json.is_file() else None
    return result


def end_to_end(settings: dict, family: str, resolution: int, out: Path, env: dict, work: Path) -> list[dict]:
    """``train`` with the default schedule then ``apply``, as a user runs them, on a saved random model
    (written to ``work``, not ``out``: SDXL's is 7 GB)."""
    model = BUILTIN.get(family) or str(work / f"model-{family}")
    if not model.startswith("builtin:"):
        save_random_model(family, Path(model))
    image = str(REPO / "profiles" / "example-input.png")
    name = f"check-{family}"
    trained = step(f"train {family} {resolution}px",
                   cli_with_peak("train", name, image, "--prompt", "a red ball on green grass", "--model", model,
                                 "--resolution", str(resolution), "--device", settings["device"], "--replace",
                                 *settings["e2e_train"]), env)
    applied = step(f"apply {family} {resolution}px",
                   cli_with_peak("apply", "profile", name, "a blue ball on green grass", "--device",
                                 settings["device"], "--out", str(out / f"images-{family}"), *settings["e2e_apply"]),
                   env)
    return [trained, applied]


def run(settings: dict, out: Path, dry: bool, work: Path) -> dict:
    env = {**os.environ, "IMAGIC_LORA_USER_PATH": str(work / "user"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results: dict = {"dry": dry, "steps": []}
    for kind, family, resolution in settings["plan"]:
        if kind == "bench":
            results["steps"].append(bench(settings, family, resolution, out, env))
        elif kind == "e2e":
            results["steps"] += end_to_end(settings, family, resolution, out, env, work)
        else:  # the gpu-marked tests (pytest's exit code 5: none collected, as on a CPU)
            results["steps"].append(step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                                                       "no:cacheprovider", "tests/test_gpu.py"], env))
        write(results, out)
    results["ok"] = all(s["exit_code"] in (0, 5) if s["name"] == "gpu tests" else s["exit_code"] == 0
                        for s in results["steps"])
    return results


def write(results: dict, out: Path) -> None:
    (out / "gpu-check.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for gpu-check.json and the outputs.")
    parser.add_argument("--dry", action="store_true", help="Toy sizes on the CPU, to check the script itself.")
    parser.add_argument("--work", type=Path, default=None,
                        help="Folder for the saved models and the profile store [default: a temporary folder].")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        results = run(DRY if args.dry else FULL, args.out, args.dry, work)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write(results, args.out)
    print(f"{'OK' if results['ok'] else 'FAILED'} in {results['seconds']} s; wrote {args.out / 'gpu-check.json'}")
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
