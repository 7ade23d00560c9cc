import random

import pytest

from imagic_lora.shapes.analyze import background_kept, marker_kept, psnr, read
from imagic_lora.shapes.world import ATTRIBUTES, caption, random_details, random_scene, render


def test_render_is_deterministic():
    rng = random.Random(1)
    scene, details = random_scene(rng), random_details(rng)
    assert render(scene, details).tobytes() == render(scene, details).tobytes()


def test_the_analyzer_reads_every_attribute_of_rendered_scenes():
    rng = random.Random(0)
    wrong = {name: 0 for name in ATTRIBUTES}
    count = 400
    for _ in range(count):
        scene, details = random_scene(rng), random_details(rng)
        image = render(scene, details)
        found = read(image).scene
        assert found is not None
        for name in ATTRIBUTES:
            wrong[name] += getattr(found, name) != getattr(scene, name)
        assert background_kept(image, details) and marker_kept(image, details)
    assert wrong == dict.fromkeys(ATTRIBUTES, 0), wrong


def test_details_are_told_apart():
    rng = random.Random(2)
    scene, details, other = random_scene(rng), random_details(rng), random_details(rng)
    image = render(scene, other)
    assert not (background_kept(image, details) and marker_kept(image, details))
    assert psnr(render(scene, details), render(scene, details)) == float("inf")


@pytest.mark.parametrize("phrasing", range(4))
def test_captions_name_every_attribute(phrasing):
    scene = random_scene(random.Random(phrasing))
    text = caption(scene, phrasing)
    assert scene.shape in text and scene.colour in text and scene.size in text
