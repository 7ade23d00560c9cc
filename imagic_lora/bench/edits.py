"""The edit benchmark: imagic-lora against SDEdit, plain text-to-image and classic Imagic on shapes cases.

Every method sees the same cases, seeds and sampler; scores come from the pixel analyzer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from tqdm.auto import tqdm

from ..config import ApplyConfig, TrainConfig
from ..errors import InvalidConfig
from ..images import labelled_grid, to_tensor
from ..lora import fused_lora
from ..method import encode_image, encode_prompt, finetune_full, finetune_lora, generate, optimize_embedding
from ..models import BaseModel, load_model
from ..shapes.model import SHAPES_MODEL
from .cases import EDIT_TYPES, Case, make_cases, score
from .report import summarize

# classic Imagic's stage 1 as the community SD pipeline runs it, whatever imagic-lora's defaults become
CLASSIC_TRAIN = TrainConfig(embedding_steps=500, embedding_lr=1e-3)
SHEET_COLUMNS = ("input", "ground truth", "imagic-lora", "classic imagic", "sdedit 0.7", "text-to-image")


@dataclass
class BenchConfig:
    """What the benchmark runs; the default 10 cases take about 15 minutes on a 2-core CPU (88 s a case)."""

    cases: int = 10
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    classic_steps: int = 1000  # the community Imagic pipeline's schedule: 500 embedding + 1000 UNet steps
    classic_lr: float = 2e-6
    alphas: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    default_alpha: float = 0.7
    strengths: tuple[float, ...] = (0.5, 0.7, 0.9)
    steps: int = 50
    guidance: float = 7.5
    sheet_rows: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.cases <= 10_000:
            raise InvalidConfig(f"--cases must be in [1, 10000], got {self.cases}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise InvalidConfig(f"--guidance must be >= 0, got {self.guidance}")


def _sample_config(config: BenchConfig, seed: int) -> ApplyConfig:
    return ApplyConfig(alphas=config.alphas, seed=seed, steps=config.steps, guidance=config.guidance)


def imagic_rows(method, base, e_opt, case, config, seconds) -> tuple[list[dict], Image.Image]:
    rows, shown = [], None
    for alpha, _, image in generate(base, e_opt, case.edit_prompt, _sample_config(config, case.index),
                                    32, progress=False):
        rows.append({"method": method, "alpha": alpha, "train_seconds": seconds, **score(image, case)})
        if alpha == config.default_alpha:
            shown = image
    return rows, shown


def _img2img_rows(base, case, config) -> tuple[list[dict], Image.Image]:
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(base.pipe)
    pipe.set_progress_bar_config(disable=True)
    rows, shown = [], None
    for strength in config.strengths:
        image = pipe(prompt=case.edit_prompt, image=case.input_image(), strength=strength,
                     num_inference_steps=config.steps, guidance_scale=config.guidance,
                     generator=torch.Generator().manual_seed(case.index)).images[0]
        rows.append({"method": "sdedit", "strength": strength, "train_seconds": 0.0, **score(image, case)})
        if strength == 0.7:
            shown = image
    return rows, shown


def train_imagic_lora(base: BaseModel, latents, embedding, train: TrainConfig, seed: int):
    """Both imagic-lora stages with step noise from ``seed``: ``(e_opt, lora, seconds)``."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    e_opt, _ = optimize_embedding(base, latents, embedding, train, generator, progress=False)
    lora, _ = finetune_lora(base, latents, e_opt, train, generator, progress=False)
    return e_opt, lora, time.perf_counter() - start


@contextlib.contextmanager
def classic_imagic(base: BaseModel, latents, embedding, config: BenchConfig, seed: int):
    """Classic Imagic on ``base``'s UNet, yielding ``(e_opt, seconds)``; the UNet's weights are put back after."""
    original = copy.deepcopy(base.pipe.unet.state_dict())
    try:
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        e_opt, _ = optimize_embedding(base, latents, embedding, CLASSIC_TRAIN, generator, progress=False)
        finetune_full(base, latents, e_opt, config.classic_steps, config.classic_lr, generator, progress=False)
        yield e_opt, time.perf_counter() - start
    finally:
        base.pipe.unet.load_state_dict(original)


def run_case(base: BaseModel, case: Case, config: BenchConfig) -> tuple[list[dict], list[Image.Image]]:
    """Every method on one case: score rows, and the images for the contact sheet."""
    # 1. encode once; both Imagic variants start from the same image, prompt and seed
    latents = encode_image(base, to_tensor(case.input_image()))
    embedding = encode_prompt(base, case.source_prompt)

    # 2. imagic-lora
    e_opt, lora, seconds = train_imagic_lora(base, latents, embedding, config.train, case.index)
    with fused_lora(base.pipe.unet, lora, config.train.rank, config.train.lora_alpha):
        ours, ours_shown = imagic_rows("imagic-lora", base, e_opt, case, config, seconds)

    # 3. classic Imagic: its own stage 1, full UNet fine-tuning, then the weights are put back
    with classic_imagic(base, latents, embedding, config, case.index) as (e_opt, seconds):
        classic, classic_shown = imagic_rows("classic-imagic", base, e_opt, case, config, seconds)

    # 4. SDEdit and plain text-to-image from the edit prompt
    sdedit, sdedit_shown = _img2img_rows(base, case, config)
    t2i = base.pipe(prompt=case.edit_prompt, num_inference_steps=config.steps, guidance_scale=config.guidance,
                    generator=torch.Generator().manual_seed(case.index)).images[0]
    rows = ours + classic + sdedit + [{"method": "text-to-image", "train_seconds": 0.0, **score(t2i, case)}]
    for row in rows:
        row.update(case=case.index, edit=case.edit, source_prompt=case.source_prompt, edit_prompt=case.edit_prompt)
    images = [case.input_image(), case.ground_truth(), ours_shown, classic_shown, sdedit_shown, t2i]
    return rows, images


def run(config: BenchConfig, out: Path, progress: bool = True) -> dict:
    """Run every case, write results.json and contact-sheet.png under ``out``, return the summary."""
    base = load_model(SHAPES_MODEL, device="cpu")
    cases = make_cases(config.cases, config.seed)
    rows, sheet = [], []
    for case in tqdm(cases, desc="edit cases", disable=not progress, dynamic_ncols=True):
        case_rows, images = run_case(base, case, config)
        rows += case_rows
        if len(sheet) < config.sheet_rows * len(SHEET_COLUMNS):
            labels = [f"{case.index}: {case.edit}", *SHEET_COLUMNS[1:]]
            sheet += list(zip(labels, images, strict=True))
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, config.default_alpha)
    settings = asdict(config) | {"edit_types": EDIT_TYPES}
    (out / "results.json").write_text(json.dumps({"config": settings, "summary": summary, "rows": rows}, indent=1))
    labelled_grid(sheet, len(SHEET_COLUMNS), 96).save(out / "contact-sheet.png")
    return summary
