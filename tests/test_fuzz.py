"""Property-based tests of the profile file reader: whatever the bytes, only our own errors come out."""

import contextlib
import json
import struct

import pytest
from helpers import EXAMPLE_PROFILE, rewrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagic_lora import InvalidProfileFile, InvalidProfileName, Profile

VALID = EXAMPLE_PROFILE.read_bytes()
HEADER_LENGTH = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8 : 8 + HEADER_LENGTH])
EXPECTED = (InvalidProfileFile, InvalidProfileName)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def read(data: bytes) -> None:
    with contextlib.suppress(EXPECTED):
        Profile.from_bytes(data)


@FUZZ
@given(st.integers(0, len(VALID)), st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                                            max_size=8))
def test_truncated_or_bit_flipped_files(cut, flips):
    data = bytearray(VALID[:cut] if cut < len(VALID) else VALID)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    read(bytes(data))


@FUZZ
@given(st.sampled_from(sorted(HEADER)), st.sampled_from(["dtype", "shape", "data_offsets", None]), json_values)
def test_forged_tensor_entries(key, field, value):
    """Change one header entry to any JSON value, keeping the data and a correct length prefix."""
    header = json.loads(json.dumps(HEADER))
    if field is None or key == "__metadata__":
        header[key] = value
    else:
        header[key][field] = value
    blob = json.dumps(header).encode()
    read(struct.pack("<Q", len(blob)) + blob + VALID[8 + HEADER_LENGTH :])


@FUZZ
@given(st.sampled_from(["format", "format_version", "name", "profile"]), json_values)
def test_forged_metadata_with_a_valid_checksum(key, value):
    metadata_value = value if isinstance(value, str) else json.dumps(value)
    read(rewrite(VALID, header={key: metadata_value}))


@FUZZ
@given(st.sampled_from(["source_prompt", "base_model", "lora", "training", "losses", "resolution"]), json_values)
def test_forged_profile_json(key, value):
    meta = json.loads(HEADER["__metadata__"]["profile"])
    meta[key] = value
    read(rewrite(VALID, header={"profile": json.dumps(meta)}))


@pytest.mark.parametrize("data", [b"", b"\x00" * 8, struct.pack("<Q", 2**63) + b"{}", struct.pack("<Q", 2) + b"{}"])
def test_degenerate_files(data):
    with pytest.raises(InvalidProfileFile):
        Profile.from_bytes(data)
