"""What a finished run must have saved, and the check that it did (complete, not placeholders).

Under DeepSpeed ZeRO-3 each process holds only a shard of every parameter; a save that does not
gather them writes tensors of shape ``(0,)``. The expected names and shapes are taken before
training, while the model is whole, and every saved file is compared against them.
"""

import json
from pathlib import Path

from ..errors import VerificationError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def expected_saved(model, config):
    """``{key: shape}`` the saved weights must hold: the adapter's tensors, or every trainable parameter."""
    if config.uses_lora:
        from peft import get_peft_model_state_dict

        return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    state = model.state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: tuple(v.shape) for k, v in state.items() if k in trainable}


def saved_shapes(folder):
    """``{key: shape}`` of every tensor in the safetensors weights of ``folder`` (adapter or model, sharded or not)."""
    from safetensors import safe_open

    folder = Path(folder)
    files = [folder / ADAPTER_WEIGHTS] if (folder / ADAPTER_WEIGHTS).is_file() else _model_files(folder)
    shapes = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _model_files(folder):
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted({folder / name for name in weight_map.values()})
    single = folder / "model.safetensors"
    if not single.is_file():
        raise VerificationError(f"{folder} holds no safetensors weights after training; the save failed")
    return [single]


def check_saved(folder, expected):
    """Raise ``VerificationError`` unless ``folder`` holds every expected tensor with its full shape.

    Args:
        folder: the saved adapter or model folder.
        expected: ``{key: shape}`` from :func:`expected_saved`.

    Returns:
        The number of tensors checked.
    """
    shapes = saved_shapes(folder)
    missing = sorted(k for k in expected if k not in shapes)
    wrong = sorted(k for k in expected if k in shapes and shapes[k] != expected[k])
    empty = sorted(k for k, s in shapes.items() if 0 in s)
    if missing or wrong or empty:
        first = (missing or wrong or empty)[0]
        raise VerificationError(
            f"saved weights in {folder} are incomplete: {len(missing)} missing, {len(wrong)} with a wrong shape, "
            f"{len(empty)} empty (first: {first}, saved {shapes.get(first)}, expected {expected.get(first)}); "
            "under ZeRO-3 set stage3_gather_16bit_weights_on_model_save to true"
        )
    return len(expected)
