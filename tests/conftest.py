import shutil
from pathlib import Path

import pytest
from helpers import EXAMPLE_INPUT, FAST, PROMPT

from imagic_lora import TINY_MODEL, TINY_XL_MODEL, ProfileStore, load_model, train


@pytest.fixture(autouse=True)
def isolated_user_dir(tmp_path, monkeypatch):
    """No test touches ~ or the hub: the store lives in tmp_path, the hub is offline."""
    monkeypatch.setenv("IMAGIC_LORA_USER_PATH", str(tmp_path / "user"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IMAGIC_LORA_MODEL", raising=False)
    return tmp_path / "user"


@pytest.fixture
def image_path(tmp_path) -> Path:
    path = tmp_path / "ball.png"
    shutil.copy(EXAMPLE_INPUT, path)
    return path


@pytest.fixture
def tiny():
    return load_model(TINY_MODEL)


@pytest.fixture
def tiny_xl():
    return load_model(TINY_XL_MODEL)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One profile trained on the tiny model, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("trained")
    image = folder / "ball.png"
    shutil.copy(EXAMPLE_INPUT, image)
    store = ProfileStore(folder / "profiles.db")
    return train("ball", image, PROMPT, model=TINY_MODEL, config=FAST, store=store, progress=False)
