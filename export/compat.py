"""What older readers of an exported folder need beside transformers 5's files.

transformers 5 saves a tokenizer as ``tokenizer.json`` only and a RoPE setting as ``rope_parameters``
only. The code the families' checkpoints come from reads other spellings: NVlabs/EAGLE and MMVP load
their Llama tokenizer with ``use_fast=False`` (a SentencePiece ``tokenizer.model``), and transformers
4.4x reads ``rope_theta``/``rope_scaling`` (without them it takes theta 10000, silently changing a
Llama-3 model's positions, theta 500000). An export of the same model keeps both spellings: the slow
tokenizer files are carried byte for byte from the source, the RoPE keys are written beside
``rope_parameters`` with the same values. Pure functions and file copies; no torch.
"""

import json
import shutil
from pathlib import Path

from ..files import CONFIG_NAME

# files a slow (Python) tokenizer reads, which transformers 5's save_pretrained does not write again
SLOW_TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
                        "vocab.txt", "special_tokens_map.json", "added_tokens.json")


def legacy_rope_keys(config):
    """``config`` (a ``config.json`` dict, nested sub-configs included) with ``rope_theta`` and
    ``rope_scaling`` written beside every ``rope_parameters`` that lacks them; other keys untouched.

    ``rope_scaling`` is ``None`` for the default RoPE and otherwise ``rope_parameters`` without the
    theta, with both ``type`` and ``rope_type`` (transformers 4.4x reads either).
    """
    if isinstance(config, list):
        return [legacy_rope_keys(item) for item in config]
    if not isinstance(config, dict):
        return config
    out = {key: legacy_rope_keys(value) for key, value in config.items()}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out.setdefault("rope_theta", rope["rope_theta"])
        kind = rope.get("rope_type", "default")
        if "rope_scaling" not in config or config["rope_scaling"] is None:
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            out["rope_scaling"] = None if kind == "default" else {**scaling, "type": kind, "rope_type": kind}
    return out


def write_legacy_rope_keys(folder):
    """Add :func:`legacy_rope_keys` to ``folder/config.json``; returns whether the file changed."""
    path = Path(folder) / CONFIG_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    patched = legacy_rope_keys(data)
    if patched == data:
        return False
    path.write_text(json.dumps(patched, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def carry_slow_tokenizer(source, folder):
    """Copy the source's slow-tokenizer files that ``folder`` lacks, byte for byte; returns their names.

    Only for a folder that holds the source's tokenizer unchanged (``hf``/``remote-code``): a converted
    tokenizer (a LLaVA export adds ``<image>``) must not be paired with the old vocabulary files.
    """
    carried = []
    for name in SLOW_TOKENIZER_FILES:
        src, dst = Path(source) / name, Path(folder) / name
        if src.is_file() and not dst.exists():
            shutil.copyfile(src, dst)
            carried.append(name)
    return carried


__all__ = ["SLOW_TOKENIZER_FILES", "carry_slow_tokenizer", "legacy_rope_keys", "write_legacy_rope_keys"]
