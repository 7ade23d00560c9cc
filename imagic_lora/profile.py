"""An edit profile and its one-file form: safetensors tensors plus JSON metadata, no pickle.

Tensors: ``e_opt`` (fp32), ``source_embedding`` (fp16), ``thumbnail`` (uint8),
``base_sample`` (fp16) and the LoRA weights under ``unet.*`` in diffusers naming (fp16); from format
version 2 also ``image_latents`` (the VAE latents trained on) and ``start_latents`` (their DDIM
inversion under e_opt and the adapter), both fp16; from format version 3 (SDXL profiles) also
``e_opt_pooled`` (fp32) and ``source_pooled`` (fp16), the pooled embeddings of SDXL's second text encoder;
from format version 4 also ``noise_maps`` (fp16), which make ``start_latents`` the edit-friendly inversion.
Format version 5 holds the tensors of version 4; its metadata adds the training recipe's record.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .conditioning import Condition
from .errors import InvalidProfileFile
from .families import Family, family_for
from .limits import MAX_RESOLUTION
from .noise_maps import Start
from .record import ABSENT, EDIT_FRIENDLY, ProfileMetadata
from .validate import (
    CHECKSUM_KEY,
    FORMAT,
    FORMAT_VERSION,
    MAX_FILE_BYTES,
    NOISE_MAPS_FORMAT_VERSION,
    RECIPE_FORMAT_VERSION,
    XL_FORMAT_VERSION,
    check_name,
    data_section,
    parse_json,
    read_header,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_FILE_BYTES", "XL_FORMAT_VERSION", "Profile", "check_name", "parse_json",
           "read_header"]

LORA_KEY = re.compile(r"unet\.[A-Za-z0-9_.]+\.lora\.(down|up)\.weight")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_TOKENS, MAX_DIM, MAX_LORA_DIM = 1024, 8192, 65536
FIXED_TENSORS = ("e_opt", "source_embedding", "thumbnail", "base_sample")
LATENT_TENSORS = ("image_latents", "start_latents")  # format version 2
POOLED_TENSORS = ("e_opt_pooled", "source_pooled")  # format version 3, and 4 for SDXL
NOISE_MAPS = "noise_maps"  # format version 4
MAX_LATENT_CHANNELS, MAX_LATENT_SIDE = 64, MAX_RESOLUTION // 4


@dataclass
class Profile:
    """One image's optimized embedding and LoRA adapter, with everything needed to reuse them."""

    name: str
    e_opt: torch.Tensor
    source_embedding: torch.Tensor
    lora: dict[str, torch.Tensor]
    thumbnail: torch.Tensor
    base_sample: torch.Tensor
    metadata: ProfileMetadata
    image_latents: torch.Tensor | None = None  # None in format version 1 files
    start_latents: torch.Tensor | None = None
    e_opt_pooled: torch.Tensor | None = None  # SDXL only
    source_pooled: torch.Tensor | None = None
    noise_maps: torch.Tensor | None = None  # format version 4: start_latents is the edit-friendly inversion

    @property
    def family(self) -> Family:
        """The family that reads this profile: by its embedding's width, and whether it holds a pooled one."""
        return family_for(self.e_opt.shape[-1], pooled=self.e_opt_pooled is not None)

    @property
    def format_version(self) -> int:
        """The one place the format version is decided: 1 without latents, 5 with noise maps and the training
        recipe's record, 4 with noise maps alone, else the family's version (2, or 3 for SDXL)."""
        if self.start_latents is None:
            return 1
        if self.noise_maps is None:
            return self.family.profile_format_version
        return RECIPE_FORMAT_VERSION if self.metadata.recipe is not ABSENT else NOISE_MAPS_FORMAT_VERSION

    @property
    def condition(self) -> Condition:
        """The optimized conditioning e_opt, with SDXL's pooled part."""
        return Condition(self.e_opt, self.e_opt_pooled)

    @property
    def start(self) -> Start | None:
        """The stored inversion of the photo (None for a version 1 profile); ``metadata.inversion`` says how."""
        return None if self.start_latents is None else Start(self.start_latents, self.noise_maps)

    @property
    def rank(self) -> int:
        return self.metadata.settings.lora.rank

    @property
    def lora_alpha(self) -> float:
        return float(self.metadata.settings.lora.alpha)

    @property
    def resolution(self) -> int:
        """The side of the square image it was trained at."""
        return self.metadata.settings.resolution

    def stamped(self) -> Profile:
        """This profile with its metadata's copy of the format version set to the one its tensors decide."""
        return replace(self, metadata=replace(self.metadata, format_version=self.format_version))

    def renamed(self, name: str) -> Profile:
        return replace(self, name=check_name(name))

    def to_bytes(self) -> bytes:
        """The shareable ``.safetensors`` bytes, which are also what the store keeps."""
        tensors = {
            "e_opt": self.e_opt.float().contiguous(),
            "source_embedding": self.source_embedding.half().contiguous(),
            "thumbnail": self.thumbnail.to(torch.uint8).contiguous(),
            "base_sample": self.base_sample.half().contiguous(),
        }
        tensors.update({key: value.half().contiguous() for key, value in self.lora.items()})
        if self.start_latents is not None:
            tensors["image_latents"] = self.image_latents.half().contiguous()
            tensors["start_latents"] = self.start_latents.half().contiguous()
        if self.e_opt_pooled is not None:
            tensors["e_opt_pooled"] = self.e_opt_pooled.float().contiguous()
            tensors["source_pooled"] = self.source_pooled.half().contiguous()
        if self.noise_maps is not None:
            tensors[NOISE_MAPS] = self.noise_maps.half().contiguous()
        header = {
            "format": FORMAT,
            "format_version": str(self.format_version),
            "name": self.name,
            "profile": json.dumps(self.metadata.to_dict(), sort_keys=True),
        }
        # The tensor bytes do not depend on the header, so the checksum of a first save holds for the second.
        header[CHECKSUM_KEY] = hashlib.sha256(data_section(save_tensors(tensors, metadata=header))).hexdigest()
        return save_tensors(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "profile file") -> Profile:
        """Parse and validate profile bytes; anything unexpected raises :class:`InvalidProfileFile`."""
        header = read_header(data, source)
        version = int(header["format_version"])
        metadata = ProfileMetadata.from_header(header, source)
        try:
            tensors = load_tensors(data)
        except (SafetensorError, ValueError, RuntimeError) as ex:
            raise InvalidProfileFile(f"{source} is not a valid safetensors file: {ex}") from None
        _check_tensors(tensors, metadata, version, source)
        lora = {k: v.float() for k, v in tensors.items() if k.startswith("unet.")}
        latents = {k: tensors[k].float() if k in tensors else None
                   for k in (*LATENT_TENSORS, *POOLED_TENSORS, NOISE_MAPS)}
        return cls(
            name=check_name(header["name"]),
            e_opt=tensors["e_opt"].float(),
            source_embedding=tensors["source_embedding"].float(),
            lora=lora,
            thumbnail=tensors["thumbnail"],
            base_sample=tensors["base_sample"].float(),
            metadata=metadata,
            **latents,
        )


