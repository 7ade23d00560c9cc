"""Rebuild ``profiles/example-input.png`` and ``profiles/example.imagic.safetensors``.

The profile is trained with the built-in tiny model, so it is small and loads offline.
Run from the repository root: ``python scripts/make_example.py``.
"""

import random
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from imagic_lora import TINY_MODEL, ProfileStore, TrainConfig, train
from imagic_lora.shapes.world import Scene, caption, random_details, render

PROFILES = Path("profiles")
PROMPT = "a red ball on green grass"


def draw_example() -> Image.Image:
    """A 256 px picture: sky, grass and a red ball with a highlight."""
    image = Image.new("RGB", (256, 256), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 170, 255, 255), fill=(70, 150, 60))
    draw.ellipse((88, 110, 168, 190), fill=(210, 40, 40))
    draw.ellipse((110, 126, 130, 146), fill=(245, 150, 150))
    return image


def write_shapes_input() -> None:
    """The demo's input: a shapes-world scene whose caption is the README's training prompt."""
    scene = Scene("circle", "red", "large", "left", "middle", background="teal")
    details = random_details(random.Random(7))
    render(scene, details).save(PROFILES / "shapes-input.png")
    print(f"{PROFILES / 'shapes-input.png'}: {caption(scene)}")


def main() -> None:
    PROFILES.mkdir(exist_ok=True)
    write_shapes_input()
    source = PROFILES / "example-input.png"
    draw_example().save(source)
    with tempfile.TemporaryDirectory() as tmp:
        store = ProfileStore(Path(tmp) / "profiles.db")
        config = TrainConfig(embedding_steps=100, lora_steps=100)
        train("example", source, PROMPT, model=TINY_MODEL, config=config, store=store)
        store.export("example", PROFILES / "example.imagic.safetensors")
    print(f"wrote {source} and {PROFILES / 'example.imagic.safetensors'}")


if __name__ == "__main__":
    main()
