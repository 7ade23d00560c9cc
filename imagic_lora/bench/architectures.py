"""Real Stable Diffusion architectures with random weights, built from the configs shipped in ``data/``.

What a step costs depends on the architecture, not on the weights, and every code path that walks
weights meets the real tensor sizes: benchmarks and the real-architecture tests build their models here.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import InvalidConfig
from ..families import BENCH_FAMILIES, DRY_RUN_FAMILY, DRY_RUN_XL_FAMILY, FAMILIES, config_folder
from ..tiny import tiny_pipeline, tiny_xl_pipeline

DRY_RUN_PIPELINES = {DRY_RUN_FAMILY: tiny_pipeline, DRY_RUN_XL_FAMILY: tiny_xl_pipeline}


def random_pipeline(family: str, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``family``'s UNet, VAE and text encoder(s) with fixed-seed random weights, in ``dtype`` on ``device``.

    The tokenizers are the family's real CLIP BPE tokenizers, shipped with the configs. ``tiny`` and
    ``tiny-xl`` are the built-in test models (``builtin:tiny``, ``builtin:tiny-xl``), for dry runs.
    """
    if family in DRY_RUN_PIPELINES:
        return DRY_RUN_PIPELINES[family]().to(dtype=dtype)
    if family not in FAMILIES:
        raise InvalidConfig(f"unknown model family {family!r}. Try: one of {', '.join(BENCH_FAMILIES)}")
    @contextlib.contextmanager
    def weights():
        # built in ``dtype`` directly: SDXL's 3.5 billion fp32 weights alone would take 14 GB
        with torch.random.fork_rng(devices=[]), torch.device(device), _default_dtype(dtype):
            torch.manual_seed(seed)
            yield

    with config_folder(family) as folder:
        return FAMILIES[family].random_pipeline(folder, weights)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
