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
    """What the saved weights must hold.

    Returns:
        ``{"keys": {key: shape}}`` for an adapter (its exact tensors), or ``{"numel": n}`` for a
        full model: the number of values in its state dict, shared (tied) tensors counted once.
        A full save may rename keys to the checkpoint layout (transformers' conversion mappings),
        so a model is checked by size, an adapter by name.
    """
    if config.uses_lora:
        from peft import get_peft_model_state_dict

        return {"keys": {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}}
    unique = {}
    for value in model.state_dict().values():
        unique.setdefault((value.data_ptr(), tuple(value.shape)), value.numel())
    return {"numel": sum(unique.values())}


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
    """Raise ``VerificationError`` unless ``folder`` holds the expected weights, complete.

    Args:
        folder: the saved adapter or model folder.
        expected: from :func:`expected_saved`.

    Returns:
        The number of tensors checked.
    """
    shapes = saved_shapes(folder)
    empty = sorted(k for k, s in shapes.items() if 0 in s)
    if "keys" in expected:
        keys = expected["keys"]
        missing = sorted(k for k in keys if k not in shapes)
        wrong = sorted(k for k in keys if k in shapes and shapes[k] != keys[k])
        problems = [(missing, "missing"), (wrong, "with a wrong shape"), (empty, "empty")]
        if missing or wrong or empty:
            first = (missing or wrong or empty)[0]
            counts = ", ".join(f"{len(names)} {what}" for names, what in problems)
            _fail(folder, f"{counts} (first: {first}, saved {shapes.get(first)}, expected {keys.get(first)})")
    else:
        numel = sum(_prod(s) for s in shapes.values())
        if empty or numel != expected["numel"]:
            _fail(folder, f"{numel} values saved, {expected['numel']} expected, {len(empty)} empty tensors")
    return len(shapes)


def _prod(shape):
    out = 1
    for n in shape:
        out *= n
    return out


def _fail(folder, detail):
    raise VerificationError(f"saved weights in {folder} are incomplete: {detail}; under ZeRO-3 set "
                            "stage3_gather_16bit_weights_on_model_save to true")
