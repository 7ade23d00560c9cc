"""Where imagic-lora keeps its data (the user directory, the store's file in it) and which model it uses when
none is named: the settings that come from the environment, readable without loading torch."""

from __future__ import annotations

import os
from pathlib import Path

USER_PATH_ENV = "IMAGIC_LORA_USER_PATH"
MODEL_ENV = "IMAGIC_LORA_MODEL"
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def user_dir() -> Path:
    """Where imagic-lora keeps its data: ``$IMAGIC_LORA_USER_PATH`` or the platform's app dir."""
    if os.environ.get(USER_PATH_ENV):
        return Path(os.environ[USER_PATH_ENV])
    import click  # the platform's rule for an app's folder

    return Path(click.get_app_dir("imagic-lora"))


def store_path() -> Path:
    """The default store's database file."""
    return user_dir() / "profiles.db"


def default_model() -> str:
    """The model used when none is given: ``$IMAGIC_LORA_MODEL`` or SD 1.5."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL
