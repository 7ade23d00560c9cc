"""Memory and speed of making and applying a profile on a real Stable Diffusion architecture.

imagic-lora's lean path against the classic Imagic recipe, each in its own process (so each
process's peak RSS is its own), on the same machine in one run. Peak memory is CUDA's
``max_memory_allocated`` on a GPU; on the CPU it is the live tensor bytes counted by
:class:`~imagic_lora.bench.memory.TensorPeak` of what would sit on the accelerator, in bf16 as
the stand-in for fp16.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from ..config import ApplyConfig, TrainConfig
from ..lora import fused_lora
from ..method import (
    decode_latents,
    encode_prompt,
    finetune_full,
    finetune_lora,
    generate,
    inverted_start,
    optimize_embedding,
)
from ..models import BaseModel, choose_device, choose_dtype, prepare
from ..placement import encoders_offloaded
from .architectures import random_pipeline
from .memory import TensorPeak, module_tensors, peak_rss_bytes, reset_peak_rss

OURS, CLASSIC = "imagic-lora", "classic"
RECIPES = {
    OURS: "frozen UNet in fp16 (bf16 where supported; bf16 on CPU), fp32 LoRA, gradient checkpointing, "
          "8-bit AdamW, VAE and text encoder off the accelerator",
    CLASSIC: "fp32 UNet fine-tuned whole with fp32 Adam, no checkpointing, VAE and text encoder resident "
             "(the diffusers community Imagic pipeline)",
}
CLASSIC_STEPS = (500, 1000)  # the classic schedule: embedding steps, UNet steps
CLASSIC_LR = 2e-6
PROMPT = "a photo of a dog"
APPLY_ROUNDS = 4  # sampling is timed once more in each round; each mode reports its median


@dataclass
class TrainBenchConfig:
    """What to measure: ``steps`` timed training steps per stage after one warm-up step."""

    family: str = "sd15"
    resolution: int | None = None
    steps: int = 3
    apply_steps: int = 10
    apply_images: int = 2
    device: str | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(base: BaseModel, resident: list[torch.Tensor], run: Callable[[int], object], count: int) -> dict:
    """Warm up with ``run(1)``, then time ``run(count)`` and take its peak memory."""
    run(1)
    _sync(base.device)
    reset_peak_rss()
    tracker = TensorPeak() if base.device.type == "cpu" else contextlib.nullcontext()
    if base.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(base.device)
    start = time.perf_counter()
    with tracker:
        if isinstance(tracker, TensorPeak):
            tracker.track(resident)
        run(count)
        _sync(base.device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(base.device) if base.device.type == "cuda" else tracker.peak
    return {"peak_bytes": int(peak), "rss_bytes": peak_rss_bytes(), "seconds": seconds, "count": count,
            "seconds_each": seconds / count}


def _load(config: TrainBenchConfig, recipe: str) -> BaseModel:
    device = choose_device(config.device)
    half = choose_dtype(device) if device.type == "cuda" else torch.bfloat16
    dtype = torch.float32 if recipe == CLASSIC else half
    # built on the accelerator, in its dtype: SDXL's fp32 weights would not fit a small machine's memory twice
    pipe = random_pipeline(config.family, device=str(device), dtype=dtype)
    return prepare(f"random {config.family}", pipe, device, dtype)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(recipe: str, config: TrainBenchConfig, results: dict | None = None) -> dict:
    """Every stage of ``recipe`` on ``config.family`` with random weights: peak memory and seconds.

    Each stage's numbers land in ``results`` as soon as it is measured, so a later stage that runs
    out of memory leaves the earlier ones.
    """
    results = {} if results is None else results
    base = _load(config, recipe)
    ours = recipe == OURS
    resolution = config.resolution or base.native_resolution
    size = resolution // base.pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, size, size), generator=generator).to(base.device)
    embedding = encode_prompt(base, PROMPT)
    train = TrainConfig(gradient_checkpointing=ours, offload_encoders=ours)
    pipe = base.pipe
    resident = module_tensors(base.denoiser) if ours else module_tensors(base.denoiser, pipe.vae, *base.text_encoders)
    inputs = [latents, *embedding.tensors()]
    results.update({"recipe": recipe, "dtype": str(base.dtype).removeprefix("torch."), "resolution": resolution})
    state: dict = {}

    def stage1(n: int) -> None:
        state["e_opt"], _ = optimize_embedding(base, latents, embedding, replace(train, embedding_steps=n),
                                               generator, progress=False)

    def lora(n: int) -> None:
        state["lora"], _ = finetune_lora(base, latents, state["e_opt"], replace(train, lora_steps=n), generator,
                                         progress=False)

    def full(n: int) -> None:
        finetune_full(base, latents, state["e_opt"], n, CLASSIC_LR, generator, progress=False)

    with encoders_offloaded(base, train.offload_encoders):
        _log(f"{recipe}: stage 1, embedding ({config.steps} steps)")
        results["embedding"] = _measure(base, resident + inputs, stage1, config.steps)
        _log(f"{recipe}: stage 2, {'LoRA' if ours else 'full UNet'} ({config.steps} steps)")
        results["finetune"] = _measure(base, resident + inputs + state["e_opt"].tensors(), lora if ours else full,
                                       config.steps)
    if ours:
        results.update(_measure_apply(base, state, config, resolution, latents))
    return results


def _measure_apply(base: BaseModel, state: dict, config: TrainBenchConfig, resolution: int,
                   latents: torch.Tensor) -> dict:
    """Images with the profile (adapter fused) against the plain pipeline from the prompt, same steps.

    With the profile twice: from seeded noise, and at the apply defaults (the stored inversion of the
    photo as the start, the photo decoded and its unchanged pixels kept), one α per image in a batch.
    The adapter is fused once around every run, as ``apply`` fuses it once per command: fused weights
    cost the plain pipeline what the base weights cost, and the runs time sampling, not fusing.
    """
    pipe, count = base.pipe, config.apply_images
    resident = module_tensors(base.denoiser, pipe.vae, *base.text_encoders)
    train = TrainConfig()
    alphas = tuple(round(1.0 - 0.1 * i, 1) for i in range(count))

    def plain(steps: int) -> None:
        pipe(prompt=[PROMPT] * count, num_inference_steps=steps, height=resolution, width=resolution,
             generator=[torch.Generator().manual_seed(i) for i in range(count)])

    def profile(steps: int, start: str) -> None:
        sampling = ApplyConfig(alphas=alphas, steps=steps, batch_size=count, start=start, keep=start == "inversion")
        photo = decode_latents(base, latents) if sampling.keep else None
        generate(base, state["e_opt"], PROMPT, sampling, resolution, progress=False,
                 start=inversion if start == "inversion" else None, photo=photo)

    runs = {"plain": plain, "apply": partial(profile, start="noise"),
            "apply_defaults": partial(profile, start="inversion")}
    measured = {}
    with fused_lora(base.denoiser, state["lora"], train.rank, train.lora_alpha):  # stored in the profile at train time
        inversion = inverted_start(base, latents, state["e_opt"], ApplyConfig(steps=config.apply_steps),
                                   progress=False)
        for name, run in runs.items():
            _log(f"{OURS}: {name} sampling ({count} images, {config.apply_steps} steps)")
            measured[name] = _measure(base, [*resident, *state["e_opt"].tensors()],
                                      lambda _, r=run: r(config.apply_steps), 1)
        _log(f"{OURS}: sampling again, {APPLY_ROUNDS} rounds taking turns")
        interleaved = _interleaved(base, runs, config.apply_steps)
    for name, seconds in interleaved.items():
        rounds = [measured[name]["seconds"], *seconds]
        measured[name].update(rounds=rounds, seconds=statistics.median(rounds))
        measured[name]["seconds_each"] = measured[name]["seconds"] / count
    return measured


def _interleaved(base: BaseModel, runs: dict[str, Callable[[int], None]], steps: int) -> dict[str, list[float]]:
    """Seconds of every run in each of ``APPLY_ROUNDS`` rounds, the runs taking turns, so that a machine
    whose speed drifts (a shared or throttled GPU) slows them all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(APPLY_ROUNDS):
        for name, run in runs.items():
            _sync(base.device)
            start = time.perf_counter()
            run(steps)
            _sync(base.device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def run(config: TrainBenchConfig) -> dict:
    """Both recipes, each in a fresh process; a recipe that dies (e.g. out of memory) is reported, not fatal."""
    results = {"config": asdict(config), "recipes": RECIPES, "machine": _machine(config)}
    for recipe in RECIPES:
        done = subprocess.run(
            [sys.executable, "-m", "imagic_lora.bench.train", recipe, json.dumps(asdict(config))],
            stdout=subprocess.PIPE, text=True, check=False,
        )
        if done.returncode == 0:
            results[recipe] = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
            results[recipe] = {"error": f"exited with code {done.returncode}{killed}"}
    return results


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB"


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "n/a"


def per_profile_seconds(results: dict) -> tuple[float, float]:
    """Training seconds per profile at the default schedules, from the measured seconds per step."""
    ours, classic, train = results[OURS], results[CLASSIC], TrainConfig()
    mine = (ours["embedding"]["seconds_each"] * train.embedding_steps
            + ours["finetune"]["seconds_each"] * train.lora_steps)
    theirs = (classic["embedding"]["seconds_each"] * CLASSIC_STEPS[0]
              + classic["finetune"]["seconds_each"] * CLASSIC_STEPS[1])
    return mine, theirs


def _peak(recipe: dict, stage: str) -> str:
    if stage in recipe:
        return _gib(recipe[stage]["peak_bytes"])
    oom = recipe.get("out_of_memory")
    return f"out of memory (> {_gib(oom['peak_bytes'])})" if oom else "not run"


def report(results: dict) -> str:
    """Markdown tables: per stage, ours against classic, with ratios; then apply against plain sampling.

    A classic stage that ran out of memory is reported as such, with what it held when it failed.
    """
    ours, classic = results[OURS], results[CLASSIC]
    if "error" in ours or "error" in classic or "out_of_memory" in ours:
        problem = ours.get("error", ours.get("out_of_memory", "ok"))
        return f"imagic-lora: {problem}; classic: {classic.get('error', 'ok')}"
    lines = [
        f"{results['config']['family']} at {ours['resolution']} px on {results['machine']}",
        "",
        f"| stage | peak, imagic-lora ({ours['dtype']}) | peak, classic ({classic['dtype']}) | ratio "
        "| s/step, imagic-lora | s/step, classic | ratio | RSS, imagic-lora | RSS, classic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stage, label in (("embedding", "1: embedding"), ("finetune", "2: LoRA / full UNet")):
        a = ours[stage]
        if stage not in classic:
            lines.append(f"| {label} | {_gib(a['peak_bytes'])} | {_peak(classic, stage)} | | {a['seconds_each']:.2f} "
                         f"| | | {_gib(a['rss_bytes'])} | |")
            continue
        b = classic[stage]
        lines.append(
            f"| {label} | {_gib(a['peak_bytes'])} | {_gib(b['peak_bytes'])} "
            f"| {_ratio(a['peak_bytes'], b['peak_bytes'])} "
            f"| {a['seconds_each']:.2f} | {b['seconds_each']:.2f} | {_ratio(a['seconds_each'], b['seconds_each'])} "
            f"| {_gib(a['rss_bytes'])} | {_gib(b['rss_bytes'])} |"
        )
    if "finetune" in classic:
        mine, theirs = per_profile_seconds(results)
        train = TrainConfig()
        lines.append(
            f"| per profile ({train.embedding_steps}+{train.lora_steps} vs {CLASSIC_STEPS[0]}+{CLASSIC_STEPS[1]} "
            f"steps) | | | | {mine:.0f} s | {theirs:.0f} s | {_ratio(mine, theirs)} | | |"
        )
    plain, apply = ours["plain"], ours["apply"]
    lines += [
        "",
        f"| sampling | s/image{_rounds(plain)} | peak | overhead |",
        "|---|---|---|---|",
        f"| plain pipeline | {plain['seconds_each']:.2f} | {_gib(plain['peak_bytes'])} | |",
        f"| with the profile (adapter fused), from noise | {apply['seconds_each']:.2f} "
        f"| {_gib(apply['peak_bytes'])} | {_overhead(apply, plain)} vs plain |",
    ]
    if "apply_defaults" in ours:  # results written before the defaults started from the stored inversion lack it
        defaults = ours["apply_defaults"]
        lines.append(f"| with the profile at the defaults (stored inversion, keep) | {defaults['seconds_each']:.2f} "
                     f"| {_gib(defaults['peak_bytes'])} | {_overhead(defaults, apply)} vs from noise |")
    return "\n".join(lines)


def _rounds(measured: dict) -> str:
    return f" (median of {len(measured['rounds'])} runs)" if "rounds" in measured else ""


def _overhead(measured: dict, reference: dict) -> str:
    return f"{100 * (measured['seconds_each'] / reference['seconds_each'] - 1):+.1f} %"


def _machine(config: TrainBenchConfig) -> str:
    device = choose_device(config.device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU {name}, {os.cpu_count()} cores, torch {torch.__version__}"


def _worker() -> None:
    recipe, settings = sys.argv[1], json.loads(sys.argv[2])
    results: dict = {}
    try:
        measure(recipe, TrainBenchConfig(**settings), results)
    except torch.OutOfMemoryError:
        # what was held when the allocation failed is a lower bound of what the stage needs
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
        results["out_of_memory"] = {"peak_bytes": int(peak), "device_bytes": int(total)}
    print(json.dumps(results))


if __name__ == "__main__":
    _worker()
