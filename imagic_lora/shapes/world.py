"""Render shapes scenes from attributes and hidden details, and caption them.

Captions describe shape, colour, size and position; the background tint and a small marker
dot are details no caption mentions, which an image-specific edit must keep.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from PIL import Image, ImageDraw

SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 190), "white": (245, 245, 245),
}
SIZES = {"small": 5, "large": 9}  # half-width in pixels
COLUMNS = {"left": 8, "centre": 16, "right": 24}
ROWS = {"top": 8, "middle": 16, "bottom": 24}
JITTER = 2
ATTRIBUTES = ("shape", "colour", "size", "column", "row")


@dataclass(frozen=True)
class Scene:
    """What captions talk about."""

    shape: str
    colour: str
    size: str
    column: str
    row: str

    def with_(self, **changes) -> Scene:
        return replace(self, **changes)


@dataclass(frozen=True)
class Details:
    """What captions never mention: background tint, shape jitter and the marker dot."""

    background: tuple[int, int, int]
    jitter: tuple[int, int]
    marker_xy: tuple[int, int]
    marker_colour: tuple[int, int, int]


def random_scene(rng: random.Random) -> Scene:
    return Scene(
        rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)),
        rng.choice(list(COLUMNS)), rng.choice(list(ROWS)),
    )


def random_details(rng: random.Random) -> Details:
    """A dark, muted background (so every shape colour stands out) and a marker in a corner band."""
    base = rng.randint(20, 70)
    background = tuple(min(255, max(0, base + rng.randint(-15, 15))) for _ in range(3))
    corner_x = rng.choice([rng.randint(1, 4), rng.randint(SIZE - 6, SIZE - 3)])
    corner_y = rng.choice([rng.randint(1, 4), rng.randint(SIZE - 6, SIZE - 3)])
    marker = tuple(rng.randint(0, 255) for _ in range(3))
    return Details(background, (rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER)),
                   (corner_x, corner_y), marker)


def render(scene: Scene, details: Details) -> Image.Image:
    """Draw the scene deterministically: same inputs, same pixels."""
    image = Image.new("RGB", (SIZE, SIZE), details.background)
    draw = ImageDraw.Draw(image)
    cx = COLUMNS[scene.column] + details.jitter[0]
    cy = ROWS[scene.row] + details.jitter[1]
    r = SIZES[scene.size]
    colour = COLOURS[scene.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if scene.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif scene.shape == "square":
        draw.rectangle((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    mx, my = details.marker_xy
    draw.rectangle((mx, my, mx + 1, my + 1), fill=details.marker_colour)
    return image


POSITION_WORDS = {
    ("left", "top"): "at the top left", ("centre", "top"): "at the top", ("right", "top"): "at the top right",
    ("left", "middle"): "on the left", ("centre", "middle"): "in the centre", ("right", "middle"): "on the right",
    ("left", "bottom"): "at the bottom left", ("centre", "bottom"): "at the bottom",
    ("right", "bottom"): "at the bottom right",
}
PHRASINGS = (
    "a {size} {colour} {shape} {position}",
    "a {colour} {shape} {position}, {size}",
    "{position}, a {size} {colour} {shape}",
    "a photo of a {size} {colour} {shape} {position}",
)


def caption(scene: Scene, phrasing: int = 0) -> str:
    fields = asdict(scene) | {"position": POSITION_WORDS[(scene.column, scene.row)]}
    return PHRASINGS[phrasing % len(PHRASINGS)].format(**fields)


def vocabulary() -> list[str]:
    """Every word any caption uses (plus punctuation), for the word-level tokenizer."""
    words: set[str] = set()
    for template in PHRASINGS:
        words.update(template.replace("{", " ").replace("}", " ").replace(",", " , ").split())
    for position in POSITION_WORDS.values():
        words.update(position.split())
    words.update(SHAPES)
    words.update(COLOURS)
    words.update(SIZES)
    return sorted(w for w in words if w not in {"size", "colour", "shape", "position"})
