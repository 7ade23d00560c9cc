"""Small typed exceptions; the CLI turns each into one ``Error: ...`` line."""


class ImagicError(Exception):
    """Base class for every error a user can cause and fix."""


class InvalidConfig(ImagicError, ValueError):
    """A setting is out of range or of the wrong kind."""


class InvalidImage(ImagicError):
    """The input image is missing, unreadable or truncated."""


class InvalidProfileName(ImagicError):
    """A profile name is not a short identifier."""


class ProfileNotFound(ImagicError):
    """No profile of that name in the store."""


class ProfileExists(ImagicError):
    """A profile of that name is already in the store."""


class InvalidProfileFile(ImagicError):
    """A profile file is truncated, malformed or not a profile at all."""


class IncompatibleProfile(ImagicError):
    """A profile was made for another base model."""


class ModelLoadError(ImagicError):
    """The base model could not be loaded."""


class TrainingDiverged(ImagicError):
    """The loss became NaN or infinite during training."""


class ProfileNotSaved(ImagicError):
    """Training finished but the store could not take the profile; it was written to a file instead."""


class OutputError(ImagicError):
    """An output file or folder cannot be written."""


class StoreError(ImagicError):
    """The profile store cannot be opened, read or written: damaged, read-only, busy, full or newer."""


class ReportedElsewhere(ImagicError):
    """This process of a multi-process run fails for a reason the main process reports: exit 1, say nothing."""
