"""The edit benchmark: imagic-lora against SDEdit, plain text-to-image and classic Imagic on shapes cases.

Every method sees the same cases, seeds and sampler; scores come from the pixel analyzer. Cases come in
two splits made from different seeds: ``tuning`` (where the defaults were chosen) and ``held-out``
(never looked at while choosing). The baselines do not depend on imagic-lora's settings, so their
scores are computed once per shapes model and case and kept in a JSON cache (``docs/bench``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from tqdm.auto import tqdm

from ..conditioning import interpolate
from ..config import STARTS, ApplyConfig, TrainConfig
from ..errors import InvalidConfig
from ..files import atomic_write
from ..images import labelled_grid, to_tensor
from ..keep import keep_unchanged
from ..lora import fused_lora
from ..method import (
    decode_latents,
    edit_region,
    encode_image,
    encode_prompt,
    finetune_full,
    finetune_lora,
    generate,
    inverted_start,
    optimize_embedding,
)
from ..models import BaseModel, load_model
from ..shapes.model import SHAPES_MODEL
from .cases import EDIT_TYPES, Case, make_cases, score
from .ceiling import round_trip
from .report import IDEAL, STRONG_GUIDANCE, summarize

SPLITS = {"tuning": 0, "held-out": 1}  # the seed of make_cases for each split
# classic Imagic's stage 1 as the community SD pipeline runs it, whatever imagic-lora's defaults become
CLASSIC_TRAIN = TrainConfig(embedding_steps=500, embedding_lr=1e-3)
# the baselines' own settings: the usual text-to-image ones, fixed so that their cache stays valid
BASELINE_SAMPLING = {"steps": 50, "guidance": 7.5, "strengths": (0.5, 0.7), "keep_threshold": 0.3,
                     "classic_alphas": (0.7, 0.9, 1.0),
                     "classic_steps": 1000, "classic_lr": 2e-6}
# imagic-lora before this benchmark chose its defaults: random start noise, α 0.7, guidance 7.5, nothing kept
OLD_DEFAULTS = ApplyConfig(alphas=(0.7,), guidance=7.5, start="noise", keep=False)
DEFAULT_CACHE = Path("docs/bench/baselines.json")
CLASSIC_METHOD = "classic-imagic"
SHEET_COLUMNS = ("input", "ground truth", "imagic-lora", "alpha 0")  # the grid font has no α


@dataclass
class BenchConfig:
    """What the benchmark runs: 120 held-out cases, 20 per edit type (about 20 minutes on 2 cores, baselines cached)."""

    cases: int = 120  # 20 of each edit type
    split: str = "held-out"
    train: TrainConfig = field(default_factory=TrainConfig)
    apply: ApplyConfig = field(default_factory=ApplyConfig)  # the shipped defaults
    alphas: tuple[float, ...] = (0.0, 0.8, 0.9, 1.0, 1.1)  # the α curve, at the other defaults, in one batch
    ablation_cases: int = 30  # the variants showing what each part adds, on the first cases only
    classic_cases: int = 4  # classic Imagic trains the full UNet: about 2 minutes a case, so only the first few
    cache: Path = DEFAULT_CACHE
    recompute_baselines: bool = False
    timed_cases: int = 10
    sheet_rows: int = 16
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # processes, one shapes model each

    def __post_init__(self) -> None:
        if not 1 <= self.cases <= 10_000:
            raise InvalidConfig(f"--cases must be in [1, 10000], got {self.cases}")
        if self.split not in SPLITS:
            raise InvalidConfig(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not 0 <= self.classic_cases <= self.cases:
            raise InvalidConfig(f"--classic-cases must be in [0, --cases], got {self.classic_cases}")
        if not 1 <= self.workers <= 64:
            raise InvalidConfig(f"--workers must be in [1, 64], got {self.workers}")

    @property
    def default_alpha(self) -> float:
        return self.apply.alphas[0]


def train_imagic_lora(base: BaseModel, latents, embedding, train: TrainConfig, seed: int):
    """Both imagic-lora stages with step noise from ``seed``: ``(e_opt, lora, seconds)``."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    e_opt, _ = optimize_embedding(base, latents, embedding, train, generator, progress=False)
    lora, _ = finetune_lora(base, latents, e_opt, train, generator, progress=False)
    return e_opt, lora, time.perf_counter() - start


def imagic_rows(method: str, base: BaseModel, e_opt, case: Case, sampling: ApplyConfig, seconds: float,
                start: torch.Tensor | None = None, photo: Image.Image | None = None) -> list[tuple[dict, Image.Image]]:
    """Score every α of ``sampling`` (seed: the case index): one ``(row, image)`` each."""
    config = replace(sampling, seed=case.index, seeds=1)
    results = generate(base, e_opt, case.edit_prompt, config, 32, progress=False, start=start, photo=photo)
    return [({"method": method, "alpha": alpha, "train_seconds": seconds, **score(image, case)}, image)
            for alpha, _, image in results]


@contextlib.contextmanager
def classic_imagic(base: BaseModel, latents, embedding, steps: int, lr: float, seed: int):
    """Classic Imagic on ``base``'s UNet, yielding ``(e_opt, seconds)``; the UNet's weights are put back after."""
    original = copy.deepcopy(base.denoiser.state_dict())
    try:
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        e_opt, _ = optimize_embedding(base, latents, embedding, CLASSIC_TRAIN, generator, progress=False)
        finetune_full(base, latents, e_opt, steps, lr, generator, progress=False)
        yield e_opt, time.perf_counter() - start
    finally:
        base.denoiser.load_state_dict(original)


def baseline_rows(base: BaseModel, case: Case, photo: Image.Image) -> list[dict]:
    """SDEdit (plain and with the keep step against ``photo``) and text-to-image on one case."""
    s = BASELINE_SAMPLING
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(base.pipe)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for strength in s["strengths"]:
        image = pipe(prompt=case.edit_prompt, image=case.input_image(), strength=strength,
                     num_inference_steps=s["steps"], guidance_scale=s["guidance"],
                     generator=torch.Generator().manual_seed(case.index)).images[0]
        rows.append({"method": "sdedit", "strength": strength, "train_seconds": 0.0, **score(image, case)})
        kept = keep_unchanged(image, photo, s["keep_threshold"])
        rows.append({"method": "sdedit + keep", "strength": strength, "train_seconds": 0.0, **score(kept, case)})
    t2i = base.pipe(prompt=case.edit_prompt, num_inference_steps=s["steps"], guidance_scale=s["guidance"],
                    generator=torch.Generator().manual_seed(case.index)).images[0]
    rows.append({"method": "text-to-image", "train_seconds": 0.0, **score(t2i, case)})
    return rows


def classic_rows(base: BaseModel, case: Case, latents: torch.Tensor) -> list[dict]:
    """Classic Imagic (full-UNet fine-tuning, random start noise, nothing kept) on one case, along its α."""
    s = BASELINE_SAMPLING
    embedding = encode_prompt(base, case.source_prompt)
    with classic_imagic(base, latents, embedding, s["classic_steps"], s["classic_lr"], case.index) as (e_opt, seconds):
        sampling = ApplyConfig(alphas=s["classic_alphas"], steps=s["steps"], guidance=s["guidance"],
                               start="noise", keep=False)
        return [row for row, _ in imagic_rows(CLASSIC_METHOD, base, e_opt, case, sampling, seconds)]


def case_key(case: Case, split_seed: int) -> str:
    """The cache key of a case: its split seed, index and a digest of everything that defines it."""
    digest = hashlib.sha256(repr((case.scene, case.details, case.phrasing, case.edit, case.target)).encode())
    return f"{split_seed}/{case.index}/{digest.hexdigest()[:12]}"


def cache_section(base: BaseModel) -> str:
    """Where a model's baselines live in the cache: its fingerprint and the baselines' settings."""
    settings = hashlib.sha256(json.dumps(BASELINE_SAMPLING, sort_keys=True).encode()).hexdigest()[:12]
    return f"{base.fingerprint()}|{settings}"


def load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(cache, indent=0, sort_keys=True) + "\n").encode())


def ours_rows(base: BaseModel, case: Case, config: BenchConfig, latents: torch.Tensor,
              photo: Image.Image) -> tuple[list[dict], list[Image.Image], dict]:
    """imagic-lora on one case: the defaults along α, and the variants that show what each part adds."""
    embedding = encode_prompt(base, case.source_prompt)
    e_opt, lora, seconds = train_imagic_lora(base, latents, embedding, config.train, case.index)
    defaults = config.apply
    rows, shown, timing = [], {}, {}
    with fused_lora(base.denoiser, lora, config.train.rank, config.train.lora_alpha):
        start = inverted_start(base, latents, e_opt, defaults, progress=False)
        # one sample per α gives two rows: as sampled ("nothing kept") and with the keep step that
        # generate() would apply, done here so the sampling is not run twice
        curve = replace(defaults, alphas=config.alphas, keep=False, batch_size=len(config.alphas))
        target = encode_prompt(base, case.edit_prompt)
        regions = {alpha: edit_region(base, latents, e_opt, interpolate(target, e_opt, alpha))
                   for alpha in {*config.alphas, config.default_alpha, 0.0}}
        for row, image in imagic_rows("imagic-lora", base, e_opt, case, curve, seconds, start):
            kept = keep_unchanged(image, photo, defaults.keep_threshold, regions[row["alpha"]]) if defaults.keep \
                else image
            rows.append(row | {"variant": "defaults", **score(kept, case), "seam": seam_error(kept, case)})
            rows.append(row | {"variant": "defaults, nothing kept", "seam": seam_error(image, case)})
            shown[row["alpha"]] = kept
        strong = replace(defaults, alphas=(0.0, config.default_alpha), guidance=STRONG_GUIDANCE, keep=False)
        strong_start = inverted_start(base, latents, e_opt, strong, progress=False)  # made for that guidance
        for row, image in imagic_rows("imagic-lora", base, e_opt, case, strong, seconds, strong_start):
            kept = keep_unchanged(image, photo, defaults.keep_threshold, regions.get(row["alpha"])) \
                if defaults.keep else image
            rows.append(row | {"variant": f"defaults, guidance {STRONG_GUIDANCE:g}", **score(kept, case)})
            rows.append(row | {"variant": f"defaults, guidance {STRONG_GUIDANCE:g}, nothing kept"})
        if case.index < config.ablation_cases:
            rows += _ablations(base, latents, e_opt, case, defaults, seconds, photo)
        if case.index < config.timed_cases:
            timing = _timing(base, e_opt, case, defaults, latents, start)
    ideal = ideal_rows(base, case, photo, defaults, regions[config.default_alpha])
    return rows + ideal, [shown.get(config.default_alpha), shown.get(0.0)], timing


