"""Where the shipped demo model lives (``demo/model/``: weights, config, processor, tokenizer, meta)."""

from pathlib import Path

from ..errors import ModelLoadError

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"
DEMO_NAME = "demo"  # what a command line or a recipe writes for the shipped demo model


def demo_model_path():
    """The folder of the trained demo model shipped with encslim.

    Returns:
        ``Path`` to a model folder loadable with :func:`encslim.models.loading.load_model`.

    Raises:
        ModelLoadError: the folder is missing (an installation without package data).
    """
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise ModelLoadError(
            f"the demo model is missing from {DEMO_MODEL_DIR}; reinstall encslim with its package data "
            "or train one with `encslim demo model OUT`"
        )
    return DEMO_MODEL_DIR


def resolve_model_arg(value):
    """A model argument as given on the command line, with ``demo`` meaning the shipped demo model.

    ``demo`` names the demo model unless the current folder holds a model folder called ``demo``
    (one with a ``config.json``; write ``./demo`` to be explicit). Any other value is returned as it is.

    Raises:
        ModelLoadError: ``demo`` was given and the shipped demo model is missing.
    """
    if str(value) == DEMO_NAME and not (Path(DEMO_NAME) / "config.json").is_file():
        return str(demo_model_path())
    return value


__all__ = ["DEMO_MODEL_DIR", "DEMO_NAME", "demo_model_path", "resolve_model_arg"]
