"""Where imagic-lora keeps its data: the user directory, and the store's file in it."""

from __future__ import annotations

import os
from pathlib import Path

USER_PATH_ENV = "IMAGIC_LORA_USER_PATH"


def user_dir() -> Path:
    """Where imagic-lora keeps its data: ``$IMAGIC_LORA_USER_PATH`` or the platform's app dir."""
    if os.environ.get(USER_PATH_ENV):
        return Path(os.environ[USER_PATH_ENV])
    import click  # the platform's rule for an app's folder

    return Path(click.get_app_dir("imagic-lora"))


def store_path() -> Path:
    """The default store's database file."""
    return user_dir() / "profiles.db"