def ideal_rows(base: BaseModel, case: Case, photo: Image.Image, defaults: ApplyConfig,
               region: torch.Tensor | None = None) -> list[dict]:
    """The ground truth as the model sees it (its VAE round trip), as it is and through the keep step (with the
    edit's ``region`` at the default α): the keep step's ceiling, which an edit that is exactly right still loses
    where the keep step undoes it."""
    truth = round_trip(base.pipe.vae, case.ground_truth())
    kept = keep_unchanged(truth, photo, defaults.keep_threshold, region)
    return [{"method": IDEAL, "variant": variant, "train_seconds": 0.0, **score(image, case),
             "seam": seam_error(image, case)} for variant, image in (("as is", truth), ("through the keep step", kept))]


def seam_error(image: Image.Image, case: Case) -> float:
    """The mean largest-channel difference (levels) to the ground truth in a band 1-4 px around what the edit
    changed (where the truth differs from the input by more than 20 levels): a seam left by compositing."""
    truth = np.asarray(case.ground_truth().convert("RGB"), dtype=np.int16)
    edited = np.abs(truth - np.asarray(case.input_image().convert("RGB"), dtype=np.int16)).max(-1) > 20
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(edited).float()[None, None], 9, stride=1, padding=4)
    band = (grown[0, 0].numpy() > 0) & ~edited
    if not band.any():
        return 0.0
    return float(np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - truth).max(-1)[band].mean())


def _ablations(base, latents, e_opt, case, defaults: ApplyConfig, seconds, photo) -> list[dict]:
    """The defaults with each other start, and the sampling settings imagic-lora had before this benchmark."""
    rows = []
    for other in STARTS:
        if other != defaults.start:
            switched = replace(defaults, start=other)
            start = inverted_start(base, latents, e_opt, switched, progress=False)
            rows += [row | {"variant": f"start {other}"}
                     for row, _ in imagic_rows("imagic-lora", base, e_opt, case, switched, seconds, start, photo)]
    return rows + [row | {"variant": "before (noise, α 0.7, guidance 7.5)"}
                   for row, _ in imagic_rows("imagic-lora", base, e_opt, case, OLD_DEFAULTS, seconds)]


def _timing(base, e_opt, case, defaults: ApplyConfig, latents, start) -> dict:
    """Seconds of one image at the defaults (photo decoded, stored inversion, the edit's region, keep) and of
    plain sampling."""
    one = replace(defaults, seed=case.index, seeds=1)
    plain = replace(one, start="noise", keep=False)
    started = time.perf_counter()
    generate(base, e_opt, case.edit_prompt, plain, 32, progress=False)
    plain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    generate(base, e_opt, case.edit_prompt, one, 32, progress=False,
             start=start, photo=decode_latents(base, latents), photo_latents=latents)
    return {"plain": plain_seconds, "defaults": time.perf_counter() - started}


