"""Render shapes scenes from attributes and hidden details, and caption them.

Captions describe the shape's colour, size and position, the named background colour and, in some
scenes, a second small object; the exact tint of the background inside its named colour and a small
marker dot are details no caption mentions, which an image-specific edit must keep.
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
# muted and dark, so every shape colour stands out; at least 40 levels apart in some channel, so the hidden
# tint (up to TINT levels per channel) never makes one read as another
BACKGROUNDS = {
    "grey": (50, 50, 50), "navy": (20, 30, 90), "moss": (70, 75, 15),
    "maroon": (90, 25, 25), "teal": (15, 75, 75), "plum": (75, 25, 80),
}
TINT = 10
SIZES = {"small": 5, "large": 9}  # half-width in pixels
COLUMNS = {"left": 8, "centre": 16, "right": 24}
ROWS = {"top": 8, "middle": 16, "bottom": 24}
JITTER = 2
ATTRIBUTES = ("shape", "colour", "size", "column", "row")
SECOND_SHARE = 0.3  # of random scenes that hold a second small object


@dataclass(frozen=True)
class Second:
    """A second, small object: always in a cell on the other side of the picture from the first."""

    shape: str
    colour: str
    column: str
    row: str


@dataclass(frozen=True)
class Scene:
    """What captions talk about."""

    shape: str
    colour: str
    size: str
    column: str
    row: str
    background: str = "grey"
    second: Second | None = None

    def with_(self, **changes) -> Scene:
        return replace(self, **changes)


@dataclass(frozen=True)
class Details:
    """What captions never mention: the background's tint inside its named colour (levels per channel),
    the objects' jitter and the marker dot."""

    tint: tuple[int, int, int]
    jitter: tuple[int, int]
    marker_xy: tuple[int, int]
    marker_colour: tuple[int, int, int]


def background_rgb(name: str, details: Details) -> tuple[int, int, int]:
    """The named background ``name`` with ``details``' hidden tint."""
    return tuple(min(255, max(0, c + t)) for c, t in zip(BACKGROUNDS[name], details.tint, strict=True))


def far_cells(column: str, row: str) -> list[tuple[str, str]]:
    """The cells on the other side of the picture (two columns or two rows away): a second small object
    there never touches a large first one."""
    names_c, names_r = list(COLUMNS), list(ROWS)
    c, r = names_c.index(column), names_r.index(row)
    return [(nc, nr) for nc in names_c for nr in names_r
            if abs(names_c.index(nc) - c) == 2 or abs(names_r.index(nr) - r) == 2]


def random_second(rng: random.Random, scene: Scene) -> Second | None:
    """A second object for ``scene``; None when its first one is in the centre (no cell is far enough)."""
    cells = far_cells(scene.column, scene.row)
    if not cells:
        return None
    column, row = rng.choice(cells)
    colour = rng.choice([c for c in COLOURS if c != scene.colour])
    return Second(rng.choice(SHAPES), colour, column, row)


def random_scene(rng: random.Random, second: bool | None = None) -> Scene:
    """A random scene; with a second object in :data:`SECOND_SHARE` of them (``second`` decides if given)."""
    scene = Scene(
        rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)),
        rng.choice(list(COLUMNS)), rng.choice(list(ROWS)), rng.choice(list(BACKGROUNDS)),
    )
    if second is None:
        second = rng.random() < SECOND_SHARE
    return scene.with_(second=random_second(rng, scene)) if second else scene  # None in the centre


def random_details(rng: random.Random) -> Details:
    """A hidden tint of the named background and a marker in a corner band."""
    tint = tuple(rng.randint(-TINT, TINT) for _ in range(3))
    corner_x = rng.choice([rng.randint(1, 4), rng.randint(SIZE - 6, SIZE - 3)])
    corner_y = rng.choice([rng.randint(1, 4), rng.randint(SIZE - 6, SIZE - 3)])
    marker = tuple(rng.randint(0, 255) for _ in range(3))
    return Details(tint, (rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER)),
                   (corner_x, corner_y), marker)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, colour) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)


def render(scene: Scene, details: Details) -> Image.Image:
    """Draw the scene deterministically: same inputs, same pixels."""
    image = Image.new("RGB", (SIZE, SIZE), background_rgb(scene.background, details))
    draw = ImageDraw.Draw(image)
    jx, jy = details.jitter
    _draw_shape(draw, scene.shape, COLUMNS[scene.column] + jx, ROWS[scene.row] + jy, SIZES[scene.size],
                COLOURS[scene.colour])
    if scene.second is not None:
        second = scene.second
        _draw_shape(draw, second.shape, COLUMNS[second.column] + jx, ROWS[second.row] + jy, SIZES["small"],
                    COLOURS[second.colour])
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
    "a {size} {colour} {shape} {position}{second} on a {background} background",
    "a {colour} {shape} {position}, {size}{second}, on a {background} background",
    "{position}, a {size} {colour} {shape}{second}, on a {background} background",
    "a photo of a {size} {colour} {shape} {position}{second} on a {background} background",
)
SECOND_PHRASE = " and a small {colour} {shape} {position}"


def caption(scene: Scene, phrasing: int = 0) -> str:
    second = ""
    if scene.second is not None:
        s = scene.second
        second = SECOND_PHRASE.format(colour=s.colour, shape=s.shape, position=POSITION_WORDS[(s.column, s.row)])
    fields = asdict(scene) | {"position": POSITION_WORDS[(scene.column, scene.row)], "second": second}
    return PHRASINGS[phrasing % len(PHRASINGS)].format(**fields)


def vocabulary() -> list[str]:
    """Every word any caption uses (plus punctuation), for the word-level tokenizer."""
    words: set[str] = set()
    for template in (*PHRASINGS, SECOND_PHRASE):
        words.update(template.replace("{", " ").replace("}", " ").replace(",", " , ").split())
    for position in POSITION_WORDS.values():
        words.update(position.split())
    words.update(SHAPES)
    words.update(COLOURS)
    words.update(SIZES)
    words.update(BACKGROUNDS)
    return sorted(w for w in words if w not in {"size", "colour", "shape", "position", "second"})
