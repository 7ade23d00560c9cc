"""A profile file's outer layer, read without any model library: names, bounded JSON, the safetensors header.

Commands that only list, show or rename profiles use these, so the CLI starts without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct

from .errors import InvalidProfileFile, InvalidProfileName
from .limits import MAX_JSON_DEPTH

FORMAT = "imagic-lora-profile"
PROFILE_SUFFIX = ".imagic.safetensors"  # what a shared profile file is called: NAME.imagic.safetensors
FORMAT_VERSION = 2  # 2 adds the image latents and their DDIM inversion; version 1 files are still read
XL_FORMAT_VERSION = 3  # 3 is 2 plus SDXL's pooled embeddings; only SDXL profiles are written as 3
NOISE_MAPS_FORMAT_VERSION = 4  # 4 is 2 or 3 plus the edit-friendly inversion's noise maps
RECIPE_FORMAT_VERSION = 5  # 5 is 4 plus the record of the training recipe (metadata only)
READABLE_VERSIONS = ("1", "2", "3", "4", "5")
CHECKSUM_KEY = "tensors_sha256"
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024 * 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
INNERMOST = re.compile(rb"[\[{][\]}]")
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_name(name: str) -> str:
    """Return ``name`` if it is a short identifier (letters, digits, ``-``, ``_``, ``.``)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name)[:70]
        raise InvalidProfileName(
            f"invalid profile name {shown}: use up to 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


def too_deep(text: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``[``/``{`` nest deeper than ``limit`` in JSON ``text`` (brackets in strings not counted).

    Each pass deletes the innermost bracket pairs, so ``limit`` passes clear any text nested at most
    ``limit`` deep; every pass runs at C speed, whatever the text's size.
    """
    brackets = STRING.sub(b"", text).translate(None, NOT_BRACKETS)
    for _ in range(limit):
        shorter = INNERMOST.sub(b"", brackets)
        if shorter == brackets:
            return False  # unbalanced, not deep: the JSON parser reports it
        brackets = shorter
    return bool(brackets)


def parse_json(text: str | bytes | None, error: str):
    """JSON ``text`` parsed, its nesting bounded first; anything else raises :class:`InvalidProfileFile`."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    if not isinstance(text, bytes):
        raise InvalidProfileFile(error)
    if too_deep(text):
        raise InvalidProfileFile(f"{error.split(' (')[0]}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise InvalidProfileFile(error) from None


def read_header(data: bytes, source: str) -> dict:
    """The ``__metadata__`` of a safetensors blob, checked for size and format before any tensor is read."""
    if len(data) > MAX_FILE_BYTES:
        raise InvalidProfileFile(f"{source} is {len(data)} bytes, over the {MAX_FILE_BYTES} byte limit")
    if len(data) < 8:
        raise InvalidProfileFile(f"{source} is truncated or not a safetensors file ({len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise InvalidProfileFile(f"{source} is truncated or not a safetensors file (bad header length)")
    header = parse_json(data[8 : 8 + length], f"{source} is not a safetensors file (unreadable header)")
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise InvalidProfileFile(f"{source} is not an imagic-lora profile (no '{FORMAT}' metadata)")
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise InvalidProfileFile(
            f"{source} has profile format version {str(version)[:20]!r}; this imagic-lora reads versions "
            f"{', '.join(READABLE_VERSIONS[:-1])} and {READABLE_VERSIONS[-1]}. Try: upgrading imagic-lora"
        )
    if not isinstance(metadata.get("name"), str):
        raise InvalidProfileFile(f"{source} has no profile name in its metadata")
    if metadata.get(CHECKSUM_KEY) != hashlib.sha256(data[8 + length :]).hexdigest():
        raise InvalidProfileFile(f"{source} is corrupt: its tensors do not match their checksum")
    return metadata


def data_section(data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    return data[8 + length :]


def with_name(data: bytes, name: str, source: str) -> bytes:
    """Profile bytes with ``name`` in the header; the tensor bytes, and so their checksum, are untouched."""
    check_name(name)
    read_header(data, source)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"]["name"] = name
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the data section 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data_section(data)
