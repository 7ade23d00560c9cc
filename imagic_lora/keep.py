"""Keep what the edit did not change: the photo's own pixels wherever the edited image barely differs from it.

Sampling redraws the whole image, so even a faithful edit shifts colours and loses small details far
from what the prompt asked to change. The keep step first asks whether the edit is local or about the whole
picture, from the model's own reading of the prompt when it is given (:func:`imagic_lora.method.edit_region`:
where the edit's condition changes the model's prediction for the photo):

- **A local edit.** The edit is kept where that region lies and wherever it changed the photo by more than a
  threshold (on a blurred difference, so scattered small changes do not count); everywhere else the photo's
  own pixels come back, exactly. The mask is grown and feathered so the edited region blends in, and what is
  kept of the edit is shifted by the sampler's colour drift, measured where the photo comes back, so the two
  meet without a seam.
- **A whole-picture edit** (the region covers more than half of the picture): a tint, a darker scene, another
  background are the edit, so inside the region the photo comes back only *carried through them*: through the
  affine colour map from the photo to the edit fitted there (on the pixels it explains best), and only where the
  edit differs from that by less than the threshold (its lost details); outside the region the photo comes back
  as it is, on the same condition. When the difference is spread over most of the picture (a style, a
  posterized look), nothing comes back.

Without a region (a caller without the model), the edit is taken as local. The photo here is the profile's
image latents decoded: the picture the model was trained on, at its resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REGION_LEVEL = 0.3  # of the region's peak: where the edit's condition counts as acting
WHOLE_PICTURE = 0.5  # share of the picture a region covers above which the edit is about the whole picture
SPREAD_LEVEL = 4 / 255  # a blurred difference to the carried photo above this counts as a change...
SPREAD_LIMIT = 0.5  # ...and over more than this share of the picture, the whole picture changed: nothing comes back
MIN_MATCHED = 0.05  # the share of the picture the photo must come back over for the colours to be matched


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


def _feathered(changed: torch.Tensor, size: int) -> torch.Tensor:
    """A 0/1 mask grown by 1/16 of ``size`` and feathered over 1/32."""
    return _box_blur(_grow(changed, max(1, size // 16)), max(1, size // 32))


def _blurred_difference(a: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
    """``[1, 1, H, W]``: the largest channel difference, box-blurred over 1/16 of ``size``."""
    return _box_blur((a - b).abs().amax(dim=-1)[None, None], max(1, size // 16))


def changed_mask(edited: Image.Image, photo: Image.Image, threshold: float) -> torch.Tensor:
    """``[1, 1, H, W]`` in [0, 1]: 1 where the edit changed the photo, 0 where the photo is kept.

    A pixel counts as changed when the largest channel difference, box-blurred over 1/16 of the image
    width, exceeds ``threshold`` (0–1 of full scale); the mask then grows by 1/16 of the width and is
    feathered over 1/32.
    """
    size = min(edited.size)
    return _feathered((_blurred_difference(_pixels(edited), _pixels(photo), size) > threshold).float(), size)


def region_mask(region: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[1, 1, H, W]`` 0/1: where a latent-grid ``region`` reaches :data:`REGION_LEVEL`, at the image's size."""
    scaled = F.interpolate(region.float()[None, None], size=(height, width), mode="bilinear", align_corners=False)
    return (scaled >= REGION_LEVEL).float()


def colour_offset(edited: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[3]``: the per-channel median of ``photo − edited`` where the photo comes back whole (``mask`` 0),
    i.e. the colour drift the sampler added to the whole picture; zero when too little of it comes back."""
    restored = mask[0, 0] == 0
    if restored.float().mean() < MIN_MATCHED:
        return torch.zeros(3)
    return (photo[restored] - edited[restored]).median(dim=0).values


RIDGE = 1e-2  # per pixel: holds the colour map near the identity where the photo has few distinct colours
TRIM = 0.8  # each refit keeps the pixels the map explains best
FITS = 3


def colour_map(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[4, 3]``: the affine colour map (3×3 and an offset) taking ``source`` pixels ``[N, 3]`` to ``target``'s,
    by least squares held toward the identity, refitted twice on the share :data:`TRIM` it explains best, so
    what an edit changed locally does not pull it."""
    source, target = source.double(), target.double()
    design = torch.cat([source, torch.ones(len(source), 1, dtype=torch.float64)], dim=1)
    identity = torch.cat([torch.eye(3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)])
    penalty = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    used = torch.ones(len(source), dtype=torch.bool)
    for _ in range(FITS):
        x, y = design[used], target[used]
        weight = RIDGE * len(x)
        solution = torch.linalg.solve(x.T @ x + weight * penalty, x.T @ y + weight * penalty @ identity)
        error = (design @ solution - target).abs().amax(dim=1)
        used = error <= max(float(error[used].quantile(TRIM)), 2 / 255)
    return solution.float()


def _carried(photo: torch.Tensor, edited: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The photo through the colour map fitted from it to the edit on the pixels ``where`` ``[H, W]`` holds."""
    flat = photo.reshape(-1, 3)
    chosen = where.reshape(-1)
    mapping = colour_map(flat[chosen], edited.reshape(-1, 3)[chosen])
    return (torch.cat([flat, torch.ones(len(flat), 1)], dim=1) @ mapping).reshape(photo.shape).clamp_(0, 1)


def keep_whole_picture(edited: Image.Image, photo: Image.Image, threshold: float,
                       acting: torch.Tensor) -> Image.Image:
    """An edit about the whole picture, the region ``acting`` ``[1, 1, H, W]`` where it applies: the photo comes
    back carried through the edit's colour change there (as it is elsewhere), where the edit differs from that by
    less than ``threshold``; the edit whole when the difference is spread over most of the picture."""
    pixels, original = _pixels(edited), _pixels(photo)
    size = min(edited.size)
    carried = _carried(original, pixels, acting[0, 0] > 0)
    source = torch.lerp(original, carried, _box_blur(acting, max(1, size // 32))[0, 0, :, :, None])
    difference = _blurred_difference(pixels, source, size)
    if float((difference > SPREAD_LEVEL).float().mean()) > SPREAD_LIMIT:
        return edited
    mask = _feathered((difference > threshold).float(), size)
    return _to_image(torch.lerp(source, pixels, mask[0, 0, :, :, None]))


def keep_unchanged(edited: Image.Image, photo: Image.Image, threshold: float,
                   region: torch.Tensor | None = None) -> Image.Image:
    """``edited`` with ``photo``'s pixels put back wherever the edit did not change it (see the module's text);
    ``region`` is the model's :func:`imagic_lora.method.edit_region` for the edit, if known."""
    if edited.size != photo.size:
        photo = photo.resize(edited.size, Image.Resampling.LANCZOS)
    mask = changed_mask(edited, photo, threshold)
    if region is not None:
        acting = region_mask(region, edited.height, edited.width)
        if float(acting.mean()) > WHOLE_PICTURE:
            return keep_whole_picture(edited, photo, threshold, acting)
        mask = torch.maximum(mask, _feathered(acting, min(edited.size)))
    pixels, original = _pixels(edited), _pixels(photo)
    matched = (pixels + colour_offset(pixels, original, mask)).clamp_(0, 1)
    return _to_image(torch.lerp(original, matched, mask[0, 0, :, :, None]))
