"""Keep what the edit did not change: the photo's own pixels wherever the edited image barely differs from it.

Sampling redraws the whole image, so even a faithful edit shifts colours and loses small details far
from what the prompt asked to change. Where the edit and the photo differ by less than a threshold
(on a blurred difference, so scattered small changes do not count), the photo's pixels are put back;
the mask is grown and feathered so the edited region blends in. What is kept of the edit is first shifted
by the sampler's colour drift, measured where the photo comes back, so the two meet without a seam. The
photo here is the profile's image latents decoded: the picture the model was trained on, at its resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _pixels(image: Image.Image) -> torch.Tensor:
    """``[H, W, 3]`` in [0, 1], in the image's own memory layout, so no pass over it needs a transpose."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def _to_image(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray((pixels * 255).round_().clamp_(0, 255).to(torch.uint8).numpy())


def _window_sums(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sums of ``x`` ``[1, 1, H, W]`` over square windows of side ``2 * radius + 1``, edges replicated.

    From running sums, a row then a column pass, so the cost does not grow with the radius. A window of
    zeros sums to exactly zero (the running sum does not move across it).
    """
    for dim, pad in ((3, (radius, radius, 0, 0)), (2, (0, 0, radius, radius))):
        length = x.shape[dim]
        running = torch.cumsum(F.pad(x, pad, mode="replicate"), dim)
        running = torch.cat([torch.zeros_like(running.narrow(dim, 0, 1)), running], dim)
        x = running.narrow(dim, 2 * radius + 1, length) - running.narrow(dim, 0, length)
    return x


def _box_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean over a square window, edges replicated."""
    return _window_sums(x, radius) / (2 * radius + 1) ** 2


def _grow(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A 0/1 mask dilated by a square window: 1 wherever the window holds a 1."""
    return (_window_sums(mask, radius) > 0.5).float()


def changed_mask(edited: Image.Image, photo: Image.Image, threshold: float) -> torch.Tensor:
    """``[1, 1, H, W]`` in [0, 1]: 1 where the edit changed the photo, 0 where the photo is kept.

    A pixel counts as changed when the largest channel difference, box-blurred over 1/16 of the image
    width, exceeds ``threshold`` (0–1 of full scale); the mask then grows by 1/16 of the width and is
    feathered over 1/32.
    """
    size = min(edited.size)
    difference = (_pixels(edited) - _pixels(photo)).abs().amax(dim=-1)[None, None]
    changed = (_box_blur(difference, max(1, size // 16)) > threshold).float()
    return _box_blur(_grow(changed, max(1, size // 16)), max(1, size // 32))


MIN_MATCHED = 0.05  # the share of the picture the photo must come back over for the colours to be matched


def colour_offset(edited: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[3]``: the per-channel median of ``photo − edited`` where the photo comes back whole (``mask`` 0),
    i.e. the colour drift the sampler added to the whole picture; zero when too little of it comes back."""
    restored = mask[0, 0] == 0
    if restored.float().mean() < MIN_MATCHED:
        return torch.zeros(3)
    return (photo[restored] - edited[restored]).median(dim=0).values


def keep_unchanged(edited: Image.Image, photo: Image.Image, threshold: float) -> Image.Image:
    """``edited`` with ``photo``'s pixels put back wherever the edit did not change it; what is kept of the
    edit is first shifted by the drift measured where the photo comes back, so the two meet without a seam."""
    if edited.size != photo.size:
        photo = photo.resize(edited.size, Image.Resampling.LANCZOS)
    mask = changed_mask(edited, photo, threshold)
    pixels, original = _pixels(edited), _pixels(photo)
    matched = (pixels + colour_offset(pixels, original, mask)).clamp_(0, 1)
    return _to_image(torch.lerp(original, matched, mask[0, 0, :, :, None]))
