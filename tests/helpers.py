"""Shared helpers for CLI tests: run the command, snapshot the store, craft hostile files."""

import dataclasses
import hashlib
import json
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from imagic_lora import TrainConfig
from imagic_lora.cli import cli
from imagic_lora.paths import user_dir
from imagic_lora.profile import read_header

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_INPUT = REPO / "profiles" / "example-input.png"
EXAMPLE_PROFILE = REPO / "profiles" / "example.imagic.safetensors"
# one profile file of each format version, as the release before the typed record wrote them
FORMAT_FILES = {1: EXAMPLE_PROFILE, 2: REPO / "tests" / "data" / "format-v2.imagic.safetensors",
                3: REPO / "tests" / "data" / "format-v3.imagic.safetensors",
                4: REPO / "tests" / "data" / "format-v4.imagic.safetensors"}
PROMPT = "a red ball on green grass"
# Few steps, with a LoRA learning rate high enough that the adapter visibly changes the output.
FAST = TrainConfig(embedding_steps=4, lora_steps=6, lora_lr=1e-2)


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def store_snapshot() -> list[tuple]:
    """Every stored profile's name and exact bytes, read straight from SQLite."""
    path = user_dir() / "profiles.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute("select p.name, d.data from profiles p left join profile_data d on d.name = p.name "
                            "order by p.name").fetchall()


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def rewrite(data: bytes, tensors=None, header=None) -> bytes:
    """Re-save profile bytes with some tensors or header entries replaced (None deletes).

    The tensor checksum is recomputed, as a deliberate forger would.
    """
    all_tensors = dict(load_tensors(data))
    all_header = dict(read_header(data, "test"))
    for target, changes in ((all_tensors, tensors or {}), (all_header, header or {})):
        for key, value in changes.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    first = save_tensors(all_tensors, metadata=all_header)
    (length,) = struct.unpack("<Q", first[:8])
    all_header["tensors_sha256"] = hashlib.sha256(first[8 + length :]).hexdigest()
    return save_tensors(all_tensors, metadata=all_header)


def with_metadata(data: bytes, **changes) -> bytes:
    meta = json.loads(read_header(data, "test")["profile"])
    meta.update(changes)
    return rewrite(data, header={"profile": json.dumps(meta)})


def as_version_4(data: bytes) -> bytes:
    """Profile bytes of format version 5 written as version 4: the same tensors, without the recipe's record."""
    meta = json.loads(read_header(data, "test")["profile"])
    del meta["recipe"]
    meta["format_version"] = 4
    return rewrite(data, header={"profile": json.dumps(meta), "format_version": "4"})


def with_metadata_fields(profile, **changes):
    """The profile with some top-level fields of its metadata record changed."""
    return dataclasses.replace(profile, metadata=dataclasses.replace(profile.metadata, **changes))


def with_lora_alpha(profile, alpha: float):
    """The profile with another LoRA alpha recorded (so its adapter is scaled differently)."""
    settings = profile.metadata.settings
    lora = dataclasses.replace(settings.lora, alpha=alpha)
    return with_metadata_fields(profile, settings=dataclasses.replace(settings, lora=lora))


def forged_png(path, width, height):
    """A PNG whose header declares ``width`` x ``height`` but holds no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path
