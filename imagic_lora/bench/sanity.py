"""Text-to-image sanity of the shapes model: does it draw the colour, shape, size, position, background and
second object asked for?"""

from __future__ import annotations

import random

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..models import BaseModel, load_model
from ..shapes.analyze import read
from ..shapes.model import SHAPES_MODEL
from ..shapes.world import caption, random_scene

BATCH = 25


def sanity(prompts: int = 200, seed: int = 0, steps: int = 50, guidance: float = 7.5,
           base: BaseModel | None = None, progress: bool = True) -> tuple[dict, list[Image.Image]]:
    """Percent of images whose analyzed attribute matches the prompt, per attribute; and the images."""
    base = base or load_model(SHAPES_MODEL, device="cpu")
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(prompts)]
    captions = [caption(scene, rng.randrange(4)) for scene in scenes]
    images: list[Image.Image] = []
    for start in tqdm(range(0, prompts, BATCH), desc="text-to-image", disable=not progress):
        images += base.pipe(
            prompt=captions[start : start + BATCH], num_inference_steps=steps, guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed * 100_000 + i) for i in range(start, start + BATCH)][
                : len(captions[start : start + BATCH])],
        ).images
    hits = {"colour": 0, "shape": 0, "size": 0, "position": 0, "background": 0, "second object": 0}
    seconds = sum(scene.second is not None for scene in scenes)
    for scene, image in zip(scenes, images, strict=True):
        found = read(image).scene
        if found is None:
            continue
        hits["colour"] += found.colour == scene.colour
        hits["shape"] += found.shape == scene.shape
        hits["size"] += found.size == scene.size
        hits["position"] += (found.column, found.row) == (scene.column, scene.row)
        hits["background"] += found.background == scene.background
        hits["second object"] += scene.second is not None and found.second == scene.second
    rates = {key: 100.0 * value / prompts for key, value in hits.items()}
    rates["second object"] = 100.0 * hits["second object"] / max(1, seconds)  # of the prompts that ask for one
    return rates, images
