"""Load a base Stable Diffusion model: built-in, hub id, local folder or single file."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from safetensors import SafetensorError, safe_open

from .errors import InvalidConfig, ModelLoadError
from .families import SD15, Family, family_for_index, family_of_pipeline, published, supported
from .families.checkpoints import load_single_file
from .paths import DEFAULT_MODEL, MODEL_ENV, default_model  # noqa: F401  (part of this module's API)
from .shapes.model import SHAPES_MODEL, shapes_pipeline
from .tiny import TINY_MODEL, TINY_XL_MODEL, tiny_pipeline, tiny_xl_pipeline

BUILTIN_MODELS = {TINY_MODEL: tiny_pipeline, TINY_XL_MODEL: tiny_xl_pipeline, SHAPES_MODEL: shapes_pipeline}
Pipeline = DiffusionPipeline  # a pipeline of one of the families
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAMPLES_PER_TENSOR = 4
BUILTIN_GUIDANCE = 2.0  # chosen on the shapes benchmark's tuning split (README, Performance)
HUB_PROBE_TIMEOUT_S = 5.0


def choose_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU, unless ``device`` names one."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda", "mps"):
        raise InvalidConfig(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidConfig(f"--device {device}: Apple's MPS is not available here. Try: --device cpu")
    if chosen.type == "cuda":
        _check_cuda(chosen, device)
    return chosen


def _check_cuda(chosen: torch.device, device: str) -> None:
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU visible"
        raise InvalidConfig(f"--device {device}: CUDA is not available here ({build}). Try: --device cpu")
    count = torch.cuda.device_count()
    if chosen.index is not None and chosen.index >= count:
        raise InvalidConfig(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                            f"cuda:{count - 1}. Try: --device cuda:0")


def choose_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """The dtype of frozen weights: bf16 on CUDA GPUs that have it, else fp16 on CUDA, fp32 elsewhere."""
    if dtype in (None, "", "auto"):
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise InvalidConfig(f"--dtype must be auto, {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@dataclass
class BaseModel:
    """A loaded pipeline with the id it came from, where it runs and its frozen dtype."""

    model_id: str
    pipe: Pipeline
    device: torch.device
    dtype: torch.dtype

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet (or, in a flow model, the transformer) that the adapter trains."""
        return self.family.denoiser(self.pipe)

    @property
    def default_guidance(self) -> float:
        """The guidance apply samples at (and the stored inversion is made for) unless one is given: the value
        tuned on the shapes benchmark for the built-in models, the family's pipeline default for the others."""
        return BUILTIN_GUIDANCE if self.model_id in BUILTIN_MODELS else self.family.default_guidance

    @property
    def native_resolution(self) -> int:
        return self.denoiser.config.sample_size * self.pipe.vae_scale_factor

    @functools.cached_property
    def family(self) -> Family:
        """The family that drives this model (the built-in models are driven as SD 1.x or SDXL); asked once."""
        return family_of_pipeline(self.pipe)

    @property
    def published_family(self) -> Family | None:
        """The family whose published architecture this is; None for the built-in models."""
        return published(self.family, self.embedding_dim)

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return self.family.text_encoders(self.pipe)

    @property
    def embedding_dim(self) -> int:
        """The width of the per-token embedding (SDXL: its two encoders' hidden states side by side)."""
        return self.family.embedding_width(self.pipe)

    @property
    def pooled_dim(self) -> int | None:
        """The width of the pooled text embedding, for a family that conditions on one."""
        return self.family.pooled_width(self.pipe)

    def condition_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each tensor of one prompt's :class:`~imagic_lora.conditioning.Condition` for this model."""
        shapes = {"embeds": (1, self.pipe.tokenizer.model_max_length, self.embedding_dim)}
        return shapes | ({"pooled": (1, self.pooled_dim)} if self.pooled_dim else {})

    def weight_sample(self) -> torch.Tensor:
        """A few evenly spaced values of every UNet and text encoder weight, as fp32 on CPU."""
        values = []
        for _, param in _named_weights(self.pipe):
            flat = param.detach().reshape(-1)
            index = torch.tensor(sample_indices(flat.numel()), device=flat.device)
            values.append(flat[index].float().cpu())
        return torch.cat(values)

    def architecture_hash(self) -> str:
        """A hash of every UNet and text encoder weight's name and shape."""
        digest = hashlib.sha256()
        for name, param in _named_weights(self.pipe):
            digest.update(f"{name}:{tuple(param.shape)};".encode())
        return digest.hexdigest()[:16]

    def fingerprint(self) -> str:
        """``<architecture hash>-<weights hash>``; the weights hash rounds samples to fp16."""
        sample = self.weight_sample().half().numpy().tobytes()
        return f"{self.architecture_hash()}-{hashlib.sha256(sample).hexdigest()[:16]}"


