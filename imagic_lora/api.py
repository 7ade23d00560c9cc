"""The public Python API: train a profile from one photo, apply a profile to a new prompt."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .config import ApplyConfig, TrainConfig
from .errors import ImagicError, IncompatibleProfile, InvalidConfig, ProfileNotSaved
from .families import family_label
from .files import check_folder, make_folder, read_text, write_first
from .images import file_sha256, fit_image, load_image, thumbnail, to_tensor
from .limits import MAX_PROMPTS
from .lora import TARGET_MODULES, fused_lora
from .method import (
    decode_latents,
    encode_image,
    encode_negative,
    encode_prompt,
    finetune_lora,
    generate,
    invert_edit_friendly,
    inverted_start,
    optimize_embedding,
)
from .models import BaseModel, load_model
from .noise_maps import DDIM, Start
from .outputs import OutputNames, write_outputs
from .paths import user_dir
from .placement import encoders_offloaded, unet_parked
from .profile import Profile, check_name
from .recipe import decodes_apart, resolve
from .record import (
    ABSENT,
    EDIT_FRIENDLY,
    Inversion,
    LoraSettings,
    Losses,
    ProfileMetadata,
    Recipe,
    Settings,
    TrainingSettings,
)
from .shapes.model import SHAPES_MODEL
from .store import ProfileStore
from .text import text_lines
from .validate import PROFILE_SUFFIX

INVERSION_NEGATIVE_PROMPT = ApplyConfig().negative_prompt  # what the stored inversion is exact for
SAMPLE_RTOL = 2e-2
SAMPLE_ATOL = 1e-3
T = TypeVar("T")


def train(
    name: str, image: str | Path, prompt: str, *, model: str | BaseModel | None = None,
    config: TrainConfig | None = None, device: str | None = None, dtype: str | None = None,
    store: ProfileStore | None = None, replace: bool = False, progress: bool = True,
    warn: Callable[[str], None] | None = None, inform: Callable[[str], None] | None = None,
) -> Profile:
    """Run Imagic's two training stages on ``image`` and save the result as profile ``name``.

    The profile is written once, in one transaction, only after both stages finish.
    """
    # 1. check inputs before any expensive work
    config = config or TrainConfig()
    check_request(name, prompt)
    store = store if store is not None else ProfileStore()
    if not replace:
        store.ensure_free(name)
    warn = warn or (lambda message: None)
    picture = load_image(image, warn)
    image_sha256 = file_sha256(image)
    base = model if isinstance(model, BaseModel) else load_model(model, device, dtype)

    # 2. train, then store the profile; if the store fails, keep the training in a file
    profile = make_profile(name, picture, image_sha256, prompt, base, config, progress, warn, inform=inform)
    save_or_rescue(store, profile, replace)
    return profile


def check_request(name: str, prompt: str) -> None:
    """The checks every training request passes before any model is touched."""
    check_name(name)
    if not prompt or not prompt.strip():
        raise InvalidConfig("--prompt must describe the image as it is, e.g. 'a photo of a dog'")
    check_text(prompt, "--prompt")


def make_profile(
    name: str, picture: Image.Image, image_sha256: str, prompt: str, base: BaseModel, config: TrainConfig,
    progress: bool = True, warn: Callable[[str], None] | None = None, recipe: Recipe | None = None,
    inform: Callable[[str], None] | None = None,
) -> Profile:
    """Imagic's two training stages on an already loaded ``picture``: the profile, not yet stored.

    The memory switches ``config`` leaves open are decided here (:func:`imagic_lora.recipe.resolve`) and the
    choice goes to ``inform`` in one line, unless ``recipe`` says how ``config`` was resolved already.
    """
    # 1. choose the recipe; encode the image and the prompt once (on a small card with the UNet off the
    # device, so encoding never adds to its weights); sample the base weights before any training
    resolution = config.resolution or base.native_resolution
    config = config.for_model(base.default_guidance)
    if recipe is None:
        config, recipe = resolve(config, base, resolution)
        if inform:
            inform(recipe.line())
    fitted = fit_image(picture, resolution, config.fit, warn or (lambda message: None))
    warn_truncated(base, prompt, "--prompt", warn)
    with unet_parked(base, config.offload_encoders):
        latents = encode_image(base, to_tensor(fitted))
        source = encode_prompt(base, prompt)
        negative = encode_negative(base, INVERSION_NEGATIVE_PROMPT)
    base_sample, fingerprint = base.weight_sample(), base.fingerprint()

    # 2. the two Imagic stages, with the encoders off the accelerator
    generator = torch.Generator("cpu").manual_seed(config.seed)
    clock = [time.perf_counter()]  # each stage ends with a value read back, so the device has finished it
    with encoders_offloaded(base, config.offload_encoders):
        e_opt, stage1 = optimize_embedding(base, latents, source, config, generator, progress)
        clock.append(time.perf_counter())
        lora, stage2 = finetune_lora(base, latents, e_opt, config, generator, progress)
        clock.append(time.perf_counter())
        # 3. the input's edit-friendly inversion under what was learnt: it does not depend on any edit prompt
        with fused_lora(base.denoiser, lora, config.rank, config.lora_alpha):
            start = invert_edit_friendly(base, latents, e_opt, negative, config.inversion_steps,
                                         config.inversion_guidance, config.seed, progress)
        clock.append(time.perf_counter())
    if inform:
        inform(timing_line(clock))

    # 4. the profile, with everything needed to apply, check and reproduce it
    metadata = _metadata(base, fingerprint, prompt, config, image_sha256, stage1.final_loss, stage2.final_loss,
                         recipe)
    e_opt, source = e_opt.map(torch.Tensor.cpu), source.map(torch.Tensor.cpu)
    profile = Profile(
        name=name, e_opt=e_opt.embeds, source_embedding=source.embeds, lora=lora,
        thumbnail=thumbnail(fitted), base_sample=base_sample, metadata=metadata,
        image_latents=latents.cpu(), start_latents=start.latents, noise_maps=start.noise_maps,
        e_opt_pooled=e_opt.pooled, source_pooled=source.pooled,
    )
    return profile.stamped()


def timing_line(clock: list[float]) -> str:
    """``trained in S s (embedding …, LoRA …, inversion …)`` from the four times around the three parts."""
    parts = [later - earlier for earlier, later in itertools.pairwise(clock)]
    return (f"trained in {clock[-1] - clock[0]:.1f} s (embedding {parts[0]:.1f} s, LoRA {parts[1]:.1f} s, "
            f"inversion {parts[2]:.1f} s)")


def save_or_rescue(store: ProfileStore, profile: Profile, replace: bool) -> None:
    """Store ``profile``; if the store refuses it, write it to a file and say where."""
    saved_or_rescued(profile, lambda: store.save(profile, replace=replace))


def saved_or_rescued(profile: Profile, save: Callable[[], T]) -> T:
    """``save()``'s result; if it fails, the profile goes to a rescue file and the error raised says where."""
    try:
        return save()
    except Exception as ex:  # a full disk, a locked or read-only store, a name taken meanwhile
        path = write_rescue_file(profile)
        if path is None:
            raise
        reason = str(ex) if isinstance(ex, ImagicError) else f"{type(ex).__name__}: {ex}"
        raise ProfileNotSaved(f"profile {profile.name!r} was trained but not stored ({reason}); it is kept in "
                              f"{path}. Try: imagic-lora profiles import {path}") from ex


