"""The GPU check: what only a CUDA machine can tell, in one run of under 8 minutes, written as JSON.

On a lent GPU machine (see the README, "Measuring on a GPU"):

    python scripts/gpu_check.py --out "$OUT"

1. the ``gpu``-marked tests; 2. ``imagic-lora bench train`` for SD 1.5 at 512 px and SD 2.1 at
768 px (random weights, real architectures), imagic-lora against classic Imagic; 3. one end-to-end
``train`` + ``apply`` on CUDA with the default schedule on SD 1.5's architecture at 512 px.

``--dry`` runs the same steps on this CPU at toy sizes (the built-in tiny model, 64 px, 2 steps),
so the script is exercised by the test suite and does not rot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FULL = {
    "device": "cuda",
    "benches": [("sd15", 512), ("sd21", 768)],
    "bench_steps": ["--steps", "3", "--apply-steps", "10"],
    "e2e_family": "sd15", "e2e_resolution": 512, "e2e_train": [], "e2e_apply": [],
}
DRY = {
    "device": "cpu",
    "benches": [("tiny", 64)],
    "bench_steps": ["--steps", "1", "--apply-steps", "2", "--apply-images", "1"],
    "e2e_family": "tiny", "e2e_resolution": 64,
    "e2e_train": ["--embedding-steps", "2", "--lora-steps", "2"], "e2e_apply": ["--steps", "2"],
}


def step(name: str, command: list[str], env: dict[str, str]) -> dict:
    """Run one command, echo its output, and return its exit code, seconds and closing lines."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    print(done.stdout[-4000:], flush=True)
    return {"name": name, "command": command, "exit_code": done.returncode, "seconds": round(seconds, 1),
            "tail": done.stdout.strip().splitlines()[-15:]}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "imagic_lora.cli", *args]


def save_random_model(family: str, folder: Path) -> None:
    """A diffusers folder of ``family``'s architecture with random weights (fp16), as a user's model would be."""
    import torch

    from imagic_lora.bench.architectures import random_pipeline

    random_pipeline(family).to(dtype=torch.float16).save_pretrained(folder, safe_serialization=True)


def run(settings: dict, out: Path, dry: bool) -> dict:
    env = {**os.environ, "IMAGIC_LORA_USER_PATH": str(out / "user"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results: dict = {"dry": dry, "steps": []}
    # 1. the gpu-marked tests (pytest's exit code 5: none collected, as on a CPU)
    tests = step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               "tests/test_gpu.py"], env)
    results["steps"].append(tests)
    # 2. memory and speed on the real architectures
    for family, resolution in settings["benches"]:
        bench_out = out / f"bench-{family}-{resolution}"
        bench = step(f"bench train {family} {resolution}px",
                     cli("bench", "train", "--family", family, "--resolution", str(resolution), "--device",
                         settings["device"], *settings["bench_steps"], "--out", str(bench_out)), env)
        train_json = bench_out / "train.json"
        bench["results"] = json.loads(train_json.read_text()) if train_json.is_file() else None
        results["steps"].append(bench)
    # 3. end to end, as a user runs it
    model = "builtin:tiny" if settings["e2e_family"] == "tiny" else str(out / "model")
    if not model.startswith("builtin:"):
        save_random_model(settings["e2e_family"], Path(model))
    image = str(REPO / "profiles" / "example-input.png")
    resolution = str(settings["e2e_resolution"])
    results["steps"].append(step("train", cli("train", "check", image, "--prompt", "a red ball on green grass",
                                              "--model", model, "--resolution", resolution, "--device",
                                              settings["device"], "--replace", *settings["e2e_train"]), env))
    results["steps"].append(step("apply", cli("apply", "profile", "check", "a blue ball on green grass", "--device",
                                              settings["device"], "--out", str(out / "images"),
                                              *settings["e2e_apply"]), env))
    results["ok"] = all(s["exit_code"] in (0, 5) if s["name"] == "gpu tests" else s["exit_code"] == 0
                        for s in results["steps"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for gpu-check.json and the outputs.")
    parser.add_argument("--dry", action="store_true", help="Toy sizes on the CPU, to check the script itself.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run(DRY if args.dry else FULL, args.out, args.dry)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "gpu-check.json").write_text(json.dumps(results, indent=1))
    print(f"{'OK' if results['ok'] else 'FAILED'} in {results['seconds']} s; wrote {args.out / 'gpu-check.json'}")
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
