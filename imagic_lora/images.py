"""Read the input photo, fit it to the training resolution, and write outputs."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin

from .errors import InvalidImage
from .files import atomic_write
from .infotext import infotext

FORMATS = ("JPEG", "MPO", "PNG", "WEBP")  # MPO: the multi-picture JPEG many phones write
THUMBNAIL_SIZE = 64
MAX_PIXELS = 80_000_000
MIN_SIDE = 32
HASH_CHUNK_BYTES = 1 << 20
Warn = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


def load_image(path: str | Path, warn: Warn = _ignore) -> Image.Image:
    """Open a JPEG/PNG/WebP within the pixel limit, apply its EXIF orientation and convert it to RGB."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImage(f"image {str(path)!r} not found. Try: a path to a JPEG, PNG or WebP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open_checked(path)
            if image.format == "MPO" and getattr(image, "n_frames", 1) > 1:
                warn(f"{path} holds {image.n_frames} pictures (a multi-picture JPEG); using the first")
            elif getattr(image, "is_animated", False):
                warn(f"{path} is animated; using its first frame")
            image.load()
            image = ImageOps.exif_transpose(image)
    except InvalidImage:
        raise
    except Image.DecompressionBombError:
        raise InvalidImage(f"{path} has more than {MAX_PIXELS // 10**6} megapixels. Try: a smaller copy") from None
    except (OSError, ValueError, SyntaxError) as ex:
        raise InvalidImage(f"cannot read image {path}: {ex}. Try: re-saving it as PNG or JPEG") from None
    if min(image.size) < MIN_SIDE:
        raise InvalidImage(
            f"{path} is only {image.width}x{image.height} pixels; each side needs at least {MIN_SIDE}. "
            "Try: a larger image"
        )
    return to_rgb(image)


def _open_checked(path: Path) -> Image.Image:
    image = Image.open(path)
    if image.format not in FORMATS:
        raise InvalidImage(f"{path} is a {image.format} image; JPEG, PNG and WebP are supported")
    if image.width * image.height > MAX_PIXELS:
        raise InvalidImage(
            f"{path} is {image.width}x{image.height} pixels, over the {MAX_PIXELS // 10**6} megapixel limit. "
            "Try: a smaller copy"
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit scaled to 8, transparency composited on white, CMYK and palettes converted."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        array = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def fit_image(image: Image.Image, size: int, fit: str = "crop", warn: Warn = _ignore) -> Image.Image:
    """Center-crop (or pad with black) to a square, then resize to ``size``; warn when upscaling."""
    if min(image.size) < size:
        warn(f"the image is {image.width}x{image.height}, smaller than the {size} px training size; upscaling it")
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
    """The file's SHA-256, read in chunks: memory stays bounded whatever the file's size."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def thumbnail(image: Image.Image) -> torch.Tensor:
    """A small ``[H, W, 3]`` uint8 copy of the fitted input, kept in the profile."""
    small = image.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(small, dtype=np.uint8))


def thumbnail_image(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(pixels.numpy().astype(np.uint8), "RGB")


def save_png(image: Image.Image, path: Path, parameters: dict) -> None:
    """Write a PNG (atomically) carrying its generation parameters: A1111 infotext and the full JSON."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", infotext(parameters))
    info.add_itxt("imagic-lora", json.dumps(parameters, sort_keys=True, ensure_ascii=False))
    atomic_write(path, lambda part: image.save(part, format="PNG", pnginfo=info))


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
