"""Where the shipped demo model lives (``demo/model/``: weights, config, processor, tokenizer, meta)."""

from pathlib import Path

from ..errors import ModelLoadError

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"


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


__all__ = ["DEMO_MODEL_DIR", "demo_model_path"]