def sample_indices(numel: int, count: int = SAMPLES_PER_TENSOR) -> list[int]:
    """``count`` evenly spaced indices from 0 to ``numel - 1``, in exact integer arithmetic.

    Equal to the float32 ``linspace`` the first fingerprints used wherever that one was exact
    (tensors of fewer than 2^22 values), so their fingerprints keep their value.
    """
    return [i * (numel - 1) // (count - 1) for i in range(count)]


def _named_weights(pipe: Pipeline):
    """Base weights by name, sorted; names are the same before and after PEFT wraps a layer."""
    for prefix, module in family_of_pipeline(pipe).weight_modules(pipe):
        named = ((name.replace(".base_layer.", "."), param) for name, param in module.named_parameters())
        for name, param in sorted(named, key=lambda item: item[0]):
            if ".lora_" not in name:
                yield f"{prefix}.{name}", param


def load_model(model: str | None = None, device: str | None = None, dtype: str | None = None) -> BaseModel:
    """Load ``model`` (default: :func:`default_model`) with a DDIM scheduler, ready to train or apply."""
    model_id = model or default_model()
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(torch_device, dtype)
    return prepare(model_id, _load_pipeline(model_id, torch_dtype), torch_device, torch_dtype)


def prepare(model_id: str, pipe: Pipeline, device: torch.device, dtype: torch.dtype) -> BaseModel:
    """A loaded pipeline (weights already in ``dtype``) frozen, in eval mode, with DDIM, on ``device``."""
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    base = BaseModel(model_id, pipe, device, dtype)
    for module in (base.denoiser, pipe.vae, *base.text_encoders):
        module.requires_grad_(False)
        module.eval()
    pipe.to(device)
    return base


def _pretrained_loader(source: str | Path, torch_dtype: torch.dtype, what: str, local: bool):
    """Load a diffusers folder or hub id as the family its ``model_index.json`` names."""
    def load() -> Pipeline:
        try:
            family = family_for_index(DiffusionPipeline.load_config(str(source), local_files_only=local), what)
        except OSError:  # not reachable or not cached: SD's loader says which, in its own words
            family = SD15
        return family.from_pretrained(source, torch_dtype, local)
    return load


def _hub_loader(model_id: str, torch_dtype: torch.dtype, what: str):
    """A hub id: from the local cache if it is there, else from the hub, which is asked once and only when
    it can be reached (huggingface_hub retries an unreachable hub for minutes)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise ModelLoadError(f"model {model_id!r} is neither a hub id (owner/name), a local folder nor a "
                             f"checkpoint file. Try: --model {TINY_MODEL} to try the tool offline") from None
    cached, online = (_pretrained_loader(model_id, torch_dtype, what, local=local) for local in (True, False))

    def load() -> Pipeline:
        try:
            return cached()
        except ModelLoadError:  # in the cache, and not a model imagic-lora edits with
            raise
        except Exception:  # not in the cache, or not all of it
            pass
        unreachable = hub_unreachable()
        if unreachable:
            raise ModelLoadError(f"{model_id!r} is not in the local model cache and {unreachable}. Try: a local "
                                 f"diffusers folder or .safetensors file, or --model {TINY_MODEL} offline")
        return online()
    return load


def hub_unreachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be asked (offline mode, no route, no name resolution), or None if it answers.

    A proxy, when set, is trusted to reach it.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "the hub is switched off (HF_HUB_OFFLINE)"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError as ex:
        return f"the hub ({url.hostname}) cannot be reached: {ex.strerror or type(ex).__name__}"
    return None


def _load_pipeline(model_id: str, torch_dtype: torch.dtype) -> Pipeline:
    if model_id in BUILTIN_MODELS:
        pipe = BUILTIN_MODELS[model_id]()
        return pipe if torch_dtype == torch.float32 else pipe.to(dtype=torch_dtype)
    path = Path(model_id).expanduser()
    if path.is_file():
        what = f"the checkpoint {str(path)!r}"
        hint = f"a single-file checkpoint of {supported()}, or a diffusers folder"
        loader = functools.partial(_load_single_file, path, torch_dtype)
    elif path.is_dir() and not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path} is not a diffusers folder (no model_index.json). "
            "Try: a folder written by save_pretrained or downloaded from the hub"
        )
    elif path.is_dir():
        what, hint = f"the diffusers folder {str(path)!r}", "a complete diffusers folder"
        loader = _pretrained_loader(path, torch_dtype, what, local=True)
    elif model_id.startswith((".", "/", "~")) or model_id.endswith(".safetensors"):
        raise ModelLoadError(
            f"model path {model_id!r} does not exist. Try: --model {TINY_MODEL} to try the tool offline"
        )
    else:
        what, hint = f"{model_id!r} from the Hugging Face hub or its cache", (
            "a hub id already in the cache, a local diffusers folder or a .safetensors checkpoint"
        )
        loader = _hub_loader(model_id, torch_dtype, what)
    try:
        pipe = loader()
    except ModelLoadError:
        raise
    except Exception as ex:  # diffusers and the hub raise many kinds; the user needs one line
        raise ModelLoadError(
            f"could not load {what}: {_first_sentence(ex)}. "
            f"Try: {hint}; or --model {TINY_MODEL} to try the tool offline"
        ) from None
    check_tokenizer(pipe, what)
    return pipe


def _first_sentence(ex: Exception) -> str:
    text = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
    return text.split(". ")[0].split(" (")[0].rstrip(".")[:200]


def _load_single_file(path: Path, torch_dtype: torch.dtype) -> Pipeline:
    """An original-format checkpoint of a supported family, with its shipped config folder: no hub access."""
    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"{path} is not a .safetensors checkpoint; pickle checkpoints (.ckpt, .bin) are not loaded. "
            "Try: convert it to .safetensors first"
        )
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            shapes = {key: tuple(checkpoint.get_slice(key).get_shape()) for key in checkpoint.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as ex:
        raise ModelLoadError(f"{path} is not a readable .safetensors file: {_first_sentence(ex)}") from None
    return load_single_file(path, shapes, torch_dtype)


def check_tokenizer(pipe: Pipeline, what: str) -> None:
    """Refuse a tokenizer that does not fit its text encoder (an incomplete folder loads a 2-token one silently)."""
    for folder, tokenizer, encoder in family_of_pipeline(pipe).tokenizer_pairs(pipe):
        tokens, expected = len(tokenizer), encoder.config.vocab_size
        if tokens != expected:
            raise ModelLoadError(
                f"{what} has a tokenizer of {tokens} tokens for a text encoder of {expected}: its tokenizer files "
                f"are missing or wrong. Try: a complete diffusers folder ({folder}/vocab.json and merges.txt)"
            )
