"""The side-file policy: which files of a model folder a model made from it carries (:func:`carried`).

Besides ``config.json`` and the weights, a model folder holds files that describe the model itself
(processor, tokenizer, generation config, chat templates, remote code): a model made from it (pruned,
or re-written by export) needs them. Anything else (source weights in other formats, the source's
manifest, model card, plots, notes) describes the source: it is left out, and named in the manifest.
"""

from __future__ import annotations

from ..files import INDEX_NAME
from .checkpoint import BIN_INDEX_NAME

# the files that describe the model itself (see the module docstring), by name, name prefix and folder
CARRIED_NAMES = frozenset({
    "generation_config.json", "processor_config.json", "preprocessor_config.json", "image_processor_config.json",
    "video_preprocessor_config.json", "feature_extractor_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.json", "chat_template.jinja",
})
CARRIED_PREFIXES = ("tokenizer", "chat_template")
CARRIED_DIRS = frozenset({"additional_chat_templates"})


def carried(name: str, is_dir: bool = False) -> bool:
    """Whether a file (or folder) of a model folder belongs in a model made from it (besides config and
    weights): processor and tokenizer files, chat templates, remote-code ``.py`` files."""
    if is_dir:
        return name in CARRIED_DIRS
    return (name in CARRIED_NAMES or name.startswith(CARRIED_PREFIXES) or name.endswith(".py")
            or name.endswith(".tiktoken"))


def is_weights(name: str, bin_format: bool = False) -> bool:
    """Whether ``name`` is the weights or their index (read as :class:`~encslim.models.checkpoint.Checkpoint`):
    safetensors, or ``.bin`` when the folder has no safetensors weights (``bin_format``); weights of another
    format than the checkpoint's describe the source and are left out."""
    if bin_format and (name == BIN_INDEX_NAME or name.endswith(".bin")):
        return True
    return name == INDEX_NAME or name.endswith(".safetensors")