def write_rescue_file(profile: Profile) -> Path | None:
    """The profile written whole to ``rescued/NAME-TIME.imagic.safetensors`` beside the store, else in the
    working or temporary folder; None if no place takes it."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folders = [user_dir() / "rescued", Path.cwd(), Path(tempfile.gettempdir())]
    return write_first(folders, f"{profile.name}-{stamp}", PROFILE_SUFFIX, profile.to_bytes())


def training_settings(base: BaseModel, fingerprint: str, config: TrainConfig) -> Settings:
    """What decides a profile's training besides its image: equal settings and image, equal profile."""
    training = TrainingSettings(
        embedding_steps=config.embedding_steps, embedding_lr=config.embedding_lr, lora_steps=config.lora_steps,
        lora_lr=config.lora_lr, optimizer=config.optimizer, samples_per_step=config.samples_per_step,
        fit=config.fit, seed=config.seed, device=base.device.type, dtype=str(base.dtype),
        prediction_type=base.pipe.scheduler.config.prediction_type,
    )
    return Settings(
        base_fingerprint=fingerprint,
        lora=LoraSettings(rank=config.rank, alpha=config.lora_alpha, target_modules=tuple(TARGET_MODULES)),
        training=training,
        resolution=config.resolution or base.native_resolution,
        pipeline=base.family.profile_pipeline or ABSENT,
    )


