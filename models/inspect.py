"""``encslim inspect``: what a multi-encoder model is made of, slot by slot, from the folder alone.

No weight is read: the family's own loader runs (its config reading, its strict key check against
the safetensors headers, its config fitting to the checkpoint) with the weight read replaced by a
build on the meta device (:func:`meta_load`). Parameters are counted on that meta model and
checked against the headers; FLOPs are counted with ``FlopCounterMode`` running each slot's
encoder on meta tensors of its input shape. A 7B-class folder is inspected in seconds, in well
under 1 GB.
"""

import contextlib
import re

from .folder import Checkpoint, key_problems
from .loading import load_model, open_folder

FLOPS_META = "meta"  # counted on meta tensors: exact for the architecture
FLOPS_ASSUMED = "meta, data-dependent branch(es) taken as True"


def _saved_state(model):
    """The meta model's state dict under the keys ``save_pretrained`` writes (transformers' weight
    conversions reverted, as the checkpoint holds them)."""
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without weight conversions: the keys are the module's
        return state
    return revert_weight_conversion(model, state)


def header_report(model, shapes):
    """The load report ``from_pretrained`` would give for a checkpoint of header ``shapes`` (``{key: shape}``)
    into ``model`` (meta), for the loaders that check transformers' report: the model's state-dict keys
    against the headers, a tied key may be absent, and a checkpoint whose every key carries the model's
    ``base_model_prefix`` once more (which transformers strips) fits when the stripped keys do."""
    expected = {k: tuple(v.shape) for k, v in _saved_state(model).items()}
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or ()
    problems = key_problems(expected, shapes, optional=tied)
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if problems and prefix != "." and shapes and all(k.startswith(prefix) for k in shapes):
        stripped = key_problems(expected, {k[len(prefix):]: v for k, v in shapes.items()}, optional=tied)
        problems = stripped if not stripped else problems
    return {"missing_keys": list(problems.missing), "unexpected_keys": list(problems.unexpected),
            "mismatched_keys": list(problems.mismatched), "error_msgs": []}


@contextlib.contextmanager
def _weights_on_meta(model_class, shapes):
    """Within the block, ``model_class.from_pretrained(path, config=...)`` builds the model on the
    meta device instead of reading weights; asked for its load report, it compares the model with the
    checkpoint's header ``shapes`` (:func:`header_report`), so the loader's strict check still runs."""
    import torch

    original = model_class.__dict__.get("from_pretrained")

    def build(cls, path, *args, config=None, output_loading_info=False, **kwargs):
        config = config if config is not None else cls.config_class.from_pretrained(str(path))
        with torch.device("meta"):
            model = cls(config)
        model.eval()
        return (model, header_report(model, shapes)) if output_loading_info else model

    model_class.from_pretrained = classmethod(build)
    try:
        yield
    finally:
        if original is None:
            del model_class.from_pretrained
        else:
            model_class.from_pretrained = original


def meta_load(path, encoders=None):
    """``(model, processor, adapter)`` of a folder with the model on the meta device: no weight read.

    The folder is opened first (:func:`~encslim.models.loading.open_folder`: each shard checked). The
    family's loader then does everything it does in :func:`~encslim.models.loading.load_model` (reads
    the config, checks the checkpoint keys against the headers and refuses what does not fit, sizes
    parts the checkpoint decides, loads the processor) except reading tensors. A folder with ``.bin``
    weights only (no headers to check) is loaded as ``load_model`` does.

    Args:
        path: the model folder, or a :class:`~encslim.models.folder.ModelFolder`.
        encoders: ``{slot: folder}`` of encoders the checkpoint does not hold (Cambrian).

    Raises:
        ModelLoadError: not a model folder, unsupported family, a truncated or corrupt shard, or a
            checkpoint that does not fit.
    """
    folder = open_folder(path, encoders)
    if folder.weights is None:
        return load_model(folder)
    adapter = folder.adapter
    model_class = type(adapter.empty_model(adapter.read_config(str(folder.path))))
    with _weights_on_meta(model_class, folder.weights.shapes()):
        model, processor = adapter.load(str(folder.path), device="meta")
    return model, processor, adapter


