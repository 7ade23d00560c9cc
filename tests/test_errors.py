"""Bad input gets one clear ``Error:`` line, exit code 1, and leaves the store unchanged."""

import io
import json
import pickle
import random
import struct

import pytest
import torch
from helpers import FAST, PROMPT, error_line, rewrite, run, store_snapshot, with_metadata
from safetensors.torch import load, save_file

from imagic_lora import ProfileStore, train
from imagic_lora.profile import read_header

TINY = ["--model", "builtin:tiny", "--embedding-steps", 1, "--lora-steps", 1]


@pytest.fixture
def store_with_ball(trained):
    ProfileStore().save(trained)
    return store_snapshot()


@pytest.fixture
def profile_bytes(trained):
    return trained.to_bytes()


def check_refused(args, expected, snapshot):
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert error_line(result) == expected
    assert "Traceback" not in result.output
    assert store_snapshot() == snapshot


def test_train_errors(store_with_ball, image_path, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(image_path.read_bytes()[:300])
    empty_dir = tmp_path / "empty-model"
    empty_dir.mkdir()
    bogus = tmp_path / "bogus.safetensors"
    save_file({"x": torch.zeros(2)}, bogus)
    sdxl_like = tmp_path / "xl.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 2048),
               "conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, sdxl_like)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\xff" * 64)
    cases = [
        (["train", "new", tmp_path / "nope.jpg", "--prompt", PROMPT, *TINY],
         f"Error: image '{tmp_path / 'nope.jpg'}' not found. Try: a path to a JPEG, PNG or WebP file"),
        (["train", "new", text, "--prompt", PROMPT, *TINY],
         f"Error: cannot read image {text}: cannot identify image file '{text}'. Try: re-saving it as PNG or JPEG"),
        (["train", "new", truncated, "--prompt", PROMPT, *TINY],
         f"Error: cannot read image {truncated}: image file is truncated. Try: re-saving it as PNG or JPEG"),
        (["train", "../evil", image_path, "--prompt", PROMPT, *TINY],
         "Error: invalid profile name '../evil': use up to 64 letters, digits, '-', '_' or '.', "
         "starting with a letter or digit"),
        (["train", "ball", image_path, "--prompt", PROMPT, *TINY],
         "Error: profile 'ball' already exists. Try: another name, or imagic-lora profiles rm ball"),
        (["train", "new", image_path, "--prompt", " ", *TINY],
         "Error: --prompt must describe the image as it is, e.g. 'a photo of a dog'"),
        (["train", "new", image_path, "--prompt", PROMPT, *TINY, "--rank", 0],
         "Error: --rank must be in [1, 256], got 0"),
        (["train", "new", image_path, "--prompt", PROMPT, *TINY, "--embedding-lr", -1],
         "Error: --embedding-lr must be > 0, got -1.0"),
        (["train", "new", image_path, "--prompt", PROMPT, "--model", tmp_path / "missing"],
         f"Error: model path '{tmp_path / 'missing'}' does not exist. "
         "Try: --model builtin:tiny to try the tool offline"),
        (["train", "new", image_path, "--prompt", PROMPT, "--model", text],
         f"Error: {text} is not a .safetensors checkpoint; pickle checkpoints (.ckpt, .bin) are not loaded. "
         "Try: convert it to .safetensors first"),
        (["train", "new", image_path, "--prompt", PROMPT, "--model", "nobody/no-such-model"],
         "Error: 'nobody/no-such-model' is not in the local model cache and the hub is switched off "
         "(HF_HUB_OFFLINE). Try: a local diffusers folder or .safetensors file, or --model builtin:tiny offline"),
        (["train", "new", image_path, "--prompt", PROMPT, "--model", empty_dir],
         f"Error: {empty_dir} is not a diffusers folder (no model_index.json). "
         "Try: a folder written by save_pretrained or downloaded from the hub"),
        (["train", "new", image_path, "--prompt", PROMPT, "--model", bogus],
         f"Error: {bogus} is not a Stable Diffusion checkpoint (no 'model.diffusion_model.*' weights). "
         "Try: a single-file checkpoint of SD 1.x (CLIP ViT-L, 768-d), SD 2.x (OpenCLIP ViT-H, 1024-d) or SDXL "
         "(CLIP ViT-L + OpenCLIP ViT-bigG, 2048-d), or a diffusers folder"),
        (["train", "new", image_path, "--prompt", PROMPT, "--model", sdxl_like],
         f"Error: {sdxl_like} is a checkpoint imagic-lora cannot identify (1 UNet weights, cross-attention width "
         "2048, text encoder: OpenCLIP). Supported: SD 1.x (CLIP ViT-L, 768-d), SD 2.x (OpenCLIP ViT-H, 1024-d) "
         "or SDXL (CLIP ViT-L + OpenCLIP ViT-bigG, 2048-d). "
         "Try: a diffusers folder of the model"),
        (["train", "new", image_path, "--prompt", PROMPT, "--model", fake],
         f"Error: {fake} is not a readable .safetensors file: Error while deserializing header: "
         "header too large"),
        (["train", "new", image_path, "--prompt", PROMPT, *TINY, "--embedding-steps", 3, "--embedding-lr", 1e30],
         "Error: stage 1/2 embedding: loss became nan at step 2; nothing was saved. Try: a lower --embedding-lr"),
        (["train", "new", image_path, "--prompt", PROMPT, *TINY, "--lora-alpha", 2e6],
         "Error: --lora-alpha must be in (0, 1e+06], got 2000000.0"),
        (["train", "new", image_path, "--prompt", PROMPT, *TINY, "--seed", 2**64],
         "Error: --seed must be in [0, 2**63), got 18446744073709551616"),
        (["train", "new", image_path, "--prompt", PROMPT, *TINY, "--device", "gpu"],
         "Error: --device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ]
    for args, expected in cases:
        check_refused(args, expected, store_with_ball)


def test_importing_over_an_existing_name_is_refused(store_with_ball, profile_bytes, tmp_path):
    path = tmp_path / "ball.imagic.safetensors"
    path.write_bytes(profile_bytes)
    check_refused(["profiles", "import", path], "Error: profile 'ball' already exists. Try: --name NEW, or --replace",
                  store_with_ball)


def test_interrupted_training_saves_nothing(store_with_ball, image_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("imagic_lora.api.finetune_lora", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train("new", image_path, PROMPT, model="builtin:tiny", config=FAST, progress=False)
    assert store_snapshot() == store_with_ball


def test_apply_and_profile_command_errors(store_with_ball, tmp_path):
    out_file = tmp_path / "taken"
    out_file.write_text("")
    cases = [
        (["apply", "profile", "nope", "a dog"], "Error: profile 'nope' not found. Try: imagic-lora profiles list"),
        (["apply", "profile", "ball", "a dog", "--alpha", 2], "Error: --alpha must be in [0, 1.5], got 2.0"),
        (["apply", "profile", "ball", "a dog", "--seeds", 0], "Error: --seeds must be in [1, 64], got 0"),
        (["apply", "profile", "ball", ""], "Error: the edit prompt must not be empty, e.g. 'a jumping dog'"),
        (["apply", "profile", "ball", "a dog", "--out", out_file],
         f"Error: --out must be a folder, got the file '{out_file}'"),
        (["apply", "profile", "bad/name", "a dog"],
         "Error: invalid profile name 'bad/name': use up to 64 letters, digits, '-', '_' or '.', "
         "starting with a letter or digit"),
        (["profiles", "show", "nope"], "Error: profile 'nope' not found. Try: imagic-lora profiles list"),
        (["profiles", "rm", "nope"], "Error: profile 'nope' not found. Try: imagic-lora profiles list"),
        (["profiles", "rename", "nope", "x"], "Error: profile 'nope' not found. Try: imagic-lora profiles list"),
        (["profiles", "rename", "ball", "ball"],
         "Error: profile 'ball' already exists. Try: another name, or imagic-lora profiles rm ball"),
        (["profiles", "rename", "ball", "a b"],
         "Error: invalid profile name 'a b': use up to 64 letters, digits, '-', '_' or '.', "
         "starting with a letter or digit"),
        (["profiles", "export", "nope", tmp_path / "x.safetensors"],
         "Error: profile 'nope' not found. Try: imagic-lora profiles list"),
    ]
    for args, expected in cases:
        check_refused(args, expected, store_with_ball)


def hostile_files(data: bytes, tmp_path):
    """(file name, bytes, expected message after the path) for each kind of bad share file."""
    e_opt = torch.zeros(1, 77, 32)
    nan_e_opt = e_opt.clone()
    nan_e_opt[0, 3, 5] = float("nan")
    up_key = min((k for k in rewrite_keys(data) if ".lora.up." in k), key=len)
    return [
        ("truncated", data[: len(data) // 2], "is corrupt: its tensors do not match their checksum"),
        ("tampered", data[:-10] + bytes(10), "is corrupt: its tensors do not match their checksum"),
        ("int", rewrite(data, tensors={"e_opt": torch.zeros(1, 77, 32, dtype=torch.int32)}),
         ": tensor 'e_opt' is torch.int32, not fp32, fp16 or bf16"),
        ("f8", rewrite(data, tensors={"e_opt": torch.zeros(1, 77, 32, dtype=torch.float8_e5m2)}),
         ": tensor 'e_opt' is torch.float8_e5m2, not fp32, fp16 or bf16"),
        ("alpha", with_metadata(data, lora={"rank": 4, "alpha": 10**400}),
         "metadata has no valid LoRA rank (1-256) and alpha (> 0, <= 1e+06)"),
        ("rank", with_metadata(data, lora={"rank": 10**400, "alpha": 4}),
         "metadata has no valid LoRA rank (1-256) and alpha (> 0, <= 1e+06)"),
        ("resolution", with_metadata(data, resolution=10**400),
         "metadata has an unsupported resolution (a multiple of 8 in [16, 4096])"),
        ("resolution8", with_metadata(data, resolution=100),
         "metadata has an unsupported resolution (a multiple of 8 in [16, 4096])"),
        ("deepmeta", rewrite(data, header={"profile": "[" * 100_000 + "]" * 100_000}),
         "has unreadable profile metadata: JSON nested deeper than 32 levels"),
        ("deepheader", deep_header(data), "is not a safetensors file: JSON nested deeper than 32 levels"),
        ("huge", rewrite(data, tensors={"e_opt": torch.zeros(1, 2, 9000), "source_embedding": torch.zeros(1, 2, 9000)}),
         ": embeddings of shape (1, 2, 9000) are larger than any supported model"),
        ("short", data[:5], "is truncated or not a safetensors file (5 bytes)"),
        ("random", random.Random(0).randbytes(4096), "is truncated or not a safetensors file (bad header length)"),
        ("pickle", pickle.dumps({"e_opt": [1, 2, 3]}), "is truncated or not a safetensors file (bad header length)"),
        ("torchsave", torch_saved(), "is truncated or not a safetensors file (bad header length)"),
        ("offsets", forged_offsets(data), "is not a valid safetensors file: "),
        ("empty", b"", "is truncated or not a safetensors file (0 bytes)"),
        ("other", rewrite(data, header={"format": "something-else"}),
         "is not an imagic-lora profile (no 'imagic-lora-profile' metadata)"),
        ("future", rewrite(data, header={"format_version": "99"}),
         "has profile format version '99'; this imagic-lora reads versions 1, 2, 3, 4 and 5. "
         "Try: upgrading imagic-lora"),
        ("badjson", rewrite(data, header={"profile": "{not json"}), "has unreadable profile metadata (not JSON)"),
        ("nometa", with_metadata(data, base_model=None), "metadata lacks 'base_model' (expected str)"),
        ("missing", rewrite(data, tensors={"e_opt": None}), ": missing tensor 'e_opt'"),
        ("extra", rewrite(data, tensors={"evil": torch.zeros(2)}), ": unexpected tensor 'evil'"),
        ("shapes", rewrite(data, tensors={"e_opt": torch.zeros(1, 77, 16)}),
         ": embeddings have shapes (1, 77, 16) and (1, 77, 32), expected equal [1, tokens, dim]"),
        ("rank", rewrite(data, tensors={up_key: torch.zeros(32, 3)}),
         f": LoRA tensor '{up_key}' has shape (32, 3), not rank {FAST.rank}"),
        ("nan", rewrite(data, tensors={"e_opt": nan_e_opt}), ": tensor 'e_opt' holds NaN or infinite values"),
        ("badname", rewrite(data, header={"name": "../../etc/passwd"}),
         "invalid profile name '../../etc/passwd'"),
        ("control", rewrite(data, header={"name": "dog\x1b[2J\n"}), "invalid profile name 'dog\\x1b[2J\\n'"),
    ]


def deep_header(data: bytes) -> bytes:
    """The file with a header that nests 100 000 lists deep inside an extra entry."""
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length].rstrip(b" ")
    deep = header[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return struct.pack("<Q", len(deep)) + deep + data[8 + length :]


def torch_saved() -> bytes:
    buffer = io.BytesIO()
    torch.save({"e_opt": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def forged_offsets(data: bytes) -> bytes:
    """A tensor entry pointing far past the end of the file; the checksum of the tensor bytes still holds."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["e_opt"]["data_offsets"] = [0, 10**12]
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data[8 + length :]


def rewrite_keys(data):
    return list(load(data))


def test_hostile_share_files_are_refused_by_import_and_apply(store_with_ball, profile_bytes, tmp_path):
    for name, data, expected in hostile_files(profile_bytes, tmp_path):
        path = tmp_path / f"{name}.imagic.safetensors"
        path.write_bytes(data)
        for args in (["profiles", "import", path], ["apply", "file", path, "a dog", "--out", tmp_path / "o"]):
            result = run(*args)
            assert result.exit_code == 1, (name, result.output)
            line = error_line(result)
            assert line.startswith("Error: ") and expected in line, (name, line)
            assert "Traceback" not in result.output
            assert store_snapshot() == store_with_ball
            assert not (tmp_path / "o").exists()


def test_profile_for_other_base_weights_is_refused_unless_forced(store_with_ball, profile_bytes, tmp_path):
    other = tmp_path / "other.imagic.safetensors"
    sample = load(profile_bytes)["base_sample"]
    fingerprint = json.loads(read_header(profile_bytes, "x")["profile"])["base_fingerprint"]
    arch = fingerprint.split("-")[0]
    other.write_bytes(with_metadata(rewrite(profile_bytes, tensors={"base_sample": sample + 0.5}),
                                    base_fingerprint=f"{arch}-0123456789abcdef"))
    out = tmp_path / "out"
    args = ["apply", "file", other, "a dog", "--steps", 2, "--out", out]
    check_refused(args, f"Error: profile 'ball' was made for other weights of 'builtin:tiny' (fingerprint "
                  f"{arch}-0123456789abcdef, this one {fingerprint}). Try: --force to apply it anyway",
                  store_with_ball)
    assert not out.exists()
    result = run(*args, "--force")
    assert result.exit_code == 0, result.output
    assert "Warning: profile 'ball' was made for other weights of 'builtin:tiny'" in result.stderr
    assert "applying anyway (--force)" in result.stderr
    assert len(list(out.glob("*.png"))) == 1


def test_profile_for_another_architecture_is_refused_even_when_forced(store_with_ball, profile_bytes, tmp_path):
    other = tmp_path / "arch.imagic.safetensors"
    other.write_bytes(rewrite(profile_bytes, tensors={
        "e_opt": torch.zeros(1, 77, 16), "source_embedding": torch.zeros(1, 77, 16, dtype=torch.float16)}))
    expected = ("Error: profile 'ball' does not fit 'builtin:tiny': it was made for 'builtin:tiny' (a model with "
                "16-d text embeddings), and this model is a model with 32-d text embeddings. Try: --model builtin:tiny")
    for force in ([], ["--force"]):
        check_refused(["apply", "file", other, "a dog", *force], expected, store_with_ball)


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
@pytest.mark.parametrize("extra", [[], ["--lora-only"], ["--format", "kohya"]])
def test_exporting_over_the_live_store_is_refused(store_with_ball, isolated_user_dir, suffix, extra):
    live = ProfileStore().path
    target = live.with_name(live.name + suffix)
    before = live.read_bytes()
    result = run("profiles", "export", "ball", target, *extra)
    assert result.exit_code == 1
    assert error_line(result) == f"Error: {target} is the live profile store itself. Try: another file name"
    assert live.read_bytes() == before
    assert store_snapshot() == store_with_ball
    linked = isolated_user_dir / "link.db"
    linked.symlink_to(live)
    assert run("profiles", "backup", linked, "--replace").exit_code == 1, "a link to the store is the store"
    linked.unlink()


def test_a_profile_of_the_earlier_built_in_shapes_model_is_refused_saying_the_model_changed(
        store_with_ball, profile_bytes, tmp_path):
    """The built-in shapes model was trained again on a richer world (other tokenizer, other weights): a profile
    recorded for ``builtin:shapes`` with another architecture cannot be applied, even when forced."""
    earlier = tmp_path / "earlier.imagic.safetensors"
    earlier.write_bytes(with_metadata(profile_bytes, base_model="builtin:shapes"))
    expected = ("Error: profile 'ball' was made for an earlier builtin:shapes: the built-in model changed (it was "
                "trained again on a world with named backgrounds and second objects), and its profiles do not carry "
                "over. Try: training it again with imagic-lora train --model builtin:shapes")
    for force in ([], ["--force"]):
        check_refused(["apply", "file", earlier, "a red circle", "--model", "builtin:shapes", *force], expected,
                      store_with_ball)
