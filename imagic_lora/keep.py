"""Keep what the edit did not change: the photo's own pixels wherever the edited image barely differs from it.

Sampling redraws the whole image, so even a faithful edit shifts colours and loses small details far
from what the prompt asked to change. Where the edit and the photo differ by less than a threshold
(on a blurred difference, so scattered small changes do not count), the photo's pixels are put back;
the mask is grown and feathered so the edited region blends in. The photo here is the profile's
image latents decoded: the picture the model was trained on, at its resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _to_tensor(image: Image.Image) -> torch.Tensor:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def _to_image(pixels: torch.Tensor) -> Image.Image:
    array = (pixels[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)


def _box_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean over a square window, edges replicated; as a row then a column pass, so large radii stay cheap."""
    size = 2 * radius + 1
    rows = F.avg_pool2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), (1, size), stride=1)
    return F.avg_pool2d(F.pad(rows, (0, 0, radius, radius), mode="replicate"), (size, 1), stride=1)


def _grow(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """The maximum over a square window (a dilation), as a row then a column pass."""
    size = 2 * radius + 1
    rows = F.max_pool2d(mask, (1, size), stride=1, padding=(0, radius))
    return F.max_pool2d(rows, (size, 1), stride=1, padding=(radius, 0))


def changed_mask(edited: Image.Image, photo: Image.Image, threshold: float) -> torch.Tensor:
    """``[1, 1, H, W]`` in [0, 1]: 1 where the edit changed the photo, 0 where the photo is kept.

    A pixel counts as changed when the largest channel difference, box-blurred over 1/16 of the image
    width, exceeds ``threshold`` (0–1 of full scale); the mask then grows by 1/16 of the width and is
    feathered over 1/32.
    """
    size = min(edited.size)
    difference = (_to_tensor(edited) - _to_tensor(photo)).abs().amax(dim=1, keepdim=True)
    changed = (_box_blur(difference, max(1, size // 16)) > threshold).float()
    return _box_blur(_grow(changed, max(1, size // 16)), max(1, size // 32))


def keep_unchanged(edited: Image.Image, photo: Image.Image, threshold: float) -> Image.Image:
    """``edited`` with ``photo``'s pixels put back wherever the edit did not change it."""
    if edited.size != photo.size:
        photo = photo.resize(edited.size, Image.Resampling.LANCZOS)
    mask = changed_mask(edited, photo, threshold)
    return _to_image(mask * _to_tensor(edited) + (1 - mask) * _to_tensor(photo))
