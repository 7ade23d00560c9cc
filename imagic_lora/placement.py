"""Which parts of the pipeline sit on the accelerator while each step of a command runs.

A whole command should peak no higher than its largest step. On a small card the photo is encoded while the
UNet waits on the CPU, the VAE and text encoders wait there while the UNet trains, and the VAE decodes with
the UNet off the device. Each move costs a transfer, so only the recipes that need the room make them.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .models import BaseModel

_parked: weakref.WeakSet = weakref.WeakSet()


def is_parked(module: torch.nn.Module) -> bool:
    """Whether a :func:`parked` block is running without ``module`` on the device (on the CPU it stays put)."""
    return module in _parked


@contextlib.contextmanager
def parked(base: BaseModel, modules: Iterable[torch.nn.Module], enabled: bool = True) -> Iterator[None]:
    """``modules`` on the CPU while the block runs, back on ``base.device`` afterwards.

    On the CPU nothing moves; :func:`is_parked` still says which modules the block does without. A module
    already parked by an enclosing block is left to that block.
    """
    modules = [module for module in modules if not is_parked(module)] if enabled else []
    moves = base.device.type != "cpu"
    for module in modules:
        _parked.add(module)
        if moves:
            module.to("cpu")
    if moves and modules and base.device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        for module in modules:
            if moves:
                module.to(base.device)
            _parked.discard(module)


def encoders_offloaded(base: BaseModel, enabled: bool = True):
    """The VAE and text encoders on the CPU while the UNet trains on an accelerator; back afterwards.

    Their work is done before training starts (latents and prompt embeddings are computed once).
    """
    return parked(base, [base.pipe.vae, *base.text_encoders], enabled)


def unet_parked(base: BaseModel, enabled: bool = True):
    """The UNet on the CPU meanwhile: for the VAE and text encoders' work on a small card."""
    return parked(base, [base.denoiser], enabled)
