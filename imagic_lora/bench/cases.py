"""Edit cases on the shapes world: an input, a prompt describing it, a one-attribute edit and its truth."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image

from ..shapes.analyze import background_kept, marker_kept, psnr, read
from ..shapes.world import (
    BACKGROUNDS,
    COLOURS,
    COLUMNS,
    ROWS,
    SHAPES,
    SIZE,
    SIZES,
    Details,
    Scene,
    caption,
    far_cells,
    random_details,
    random_scene,
    random_second,
    render,
)

# the four edits of the main shape, the background's named colour, and a second object added
EDIT_TYPES = ("colour", "shape", "size", "position", "background", "add")
OBJECT_EDITS = EDIT_TYPES[:4]


@dataclass(frozen=True)
class Case:
    index: int
    scene: Scene
    details: Details
    phrasing: int
    edit: str
    target: Scene

    @property
    def source_prompt(self) -> str:
        return caption(self.scene, self.phrasing)

    @property
    def edit_prompt(self) -> str:
        return caption(self.target, self.phrasing)

    def input_image(self) -> Image.Image:
        return render(self.scene, self.details)

    def ground_truth(self) -> Image.Image:
        return render(self.target, self.details)


def _edited(scene: Scene, edit: str, rng: random.Random) -> Scene:
    if edit == "colour":
        return scene.with_(colour=rng.choice([c for c in COLOURS if c != scene.colour]))
    if edit == "shape":
        return scene.with_(shape=rng.choice([s for s in SHAPES if s != scene.shape]))
    if edit == "size":
        return scene.with_(size=next(s for s in SIZES if s != scene.size))
    if edit == "background":
        return scene.with_(background=rng.choice([b for b in BACKGROUNDS if b != scene.background]))
    if edit == "add":
        return scene.with_(second=random_second(rng, scene))
    cells = [(c, r) for c in COLUMNS for r in ROWS if (c, r) != (scene.column, scene.row)]
    column, row = rng.choice(cells)
    return scene.with_(column=column, row=row)


def _source_scene(rng: random.Random, edit: str) -> Scene:
    """A scene of one object to edit; for ``add``, one with room on the other side (not in the centre)."""
    while True:
        scene = random_scene(rng, second=False)
        if edit != "add" or far_cells(scene.column, scene.row):
            return scene


def make_cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` cases cycling through the edit types, reproducible from ``seed``."""
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        edit = EDIT_TYPES[index % len(EDIT_TYPES)]
        scene = _source_scene(rng, edit)
        details, phrasing = random_details(rng), rng.randrange(4)
        target = _edited(scene, edit, rng)
        details = _jitter_inside(details, scene, target)
        details = _marker_visible(_marker_apart(details, scene, target), rng, scene, target)
        cases.append(Case(index, scene, details, phrasing, edit, target))
    return cases


MARKER_GAP = 2  # background pixels at least between the marker and a shape's box


def _marker_apart(details: Details, *scenes: Scene) -> Details:
    """``details`` with the marker mirrored to another corner when a shape of ``scenes`` covers or touches it.

    A marker drawn over or against the shape is not a separate detail: the shape's edit moves or hides
    it, and no round trip through the VAE can be scored on it. Cases whose marker is clear are unchanged.
    """
    x, y = details.marker_xy
    for mx, my in ((x, y), (SIZE - 2 - x, y), (x, SIZE - 2 - y), (SIZE - 2 - x, SIZE - 2 - y)):
        if not any(_near(mx, my, scene, details.jitter) for scene in scenes):
            return replace(details, marker_xy=(mx, my))
    return details


def _jitter_inside(details: Details, *scenes: Scene) -> Details:
    """``details`` without the jitter that pushes a large object of ``scenes`` further out of the picture: a large
    shape in an edge cell is already cut by the border, and one pushed further out into a corner no longer reads
    as its shape even drawn exactly (a triangle turns circle-like). Other jitter is unchanged."""
    jx, jy = details.jitter
    for scene in scenes:
        if scene.size == "large":
            if (scene.column, jx > 0) in (("left", False), ("right", True)) and jx:
                jx = 0
            if (scene.row, jy > 0) in (("top", False), ("bottom", True)) and jy:
                jy = 0
    return replace(details, jitter=(jx, jy))