class _MetaScalars:
    """A dispatch mode answering ``bool(t)``/``t.item()`` of a meta bool tensor with ``True``.

    Meta tensors hold no data; code that branches on one (transformers' "is the padding mask all
    ones?" fast path) would stop. One blank unpadded image makes such checks true; the count of
    answered branches is kept so that the method can be reported.
    """

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            answered = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                scalar = func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)
                if scalar and args[0].device.type == "meta" and args[0].dtype == torch.bool:
                    type(self).answered += 1
                    return True
                return func(*args, **(kwargs or {}))

        return Mode()


def _slot_flops(model, processor, adapter, slot, side):
    """``(FLOPs, method)`` of one forward of ``slot``'s encoder on one blank image (``None`` if it cannot run)."""
    import torch
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    names = adapter.slot_names(model.config)
    others = frozenset(s for s in names if s != slot)
    batch = adapter.prepare_batch(processor, [Image.new("RGB", (side, side))], [adapter.build_prompt(processor, "")],
                                  masked=others)
    meta = model.device.type == "meta"
    if meta:
        batch = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}
    mode = _MetaScalars() if meta else contextlib.nullcontext()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, mode:
            adapter.encode(model, batch, [slot])
    except (RuntimeError, NotImplementedError) as err:
        return None, f"not counted: the encoder does not run on meta tensors ({str(err).splitlines()[0]})"
    if not meta:
        return int(counter.get_total_flops()), "measured"
    return int(counter.get_total_flops()), FLOPS_ASSUMED if type(mode).answered else FLOPS_META


def vision_flops(model, processor, adapter, slots=None):
    """FLOPs of one forward of each slot's encoder on one blank image at its input size.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; a
    multiply-add counts as 2 FLOPs) around :meth:`Adapter.encode` of that slot alone, so the
    figure is exact for the architecture. ``model`` may be on the meta device (:func:`meta_load`).

    Returns:
        ``{slot: FLOPs}`` (``None`` for a slot whose encoder cannot run on meta tensors).
    """
    return {slot: flops for slot, (flops, _) in _flops_and_methods(model, processor, adapter, slots).items()}


def _flops_and_methods(model, processor, adapter, slots=None):
    side = max(s.image_size for s in adapter.slots(model.config))
    return {slot: _slot_flops(model, processor, adapter, slot, side)
            for slot in slots or adapter.slot_names(model.config)}


def _count(module):
    return sum(p.numel() for p in module.parameters())


def header_parameters(path, model):
    """Elements of the checkpoint's tensors that are parameters of ``model`` (buffers left out),
    summed from the safetensors headers; ``None`` when the folder has no safetensors weights."""
    from ..errors import ModelLoadError

    try:
        shapes = Checkpoint.open(path).shapes()
    except ModelLoadError:
        return None
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    total = 0
    for key, shape in shapes.items():  # buffers, and the keys the model ignores (4.3x's inv_freq), left out
        if key not in buffers and not any(p.search(key) for p in ignored):
            n = 1
            for d in shape:
                n *= int(d)
            total += n
    return total


def _slot_rows(config, adapter, per_slot, flops):
    counted = [f for f, _ in flops.values() if f is not None]
    total_flops = sum(counted) or 1
    rows = []
    for slot in adapter.slots(config):
        value, method = flops[slot.name]
        rows.append({
            "name": slot.name,
            "backbone": slot.backbone,
            "image_size": slot.image_size,
            "tokens": slot.num_tokens,
            "feature_shape": [slot.num_tokens, slot.feature_dim],
            "params": per_slot[slot.name]["vision"] + per_slot[slot.name]["fusion"],
            "params_vision": per_slot[slot.name]["vision"],
            "params_fusion": per_slot[slot.name]["fusion"],
            "vision_flops": value,
            "vision_flops_share": None if value is None else value / total_flops,
            "vision_flops_method": method,
            "removal_exact": slot.removal_exact,
        })
    return rows


