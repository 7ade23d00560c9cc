"""The keep step on real photographs and simulated edits: how much of each edit it undoes. No model runs.

The shapes world can only ask for local edits, so it cannot tell whether the keep step undoes an edit of the
whole picture. Here three photographs (``data/photos``, public domain and CC0) are edited by simple image
operations, and the keep step runs on them as it runs after sampling:

- **Whole-picture edits** (a warm tint, darker, black and white, a negative, posterized, blurred): the share
  of pixels it *restored*, i.e. moved more than 8 levels away from the edit and closer to the photo. An edit
  of the whole picture should come back with (next to) nothing restored.
- **A pasted object**: whether the object stays whole, and the share of the rest that is the photo again.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
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


def measure(threshold: float, size: int = 512) -> list[dict]:
    """One row per photo and edit: the share restored; for the pasted object, whether it stayed whole too."""
    rows = []
    for name in PHOTOS:
        original = photo(name, size)
        for edit, apply_edit in WHOLE_PICTURE_EDITS.items():
            edited = apply_edit(original)
            rows.append({"photo": name, "edit": edit,
                         "restored": restored_share(keep_unchanged(edited, original, threshold), edited, original)})
        edited, box = pasted(original)
        result = keep_unchanged(edited, original, threshold)
        whole = bool((_levels(result.crop(box)) == _levels(edited.crop(box))).all())
        rows.append({"photo": name, "edit": "pasted object", "object_whole": whole,
                     "restored": restored_share(result, edited, original)})
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