def _check_tensors(tensors: dict[str, torch.Tensor], metadata: ProfileMetadata, version: int, source: str) -> None:
    def fail(what: str) -> None:
        raise InvalidProfileFile(f"{source}: {what}")

    expected = _expected_tensors(tensors, version)
    for key in expected:
        if key not in tensors:
            fail(f"missing tensor {key!r}")
    lora_keys = [key for key in tensors if key not in expected]
    for key in lora_keys:
        if not LORA_KEY.fullmatch(key):
            fail(f"unexpected tensor {key[:120]!r}")
    if not lora_keys:
        fail("no LoRA weights")
    e_opt, source_embedding = tensors["e_opt"], tensors["source_embedding"]
    for key, value in tensors.items():
        if key != "thumbnail" and value.dtype not in FLOAT_DTYPES:
            fail(f"tensor {key[:120]!r} is {value.dtype}, not fp32, fp16 or bf16")
    if tensors["base_sample"].dim() != 1:
        fail("tensor 'base_sample' is not 1-D")
    if e_opt.dim() == 3 and (e_opt.shape[1] > MAX_TOKENS or e_opt.shape[2] > MAX_DIM):
        fail(f"embeddings of shape {tuple(e_opt.shape)} are larger than any supported model")
    if e_opt.dim() != 3 or e_opt.shape[0] != 1 or e_opt.shape != source_embedding.shape:
        shapes = f"{tuple(e_opt.shape)} and {tuple(source_embedding.shape)}"
        fail(f"embeddings have shapes {shapes}, expected equal [1, tokens, dim]")
    thumb = tensors["thumbnail"]
    if thumb.dtype != torch.uint8 or thumb.dim() != 3 or thumb.shape[2] != 3 or max(thumb.shape[:2]) > 512:
        fail("thumbnail is not a small RGB uint8 image")
    _check_lora_shapes({k: tensors[k] for k in lora_keys}, metadata.settings.lora.rank, fail)
    if version >= 2:
        _check_latent_shapes(tensors["image_latents"], tensors["start_latents"], fail)
    if POOLED_TENSORS[0] in expected:
        _check_pooled_shapes(tensors["e_opt_pooled"], tensors["source_pooled"], fail)
    if version >= NOISE_MAPS_FORMAT_VERSION:
        _check_noise_maps(tensors[NOISE_MAPS], tensors["start_latents"], metadata.inversion, fail)
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            fail(f"tensor {key[:120]!r} holds NaN or infinite values")


