"""The typed profile record: files of every format version read and write back as the last release wrote them,
and metadata that is not a profile's is refused naming the key."""

import copy
import dataclasses
import json
import struct

import pytest
from helpers import FORMAT_FILES, REPO, run
from safetensors.torch import load as load_tensors

from imagic_lora.errors import InvalidProfileFile
from imagic_lora.interop import kohya_metadata
from imagic_lora.profile import Profile
from imagic_lora.record import ABSENT, EDIT_FRIENDLY, ProfileMetadata
from imagic_lora.validate import read_header

# what the release before the typed record printed and exported for each of FORMAT_FILES
RECORDED = json.loads((REPO / "tests" / "data" / "format-recorded.json").read_text())


def _split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


@pytest.mark.parametrize("version", sorted(FORMAT_FILES))
def test_every_format_version_is_written_back_as_it_was_read(version):
    data = FORMAT_FILES[version].read_bytes()
    profile = Profile.from_bytes(data)
    again = profile.to_bytes()
    (header, tensors), (header_again, tensors_again) = _split(data), _split(again)
    assert tensors_again == tensors
    assert header_again == header  # the same entries; safetensors may order them differently
    assert header_again["__metadata__"]["profile"] == header["__metadata__"]["profile"]  # the same JSON text
    assert profile.format_version == version == profile.metadata.format_version
    assert Profile.from_bytes(again).metadata == profile.metadata


@pytest.mark.parametrize("version", sorted(FORMAT_FILES))
def test_every_format_version_shows_and_exports_as_the_last_release_did(version):
    profile = Profile.from_bytes(FORMAT_FILES[version].read_bytes())
    recorded = RECORDED[f"v{version}"]
    assert run("profiles", "import", str(FORMAT_FILES[version])).exit_code == 0
    shown = run("profiles", "show", profile.name, "--json")
    assert shown.exit_code == 0, shown.output
    # safetensors orders header entries differently in each process, so the stored bytes' checksum differs
    without_checksum = {key: value for key, value in recorded["show_json"].items() if key != "sha256"}
    assert {key: value for key, value in json.loads(shown.stdout).items() if key != "sha256"} == without_checksum
    text = [line for line in run("profiles", "show", profile.name).stdout.splitlines() if not line.startswith("sha256")]
    assert text == [line for line in recorded["show"].splitlines() if not line.startswith("sha256")]
    assert kohya_metadata(profile) == recorded["kohya"]
    listed = run("profiles", "list", "--json")
    assert json.loads(listed.stdout)[0]["metadata"] == recorded["show_json"]["metadata"]


def test_keys_an_old_file_lacks_stay_absent_and_are_not_written():
    v1 = Profile.from_bytes(FORMAT_FILES[1].read_bytes()).metadata
    assert v1.inversion is ABSENT and v1.family is ABSENT
    assert v1.settings.training.samples_per_step is ABSENT and v1.settings.training.prediction_type is ABSENT
    written = v1.to_dict()
    assert "inversion" not in written and "family" not in written and "prediction_type" not in written["training"]
    v3 = Profile.from_bytes(FORMAT_FILES[3].read_bytes()).metadata
    assert v3.family is None and v3.to_dict()["family"] is None  # null is written; absent is not
    assert v3.settings.pipeline == "StableDiffusionXLPipeline"


def _metadata(version: int) -> dict:
    return json.loads(read_header(FORMAT_FILES[version].read_bytes(), "test")["profile"])


def _refused(data: dict, version: int = 2) -> str:
    with pytest.raises(InvalidProfileFile) as caught:
        ProfileMetadata.from_dict(data, version, "x.safetensors")
    return str(caught.value)


def test_unknown_keys_are_refused_by_name_at_every_level():
    for where, path in (("metadata", ()), ("training", ("training",)), ("lora", ("lora",)),
                        ("inversion", ("inversion",)), ("losses", ("losses",))):
        data = copy.deepcopy(_metadata(2))
        target = data
        for key in path:
            target = target[key]
        target["made_up"] = 1
        message = _refused(data)
        assert message == (f"x.safetensors {where} has keys this version does not know: 'made_up'. "
                           "Try: a newer imagic-lora")


