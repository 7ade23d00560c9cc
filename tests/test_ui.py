"""The web app's service and callbacks, without a browser: the same results as the CLI, cancel stores nothing,
errors are one line, and nothing outside the served models is ever loaded."""

from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, PROMPT, run, store_snapshot
from PIL import Image

from imagic_lora import TINY_MODEL, ApplyConfig, ProfileStore
from imagic_lora.errors import IncompatibleProfile, InvalidConfig, InvalidImage
from imagic_lora.progress import Cancelled, Step, listening, report

gradio = pytest.importorskip("gradio", reason="the web app's extra: pip install -e '.[ui]'")

from imagic_lora.ui.handlers import Handlers  # noqa: E402
from imagic_lora.ui.studio import Studio, TrainWatch  # noqa: E402


@pytest.fixture
def studio(tmp_path):
    return Studio([TINY_MODEL], out_dir=tmp_path / "ui-out")


def test_a_listener_hears_only_its_own_context_and_may_stop_the_work():
    heard = []
    report("outside", 1, 2)  # nobody listening: nothing happens
    with listening(heard.append):
        report("stage", 1, 3, 0.5)
    report("after", 1, 1)
    assert heard == [Step("stage", 1, 3, 0.5)]

    def stop(step):
        raise Cancelled("stopped")

    with listening(stop), pytest.raises(Cancelled):
        report("stage", 1, 3)


def test_training_reports_every_step_with_its_loss_and_stores_the_profile(studio, image_path):
    watch, steps = TrainWatch(), []
    watch_hear = watch.hear
    watch.hear = lambda step: (steps.append(step), watch_hear(step))
    profile = studio.train("ball", image_path, PROMPT, TINY_MODEL, FAST, watch)

    stages = {step.stage: step for step in steps}
    assert stages["stage 1/2 embedding"].total == FAST.embedding_steps
    assert stages["stage 2/2 LoRA"].done == FAST.lora_steps
    lora_losses = [step.loss for step in steps if step.stage == "stage 2/2 LoRA"]
    assert sum(lora_losses) / len(lora_losses) == pytest.approx(profile.metadata.losses.lora)  # its last-50 mean
    assert stages["inverting"].done == FAST.inversion_steps
    assert ProfileStore().names() == ["ball"]
    assert [card.name for card in studio.cards()] == ["ball"]


def test_cancelling_stops_the_training_and_stores_nothing(studio, image_path):
    watch = TrainWatch()
    heard = []

    def hear(step):
        heard.append(step)
        if len(heard) == 3:
            watch.cancelled.set()
        TrainWatch.hear(watch, step)

    watch.hear = hear
    with pytest.raises(Cancelled, match="nothing was stored"):
        studio.train("ball", image_path, PROMPT, TINY_MODEL, FAST, watch)
    assert heard[-1] == Step("stage 1/2 embedding", 3, FAST.embedding_steps, heard[-1].loss)  # stopped there
    assert ProfileStore().names() == []


def test_an_edit_has_the_pixels_and_parameters_of_the_cli_apply(studio, image_path, tmp_path):
    studio.train("ball", image_path, PROMPT, TINY_MODEL, FAST)
    edit = studio.edit("ball", "a blue ball", [0.0, 1.0], ApplyConfig(guidance=3.0))
    assert [path.name for path in edit.images] == ["ball_a-blue-ball_a0.00_s0.png", "ball_a-blue-ball_a1.00_s0.png"]
    assert edit.grid is not None and edit.grid.name == "ball_a-blue-ball_grid.png"

    cli_out = tmp_path / "cli"
    result = run("apply", "profile", "ball", "a blue ball", "--alpha", 0, "--alpha", 1, "--guidance", 3,
                 "--out", cli_out)
    assert result.exit_code == 0, result.output
    for path in edit.images:
        ours, theirs = Image.open(path), Image.open(cli_out / path.name)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
        assert ours.text["parameters"] == theirs.text["parameters"]
    assert edit.before.size == Image.open(edit.images[0]).size


def test_only_the_served_models_are_loaded(studio, trained, tmp_path):
    with pytest.raises(InvalidConfig, match=r"this app serves 'builtin:tiny', not '/etc'. Try: imagic-lora ui"):
        studio.model("/etc")
    shapes_only = Studio(["builtin:shapes"], out_dir=tmp_path / "out")
    path = tmp_path / "ball.imagic.safetensors"
    path.write_bytes(trained.to_bytes())
    before = store_snapshot()
    with pytest.raises(IncompatibleProfile, match="made for 'builtin:tiny', which this app does not serve"):
        shapes_only.import_file(path)
    assert store_snapshot() == before
    assert studio.import_file(path).name == "ball"
    with pytest.raises(IncompatibleProfile, match="which this app does not serve"):
        shapes_only.edit("ball", "a blue ball", [1.0])


def test_exports_are_the_clis_files(studio, trained, tmp_path):
    ProfileStore().save(trained)
    whole = studio.export("ball", "profile")
    assert whole.read_bytes() == ProfileStore().get_bytes("ball")
    for kind, flag in (("LoRA, diffusers", "diffusers"), ("LoRA, kohya", "kohya")):
        ours = studio.export("ball", kind)
        theirs = tmp_path / f"{flag}.safetensors"
        assert run("profiles", "export", "ball", theirs, "--format", flag).exit_code == 0
        assert _contents(ours) == _contents(theirs)
    with pytest.raises(InvalidConfig, match="export must be one of"):
        studio.export("ball", "zip")


def test_a_bad_photo_is_refused_before_any_model_loads(studio, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InvalidImage):
        studio.preview(text)
    assert studio._loaded == {}


