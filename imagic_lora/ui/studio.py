"""What the web app does, without the web: train, edit and manage profiles over the same API as the CLI.

One :class:`Studio` serves every request. It loads each base model once, and only the models it was
started with: nothing typed or uploaded in the browser names a file to read. Each call opens its own
store connection (SQLite connections belong to one thread).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from .. import api
from ..config import ApplyConfig, TrainConfig
from ..errors import IncompatibleProfile, InvalidConfig
from ..images import fit_image, load_image, thumbnail_image
from ..interop import export_lora
from ..method import decode_latents
from ..models import BaseModel, load_model
from ..profile import Profile
from ..progress import Cancelled, Step, listening
from ..store import ProfileStore
from ..validate import PROFILE_SUFFIX
from .choices import EXPORTS

PREVIEW_SIZE = 256


@dataclass(frozen=True)
class Card:
    """One stored profile as the gallery shows it."""

    name: str
    source_prompt: str
    base_model: str
    created_at: str
    size_bytes: int
    thumbnail: Image.Image

    @property
    def caption(self) -> str:
        return f"{self.name}: {self.source_prompt}"


@dataclass(frozen=True)
class Edit:
    """The images an edit wrote (each PNG carries its parameters), the photo as the model sees it, warnings."""

    images: list[Path]
    grid: Path | None
    before: Image.Image
    warnings: list[str]


@dataclass
class TrainWatch:
    """The latest step of a running training, and the switch that stops it at the next step."""

    step: Step | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def hear(self, step: Step) -> None:
        if self.cancelled.is_set():
            raise Cancelled("training cancelled; nothing was stored")
        self.step = step


class Studio:
    """The web app's one shared service: the served models, loaded once, and the profile store."""

    def __init__(self, models: Sequence[str], device: str | None = None, dtype: str | None = None,
                 store_path: str | Path | None = None, out_dir: str | Path | None = None) -> None:
        if not models:
            raise InvalidConfig("the app needs at least one --model to serve")
        self.models = list(dict.fromkeys(models))
        self.device, self.dtype, self.store_path = device, dtype, store_path
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="imagic-lora-ui-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._loaded: dict[str, BaseModel] = {}
        self._thumbnails: dict[str, Image.Image] = {}  # by the profile's sha256: a refresh reads only new profiles
        self._loading = threading.Lock()

    def store(self) -> ProfileStore:
        return ProfileStore(self.store_path)

    def model(self, model_id: str) -> BaseModel:
        """A served model, loaded on first use and shared by every later request."""
        if model_id not in self.models:
            raise InvalidConfig(f"this app serves {', '.join(map(repr, self.models))}, not {model_id!r}. "
                                f"Try: imagic-lora ui --model {model_id}")
        with self._loading:
            if model_id not in self._loaded:
                self._loaded[model_id] = load_model(model_id, self.device, self.dtype)
            return self._loaded[model_id]

    def model_for(self, profile: Profile) -> BaseModel:
        """The served model ``profile`` was made for; a profile for any other one is refused in one line."""
        made_for = profile.metadata.base_model
        if made_for not in self.models:
            raise IncompatibleProfile(
                f"profile {profile.name!r} was made for {made_for!r}, which this app does not serve (it serves "
                f"{', '.join(map(repr, self.models))}). Try: imagic-lora ui --model {made_for}")
        base = self.model(made_for)
        api.check_compatible(profile, base)
        return base

    # profiles

    def cards(self) -> list[Card]:
        """Every stored profile with its thumbnail (the photo it was trained on), by name."""
        store = self.store()
        cards = []
        for row in store.list(("name", "source_prompt", "base_model", "created_at", "size_bytes", "sha256")):
            sha256 = row.pop("sha256")
            if sha256 not in self._thumbnails:
                self._thumbnails[sha256] = thumbnail_image(store.get(row["name"]).thumbnail)
            cards.append(Card(thumbnail=self._thumbnails[sha256], **row))
        return cards

    def rename(self, old: str, new: str) -> None:
        self.store().rename(old, new)

    def delete(self, name: str) -> None:
        self.store().remove(name)

    def export(self, name: str, kind: str) -> Path:
        """Profile ``name`` written as a file to download: the whole profile, or its adapter for other tools."""
        if kind not in EXPORTS:
            raise InvalidConfig(f"export must be one of {', '.join(EXPORTS)}, got {kind!r}")
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.out_dir))
        store = self.store()
        if kind == "profile":
            return store.export(name, folder / f"{name}{PROFILE_SUFFIX}")
        lora_format = kind.split(", ")[1]
        return export_lora(store.get(name), folder / f"{name}-lora-{lora_format}.safetensors", lora_format)

    def import_file(self, path: str | Path) -> Profile:
        """An uploaded profile file, checked as ``profiles import`` checks it and against the served models,
        then stored (never over an existing profile)."""
        from ..store import read_profile_file

        profile = read_profile_file(path)
        self.model_for(profile)
        return self.store().import_file(path)

    # training and editing

    def preview(self, path: str | Path) -> Image.Image:
        """The uploaded photo after the same checks as ``train``, cropped as training crops it, scaled down."""
        return fit_image(load_image(path), PREVIEW_SIZE, TrainConfig().fit)

    def train(self, name: str, image: str | Path, prompt: str, model_id: str, config: TrainConfig,
              watch: TrainWatch | None = None, warn: Callable[[str], None] | None = None,
              inform: Callable[[str], None] | None = None) -> Profile:
        """``imagic-lora train``; ``watch`` hears every step and can stop the training before anything is stored;
        ``inform`` hears the memory recipe chosen."""
        api.check_request(name, prompt)
        self.store().ensure_free(name)
        base = self.model(model_id)
        with listening(watch.hear if watch else lambda step: None):
            return api.train(name, image, prompt, model=base, config=config, store=self.store(), progress=False,
                             warn=warn, inform=inform)

    def edit(self, name: str, prompt: str, alphas: Sequence[float], config: ApplyConfig | None = None) -> Edit:
        """``imagic-lora apply profile NAME PROMPT`` with ``alphas``; the outputs go to a new folder."""
        profile = self.store().get(name)
        base = self.model_for(profile)
        config = replace(config or ApplyConfig(), alphas=tuple(alphas))
        folder = Path(tempfile.mkdtemp(prefix="edit-", dir=self.out_dir))
        warnings: list[str] = []
        paths = api.apply(profile, prompt, out_dir=folder, model=base, config=config, progress=False,
                          warn=warnings.append)
        grid = paths[-1] if len(paths) > len(alphas) * len(config.seed_list) else None
        images = [path for path in paths if path != grid]
        return Edit(images, grid, self.before(profile, base), warnings)

    def before(self, profile: Profile, base: BaseModel) -> Image.Image:
        """The photo as the model sees it (its stored latents decoded); the thumbnail for a format 1 profile."""
        if profile.image_latents is not None:
            return decode_latents(base, profile.image_latents)
        return thumbnail_image(profile.thumbnail).resize((profile.resolution,) * 2)
