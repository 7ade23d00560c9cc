"""The model families imagic-lora edits with, and the one place that tells them apart.

Each family is an object (:class:`~imagic_lora.families.base.Family`) the rest of the package asks; no
code outside this package branches on which family a model is. The built-in models map onto a family
by their pipeline: ``builtin:tiny`` and ``builtin:shapes`` are driven as SD 1.x, ``builtin:tiny-xl`` as
SDXL. Adding a family is one module and one line in ``REGISTERED`` (docs/families.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ModelLoadError
from .base import Family, config_folder
from .sd import SD15, SD21
from .sdxl import SDXL

REGISTERED = (SD15, SD21, SDXL)  # in order of preference when a model matches several by kind
FAMILIES: Mapping[str, Family] = {family.name: family for family in REGISTERED}
DRY_RUN_FAMILY = "tiny"  # the built-in test model, so benchmark scripts can be checked in seconds on a CPU
DRY_RUN_XL_FAMILY = "tiny-xl"
BENCH_FAMILIES = (*FAMILIES, DRY_RUN_FAMILY, DRY_RUN_XL_FAMILY)

__all__ = ["BENCH_FAMILIES", "DRY_RUN_FAMILY", "DRY_RUN_XL_FAMILY", "FAMILIES", "Family", "config_folder",
           "family_for", "family_for_index", "family_label", "family_of_pipeline", "published", "supported"]


def family_for(width: int, pooled: bool) -> Family:
    """The family that drives a model, or reads a profile, whose text embedding is ``width`` wide (with a
    pooled embedding or not): the family of that width, else the first of that kind (the built-in models)."""
    kind = [family for family in REGISTERED if family.pooled == pooled]
    return next((family for family in kind if family.text_width == width), kind[0])


def family_of_pipeline(pipe) -> Family:
    """The family of a loaded diffusers pipeline."""
    kind = [family for family in REGISTERED if family.owns(pipe)]
    if not kind:
        raise ModelLoadError(f"a {type(pipe).__name__} is not a model imagic-lora edits with. Supported: {supported()}")
    width = kind[0].embedding_width(pipe)
    return next((family for family in kind if family.text_width == width), kind[0])


def family_for_index(model_index: Mapping, what: str) -> Family:
    """The family of a diffusers folder, by the pipeline class its ``model_index.json`` names."""
    name = str(model_index.get("_class_name", ""))
    family = next((family for family in REGISTERED if family.accepts_index(name)), None)
    if family is None:
        raise ModelLoadError(f"{what} is a {name or 'pipeline of unknown kind'}, which imagic-lora does not edit "
                             f"with. Supported: {supported()}")
    return family


def published(family: Family, width: int) -> Family | None:
    """``family`` if a model of that ``width`` is its published architecture (not a built-in model), else None."""
    return family if family.text_width == width else None


def family_label(width: int) -> str:
    """A family's short name for messages (``SDXL``); other architectures by their embedding width."""
    family = next((family for family in REGISTERED if family.text_width == width), None)
    return family.short_label if family else f"a model with {width}-d text embeddings"


def supported() -> str:
    labels = [family.label for family in REGISTERED]
    return f"{', '.join(labels[:-1])} or {labels[-1]}"
