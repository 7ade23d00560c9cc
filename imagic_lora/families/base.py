"""What a model family answers: the one interface the rest of imagic-lora asks about a base model.

A family knows how its pipeline is loaded (hub or folder, single file), assembled from components
(built-in and random-weight models) and read for fingerprints; how a prompt becomes a
:class:`~imagic_lora.conditioning.Condition` and what the denoiser takes with it; which profile format
version its profiles are written in; and what other tools call it and its LoRA keys. The methods
here are those of Stable Diffusion 1.x/2.x (one CLIP text encoder, no pooled embedding); a family
that differs overrides them. Diffusers is imported only when a pipeline is touched, so the CLI starts fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a model is touched, not when the CLI starts
    import torch

    from ..conditioning import Condition

LDM_UNET = "model.diffusion_model."
# the first cross-attention key projection: its input width is the text encoder's width
CROSS_ATTENTION_KEY = LDM_UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@contextlib.contextmanager
def config_folder(name: str) -> Iterator[Path]:
    """The shipped diffusers config folder ``data/<name>``, as a real path while the context lasts."""
    with resources.as_file(resources.files("imagic_lora") / "data" / name) as folder:
        yield folder


@dataclass(frozen=True)
class Family:
    """One architecture: its name, the text encoder it conditions on, what its UNet predicts, and the
    names other tools give it (sd-scripts' base model version, the model spec's architecture by prediction)."""

    name: str
    label: str
    text_width: int
    text_prefix: str  # the text encoder's key prefix in an original-format checkpoint
    prediction_type: str
    kohya_version: str
    modelspec: dict[str, str]
    cross_attention_key: str = CROSS_ATTENTION_KEY
    pipeline: str = "StableDiffusionPipeline"
    pooled: bool = False  # conditions on a pooled text embedding too
    profile_format_version: int = 2  # 2: latents and their inversion (1 is still read)
    profile_pipeline: str | None = None  # the pipeline its profiles name in their settings, if any
    denoiser_name: str = "unet"  # the pipeline component that denoises, which the adapter trains
    default_guidance: float = 7.5  # apply's guidance, and the stored inversion's, unless one is given

    # --- names ---------------------------------------------------------------------------------------------

    @property
    def short_label(self) -> str:
        return self.label.split(" (")[0]

    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline)

    def accepts_index(self, class_name: str) -> bool:
        """Whether a diffusers folder whose ``model_index.json`` names ``class_name`` is this kind of model."""
        return class_name.startswith("StableDiffusion") and "XL" not in class_name and "3" not in class_name

    # --- the pipeline's parts ------------------------------------------------------------------------------

    def owns(self, pipe) -> bool:
        return isinstance(pipe, self.pipeline_class())

    def denoiser(self, pipe) -> torch.nn.Module:
        """The network that predicts the noise (or velocity): the UNet here, a transformer in flow models."""
        return getattr(pipe, self.denoiser_name)

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        return [pipe.text_encoder]

    def tokenizer_pairs(self, pipe) -> list[tuple[str, object, torch.nn.Module]]:
        """``(folder, tokenizer, its text encoder)`` for every text encoder."""
        return [("tokenizer", pipe.tokenizer, pipe.text_encoder)]

    def weight_modules(self, pipe) -> list[tuple[str, torch.nn.Module]]:
        """The modules whose weights a fingerprint covers, by component name."""
        encoders = zip(("text_encoder", "text_encoder_2"), self.text_encoders(pipe), strict=False)
        return [(self.denoiser_name, self.denoiser(pipe)), *encoders]

    def embedding_width(self, pipe) -> int:
        """The width of the per-token embedding the UNet cross-attends to."""
        return sum(encoder.config.hidden_size for encoder in self.text_encoders(pipe))

    def pooled_width(self, pipe) -> int | None:
        return None

    # --- loading and assembling ----------------------------------------------------------------------------

    def loader_kwargs(self) -> dict:
        return {"safety_checker": None}

    def from_pretrained(self, source: str | Path, dtype: torch.dtype, local: bool):
        return self.pipeline_class().from_pretrained(source, dtype=dtype, local_files_only=local,
                                                     **self.loader_kwargs())

    def from_single_file(self, path: Path, dtype: torch.dtype):
        """An original-format checkpoint with this family's shipped config folder: no hub access."""
        with config_folder(self.name) as folder:
            return self.pipeline_class().from_single_file(str(path), config=str(folder), local_files_only=True,
                                                          dtype=dtype, **self.loader_kwargs())

    def assemble(self, *, unet, vae, scheduler, text_encoders: list, tokenizers: list):
        """The pipeline of these components, as diffusers' own tests build one (no safety checker)."""
        return self.pipeline_class()(vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizers[0], unet=unet,
                                     scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                     requires_safety_checker=False)

    def random_pipeline(self, folder: Path, weights: Callable[[], contextlib.AbstractContextManager]):
        """The architecture of the config folder ``folder`` with random weights made inside ``weights()`` (the
        seed, device and default dtype wanted), with its real tokenizers and scheduler."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTokenizer

        with weights():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            encoders = [self._random_text_encoder(folder, sub) for sub in self._text_folders()]
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder / "scheduler"))
        tokenizers = [CLIPTokenizer.from_pretrained(folder / sub.replace("text_encoder", "tokenizer"))
                      for sub in self._text_folders()]
        return self.assemble(unet=unet, vae=vae, scheduler=scheduler, text_encoders=encoders, tokenizers=tokenizers)

    def _text_folders(self) -> tuple[str, ...]:
        return ("text_encoder",)

    def _random_text_encoder(self, folder: Path, sub: str):
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig.from_pretrained(folder / sub))

    # --- conditioning --------------------------------------------------------------------------------------

    def encode_prompt(self, pipe, device: torch.device, prompt: str) -> Condition:
        """The pipeline's own text conditioning of ``prompt``, as fp32: ``[1, tokens, width]``."""
        import torch

        from ..conditioning import Condition

        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompt, device, 1, do_classifier_free_guidance=False)
        return Condition(embeds.float())

    def encode_negative(self, pipe, device: torch.device, prompt: str) -> Condition:
        """The unconditional side of classifier-free guidance, as the pipeline makes it."""
        return self.encode_prompt(pipe, device, prompt)

    def unet_kwargs(self, condition: Condition, height: int, width: int, dtype: torch.dtype) -> dict:
        """The UNet's conditioning arguments for a batch at ``height`` × ``width`` pixels."""
        return {"encoder_hidden_states": condition.embeds.to(dtype)}

    def pipeline_kwargs(self, condition: Condition, negative: Condition, dtype: torch.dtype) -> dict:
        """The pipeline's embedding arguments for ``condition`` and the unconditional ``negative``."""
        return {"prompt_embeds": condition.embeds.to(dtype), "negative_prompt_embeds": negative.embeds.to(dtype)}

    # --- other tools ---------------------------------------------------------------------------------------

    def kohya_key(self, key: str) -> str:
        """A kohya LoRA key as A1111 and ComfyUI expect it for this family (SD: diffusers' conversion as is)."""
        return key
