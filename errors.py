"""encslim's error hierarchy.

Every error a user can cause (bad path, bad config, bad data) is an ``EncslimError`` whose
message names the problem and the fix. The CLI prints it on one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""


class EncslimError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(EncslimError, ValueError):
    """A configuration (model config, recipe, option combination) is invalid."""


class ModelLoadError(EncslimError):
    """A path does not hold a loadable model, or its weights do not match its config."""


class UnsupportedModelError(ModelLoadError):
    """The model's ``model_type`` has no registered adapter."""


class DataError(EncslimError):
    """A benchmark or training file is missing, malformed, or inconsistent."""


class PlanError(EncslimError):
    """A removal plan cannot be built or applied (unknown slot, removing every encoder...)."""


class VerificationError(EncslimError):
    """A pruned or exported model does not compute what it should."""


class OutputExistsError(EncslimError):
    """An output folder exists and ``overwrite`` was not requested."""


class BuildLockError(EncslimError):
    """A C++ extension build lock is left from an interrupted build, and a run would wait on it forever."""
