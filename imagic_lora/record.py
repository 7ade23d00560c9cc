"""A profile's metadata as typed records: what was trained, from which image, on which base, with which settings.

The ``profile`` JSON of a profile file is :meth:`ProfileMetadata.to_dict`; :meth:`ProfileMetadata.from_dict`
reads every format version back (validated, unknown keys named) so that ``to_dict`` gives the same JSON. Keys
that older files lack are :data:`ABSENT`, which ``to_dict`` leaves out, so an old file's bytes come back as they
were. A new key needs a new format version: readers refuse keys they do not know.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import InvalidProfileFile
from .limits import MAX_LORA_ALPHA, MAX_RANK, MAX_RESOLUTION, MAX_STEPS, MIN_RESOLUTION, RESOLUTION_STEP
from .validate import RECIPE_FORMAT_VERSION, parse_json


class _Absent:
    """The value of a key the file does not hold (unlike ``None``, which it holds as ``null``)."""

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()
NUMBER = (int, float)


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class TrainingSettings:
    embedding_steps: int
    embedding_lr: float
    lora_steps: int
    lora_lr: float
    optimizer: str
    fit: str
    seed: int
    device: str
    dtype: str
    samples_per_step: int = ABSENT  # in profiles made since it was a setting
    prediction_type: str = ABSENT  # in profiles made since SD 2.x support


@dataclass(frozen=True)
class Settings:
    """What decides a profile's training besides the image: equal settings and image give an equal profile."""

    base_fingerprint: str
    lora: LoraSettings
    training: TrainingSettings
    resolution: int
    pipeline: str = ABSENT  # written by families that name their pipeline (SDXL)

    def same_training(self, other: Settings) -> bool:
        """Whether ``other`` trains the same profile: equal in everything but the device it ran on."""
        return replace(self, training=replace(self.training, device="")) == replace(
            other, training=replace(other.training, device=""))


@dataclass(frozen=True)
class Losses:
    embedding: float | None  # the mean of each stage's last 50 steps; None for a stage of 0 steps
    lora: float | None


EDIT_FRIENDLY = "edit-friendly DDPM"  # Inversion.method of noise maps (format version 4); absent: DDIM


@dataclass(frozen=True)
class Inversion:
    """How the stored start was made: sampling with these settings from e_opt gives the photo back."""

    steps: int
    scheduler: str
    guidance: float
    method: str = ABSENT  # from format version 4: EDIT_FRIENDLY; absent in DDIM inversions
    negative_prompt: str = ABSENT  # from format version 4: the unconditional side of its guidance


@dataclass(frozen=True)
class Recipe:
    """How a training run spent the device's memory (:mod:`imagic_lora.recipe`), as a profile records it
    (format version 5)."""

    memory: str  # the mode asked for: auto, low or high
    level: str  # fast, offloaded or lean; "cpu" for auto on the CPU; "explicit" when flags decided all three
    gradient_checkpointing: bool
    offload_encoders: bool
    optimizer: str
    free_gib: float | None  # the device memory the run could use (free + the model's own); None on the CPU
    needed_gib: float | None  # the estimate for the chosen level, headroom included; None if not estimated

    def line(self) -> str:
        """One line for the terminal: what was chosen and why."""
        checkpointing = "gradient checkpointing" if self.gradient_checkpointing else "no checkpointing"
        optimizer = "8-bit AdamW" if self.optimizer == "adamw8bit" else "fp32 AdamW"
        if self.level == "cpu":
            return f"memory {self.memory} on the CPU: {checkpointing}, {optimizer}"
        why = ""
        if self.free_gib is not None and self.needed_gib is not None:
            why = f" ({self.free_gib:.1f} GiB free, about {self.needed_gib:.1f} GiB needed)"
        encoders = f"encoders {'off' if self.offload_encoders else 'on'} the device"
        return f"memory {self.memory}: {self.level} recipe{why}: {checkpointing}, {optimizer}, {encoders}"


@dataclass(frozen=True)
class ProfileMetadata:
    """The ``profile`` JSON of a profile file (format versions 1 to 4)."""

    source_prompt: str
    base_model: str
    settings: Settings
    losses: Losses
    image_sha256: str
    created_at: str
    library_version: str
    format_version: int = ABSENT  # a copy of the header's, which :attr:`Profile.format_version` decides
    family: str | None = ABSENT  # in profiles made since SDXL support; None for the built-in models
    inversion: Inversion = ABSENT  # from format version 2
    recipe: Recipe = ABSENT  # from format version 5

    def trained_like(self, settings: Settings, inversion: Inversion, image_sha256: str) -> bool:
        """Whether this profile was made from that image with those settings (the batch skip rule)."""
        return (self.image_sha256 == image_sha256 and self.settings.same_training(settings)
                and self.inversion == inversion)

    def to_dict(self) -> dict:
        """The JSON object, keys sorted at every level, with the settings' keys at the top level as files hold them."""
        top = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        settings = {f.name: getattr(self.settings, f.name) for f in fields(self.settings)}
        return _plain_dict(top | settings)

    @classmethod
    def from_header(cls, header: dict, source: str = "profile file") -> ProfileMetadata:
        """Read the metadata of a profile file's checked header (:func:`validate.read_header`)."""
        text = parse_json(header.get("profile"), f"{source} has unreadable profile metadata (not JSON)")
        return cls.from_dict(text, int(header["format_version"]), source)

    @classmethod
    def from_dict(cls, data: Any, version: int, source: str = "profile file") -> ProfileMetadata:
        """Read a profile's metadata; anything unexpected raises :class:`InvalidProfileFile` naming it."""
        return _Reader(source).metadata(data, version)


