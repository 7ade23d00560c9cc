"""Edit cases on the shapes world: an input, a prompt describing it, a one-attribute edit and its truth."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image

from ..shapes.analyze import background_kept, marker_kept, psnr, read
from ..shapes.world import (
    COLOURS,
    COLUMNS,
    ROWS,
    SHAPES,
    SIZE,
    SIZES,
    Details,
    Scene,
    caption,
    random_details,
    random_scene,
    render,
)

EDIT_TYPES = ("colour", "shape", "size", "position")


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
    cells = [(c, r) for c in COLUMNS for r in ROWS if (c, r) != (scene.column, scene.row)]
    column, row = rng.choice(cells)
    return scene.with_(column=column, row=row)


def make_cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` cases cycling through the edit types, reproducible from ``seed``."""
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        edit = EDIT_TYPES[index % len(EDIT_TYPES)]
        scene = random_scene(rng)
        details, phrasing = random_details(rng), rng.randrange(4)
        target = _edited(scene, edit, rng)
        cases.append(Case(index, scene, _marker_apart(details, scene, target), phrasing, edit, target))
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


def _near(mx: int, my: int, scene: Scene, jitter: tuple[int, int]) -> bool:
    cx, cy, r = COLUMNS[scene.column] + jitter[0], ROWS[scene.row] + jitter[1], SIZES[scene.size]
    return (mx + 1 >= cx - r - MARKER_GAP and mx <= cx + r + MARKER_GAP
            and my + 1 >= cy - r - MARKER_GAP and my <= cy + r + MARKER_GAP)


def _attribute(scene: Scene | None, edit: str):
    if scene is None:
        return None
    return (scene.column, scene.row) if edit == "position" else getattr(scene, edit)


def score(image: Image.Image, case: Case) -> dict:
    """Edit success, preservation of everything else, and distance to the ground truth."""
    found = read(image).scene
    edited = _attribute(found, case.edit) == _attribute(case.target, case.edit)
    others = [e for e in EDIT_TYPES if e != case.edit]
    attributes_kept = found is not None and all(_attribute(found, e) == _attribute(case.scene, e) for e in others)
    background = background_kept(image, case.details)
    marker = marker_kept(image, case.details)
    preserved = attributes_kept and background and marker
    return {
        "edit_success": edited, "attributes_kept": attributes_kept, "background_kept": background,
        "marker_kept": marker, "preserved": preserved, "success": edited and preserved,
        "psnr": psnr(image, case.ground_truth()),
    }