@pytest.mark.parametrize(("path", "value", "message"), [
    (("training", "seed"), ABSENT, "metadata lacks 'training.seed' (expected int)"),
    (("training", "seed"), True, "metadata lacks 'training.seed' (expected int)"),
    (("training", "lora_lr"), "fast", "metadata lacks 'training.lora_lr' (expected a number)"),
    (("training", "prediction_type"), 1, "metadata lacks 'training.prediction_type' (expected str)"),
    (("losses", "lora"), "low", "metadata lacks 'losses.lora' (expected a number or null)"),
    (("lora", "target_modules"), "to_q", "metadata lacks 'lora.target_modules' (expected a list of names)"),
    (("inversion",), ABSENT, "metadata has no valid inversion steps (1-1000)"),
    (("inversion", "guidance"), None, "metadata lacks 'inversion.guidance' (expected a number)"),
    (("family",), 5, "metadata has 'family' that is not a string or null"),
    (("format_version",), "2", "metadata has 'format_version' that is not int"),
    (("created_at",), ABSENT, "metadata lacks 'created_at' (expected str)"),
])
def test_wrong_or_missing_values_are_refused_naming_the_key(path, value, message):
    data = copy.deepcopy(_metadata(2))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is ABSENT:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    assert _refused(data) == f"x.safetensors {message}"


def test_a_version_1_file_may_lack_the_inversion_and_a_null_loss_is_read():
    data = _metadata(2)
    del data["inversion"]
    data["losses"]["lora"] = None  # a stage of 0 steps
    metadata = ProfileMetadata.from_dict(data, 1)
    assert metadata.inversion is ABSENT and metadata.losses.lora is None
    assert metadata.to_dict() == data


def test_same_training_ignores_only_the_device():
    settings = ProfileMetadata.from_dict(_metadata(2), 2).settings
    on_gpu = dataclasses.replace(settings, training=dataclasses.replace(settings.training, device="cuda"))
    assert settings.same_training(on_gpu) and on_gpu.same_training(settings)
    for changed in (
        dataclasses.replace(settings, training=dataclasses.replace(settings.training, seed=1)),
        dataclasses.replace(settings, training=dataclasses.replace(settings.training, prediction_type=ABSENT)),
        dataclasses.replace(settings, lora=dataclasses.replace(settings.lora, rank=settings.lora.rank + 1)),
        dataclasses.replace(settings, resolution=128),
        dataclasses.replace(settings, base_fingerprint="0-0"),
        dataclasses.replace(settings, pipeline="StableDiffusionXLPipeline"),
    ):
        assert not settings.same_training(changed)


def test_the_format_files_are_real_profiles_of_their_version():
    """Guards the fixtures: version 2 holds latents, version 3 the pooled embeddings."""
    tensors = {version: set(load_tensors(path.read_bytes())) for version, path in FORMAT_FILES.items()}
    assert "start_latents" not in tensors[1] and "start_latents" in tensors[2] and "e_opt_pooled" in tensors[3]


def test_the_batch_skip_rule_needs_the_image_the_settings_and_the_same_inversion():
    metadata = ProfileMetadata.from_dict(_metadata(2), 2)
    settings, inversion, image = metadata.settings, metadata.inversion, metadata.image_sha256
    assert metadata.trained_like(settings, inversion, image)
    assert not metadata.trained_like(settings, dataclasses.replace(inversion, steps=inversion.steps + 1), image)
    assert not metadata.trained_like(settings, dataclasses.replace(inversion, method=EDIT_FRIENDLY), image)
    assert not metadata.trained_like(settings, inversion, "0" * 64)
    assert not metadata.trained_like(dataclasses.replace(settings, resolution=128), inversion, image)
    old = ProfileMetadata.from_dict(_metadata(1), 1)  # no inversion: trained again
    assert not old.trained_like(old.settings, inversion, old.image_sha256)
