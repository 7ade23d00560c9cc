"""A deterministic pixel analyzer for shapes images: what is drawn, where, and which details survived."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import BACKGROUNDS, COLOURS, Details, Scene, Second, background_rgb

MASK_THRESHOLD = 45  # max channel difference from the background that counts as foreground
LARGE_EXTENT = 14  # bounding-box side separating small (about 11 px) from large (about 19 px)
BACKGROUND_TOLERANCE = 20
MARKER_TOLERANCE = 60
SAME_COLOUR = 60


@dataclass(frozen=True)
class Reading:
    """What the analyzer sees: the scene attributes (None where unreadable), the background colour, the area of
    the main shape, and every object read (the main shape first; a second one when there is one)."""

    scene: Scene | None
    background: tuple[int, int, int]
    area: int
    objects: tuple[Scene, ...] = ()


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int32)


def background_colour(pixels: np.ndarray) -> np.ndarray:
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return np.median(ring, axis=0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask``, as a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        region, queue = [], deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask, dtype=bool)
    for y, x in best:
        out[y, x] = True
    return out


def _third(value: float, names: tuple[str, str, str]) -> str:
    return names[0] if value < 12 else names[1] if value < 20 else names[2]


def _shape_of(component: np.ndarray) -> tuple[str, int]:
    ys, xs = np.nonzero(component)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = component.sum() / (height * width)
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    return shape, max(height, width)


MIN_AREA = 20  # pixels: less is the marker or noise, not an object


def _component(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The largest region of ``mask``, narrowed to its own colour so an adjacent marker does not join it."""
    component = largest_component(mask)
    if component.sum() >= MIN_AREA:
        colour = np.median(pixels[component], axis=0)
        component = largest_component(component & (np.abs(pixels - colour).max(axis=2) <= SAME_COLOUR))
    return component


def _describe(pixels: np.ndarray, component: np.ndarray, background: str) -> Scene:
    shape, extent = _shape_of(component)
    colour = np.median(pixels[component], axis=0)
    colour_name = min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - colour) ** 2)))
    ys, xs = np.nonzero(component)  # the bounding box centre: a triangle's centroid sits low
    return Scene(
        shape=shape, colour=colour_name, size="large" if extent >= LARGE_EXTENT else "small",
        column=_third((xs.min() + xs.max()) / 2, ("left", "centre", "right")),
        row=_third((ys.min() + ys.max()) / 2, ("top", "middle", "bottom")), background=background,
    )


def background_name(colour) -> str:
    """The named background nearest to ``colour``."""
    return min(BACKGROUNDS, key=lambda name: float(np.sum((np.array(BACKGROUNDS[name]) - np.asarray(colour)) ** 2)))


def read(image: Image.Image) -> Reading:
    """Find the main shape and describe it (with a second object, if one is there, as its ``second``);
    ``scene`` is None when nothing shape-sized is there."""
    pixels = _array(image)
    background = background_colour(pixels)
    named = background_name(background)
    foreground = np.abs(pixels - background).max(axis=2) > MASK_THRESHOLD
    bg = tuple(int(v) for v in background)
    main = _component(pixels, foreground)
    area = int(main.sum())
    if area < MIN_AREA:
        return Reading(None, bg, area)
    objects = [_describe(pixels, main, named)]
    rest = _component(pixels, foreground & ~_grown(_grown(main)))
    if rest.sum() >= MIN_AREA:
        objects.append(_describe(pixels, rest, named))
    scene = objects[0]
    if len(objects) > 1:
        other = objects[1]
        scene = scene.with_(second=Second(other.shape, other.colour, other.column, other.row))
    return Reading(scene, bg, area, tuple(objects))


def _grown(mask: np.ndarray) -> np.ndarray:
    """``mask`` and its 8 neighbours: the anti-aliased rim of a shape is not a second object."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return grown


def background_kept(image: Image.Image, details: Details) -> bool:
    """Whether the background keeps ``details``' hidden tint inside whichever named colour it reads as (which
    colour that is, an edit's score checks on its own), within tolerance."""
    found = np.array(read(image).background)
    expected = np.array(background_rgb(background_name(found), details))
    return bool(np.abs(found - expected).max() <= BACKGROUND_TOLERANCE)


def marker_kept(image: Image.Image, details: Details) -> bool:
    x, y = details.marker_xy
    patch = _array(image)[y : y + 2, x : x + 2].reshape(-1, 3).mean(axis=0)
    return bool(np.abs(patch - np.array(details.marker_colour)).max() <= MARKER_TOLERANCE)


def psnr(image: Image.Image, reference: Image.Image) -> float:
    error = np.mean((_array(image) - _array(reference)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))