def _metadata(base, fingerprint, prompt, config, image_sha256, loss1, loss2, recipe) -> ProfileMetadata:
    return ProfileMetadata(
        source_prompt=prompt,
        base_model=base.model_id,
        family=base.published_family.name if base.published_family else None,
        settings=training_settings(base, fingerprint, config),
        losses=Losses(embedding=loss1, lora=loss2),
        inversion=stored_inversion(config),
        recipe=recipe,
        image_sha256=image_sha256,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        library_version=__version__,
    )


def stored_inversion(config: TrainConfig) -> Inversion:
    """The record of the inversion ``train`` stores with ``config``."""
    return Inversion(steps=config.inversion_steps, scheduler="DDIMScheduler", guidance=config.inversion_guidance,
                     method=EDIT_FRIENDLY, negative_prompt=INVERSION_NEGATIVE_PROMPT)


def check_text(text: str, what: str) -> None:
    """Refuse text that cannot be UTF-8 (a shell passes undecodable bytes as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as ex:
        raise InvalidConfig(f"{what} is not valid UTF-8 text (at character {ex.start + 1}). "
                            "Try: retyping it, or setting a UTF-8 locale") from None


def warn_truncated(base: BaseModel, text: str, what: str, warn: Callable[[str], None] | None) -> None:
    """Say where the text encoder's token limit cuts ``text``; everything after it is ignored."""
    tokenizer = base.pipe.tokenizer
    ids = tokenizer(text, truncation=False).input_ids
    limit = tokenizer.model_max_length
    if warn and len(ids) > limit:
        kept = tokenizer.decode(ids[1 : limit - 1], skip_special_tokens=True).split()
        warn(f"{what} is {len(ids)} tokens, over the model's {limit}: everything after "
             f"\"...{' '.join(kept[-4:])}\" is ignored")