def inspect_model(path, encoders=None):
    """Describe a model folder: slots, fusion, parameters, FLOPs. Returns a JSON-able dict.

    Nothing is loaded but the config, the safetensors headers and the processor (:func:`meta_load`).
    ``params_total`` is counted on the meta model; ``params_in_headers`` sums the checkpoint's
    parameter tensors from the headers, and ``params_match`` says whether the two agree.

    Raises:
        ModelLoadError: the folder is not a model, its family is unsupported, or its checkpoint
            does not fit its config.
    """
    model, processor, adapter = meta_load(path, encoders)
    config = model.config
    per_slot = adapter.slot_parameters(model)
    parts = adapter.parts(model)
    shared = _count(parts["fusion"]) - sum(p["fusion"] for p in per_slot.values())
    # encoders a family keeps outside the module tree (Cambrian's) count too, each parameter once
    params = {id(p): p for m in (model, *adapter.encoders(model).values()) for p in m.parameters()}
    total = sum(p.numel() for p in params.values())
    in_headers = header_parameters(path, model)
    fusion_class, settings = adapter.fusion_class(config), adapter.fusion_settings(config)
    text = getattr(config, "text_config", config)
    return {
        "path": str(path),
        "model_type": config.model_type,
        "fusion": {
            "type": settings.get("type", fusion_class.value),
            "class": fusion_class.value,
            "settings": settings,
            "shared_params": shared,
            "image_tokens": adapter.image_tokens(config),
        },
        "slots": _slot_rows(config, adapter, per_slot, _flops_and_methods(model, processor, adapter)),
        "llm": {"model_type": text.model_type, "params": _count(parts["language_model"]),
                "hidden_size": text.hidden_size},
        "params_total": total,
        "params_in_headers": in_headers,
        "params_match": in_headers is None or in_headers == total - _outside_tree(model, adapter),
        "export_targets": adapter.export_targets(config, adapter.slot_names(config)),
    }


def _outside_tree(model, adapter):
    """Parameters of encoders the checkpoint does not hold (kept outside the model's module tree)."""
    inside = {id(p) for p in model.parameters()}
    return sum(p.numel() for m in adapter.encoders(model).values() for p in m.parameters() if id(p) not in inside)


def format_inspection(info):
    """A human table of :func:`inspect_model`'s result.

    Each column is as wide as its widest cell, and columns are two spaces apart, so the
    hundreds of billions of FLOPs of a large encoder never run into its parameter count.
    """
    header = ["slot", "backbone", "input", "tokens", "dim", "params", "vision FLOPs", "share"]
    rows = [_slot_cells(s) for s in info["slots"]]
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = [
        f"model   {info['path']}  ({info['model_type']})",
        f"fusion  {info['fusion']['type']} (class {info['fusion']['class']}), "
        f"{info['fusion']['image_tokens']} image tokens, {info['fusion']['shared_params']:,} shared params",
        "",
        _table_row(header, widths) + "  exact removal",
    ]
    notes = []
    for s, row in zip(info["slots"], rows):
        lines.append(_table_row(row, widths) + f"  {'yes' if s['removal_exact'] else 'no (finetune after removal)'}")
        if s["vision_flops_method"] not in (FLOPS_META, "measured"):
            notes.append(f"        {s['name']}: FLOPs {s['vision_flops_method']}")
    lines += notes + [
        "",
        f"LLM     {info['llm']['model_type']}, {info['llm']['params']:,} params",
        f"total   {info['params_total']:,} params",
    ]
    if not info["params_match"]:
        lines.append(f"        the safetensors headers hold {info['params_in_headers']:,} parameters")
    return "\n".join(lines)


def _slot_cells(slot):
    """One slot's cells: name and backbone as text, the numbers with thousands separators."""
    flops = "?" if slot["vision_flops"] is None else f"{slot['vision_flops']:,}"
    share = "?" if slot["vision_flops_share"] is None else f"{slot['vision_flops_share']:.1%}"
    return [slot["name"], slot["backbone"], str(slot["image_size"]), str(slot["tokens"]),
            str(slot["feature_shape"][1]), f"{slot['params']:,}", flops, share]


def _table_row(cells, widths):
    """Text left-aligned (the first two columns), numbers right-aligned; columns two spaces apart."""
    text = [f"{c:<{w}}" for c, w in zip(cells[:2], widths[:2])]
    numbers = [f"{c:>{w}}" for c, w in zip(cells[2:], widths[2:])]
    return "  ".join(text + numbers)
