"""Fold a LoRA adapter into the weights: a plain model folder of the same architecture.

``merge_and_unload`` adds ``B @ A * alpha / r`` to every adapted weight and puts the trained
``modules_to_save`` copies (the fusion, fully trained encoders) back in place, so the merged
model computes what base + adapter computed, with no peft at inference. The merged folder is
checked: the logits of one real-shaped batch (a grey image, a fixed question) through base +
adapter and through the merged model must agree within ``tolerance`` (fp32; differences come
from summation order only, about 1e-6).
"""

import logging
import warnings
from pathlib import Path

from ..errors import ConfigError, VerificationError
from ..files import atomic_output_dir, read_json

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# float32 rounding: W x + B A x (adapter) against (W + B A) x (merged) differs by up to 2.1e-5 in the logits of the
# demo model (64 image tokens, logits of tens); a merge that does not fold is off by orders of magnitude more
MERGE_TOLERANCE = 1e-4
CHECK_QUESTION = "What colour is the shape?"
ADAPTER_FIX = "re-run `encslim finetune` or copy the adapter folder again from where it was written"


def adapter_base(adapter_dir, base=None):
    """The base model folder of an adapter: ``base`` or the adapter's ``base_model_name_or_path``.

    Raises:
        ConfigError: not an adapter folder, or the base folder does not exist.
    """
    config_file = Path(adapter_dir) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise ConfigError(f"{adapter_dir} holds no {ADAPTER_CONFIG}, so it is not a LoRA adapter folder; "
                          "pass the output of `encslim finetune` (or its adapter/ folder)")
    config = read_json(config_file, ADAPTER_FIX)  # read even with --base: peft reads it next
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} holds a JSON {type(config).__name__}, not the object of a LoRA adapter "
                          f"config; {ADAPTER_FIX}")
    if base is None:
        base = config.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise ConfigError(f"the base model of {adapter_dir} ({base}) is not a folder here; pass it with --base")
    return Path(base)


def merge_adapter(adapter_dir, out, base=None, overwrite=False, tolerance=MERGE_TOLERANCE):
    """Write the merged model of ``adapter_dir`` (over ``base``) to ``out``, atomically.

    Args:
        adapter_dir: a peft adapter folder written by :func:`encslim.finetune.finetune`.
        out: the output folder.
        base: the base model folder (default: the one recorded in the adapter).
        overwrite: replace an existing ``out``.
        tolerance: the largest logit difference allowed between base + adapter and merged.

    Returns:
        dict: ``max_abs_logit_diff``, ``tolerance``, ``base``, ``slots``, ``files``.

    Raises:
        ConfigError: not an adapter folder or no base model.
        VerificationError: merged logits differ by more than ``tolerance``.
    """
    base = adapter_base(adapter_dir, base)
    from ..provenance import StageRecord, write_manifest

    with atomic_output_dir(out, overwrite=overwrite, inputs=[adapter_dir, base]) as tmp:
        result = write_merged(adapter_dir, tmp, base=base, tolerance=tolerance)
        write_manifest(tmp, StageRecord("finetune-merge", kept=result["slots"], verification=result), source=base,
                       extra={"adapter": str(Path(adapter_dir).resolve())}, lineage_from=_lineage_folder(adapter_dir, base))
    return result


def _lineage_folder(adapter_dir, base):
    """The folder whose manifest the merged model descends from: the finetune output holding the adapter
    (``adapter_dir`` or, for its ``adapter/`` sub-folder, the folder above), else the base model."""
    from ..files import MANIFEST_NAME

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / MANIFEST_NAME).is_file():
        return adapter_dir
    if adapter_dir.name == "adapter" and (adapter_dir.parent / MANIFEST_NAME).is_file():
        return adapter_dir.parent
    return base


def write_merged(adapter_dir, dest, base=None, tolerance=MERGE_TOLERANCE):
    """Merge ``adapter_dir`` into its base and save the plain model, processor and tokenizer into ``dest``."""
    import torch
    from peft import PeftModel

    from ..models.loading import load_model

    base = adapter_base(adapter_dir, base)
    model, processor, adapter = load_model(base, device="cpu", dtype="float32")
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        try:
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
        except (ValueError, TypeError, KeyError, RuntimeError) as err:
            raise ConfigError(f"could not apply the LoRA adapter in {adapter_dir} to {base}: "
                              f"{(str(err).splitlines() or [type(err).__name__])[0]}; pass the base model it was "
                              f"trained from with --base, or {ADAPTER_FIX}") from err
    batch = _check_batch(adapter, processor)
    with torch.no_grad():  # LoRA lives inside the base model's layers, so the adapter drives it unwrapped
        before = adapter.decode(model, adapter.encode(model, batch), batch).logits
        merged = peft_model.merge_and_unload().eval()
        after = adapter.decode(merged, adapter.encode(merged, batch), batch).logits
    diff = float((before - after).abs().max())
    if not diff <= tolerance:
        raise VerificationError(f"merged logits differ from base + adapter by {diff:.3g} (> {tolerance:g}); "
                                "the adapter does not fold into this model's weights")
    merged.config._name_or_path = ""
    merged.save_pretrained(str(dest))
    processor.save_pretrained(str(dest))
    logger.info("merged %s into %s: max |logit diff| %.3g", adapter_dir, base, diff)
    return {"base": str(base), "max_abs_logit_diff": diff, "tolerance": tolerance,
            "slots": adapter.slot_names(merged.config),
            "files": sorted(p.name for p in Path(dest).iterdir())}


def _check_batch(adapter, processor):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (128, 96, 160))
    return dict(adapter.prepare_batch(processor, [image], [adapter.build_prompt(processor, CHECK_QUESTION)]))