MARKER_CONTRAST = 100  # levels (largest channel) by which a case's marker stands out from its backgrounds


def _marker_visible(details: Details, rng: random.Random, *scenes: Scene) -> Details:
    """``details`` with the marker's colour drawn again from ``rng`` until it stands out from every background of
    ``scenes`` by :data:`MARKER_CONTRAST`: a dark marker on a dark background is no detail to keep, and a round
    trip that blurs it away could still pass the marker's tolerance. Cases whose marker stands out keep it."""
    colour = details.marker_colour
    while any(max(abs(m - b) for m, b in zip(colour, BACKGROUNDS[scene.background], strict=True)) < MARKER_CONTRAST
              for scene in scenes):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
    return replace(details, marker_colour=colour)


def _near(mx: int, my: int, scene: Scene, jitter: tuple[int, int]) -> bool:
    objects = [(scene.column, scene.row, SIZES[scene.size])]
    if scene.second is not None:
        objects.append((scene.second.column, scene.second.row, SIZES["small"]))
    return any(mx + 1 >= COLUMNS[c] + jitter[0] - r - MARKER_GAP and mx <= COLUMNS[c] + jitter[0] + r + MARKER_GAP
               and my + 1 >= ROWS[w] + jitter[1] - r - MARKER_GAP and my <= ROWS[w] + jitter[1] + r + MARKER_GAP
               for c, w, r in objects)


def _attribute(scene: Scene | None, edit: str):
    if scene is None:
        return None
    return (scene.column, scene.row) if edit == "position" else getattr(scene, edit)


def _main_kept(found: Scene | None, case: Case, skip: str | None) -> bool:
    """Whether the main object reads as the source's in every attribute but ``skip``."""
    return found is not None and all(_attribute(found, e) == _attribute(case.scene, e)
                                     for e in OBJECT_EDITS if e != skip)


def _has_second(objects, second) -> bool:
    return any((o.shape, o.colour, o.column, o.row) == (second.shape, second.colour, second.column, second.row)
               for o in objects)


def score(image: Image.Image, case: Case) -> dict:
    """Edit success, preservation of everything else, and distance to the ground truth.

    The main object is the one read whose position is the source's (the largest, if none is); the
    background must be the target's named colour with the photo's hidden tint."""
    reading = read(image)
    found = _main_object(reading.objects, case)
    if case.edit in OBJECT_EDITS:
        edited = _attribute(found, case.edit) == _attribute(case.target, case.edit)
        attributes_kept = _main_kept(found, case, case.edit) and found.background == case.scene.background
    elif case.edit == "background":
        edited = reading.scene is not None and reading.scene.background == case.target.background
        attributes_kept = _main_kept(found, case, None)
    else:  # add
        edited = _has_second(reading.objects, case.target.second)
        attributes_kept = _main_kept(found, case, None) and found.background == case.scene.background
    background = background_kept(image, case.details)
    marker = marker_kept(image, case.details)
    preserved = attributes_kept and background and marker
    return {
        "edit_success": edited, "attributes_kept": attributes_kept, "background_kept": background,
        "marker_kept": marker, "preserved": preserved, "success": edited and preserved,
        "psnr": psnr(image, case.ground_truth()),
    }


def _main_object(objects, case: Case) -> Scene | None:
    """The object read as the case's main one: at the source's (or, for a position edit, the target's) cell."""
    cells = {(case.scene.column, case.scene.row), (case.target.column, case.target.row)}
    at_cell = [o for o in objects if (o.column, o.row) in cells]
    return at_cell[0] if at_cell else (objects[0] if objects else None)
