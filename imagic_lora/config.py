"""Dataclasses holding every default; the CLI reads its option defaults from here."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import InvalidConfig
from .limits import (
    MAX_LORA_ALPHA,
    MAX_RANK,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    MAX_TRAIN_RESOLUTION,
    MIN_TRAIN_RESOLUTION,
    RESOLUTION_STEP,
)

OPTIMIZERS = ("adamw8bit", "adamw")
MEMORY_MODES = ("auto", "low", "high")  # imagic_lora.recipe: which memory savings training pays for
STARTS = ("noise", "inversion", "ddim")
FITS = ("crop", "pad")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidConfig(message)


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


DEFAULT_SAMPLING_STEPS = 50


def _guidance_ok(guidance: float | None) -> bool:
    return guidance is None or (math.isfinite(guidance) and guidance >= 0)


@dataclass
class TrainConfig:
    """Settings of Imagic's two training stages (paper section 3, steps A and B; step C is :class:`ApplyConfig`).

    Defaults: the cheapest schedule of the shapes benchmark, 0.09-0.12x the training time of classic
    Imagic (500 + 1000 full-UNet steps): 50 Adam steps at 2e-2 for the embedding, 100 AdamW steps at 2e-3
    for a rank-8 LoRA. At the apply defaults it edits and keeps the scene as often as longer schedules on
    the shapes model, at α 1.0 where they already edit at 0.8-0.9 (README, Performance).
    """

    embedding_steps: int = 50
    embedding_lr: float = 2e-2
    lora_steps: int = 100
    lora_lr: float = 2e-3
    rank: int = 8
    lora_alpha: float = 8.0
    optimizer: str | None = None  # None: --memory decides (8-bit AdamW on small cards and the CPU)
    resolution: int | None = None
    fit: str = "crop"
    seed: int = 0
    samples_per_step: int = 1
    # the inversion stored in the profile: apply with as many --steps at this --guidance starts from it at no
    # cost; None: the base model's default guidance (BaseModel.default_guidance), which apply uses too
    inversion_steps: int = DEFAULT_SAMPLING_STEPS
    inversion_guidance: float | None = None
    # the memory switches: None lets --memory decide each from the device (imagic_lora.recipe); a value wins
    memory: str = "auto"
    gradient_checkpointing: bool | None = None
    offload_encoders: bool | None = None

    def __post_init__(self) -> None:
        _check(self.embedding_steps >= 0, f"--embedding-steps must be >= 0, got {self.embedding_steps}")
        _check(self.lora_steps >= 0, f"--lora-steps must be >= 0, got {self.lora_steps}")
        _check(_positive_finite(self.embedding_lr), f"--embedding-lr must be > 0, got {self.embedding_lr}")
        _check(_positive_finite(self.lora_lr), f"--lora-lr must be > 0, got {self.lora_lr}")
        _check(1 <= self.rank <= MAX_RANK, f"--rank must be in [1, {MAX_RANK}], got {self.rank}")
        _check(1 <= self.inversion_steps <= MAX_STEPS,
               f"--inversion-steps must be in [1, {MAX_STEPS}], got {self.inversion_steps}")
        _check(_guidance_ok(self.inversion_guidance),
               f"--inversion-guidance must be >= 0, got {self.inversion_guidance}")
        _check(1 <= self.samples_per_step <= MAX_SAMPLES,
               f"--samples-per-step must be in [1, {MAX_SAMPLES}], got {self.samples_per_step}")
        _check(_positive_finite(self.lora_alpha) and self.lora_alpha <= MAX_LORA_ALPHA,
               f"--lora-alpha must be in (0, {MAX_LORA_ALPHA:g}], got {self.lora_alpha}")
        _check(0 <= self.seed < MAX_SEED, f"--seed must be in [0, 2**63), got {self.seed}")
        _check(
            self.optimizer is None or self.optimizer in OPTIMIZERS,
            f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        _check(self.memory in MEMORY_MODES,
               f"--memory must be one of {', '.join(MEMORY_MODES)}, got {self.memory!r}")
        _check(self.fit in FITS, f"--fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.resolution is not None:
            _check(
                MIN_TRAIN_RESOLUTION <= self.resolution <= MAX_TRAIN_RESOLUTION
                and self.resolution % RESOLUTION_STEP == 0,
                f"--resolution must be a multiple of {RESOLUTION_STEP} in [{MIN_TRAIN_RESOLUTION}, "
                f"{MAX_TRAIN_RESOLUTION}], got {self.resolution}",
            )

    def for_model(self, default_guidance: float) -> TrainConfig:
        """This config with the inversion's guidance filled in from the model's default when none was given."""
        return self if self.inversion_guidance is not None else replace(self, inversion_guidance=default_guidance)


@dataclass
class ApplyConfig:
    """Settings of Imagic's interpolation and generation step (paper section 3, step C).

    Defaults chosen by ``imagic-lora bench edits`` on its tuning split (48 shapes cases), then measured on
    the held-out split (README, Performance): start from the stored inversion, α 1.0, keep the photo's
    pixels where the edit changed them by less than 0.25. The guidance is the base model's own default
    (:attr:`imagic_lora.models.BaseModel.default_guidance`): 2 on the built-in models, where it was tuned; the
    pipeline's default on Stable Diffusion (7.5, SDXL 5), which real photos need.
    """

    alphas: tuple[float, ...] = (1.0,)
    seeds: int = 1
    seed: int = 0
    steps: int = DEFAULT_SAMPLING_STEPS
    guidance: float | None = None  # None: the base model's default (BaseModel.default_guidance)
    negative_prompt: str = ""
    batch_size: int = 4
    grid: bool = True
    # where sampling starts: seeded noise, the photo's edit-friendly inversion (kept in the profile), or its
    # DDIM inversion (which profiles before format version 4 keep)
    start: str = "inversion"
    # put the photo's pixels back where the edit changed them by less than keep_threshold (0-1)
    keep: bool = True
    keep_threshold: float = 0.25
    # low: each image is decoded with the UNet off the device (a small card); auto: when the GPU needs it
    memory: str = "auto"

    def __post_init__(self) -> None:
        self.alphas = tuple(self.alphas) or (1.0,)
        for alpha in self.alphas:
            _check(math.isfinite(alpha) and 0 <= alpha <= 1.5, f"--alpha must be in [0, 1.5], got {alpha}")
        _check(1 <= self.seeds <= MAX_SAMPLES, f"--seeds must be in [1, {MAX_SAMPLES}], got {self.seeds}")
        _check(0 <= self.seed < MAX_SEED, f"--seed must be in [0, 2**63), got {self.seed}")
        _check(1 <= self.steps <= MAX_STEPS, f"--steps must be in [1, {MAX_STEPS}], got {self.steps}")
        _check(_guidance_ok(self.guidance), f"--guidance must be >= 0, got {self.guidance}")
        _check(1 <= self.batch_size <= MAX_SAMPLES,
               f"--batch-size must be in [1, {MAX_SAMPLES}], got {self.batch_size}")
        _check(math.isfinite(self.keep_threshold) and 0 < self.keep_threshold <= 1,
               f"--keep-threshold must be in (0, 1], got {self.keep_threshold}")
        _check(self.memory in MEMORY_MODES,
               f"--memory must be one of {', '.join(MEMORY_MODES)}, got {self.memory!r}")
        _check(self.start in STARTS, f"--start must be one of {', '.join(STARTS)}, got {self.start!r}")
        _check(self.start == "noise" or self.seeds == 1,
               f"--seeds {self.seeds} would give {self.seeds} identical images: with --start inversion (the "
               "default) sampling is deterministic and the seed is not used. Try: --seeds 1, or --start noise")

    def for_model(self, default_guidance: float) -> ApplyConfig:
        """This config with its guidance filled in from the model's default when none was given."""
        return self if self.guidance is not None else replace(self, guidance=default_guidance)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]