def _plain_dict(values: dict) -> dict:
    return {key: _plain(value) for key, value in sorted(values.items()) if value is not ABSENT}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return _plain_dict({f.name: getattr(value, f.name) for f in fields(value)})
    return value


class _Reader:
    """Checks one file's metadata, naming the file and the key in what it raises."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, what: str) -> None:
        raise InvalidProfileFile(f"{self.source} {what}")

    def metadata(self, data: Any, version: int) -> ProfileMetadata:
        if not isinstance(data, dict):
            self.fail("has profile metadata that is not a JSON object")
        for key, kind in REQUIRED.items():
            if not _is(data.get(key), kind):
                self.fail(f"metadata lacks {key!r} (expected {_kind_name(kind)})")
        lora = self.lora(data["lora"])
        resolution = data["resolution"]
        if not _is_int_in(resolution, MIN_RESOLUTION, MAX_RESOLUTION) or resolution % RESOLUTION_STEP:
            self.fail(f"metadata has an unsupported resolution (a multiple of {RESOLUTION_STEP} in "
                      f"[{MIN_RESOLUTION}, {MAX_RESOLUTION}])")
        inversion = self.inversion(data.get("inversion", ABSENT), version)
        self.known(data, TOP_KEYS, "metadata")
        settings = Settings(base_fingerprint=data["base_fingerprint"], lora=lora,
                            training=self.record(TrainingSettings, data["training"], "training"),
                            resolution=resolution, pipeline=self.optional(data, "pipeline", str))
        return ProfileMetadata(
            source_prompt=data["source_prompt"], base_model=data["base_model"], settings=settings,
            losses=self.record(Losses, data["losses"], "losses"), image_sha256=data["image_sha256"],
            created_at=data["created_at"], library_version=data["library_version"],
            format_version=self.optional(data, "format_version", int),
            family=self.optional(data, "family", (str, type(None))), inversion=inversion,
            recipe=self.recipe(data.get("recipe", ABSENT), version),
        )

    def lora(self, data: dict) -> LoraSettings:
        rank, alpha = data.get("rank"), data.get("alpha")
        if not _is_int_in(rank, 1, MAX_RANK) or not _is_number_in(alpha, 0, MAX_LORA_ALPHA) or alpha == 0:
            self.fail(f"metadata has no valid LoRA rank (1-{MAX_RANK}) and alpha (> 0, <= {MAX_LORA_ALPHA:g})")
        modules = data.get("target_modules")
        if not isinstance(modules, list) or not all(isinstance(module, str) for module in modules):
            self.fail("metadata lacks 'lora.target_modules' (expected a list of names)")
        self.known(data, {"rank", "alpha", "target_modules"}, "lora")
        return LoraSettings(rank=rank, alpha=alpha, target_modules=tuple(modules))

    def inversion(self, data: Any, version: int) -> Inversion:
        if data is ABSENT and version < 2:
            return ABSENT
        if not isinstance(data, dict) or not _is_int_in(data.get("steps"), 1, MAX_STEPS):
            self.fail(f"metadata has no valid inversion steps (1-{MAX_STEPS})")
        return self.record(Inversion, data, "inversion")

    def recipe(self, data: Any, version: int) -> Recipe:
        if version < RECIPE_FORMAT_VERSION:
            if data is not ABSENT:
                self.fail(f"metadata has a 'recipe', which format version {version} does not hold")
            return ABSENT
        if not isinstance(data, dict):
            self.fail("metadata lacks 'recipe' (expected dict)")
        return self.record(Recipe, data, "recipe")

    def record(self, kind: type, data: dict, where: str):
        """A record of ``kind`` from ``data``: every field of its type, optional ones (default ABSENT) may lack."""
        values = {}
        for item in fields(kind):
            value = data.get(item.name, ABSENT)
            if value is ABSENT and item.default is ABSENT:
                continue
            if not _is(value, FIELD_TYPES[item.type]):
                self.fail(f"metadata lacks '{where}.{item.name}' (expected {_kind_name(FIELD_TYPES[item.type])})")
            values[item.name] = value
        self.known(data, {item.name for item in fields(kind)}, where)
        return kind(**values)

    def optional(self, data: dict, key: str, kind) -> Any:
        value = data.get(key, ABSENT)
        if value is not ABSENT and not _is(value, kind):
            self.fail(f"metadata has {key!r} that is not {_kind_name(kind)}")
        return value

    def known(self, data: dict, keys: set[str], where: str) -> None:
        unknown = sorted(set(data) - keys)
        if unknown:
            named = ", ".join(repr(key[:40]) for key in unknown[:5])
            self.fail(f"{where} has keys this version does not know: {named}. Try: a newer imagic-lora")


REQUIRED = {
    "source_prompt": str, "base_model": str, "base_fingerprint": str, "lora": dict, "training": dict,
    "losses": dict, "resolution": int, "image_sha256": str, "created_at": str, "library_version": str,
}
TOP_KEYS = set(REQUIRED) | {"format_version", "family", "inversion", "pipeline", "recipe"}
FIELD_TYPES = {"int": int, "float": NUMBER, "str": str, "bool": bool, "float | None": (*NUMBER, type(None))}


def _is(value: Any, kind) -> bool:
    """An isinstance in which a bool is not a number (JSON's true is not 1)."""
    if kind is bool:
        return isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def _kind_name(kind) -> str:
    names = {int: "int", str: "str", dict: "dict", bool: "true or false", NUMBER: "a number",
             FIELD_TYPES["float | None"]: "a number or null",
             (str, type(None)): "a string or null"}
    return names[kind]


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return _is(value, int) and low <= value <= high


def _is_number_in(value: Any, low: float, high: float) -> bool:
    return _is(value, NUMBER) and low <= value <= high  # False for NaN; exact for ints of any size
