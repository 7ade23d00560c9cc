"""The keep step on real photographs and simulated edits: how much of each edit it undoes. No model runs.

The shapes world asks for few edits of the whole picture, so it cannot show whether the keep step undoes
them on a photograph. Here three photographs (``data/photos``, public domain and CC0) are edited by simple
image operations, and the keep step runs on them as apply runs it, given the region the model would read the
prompt as acting on (:func:`imagic_lora.method.edit_region`):

- **Whole-picture edits** (a warm tint, darker, black and white, a negative, posterized, blurred), the region
  everywhere: the share of pixels it *restored*, i.e. moved more than 8 levels away from the edit and closer
  to the photo. An edit of the whole picture should come back with (next to) nothing restored.
- **A pasted object**, the region on it, the whole picture drifted as a sampler drifts it (+6 levels, noise
  of 3): whether the object stays whole (within 8 levels: what is kept of the edit is shifted back by the
  drift), and, in its row, the share of the rest (beyond 1/8 of the width from it) that is the photo again.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from ..images import fit_image
from ..keep import keep_unchanged

PHOTOS = ("astronaut", "chelsea", "coffee")
MOVED = 8  # levels: a pixel the keep step changed by more than this, toward the photo, was restored


def _levels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def _from_levels(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8))


WHOLE_PICTURE_EDITS = {
    "warm tint +20": lambda p: _from_levels(_levels(p) + np.array([20, 8, -20])),
    "darker x0.7": lambda p: _from_levels(np.round(_levels(p) * 0.7)),
    "black and white": lambda p: ImageOps.grayscale(p).convert("RGB"),
    "negative": ImageOps.invert,
    "posterized (3 bits)": lambda p: ImageOps.posterize(p, 3),
    "blurred (2 px)": lambda p: p.filter(ImageFilter.GaussianBlur(2)),
}


def photo(name: str, size: int = 512) -> Image.Image:
    """One of :data:`PHOTOS`, centre-cropped to ``size`` square as training fits an input."""
    with resources.as_file(resources.files("imagic_lora") / "data" / "photos" / f"{name}.jpg") as path:
        return fit_image(Image.open(path).convert("RGB"), size, "crop")


def restored_share(result: Image.Image, edited: Image.Image, original: Image.Image) -> float:
    """The share of pixels the keep step put (part of) the photo back over the edit."""
    result, edited, original = _levels(result), _levels(edited), _levels(original)
    away_from_edit = np.abs(result - edited).max(-1)
    toward_photo = np.abs(result - original).max(-1) < away_from_edit
    return float(((away_from_edit > MOVED) & toward_photo).mean())


def pasted(original: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The photo with a flat blue box (a quarter of its width) pasted in its upper half, and the box."""
    side = original.width // 4
    box = (original.width // 2, original.height // 6, original.width // 2 + side, original.height // 6 + side * 3 // 4)
    edited = original.copy()
    edited.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), (30, 160, 220)), box[:2])
    return edited, box


DRIFT, NOISE = (6, 6, 6), 3  # levels: what a sampler adds to the picture around a local edit


def drifted(image: Image.Image, seed: int = 0) -> Image.Image:
    """``image`` as a sampler returns it around an edit: shifted a few levels, with a little noise."""
    noise = np.random.default_rng(seed).normal(0, NOISE, _levels(image).shape).round().astype(np.int16)
    return _from_levels(_levels(image) + np.array(DRIFT) + noise)


def box_region(size: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The region the model reads a prompt about ``box`` as acting on: ``box`` on the 1/8 latent grid."""
    grid = torch.zeros(size // 8, size // 8)
    x0, y0, x1, y1 = box
    grid[y0 // 8 : -(-y1 // 8), x0 // 8 : -(-x1 // 8)] = 1
    return grid


def untouched_back(result: Image.Image, original: Image.Image, box: tuple[int, int, int, int]) -> float:
    """The share of the picture beyond 1/8 of its width from ``box`` that is the photo again (within a level)."""
    away = np.ones((original.height, original.width), dtype=bool)
    margin = original.width // 8
    away[max(0, box[1] - margin) : box[3] + margin, max(0, box[0] - margin) : box[2] + margin] = False
    return float((np.abs(_levels(result) - _levels(original)).max(-1)[away] <= 1).mean())


def measure(threshold: float, size: int = 512) -> list[dict]:
    """One row per photo and edit: the share restored; for the pasted object, whether it stayed whole and how
    much of the rest came back."""
    rows = []
    everywhere = torch.ones(size // 8, size // 8)
    for name in PHOTOS:
        original = photo(name, size)
        for edit, apply_edit in WHOLE_PICTURE_EDITS.items():
            edited = apply_edit(original)
            result = keep_unchanged(edited, original, threshold, everywhere)
            rows.append({"photo": name, "edit": edit, "restored": restored_share(result, edited, original)})
        pasted_in, box = pasted(original)
        edited = drifted(pasted_in)
        result = keep_unchanged(edited, original, threshold, box_region(size, box))
        whole = bool((np.abs(_levels(result.crop(box)) - _levels(edited.crop(box))) <= MOVED).all())
        rows.append({"photo": name, "edit": "pasted object", "object_whole": whole,
                     "restored": untouched_back(result, original, box)})
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table: edits down, photos across, the share restored in each cell."""
    edits = list(dict.fromkeys(row["edit"] for row in rows))
    cells = {(row["edit"], row["photo"]): row for row in rows}
    lines = ["| edit (share of pixels restored) | " + " | ".join(PHOTOS) + " |",
             "| --- |" + " ---: |" * len(PHOTOS)]
    for edit in edits:
        values = []
        for name in PHOTOS:
            row = cells[(edit, name)]
            whole = "" if "object_whole" not in row else (", object whole" if row["object_whole"] else ", object cut")
            values.append(f"{100 * row['restored']:.1f} %{whole}")
        lines.append(f"| {edit} | " + " | ".join(values) + " |")
    return "\n".join(lines)
