"""The testbed's ceiling: how often the VAE round trip alone keeps what the edit benchmark scores.

No edit method can keep a detail that encoding and decoding already lose, so the rates of the edit
benchmark mean something only where this ceiling is near 100 %: the input's round trip must score
as *preserved*, the ground truth's round trip as *both* (edited and preserved).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .cases import make_cases, score


@torch.no_grad()
def round_trip(vae, image: Image.Image) -> Image.Image:
    """Encode to the latent mean and decode, as 8-bit RGB."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1)
    pixels = pixels.permute(2, 0, 1)[None].to(vae.device, vae.dtype)
    decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample[0].float().clamp(-1, 1)
    return Image.fromarray(((decoded.permute(1, 2, 0) + 1) * 127.5).round().byte().cpu().numpy())


def vae_ceiling(vae, cases: int = 200, seed: int = 0) -> dict:
    """Fractions of ``cases`` whose input round trip is preserved and whose ground truth's is a success."""
    preserved = both = 0
    misses = []
    for case in make_cases(cases, seed):
        kept = score(round_trip(vae, case.input_image()), case)["preserved"]
        edited = score(round_trip(vae, case.ground_truth()), case)["success"]
        preserved += kept
        both += edited
        if not (kept and edited):
            misses.append(case.index)
    return {"cases": cases, "input_preserved": preserved / cases, "truth_both": both / cases, "misses": misses}