def check_compatible(profile: Profile, base: BaseModel, force: bool = False) -> str | None:
    """Refuse a profile made for other base weights; with ``force``, return a warning instead.

    A different architecture is refused even with ``force``: its adapter cannot be loaded.
    """
    made_for = profile.metadata.base_model
    made_with = profile.metadata.settings.base_fingerprint
    if made_for == base.model_id == SHAPES_MODEL and made_with.split("-")[0] != base.architecture_hash():
        raise IncompatibleProfile(
            f"profile {profile.name!r} was made for an earlier {made_for}: the built-in model changed (it was "
            "trained again on a world with named backgrounds and second objects), and its profiles do not carry "
            f"over. Try: training it again with imagic-lora train --model {made_for}"
        )
    theirs_shapes = {name: tuple(tensor.shape) for name, tensor in profile.condition.parts().items()}
    ours_shapes = base.condition_shapes()
    if made_with.split("-")[0] != base.architecture_hash() or profile.family is not base.family \
            or theirs_shapes["embeds"] != ours_shapes["embeds"]:
        theirs, ours = family_label(profile.e_opt.shape[-1]), family_label(base.embedding_dim)
        kinds = f" ({theirs}), and this model is {ours}" if theirs != ours else " with another architecture"
        raise IncompatibleProfile(
            f"profile {profile.name!r} does not fit {base.model_id!r}: it was made for {made_for!r}{kinds}. "
            f"Try: --model {made_for}"
        )
    mismatched = [name for name in ours_shapes if theirs_shapes.get(name) != ours_shapes[name]]
    if mismatched:  # a part of the condition beside the token embeddings (SDXL's pooled one)
        name = mismatched[0]
        width = theirs_shapes[name][-1] if name in theirs_shapes else "not"
        raise IncompatibleProfile(
            f"profile {profile.name!r} does not fit {base.model_id!r}: its {name} embedding is {width} wide, "
            f"the model's {ours_shapes[name][-1]}. Try: --model {made_for}"
        )
    sample = base.weight_sample()
    same = sample.shape == profile.base_sample.shape and torch.allclose(
        sample, profile.base_sample, rtol=SAMPLE_RTOL, atol=SAMPLE_ATOL
    )
    if same:
        return None
    if made_for == base.model_id:
        message = (f"profile {profile.name!r} was made for other weights of {made_for!r} "
                   f"(fingerprint {made_with}, this one {base.fingerprint()})")
        hint = "Try: --force to apply it anyway"
    else:
        message = (f"profile {profile.name!r} was made for {made_for!r} (fingerprint {made_with}), "
                   f"not {base.model_id!r} (fingerprint {base.fingerprint()})")
        hint = f"Try: --model {made_for}, or --force to apply it anyway"
    if not force:
        raise IncompatibleProfile(f"{message}. {hint}")
    return message + "; applying anyway (--force)"