def _expected_tensors(tensors: dict[str, torch.Tensor], version: int) -> tuple[str, ...]:
    """The tensors a file of ``version`` holds besides its LoRA weights; in version 4 the pooled ones are
    there for SDXL (either of them present means both must be)."""
    pooled = version == 3 or (version >= NOISE_MAPS_FORMAT_VERSION and any(key in tensors for key in POOLED_TENSORS))
    return (FIXED_TENSORS + (LATENT_TENSORS if version >= 2 else ()) + (POOLED_TENSORS if pooled else ())
            + ((NOISE_MAPS,) if version >= NOISE_MAPS_FORMAT_VERSION else ()))


def _check_noise_maps(maps: torch.Tensor, start: torch.Tensor, inversion, fail) -> None:
    if inversion.method != EDIT_FRIENDLY or inversion.negative_prompt is ABSENT:
        fail(f"metadata does not describe the {EDIT_FRIENDLY} inversion its noise maps belong to")
    steps = inversion.steps
    if maps.dim() != 4 or tuple(maps.shape) != (steps, *start.shape[1:]):
        fail(f"noise maps of shape {tuple(maps.shape)} are not one [channels, height, width] map like the "
             f"latents' for each of the inversion's {steps} steps")


def _check_lora_shapes(lora: dict[str, torch.Tensor], rank: int, fail) -> None:
    for key, value in lora.items():
        if not value.is_floating_point() or value.dim() != 2 or max(value.shape) > MAX_LORA_DIM:
            fail(f"LoRA tensor {key[:120]!r} is not a 2-D float matrix of a supported size")
        is_down = key.endswith(".lora.down.weight")
        partner = key.replace(".lora.down.", ".lora.up.") if is_down else key.replace(".lora.up.", ".lora.down.")
        if partner not in lora:
            fail(f"LoRA tensor {key[:120]!r} has no matching {'up' if is_down else 'down'} weight")
        if (value.shape[0] if is_down else value.shape[1]) != rank:
            fail(f"LoRA tensor {key[:120]!r} has shape {tuple(value.shape)}, not rank {rank}")


def _check_latent_shapes(image: torch.Tensor, start: torch.Tensor, fail) -> None:
    shape = tuple(image.shape)
    if (image.dim() != 4 or shape[0] != 1 or not 1 <= shape[1] <= MAX_LATENT_CHANNELS
            or max(shape[2:]) > MAX_LATENT_SIDE or tuple(start.shape) != shape):
        fail(f"latents of shapes {shape} and {tuple(start.shape)} are not equal [1, channels, height, width] "
             "of a supported size")


def _check_pooled_shapes(e_opt: torch.Tensor, source: torch.Tensor, fail) -> None:
    shape = tuple(e_opt.shape)
    if e_opt.dim() != 2 or shape[0] != 1 or not 1 <= shape[1] <= MAX_DIM or tuple(source.shape) != shape:
        fail(f"pooled embeddings of shapes {shape} and {tuple(source.shape)} are not equal [1, dim] "
             "of a supported size")
