"""imagic-lora: Imagic real-image editing with LoRA adapters and reusable edit profiles.

Names are imported lazily so that ``imagic-lora profiles list`` does not load diffusers.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "train": "api", "apply": "api", "check_compatible": "api",
    "ApplyConfig": "config", "TrainConfig": "config",
    "ImagicError": "errors", "IncompatibleProfile": "errors", "InvalidConfig": "errors",
    "InvalidImage": "errors", "InvalidProfileFile": "errors", "InvalidProfileName": "errors",
    "ModelLoadError": "errors", "ProfileExists": "errors", "ProfileNotFound": "errors",
    "ProfileNotSaved": "errors", "TrainingDiverged": "errors",
    "BaseModel": "models", "load_model": "models",
    "Profile": "profile",
    "ProfileStore": "store", "read_profile_file": "store",
    "TINY_MODEL": "tiny", "TINY_XL_MODEL": "tiny",
}
__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'imagic_lora' has no attribute {name!r}")