def test_the_callbacks_show_one_error_line_and_keep_serving(studio, tmp_path, trained):
    handlers = Handlers(lambda: studio)
    broken = tmp_path / "broken.imagic.safetensors"
    broken.write_bytes(trained.to_bytes()[:1000])
    *_, status = handlers.imported(str(broken))
    assert status.startswith("Error: ") and "\n" not in status
    assert ProfileStore().names() == []

    *_, status = handlers.edit("nobody", "a blue ball", 1.0, False, 0, 1, 2, 2.0, "inversion", True, 50, 0)
    assert status == "Error: profile 'nobody' not found. Try: imagic-lora profiles list"
    *_, status = handlers.edit(None, "a blue ball", 1.0, False, 0, 1, 2, 2.0, "inversion", True, 50, 0)
    assert status.startswith("Error: pick a profile first")
    *_, status = handlers.edit("nobody", "a blue ball", 1.0, False, 0, 1, 2, 2.0, "inversion", True, None, 0)
    assert status == "Error: steps is empty. Try: a number"  # a number field the user emptied
    *_, status = handlers.edit("nobody", "a blue ball", 1.0, False, 0, 1, 2, "strong", "inversion", True, 50, 0)
    assert status == "Error: guidance must be a number or empty (the model's own), got 'strong'"
    *_, status = handlers.edit("nobody", "a blue ball", 1.0, False, 0, 1, 2, " ", "inversion", True, 50, 0)
    assert status.startswith("Error: profile 'nobody' not found")  # empty guidance: the model's own, accepted

    updates = list(handlers.train(str(tmp_path / "missing.png"), "ball", PROMPT, TINY_MODEL,
                                  "quick: 50 + 100 steps (the default)"))
    assert updates[-1][1].startswith("Error: ") and "missing.png" in updates[-1][1]
    assert handlers.cancel() == "No training is running."

    *_, status = handlers.imported(str(_saved(trained, tmp_path)))
    assert status == "Imported profile 'ball'"
    assert handlers.listing()[-1] == "1 profile(s) in the store"

    (before, after), strip, download, status = handlers.edit("ball", "a blue ball", 1.0, True, 0, 1, 3, 2.0,
                                                             "inversion", True, 10, 0)
    assert status == "Edited 'ball' toward 'a blue ball' at α 0, 0.5, 1."
    assert [caption for _, caption in strip["value"]] == ["α 0", "α 0.5", "α 1"] and strip["visible"]
    assert download["value"] == after == strip["value"][-1][0]
    assert before.size == Image.open(after).size


def _saved(profile, folder):
    path = folder / "good.imagic.safetensors"
    path.write_bytes(profile.to_bytes())
    return path


def _contents(path):
    """A safetensors file's metadata and tensors (its header's key order is not fixed)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        return file.metadata(), {key: file.get_tensor(key).tolist() for key in file.keys()}  # noqa: SIM118


def test_an_unexpected_failure_is_one_line_with_a_log_and_the_app_goes_on(tmp_path):
    class Broken:
        def cards(self):
            raise RuntimeError("boom")

    handlers = Handlers(lambda: Broken())
    *_, status = handlers.listing()
    assert status.startswith("Error: unexpected RuntimeError: boom. the full traceback is in ")
    log = status.split("the full traceback is in ")[1].split("; please attach")[0]
    assert "RuntimeError: boom" in Path(log).read_text()
    assert handlers.listing()[-1].startswith("Error: unexpected RuntimeError: boom.")  # and it still answers


def test_ui_listens_on_localhost_and_warns_for_any_other_host(monkeypatch):
    import imagic_lora.ui.app

    served = []
    monkeypatch.setattr(imagic_lora.ui.app, "serve", lambda *args, **kwargs: served.append((args, kwargs)))
    result = run("ui")
    assert result.exit_code == 0 and result.stderr == ""
    assert served[-1][0][:4] == (["stable-diffusion-v1-5/stable-diffusion-v1-5"], "127.0.0.1", 7860, False)
    result = run("ui", "--model", "builtin:shapes", "--model", "builtin:tiny", "--host", "0.0.0.0", "--port", 8000)
    assert result.exit_code == 0
    assert result.stderr == ("Warning: listening on 0.0.0.0: anyone who can reach this machine can use the app "
                             "and its profiles\n")
    assert served[-1][0][:4] == (["builtin:shapes", "builtin:tiny"], "0.0.0.0", 8000, False)


def test_ui_without_gradio_says_how_to_install_it(monkeypatch):
    import sys

    for module in [name for name in sys.modules if name.startswith("imagic_lora.ui")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed: importing it raises ImportError
    result = run("ui")
    assert result.exit_code == 1
    assert result.stderr == ("Error: the web app needs Gradio (gradio is missing). "
                             "Try: pip install 'imagic-lora[ui]'\n")


def test_the_train_callback_shows_the_steps_the_recipe_and_the_result(studio, image_path):
    handlers = Handlers(lambda: studio)
    updates = list(handlers.train(str(image_path), " ball ", PROMPT, TINY_MODEL, "quick: 50 + 100 steps (the default)"))
    bars, lines = zip(*updates, strict=True)
    assert '<progress value="50" max="50"' in bars[-1] and "inverting: step 50 of 50" in bars[-1]  # the last stage
    assert any("(memory auto on the CPU: no checkpointing, 8-bit AdamW)" in line for line in lines)
    assert lines[-1].startswith("Saved profile 'ball' (embedding loss ")
    assert ProfileStore().get("ball").metadata.settings.training.lora_steps == 100
