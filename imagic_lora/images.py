"""Read the input photo, fit it to the training resolution, and write outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin

from .errors import InvalidImage

FORMATS = ("JPEG", "PNG", "WEBP")
THUMBNAIL_SIZE = 64


def load_image(path: str | Path) -> Image.Image:
    """Open a JPEG/PNG/WebP, apply its EXIF orientation and convert it to RGB."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImage(f"image {str(path)!r} not found. Try: a path to a JPEG, PNG or WebP file")
    try:
        with Image.open(path) as image:
            if image.format not in FORMATS:
                raise InvalidImage(f"{path} is a {image.format} image; JPEG, PNG and WebP are supported")
            image.load()
            image = ImageOps.exif_transpose(image)
    except InvalidImage:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as ex:
        raise InvalidImage(f"cannot read image {path}: {ex}. Try: re-saving it as PNG or JPEG") from None
    if image.mode in ("RGBA", "LA", "P", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def fit_image(image: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """Center-crop (or pad with black) to a square, then resize to ``size``."""
    if fit == "pad":
        side = max(image.size)
        square = Image.new("RGB", (side, side), (0, 0, 0))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    else:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image to a ``[1, 3, H, W]`` tensor in [-1, 1], as the VAE expects."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def thumbnail(image: Image.Image) -> torch.Tensor:
    """A small ``[H, W, 3]`` uint8 copy of the fitted input, kept in the profile."""
    small = image.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(small, dtype=np.uint8))


def thumbnail_image(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(pixels.numpy().astype(np.uint8), "RGB")


def save_png(image: Image.Image, path: Path, parameters: dict) -> None:
    """Write a PNG whose text chunks carry the generation parameters."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(parameters, sort_keys=True))
    for key, value in parameters.items():
        info.add_text(f"imagic-lora:{key}", str(value))
    image.save(path, pnginfo=info)


def labelled_grid(tiles: list[tuple[str, Image.Image]], columns: int, tile: int) -> Image.Image:
    """Lay out labelled tiles row by row, each label in a strip above its image."""
    strip = 14
    rows = (len(tiles) + columns - 1) // columns
    grid = Image.new("RGB", (columns * tile, rows * (tile + strip)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (label, image) in enumerate(tiles):
        x, y = (i % columns) * tile, (i // columns) * (tile + strip)
        grid.paste(image.resize((tile, tile), Image.Resampling.NEAREST), (x, y + strip))
        draw.text((x + 2, y + 1), label, fill=(0, 0, 0))
    return grid
