"""Compute per profile: which training schedule edits as well as classic Imagic for the least time?

Every schedule and the classic recipe train on the same shapes cases with the same seeds; each is
scored along α by the pixel analyzer, as in the edit benchmark.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, replace
from statistics import fmean

from tqdm.auto import tqdm

from ..config import ApplyConfig, TrainConfig
from ..images import to_tensor
from ..lora import fused_lora
from ..method import decode_latents, encode_image, encode_prompt, inverted_start
from ..models import load_model
from ..shapes.model import SHAPES_MODEL
from .cases import make_cases
from .edits import BASELINE_SAMPLING, classic_imagic, imagic_rows, train_imagic_lora
from .report import capped_mean, rate

CLASSIC = "classic 500+1000"
ALPHAS = (0.7, 0.8, 0.9, 1.0, 1.1)
SCHEDULES = {
    "500+500 (SD ports)": TrainConfig(embedding_steps=500, embedding_lr=1e-3, lora_steps=500, lora_lr=1e-4),
    "250+250, lr ×2": TrainConfig(embedding_steps=250, embedding_lr=2e-3, lora_steps=250, lora_lr=2e-4),
    "100+200, lr ×10": TrainConfig(embedding_steps=100, embedding_lr=1e-2, lora_steps=200, lora_lr=1e-3),
    "100+100, lr ×10, 4 samples": TrainConfig(embedding_steps=100, embedding_lr=1e-2, lora_steps=100,
                                              lora_lr=1e-3, samples_per_step=4),
    "50+100, lr ×20, rank 8": TrainConfig(embedding_steps=50, embedding_lr=2e-2, lora_steps=100, lora_lr=2e-3,
                                          rank=8, lora_alpha=8),
    # the defaults' draws in half the optimizer steps: two (t, ε) draws per step, one batch on a GPU
    "25+50, lr ×20, 2 draws": TrainConfig(embedding_steps=25, embedding_lr=2e-2, lora_steps=50, lora_lr=2e-3,
                                          samples_per_step=2),
}


def sweep(cases: int = 10, seed: int = 0, schedules: dict[str, TrainConfig] | None = None,
          progress: bool = True, classic: bool = True) -> list[dict]:
    """Score rows for every schedule (and the classic recipe, unless told not to), every α and case."""
    schedules = schedules or SCHEDULES
    base = load_model(SHAPES_MODEL, device="cpu")
    rows = []
    for case in tqdm(make_cases(cases, seed), desc="schedule cases", disable=not progress, dynamic_ncols=True):
        latents = encode_image(base, to_tensor(case.input_image()))
        embedding = encode_prompt(base, case.source_prompt)
        for name, config in schedules.items():
            e_opt, lora, seconds = train_imagic_lora(base, latents, embedding, config, case.index)
            with fused_lora(base.denoiser, lora, config.rank, config.lora_alpha):
                rows += _at_defaults(name, base, latents, e_opt, case, seconds)
        if not classic:
            continue
        steps, lr = BASELINE_SAMPLING["classic_steps"], BASELINE_SAMPLING["classic_lr"]
        with classic_imagic(base, latents, embedding, steps, lr, case.index) as (e_opt, seconds):
            rows += _at_defaults(CLASSIC, base, latents, e_opt, case, seconds)
    return rows


def _at_defaults(name: str, base, latents, e_opt, case, seconds: float) -> list[dict]:
    """Score rows along α with the shipped sampling defaults (the start, guidance and keep)."""
    sampling = replace(ApplyConfig(), alphas=ALPHAS)
    inversion = inverted_start(base, latents, e_opt, sampling, progress=False)
    photo = decode_latents(base, latents)
    rows = imagic_rows(name, base, e_opt, case, sampling, seconds, inversion, photo)
    return [row | {"schedule": name} for row, _ in rows]


def summarize_schedules(rows: list[dict]) -> dict:
    """Per schedule: train seconds per case, and success / edit / preserved (%) and PSNR per α."""
    groups: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[row["schedule"]][row["alpha"]].append(row)
    summary = {}
    for name, by_alpha in groups.items():
        every = [r for group in by_alpha.values() for r in group]
        summary[name] = {
            "train_seconds": fmean(r["train_seconds"] for r in every),
            "alphas": {
                alpha: {key: rate(group, key) for key in ("success", "edit_success", "preserved")}
                | {"psnr": capped_mean([r["psnr"] for r in group])}
                for alpha, group in sorted(by_alpha.items())
            },
        }
    return summary


def schedule_table(summary: dict) -> str:
    """Markdown: each schedule's time against classic, and its best α's scores."""
    classic_seconds = summary[CLASSIC]["train_seconds"] if CLASSIC in summary else None
    lines = ["| schedule | train s/case | vs classic | best α | both | edit | preserved | PSNR (dB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, stats in summary.items():
        alpha, best = max(stats["alphas"].items(), key=lambda item: (item[1]["success"], item[1]["edit_success"],
                                                                     item[1]["psnr"]))
        lines.append(
            f"| {name} | {stats['train_seconds']:.1f} | {_ratio(stats['train_seconds'], classic_seconds)} "
            f"| {alpha:.1f} "
            f"| {best['success']:.0f} % | {best['edit_success']:.0f} % | {best['preserved']:.0f} % "
            f"| {best['psnr']:.1f} |"
        )
    return "\n".join(lines)


def _ratio(seconds: float, classic_seconds: float | None) -> str:
    return "n/a" if classic_seconds is None else f"{seconds / classic_seconds:.2f}×"


def settings(schedules: dict[str, TrainConfig] | None = None) -> dict:
    return {name: asdict(config) for name, config in (schedules or SCHEDULES).items()}
