"""Throughput of train-batch: rows per hour with 1 and 2 processes, against one ``train`` command per row.

Every variant trains the same rows (shapes edit-case inputs) on the same machine in one run, each
in its own fresh store. On a CPU the cores are shared out: one process uses all of them, two
processes half each (``OMP_NUM_THREADS``), so the ratio shows what splitting buys, not more cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..shapes.model import SHAPES_MODEL
from .cases import make_cases


@dataclass
class BatchBenchConfig:
    rows: int = 8
    model: str = SHAPES_MODEL
    processes: tuple[int, ...] = (1, 2)
    per_row_train: bool = True


def write_rows(folder: Path, count: int) -> Path:
    """``count`` shapes photos and the CSV listing them."""
    lines = ["name,image,prompt"]
    for case in make_cases(count, seed=1):
        case.input_image().save(folder / f"case{case.index}.png")
        lines.append(f'case{case.index},case{case.index}.png,"{case.source_prompt}"')
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    return folder / "rows.csv"


def _env(folder: Path, threads: int) -> dict:
    return {**os.environ, "IMAGIC_LORA_USER_PATH": str(folder), "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1"}


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])}... failed:\n{done.stderr[-2000:]}")
    return seconds


def batch_command(rows: Path, model: str, processes: int) -> list[str]:
    """train-batch in one plain process, or under ``accelerate launch`` (CPU processes talk over gloo)."""
    tail = ["-m", "imagic_lora.cli", "train-batch", str(rows), "--model", model]
    if processes == 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *tail]


def model_load_seconds(model: str) -> float:
    """Seconds to load the model once in this (already warm) process."""
    from ..models import load_model

    start = time.perf_counter()
    load_model(model)
    return time.perf_counter() - start


def run(config: BatchBenchConfig, progress: bool = True) -> dict:
    cores = os.cpu_count() or 1
    results: dict = {"rows": config.rows, "model": config.model, "cores": cores, "variants": []}
    with tempfile.TemporaryDirectory(prefix="imagic-bench-batch-") as tmp:
        rows = write_rows(Path(tmp), config.rows)
        variants = [(f"train-batch, {n} process{'es' if n > 1 else ''}", n) for n in config.processes]
        if config.per_row_train:
            variants.append(("one train command per row", 0))
        for label, processes in tqdm(variants, desc="batch variants", disable=not progress):
            store = Path(tmp) / f"store-{processes}"
            env = _env(store, max(1, cores // max(processes, 1)))
            if processes:
                seconds = _timed(batch_command(rows, config.model, processes), env)
            else:
                seconds = sum(_timed([sys.executable, "-m", "imagic_lora.cli", "train", f"case{i}", str(image),
                                      "--prompt", prompt, "--model", config.model], env)
                              for i, image, prompt in _listed(rows))
            results["variants"].append({"variant": label, "processes": processes, "seconds": round(seconds, 1),
                                        "rows_per_hour": round(config.rows * 3600 / seconds, 1)})
    results["model_load_seconds"] = round(model_load_seconds(config.model), 2)
    return results


def _listed(rows: Path) -> list[tuple[int, Path, str]]:
    from ..batch import read_batch

    return [(i, row.image, row.prompt) for i, row in enumerate(read_batch(rows))]


def report(results: dict) -> str:
    variants = results["variants"]
    base = variants[0]["seconds"]
    lines = [f"{results['rows']} rows of {results['model']} on {results['cores']} CPU cores",
             f"{'variant':<30} {'seconds':>8} {'rows/hour':>10} {'speed':>6}"]
    for v in variants:
        speed = base / v["seconds"]
        lines.append(f"{v['variant']:<30} {v['seconds']:>8.1f} {v['rows_per_hour']:>10.1f} {speed:>5.2f}x")
    per_row = next((v for v in variants if v["processes"] == 0), None)
    if per_row:
        saved = per_row["seconds"] - base
        lines.append(f"one train per row spends {saved:.1f} s more than one batch process "
                     f"({saved / results['rows']:.1f} s a row: process start-up, imports, model load, first-step "
                     f"warm-up; the load alone takes {results['model_load_seconds']:.2f} s in a warm process)")
    return "\n".join(lines)
