import random
from collections import Counter

import pytest

from imagic_lora.bench.cases import EDIT_TYPES, make_cases, score
from imagic_lora.shapes.analyze import background_kept, marker_kept, psnr, read
from imagic_lora.shapes.world import ATTRIBUTES, caption, random_details, random_scene, render


def _objects(scene):
    first = (scene.shape, scene.colour, scene.size, scene.column, scene.row)
    if scene.second is None:
        return {first}
    second = scene.second
    return {first, (second.shape, second.colour, "small", second.column, second.row)}


def test_render_is_deterministic():
    rng = random.Random(1)
    scene, details = random_scene(rng), random_details(rng)
    assert render(scene, details).tobytes() == render(scene, details).tobytes()


def test_the_analyzer_reads_every_object_and_the_background_of_rendered_scenes():
    rng = random.Random(0)
    wrong, seconds = Counter(), 0
    for _ in range(400):
        scene, details = random_scene(rng), random_details(rng)
        image = render(scene, details)
        reading = read(image)
        assert reading.scene is not None
        seconds += scene.second is not None
        wrong["objects"] += {(o.shape, o.colour, o.size, o.column, o.row) for o in reading.objects} != _objects(scene)
        wrong["background"] += reading.scene.background != scene.background
        assert background_kept(image, details) and marker_kept(image, details)
    assert 80 < seconds < 160, "about 3 in 10 scenes hold a second object"
    assert wrong == Counter(), wrong


def test_details_are_told_apart():
    rng = random.Random(2)
    scene, details, other = random_scene(rng), random_details(rng), random_details(rng)
    image = render(scene, other)
    assert not (background_kept(image, details) and marker_kept(image, details))
    assert psnr(render(scene, details), render(scene, details)) == float("inf")


@pytest.mark.parametrize("phrasing", range(4))
def test_captions_name_every_attribute(phrasing):
    scene = random_scene(random.Random(phrasing), second=True)
    text = caption(scene, phrasing)
    assert all(getattr(scene, name) in text for name in ("shape", "colour", "size", "background"))
    assert f" and a small {scene.second.colour} {scene.second.shape} " in text
    assert set(ATTRIBUTES) == {"shape", "colour", "size", "column", "row"}


def test_every_edit_type_is_asked_equally_and_its_truth_scores_as_the_edit():
    cases = make_cases(120, 1)
    assert Counter(case.edit for case in cases) == dict.fromkeys(EDIT_TYPES, 20)
    for case in cases:
        assert case.source_prompt != case.edit_prompt
        truth, photo = score(case.ground_truth(), case), score(case.input_image(), case)
        assert truth["success"], (case.edit, case.edit_prompt)
        assert not photo["edit_success"] and photo["preserved"], case.edit
    background = next(case for case in cases if case.edit == "background")
    assert background.target.background != background.scene.background
    assert "background" in background.edit_prompt and background.target.shape == background.scene.shape
    added = next(case for case in cases if case.edit == "add")
    assert added.scene.second is None and added.target.second is not None