def run(config: BenchConfig, out: Path, progress: bool = True) -> dict:
    """Run every case, write results.json and contact-sheet.png under ``out``, return the summary."""
    base = load_model(SHAPES_MODEL, device="cpu")
    base.pipe.set_progress_bar_config(disable=True)
    split_seed = SPLITS[config.split]
    cases = make_cases(config.cases, split_seed)
    cache = load_cache(config.cache)  # other models' and cases' entries stay, even when recomputing
    section = cache.setdefault(cache_section(base), {})
    jobs = [(case, None if config.recompute_baselines else section.get(case_key(case, split_seed)))
            for case in cases]
    rows, sheet, timings, ceiling = [], [], [], []
    results = _case_results(base, config, jobs)
    for case, result in tqdm(zip(cases, results, strict=True), total=len(cases), desc=f"edit cases ({config.split})",
                             disable=not progress, dynamic_ncols=True):
        section[case_key(case, split_seed)] = result.baselines
        rows += result.rows
        ceiling.append(result.preserved)
        if result.timing:
            timings.append(result.timing)
        if len(sheet) < config.sheet_rows * len(SHEET_COLUMNS):
            sheet += _sheet_row(case, *result.shown)
        save_cache(config.cache, cache)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, config.default_alpha) | {
        "split": config.split, "cases": config.cases,
        "ceiling": {"cases": len(ceiling), "input_preserved": 100.0 * sum(ceiling) / len(ceiling)},
        "timing": _mean_timing(timings),
    }
    settings = asdict(config) | {"edit_types": EDIT_TYPES, "baselines": BASELINE_SAMPLING,
                                 "old_defaults": asdict(OLD_DEFAULTS)}
    text = json.dumps({"config": settings, "summary": summary, "rows": rows}, indent=1, default=str)
    (out / "results.json").write_text(text)
    labelled_grid(sheet, len(SHEET_COLUMNS), 96).save(out / "contact-sheet.png")
    return summary


@dataclass
class CaseResult:
    rows: list[dict]  # every method's scores on the case
    shown: tuple  # the contact sheet's images: the edit at the default α, and α 0
    preserved: bool  # whether the photo's VAE round trip alone scores as preserved (the ceiling)
    timing: dict  # seconds of plain sampling and of the defaults, on the timed cases only
    baselines: dict  # the case's cache entry, with whatever was missing computed


def _case_results(base: BaseModel, config: BenchConfig, jobs: list) -> Iterator[CaseResult]:
    """Each job's result in order: in this process, or split over ``config.workers`` processes of one
    shapes model each. The model is small enough that the cores do more as separate processes."""
    workers = min(config.workers, len(jobs))
    if workers == 1:
        return (_case(base, case, config, cached) for case, cached in jobs)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker, (config, threads))
    return _closing(pool, pool.imap(_worker_case, jobs))


def _closing(pool, results: Iterator[CaseResult]) -> Iterator[CaseResult]:
    with pool:
        yield from results


_worker: dict = {}  # a worker process's shapes model and benchmark settings


def _start_worker(config: BenchConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    base = load_model(SHAPES_MODEL, device="cpu")
    base.pipe.set_progress_bar_config(disable=True)
    _worker.update(base=base, config=config)


def _worker_case(job: tuple) -> CaseResult:
    case, cached = job
    return _case(_worker["base"], case, _worker["config"], cached)


def _case(base: BaseModel, case: Case, config: BenchConfig, cached: dict | None) -> CaseResult:
    """Every method on one case; of the baselines, only what ``cached`` lacks is computed."""
    latents = encode_image(base, to_tensor(case.input_image()))
    photo = decode_latents(base, latents)  # the photo as the model sees it: what the keep step puts back
    ours, shown, timing = ours_rows(base, case, config, latents, photo)
    entry = _complete_baselines(base, case, config, cached, latents, photo)
    classic = case.index < config.classic_cases
    baselines = [dict(row) for row in entry["rows"] if row["method"] != CLASSIC_METHOD or classic]
    rows = ours + baselines
    for row in rows:
        row.update(case=case.index, edit=case.edit, source_prompt=case.source_prompt, edit_prompt=case.edit_prompt)
    return CaseResult(rows, tuple(shown), bool(score(photo, case)["preserved"]), timing, entry)


def _complete_baselines(base, case, config, cached: dict | None, latents, photo) -> dict:
    """The case's cache entry with whatever it lacks computed: the baselines, and classic Imagic when asked."""
    entry = {"rows": baseline_rows(base, case, photo)} if cached is None else {"rows": list(cached["rows"])}
    has_classic = any(row["method"] == CLASSIC_METHOD for row in entry["rows"])
    if case.index < config.classic_cases and not has_classic:
        entry["rows"] += classic_rows(base, case, latents)
    return entry


def _sheet_row(case, ours_shown, alpha0) -> list[tuple[str, Image.Image]]:
    blank = Image.new("RGB", (32, 32), "white")
    images = [case.input_image(), case.ground_truth(), ours_shown or blank, alpha0 or blank]
    labels = [f"{case.index}: {case.edit}", *SHEET_COLUMNS[1:]]
    return list(zip(labels, images, strict=True))


def _mean_timing(timings: list[dict]) -> dict:
    if not timings:
        return {}
    plain = sum(t["plain"] for t in timings) / len(timings)
    defaults = sum(t["defaults"] for t in timings) / len(timings)
    return {"cases": len(timings), "plain_seconds": plain, "defaults_seconds": defaults,
            "ratio": defaults / plain if plain else math.nan}
