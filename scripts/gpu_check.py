"""The GPU check: what only a CUDA machine can tell, written as JSON, in two parts of under 8 minutes each.

On a lent GPU machine (see the README, "Measuring on a GPU"), one call per part:

    python scripts/gpu_check.py --part 1 --out "$OUT"
    python scripts/gpu_check.py --part 2 --out "$OUT"

Part 1, end to end as a user runs them, on saved random models of the real architectures: ``train`` with the
default schedule then ``apply``, each with its peak CUDA memory and ``train``'s own timing line (seconds per
profile: training and inversion); SDXL at 1024 px with ``--memory low`` (the 8 GB card's recipe) and with
``--memory auto``, then SD 1.5 at 512 px. Part 2: ``imagic-lora bench train`` for SDXL at 1024 px, SD 1.5 at
512 px and SD 2.1 at 768 px (random weights, against classic Imagic; apply against plain sampling at 50 steps,
interleaved rounds, medians), then the ``gpu``-marked tests. The JSON is rewritten after every step, so a run cut
short still reports what it measured.

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
BENCH = ["--steps", "3", "--apply-steps", "50"]
PARTS = {
    "1": [("e2e-low", "sdxl", 1024), ("e2e", "sdxl", 1024), ("e2e", "sd15", 512)],
    "2": [("bench", "sdxl", 1024), ("bench", "sd15", 512), ("bench", "sd21", 768), ("tests", None, None)],
}
FULL = {"device": "cuda", "bench_steps": BENCH, "e2e_train": [], "e2e_apply": []}
DRY = {
    "device": "cpu",
    "plan": [("bench", "tiny-xl", 64), ("e2e-low", "tiny-xl", 64), ("e2e", "tiny-xl", 64), ("tests", None, None)],
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
    recipe = next((line for line in lines if line.startswith("memory")), None)  # the --memory choice said
    timing = next((line for line in lines if line.startswith("trained in ")), None)  # train's seconds per profile
    return {"name": name, "command": command, "exit_code": done.returncode, "seconds": round(seconds, 1),
            "peak_cuda_bytes": peaks[-1] if peaks else None, "recipe": recipe, "timing": timing,
            "tail": lines[-15:]}


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


def end_to_end(settings: dict, family: str, resolution: int, out: Path, env: dict, work: Path,
               memory: str = "auto") -> list[dict]:
    """``train`` with the default schedule then ``apply``, as a user runs them, with ``--memory memory``, on a
    saved random model (written once to ``work``, not ``out``: SDXL's is 7 GB)."""
    model = BUILTIN.get(family) or str(work / f"model-{family}")
    if not model.startswith("builtin:") and not Path(model).is_dir():
        save_random_model(family, Path(model))
    image = str(REPO / "profiles" / "example-input.png")
    name, label = f"check-{family}-{memory}", f"{family} {resolution}px --memory {memory}"
    trained = step(f"train {label}",
                   cli_with_peak("train", name, image, "--prompt", "a red ball on green grass", "--model", model,
                                 "--resolution", str(resolution), "--device", settings["device"], "--replace",
                                 "--memory", memory, *settings["e2e_train"]), env)
    applied = step(f"apply {label}",
                   cli_with_peak("apply", "profile", name, "a blue ball on green grass", "--device",
                                 settings["device"], "--memory", memory, "--out", str(out / f"images-{name}"),
                                 *settings["e2e_apply"]), env)
    return [trained, applied]


def run(settings: dict, out: Path, dry: bool, work: Path) -> dict:
    env = {**os.environ, "IMAGIC_LORA_USER_PATH": str(work / "user"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results: dict = {"dry": dry, "steps": []}
    if settings.get("part"):
        results["part"] = settings["part"]
    for kind, family, resolution in settings["plan"]:
        if kind == "bench":
            results["steps"].append(bench(settings, family, resolution, out, env))
        elif kind.startswith("e2e"):
            memory = "low" if kind == "e2e-low" else "auto"
            results["steps"] += end_to_end(settings, family, resolution, out, env, work, memory)
        else:  # the gpu-marked tests (pytest's exit code 5: none collected, as on a CPU)
            results["steps"].append(step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                                                       "no:cacheprovider", "tests/test_gpu.py"], env))
        write(results, out)
    results["ok"] = all(s["exit_code"] in (0, 5) if s["name"] == "gpu tests" else s["exit_code"] == 0
                        for s in results["steps"])
    return results


def settings(dry: bool, part: str | None) -> dict:
    """The steps to run: the dry plan, one part, or every part in order."""
    if dry:
        return DRY
    plan = PARTS[part] if part else [entry for name in sorted(PARTS) for entry in PARTS[name]]
    return {**FULL, "plan": plan, "part": part}


def write(results: dict, out: Path) -> Path:
    path = out / f"gpu-check{results.get('part', '')}.json"
    path.write_text(json.dumps(results, indent=1))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for gpu-check.json and the outputs.")
    parser.add_argument("--dry", action="store_true", help="Toy sizes on the CPU, to check the script itself.")
    parser.add_argument("--part", choices=sorted(PARTS), default=None,
                        help="Run one part (each fits one device call) [default: both, one after the other].")
    parser.add_argument("--work", type=Path, default=None,
                        help="Folder for the saved models and the profile store [default: a temporary folder].")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        results = run(settings(args.dry, args.part), args.out, args.dry, work)
    results["seconds"] = round(time.perf_counter() - start, 1)
    path = write(results, args.out)
    print(f"{'OK' if results['ok'] else 'FAILED'} in {results['seconds']} s; wrote {path}")
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