def apply(
    profile: Profile, prompt: str, *, out_dir: str | Path = ".", model: str | BaseModel | None = None,
    config: ApplyConfig | None = None, device: str | None = None, dtype: str | None = None,
    force: bool = False, progress: bool = True, warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Edit with ``profile`` toward ``prompt``; write one PNG per (α, seed) and a grid; return the paths."""
    return apply_prompts(profile, [prompt], out_dir=out_dir, model=model, config=config, device=device,
                         dtype=dtype, force=force, progress=progress, warn=warn)


def apply_prompts(
    profile: Profile, prompts: Sequence[str], *, out_dir: str | Path = ".", model: str | BaseModel | None = None,
    config: ApplyConfig | None = None, device: str | None = None, dtype: str | None = None,
    force: bool = False, progress: bool = True, warn: Callable[[str], None] | None = None,
    written: Callable[[Path], None] | None = None, inform: Callable[[str], None] | None = None,
) -> list[Path]:
    """Edit with ``profile`` toward each of ``prompts`` with one model load; each prompt's PNGs are written
    as soon as they are made (and passed to ``written``, so a later failure loses no path). Returns them all.

    ``config.memory`` auto is decided here (:func:`imagic_lora.recipe.decodes_apart`); a low choice goes to
    ``inform`` in one line."""
    # 1. check inputs and the base model
    config = config or ApplyConfig()
    if not prompts:
        raise InvalidConfig("no edit prompt given. Try: a prompt such as 'a jumping dog'")
    for prompt in prompts:
        if not prompt or not prompt.strip():
            raise InvalidConfig("the edit prompt must not be empty, e.g. 'a jumping dog'")
        check_text(prompt, "the edit prompt")
    check_text(config.negative_prompt, "--negative-prompt")
    out = check_folder(out_dir)
    base = model if isinstance(model, BaseModel) else load_model(model or profile.metadata.base_model, device, dtype)
    warning = check_compatible(profile, base, force)
    if warning and warn:
        warn(warning)
    config = config.for_model(base.default_guidance)
    for prompt in prompts:
        warn_truncated(base, prompt, "the edit prompt", warn)
    warn_truncated(base, config.negative_prompt, "--negative-prompt", warn)

    # 2. generate with the adapter fused into the weights, leaving the base model as it was afterwards
    images = min(config.batch_size, len(config.alphas) * config.seeds)
    apart, line = decodes_apart(config.memory, base, profile.resolution, images)
    config = dataclasses.replace(config, memory="low" if apart else "high")
    if line and inform:
        inform(line)
    make_folder(out)
    paths = []
    names = OutputNames()
    several = len(prompts) > 1
    photo = photo_to_keep(profile, base, config, warn)
    with fused_lora(base.denoiser, profile.lora, profile.rank, profile.lora_alpha, config.memory == "low"):
        start = sampling_start(profile, base, config, progress, warn)
        for prompt in tqdm(prompts, desc="prompts", unit="prompt", disable=not (progress and several),
                           dynamic_ncols=True):
            results = generate(base, profile.condition, prompt, config, profile.resolution, progress,
                               start, photo, None if photo is None else profile.image_latents)
            used = {"start": "noise" if start is None else config.start,
                    "keep": config.keep_threshold if photo is not None else "off"}
            stem = names.prompt_stem(profile.name, prompt)
            new = write_outputs(profile, prompt, base, config, results, out, stem, used, names)
            for path in new:
                paths.append(path)
                if written:
                    written(path)
    return paths


def photo_to_keep(profile: Profile, base: BaseModel, config: ApplyConfig,
                  warn: Callable[[str], None] | None = None) -> Image.Image | None:
    """The picture whose unchanged pixels the edit keeps: the profile's image latents decoded (None: keep off).

    A version 1 profile holds no latents: nothing is kept, said here unless the start already said it.
    """
    if not config.keep:
        return None
    if profile.image_latents is None:
        if warn and config.start == "noise":
            warn(f"profile {profile.name!r} (format version 1) holds no latents of its image; the edit keeps "
                 "nothing of it back. Try: training it again with this version")
        return None
    with unet_parked(base, config.memory == "low"):
        return decode_latents(base, profile.image_latents)


def sampling_start(profile: Profile, base: BaseModel, config: ApplyConfig, progress: bool = True,
                   warn: Callable[[str], None] | None = None) -> Start | None:
    """Where sampling starts (None: seeded noise). Call with the adapter fused.

    The stored inversion is used when it is the kind ``config.start`` asks for and was made for the sampling's
    steps (and, for the edit-friendly one, its guidance and negative prompt); otherwise the input's latents are
    inverted again for them (one pass). A version 1 profile holds neither: noise, said so.
    """
    if config.start == "noise":
        return None
    config = config.for_model(base.default_guidance)
    if profile.start is None:
        if warn:
            kept = ", and keeping nothing of it back" if config.keep else ""
            warn(f"profile {profile.name!r} (format version 1) holds no inversion of its image; starting from "
                 f"noise{kept}. Try: training it again with this version")
        return None
    if stored_start_serves(profile, config):
        return profile.start
    if config.start == "inversion" and profile.start.method == DDIM and warn:
        warn(f"profile {profile.name!r} (format version {profile.format_version}) holds a DDIM inversion, which "
             "gives the photo back only at low guidance; computing its edit-friendly inversion for this run (one "
             "more pass). Try: training it again with this version, or --start ddim")
    return inverted_start(base, profile.image_latents, profile.condition, config, progress)


def stored_start_serves(profile: Profile, config: ApplyConfig) -> bool:
    """Whether the profile's stored inversion is the one ``config`` samples from."""
    inversion = profile.metadata.inversion
    if inversion.steps != config.steps:
        return False
    if config.start == "ddim":
        return profile.start.method == DDIM
    return (profile.start.method == EDIT_FRIENDLY and inversion.guidance == config.guidance
            and inversion.negative_prompt == config.negative_prompt)


def read_prompts(path: str | Path) -> list[str]:
    """Edit prompts from a text file: one per line; blank lines and lines starting with ``#`` are skipped."""
    text = read_text(path, "prompts file", "a text file with one edit prompt per line")
    prompts = [line.strip() for line in text_lines(text)]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    if not prompts:
        raise InvalidConfig(f"prompts file {path} has no prompts. Try: one edit prompt per line")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidConfig(f"prompts file {path} has {len(prompts)} prompts, over the limit of {MAX_PROMPTS}. "
                            "Try: splitting it")
    return prompts
