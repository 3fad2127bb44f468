"""The native family's removal plan, built from ``config.json`` alone: no torch, no transformers.

``encslim prune --streaming --no-verify`` moves bytes; importing torch and transformers (4-5 s)
only to read a config would be most of its start-up. This module gives the family's plan what it
needs from the JSON dict:

* :func:`plan_config`: a :class:`PlanConfig` (the attributes :func:`removal_plan` reads, computed as
  :class:`~encslim.models.families.native.configuration.EncslimConfig` computes them), or ``None`` when the
  document is anything the light reading cannot vouch for (missing sizes that would come from
  transformers' defaults, anything ``EncslimConfig.validate`` would refuse...): the caller then
  takes the full path, which reports the problem as before;
* :func:`removal_plan`: the plan (for a ``PlanConfig`` or an ``EncslimConfig`` alike);
* :func:`check_header`: a header-shape check of a checkpoint against the config (slot towers and
  per-slot fusion weights present for exactly the config's slots, fusion input widths), standing in
  for the meta-model structure check when the model is not built.

``encslim.models.families.native.adapter`` re-exports :func:`removal_plan`; this module imports only the standard
library and encslim's torch-free modules.
"""

from ....errors import ModelLoadError, PlanError
from ...masking import FusionClass
from ...folder import key_problems
from ...plan import Delete, RemovalPlan, Slice, channel_ranges, check_drop

# as configuration_encslim (a test keeps them equal): model_type -> feature layout
BACKBONES = {
    "clip_vision_model": {"kind": "vit", "prefix": 1},
    "siglip_vision_model": {"kind": "vit", "prefix": 0},
    "dinov2": {"kind": "vit", "prefix": 1},
    "vit": {"kind": "vit", "prefix": 1},
    "convnext": {"kind": "conv"},
    "sam_vision_model": {"kind": "neck"},
}
FUSION_TYPES = ("channel_concat", "sequence_concat", "cross_attention")
PROJECTORS = ("linear_first", "layernorm_first")
CLS_MODES = ("drop", "keep")
# the vision-config fields the plan reads, per backbone kind (absent: the transformers default would
# decide, so the light reading declines)
NEEDED = {"vit": ("hidden_size", "patch_size"), "conv": ("hidden_sizes", "patch_size"),
          "neck": ("output_channels", "patch_size")}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class PlanConfig:
    """What the native removal plan reads of a config, from the ``config.json`` dict (see the module doc)."""

    def __init__(self, encoders, fusion, dims, tokens):
        self.encoders = encoders
        self.fusion = fusion
        self._dims = dims
        self._tokens = tokens

    @property
    def slot_names(self):
        return [e["name"] for e in self.encoders]

    @property
    def fusion_class(self):
        fusion = self.fusion["type"]
        if fusion == "channel_concat":
            return FusionClass.A1 if self.fusion.get("projector") == "linear_first" else FusionClass.A2
        return FusionClass.B if fusion == "sequence_concat" else FusionClass.C

    def slot_feature_dim(self, name):
        return self._dims[name]

    def slot_num_tokens(self, name):
        return self._tokens[name]


def _feature_dim(kind, vc, feature_layer):
    if kind == "vit":
        return vc["hidden_size"]
    if kind == "conv":
        stages = list(vc["hidden_sizes"])
        index = feature_layer if feature_layer >= 0 else len(stages) + 1 + feature_layer
        return stages[max(index - 1, 0)]
    return vc["output_channels"]


def _native_grid(kind, vc, image_size, feature_layer):
    if kind == "conv":
        stages = len(vc["hidden_sizes"])
        index = feature_layer if feature_layer >= 0 else stages + 1 + feature_layer
        return image_size // (vc["patch_size"] * 2 ** max(index - 1, 0))
    return image_size // vc["patch_size"]


def plan_config(data):
    """A :class:`PlanConfig` of a native ``config.json`` dict, or ``None`` when the full reading must decide."""
    try:
        return _plan_config(data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError):
        return None


def _plan_config(data):
    if not isinstance(data, dict) or data.get("model_type") != "encslim":
        return None
    encoders, fusion = data.get("encoders"), _plan_fusion(data)
    if not isinstance(encoders, list) or not encoders or fusion is None:
        return None
    normalised, dims, tokens = [], {}, {}
    for enc in encoders:
        slot = _plan_encoder(enc, fusion, dims)
        if slot is None:
            return None
        enc, dims[enc["name"]], tokens[enc["name"]] = slot
        normalised.append(enc)
    if not _removed_dims_fit(fusion, dims):
        return None
    return PlanConfig(normalised, fusion, dims, tokens)


def _plan_fusion(data):
    """The fusion block with its defaults, ``None`` when it (or the text config) is not one the plan reads."""
    fusion = data.get("fusion")
    if not isinstance(data.get("text_config"), dict) or not isinstance(fusion, dict):
        return None
    if not data["text_config"].get("model_type"):
        return None
    fusion = dict(fusion)
    fusion.setdefault("type", "channel_concat")
    if fusion["type"] not in FUSION_TYPES:
        return None
    if fusion["type"] == "channel_concat":
        fusion.setdefault("projector", "linear_first")
        fusion.setdefault("grid", 4)
        if fusion["projector"] not in PROJECTORS or not _is_int(fusion["grid"]):
            return None
    if fusion["type"] == "cross_attention":
        fusion.setdefault("num_queries", 16)
        fusion.setdefault("num_heads", 4)
    return fusion


def _plan_encoder(enc, fusion, dims):
    """``(encoder with defaults, feature width, tokens)`` of one encoder entry; ``None`` when unreadable
    (or its name repeats one in ``dims``)."""
    if not isinstance(enc, dict):
        return None
    enc = dict(enc)
    name, vc = enc.get("name"), enc.get("vision_config")
    if not isinstance(name, str) or not name.isidentifier() or name in dims or not isinstance(vc, dict):
        return None
    enc.setdefault("feature_layer", -1)
    enc.setdefault("cls", "drop")
    enc.setdefault("grid", None)
    entry = BACKBONES.get(vc.get("model_type"))
    image_size, layer, grid = enc.get("image_size"), enc["feature_layer"], enc["grid"]
    if entry is None or not _is_int(image_size) or not _is_int(layer) or enc["cls"] not in CLS_MODES:
        return None
    if grid is not None and not _is_int(grid):
        return None
    kind, prefix = entry["kind"], entry.get("prefix", 0)
    if any(field not in vc for field in NEEDED[kind]):
        return None
    if enc["cls"] == "keep" and (fusion["type"] == "channel_concat" or grid or not prefix):
        return None
    if kind == "neck" and layer != -1:
        return None
    dim = _feature_dim(kind, vc, layer)
    if not _is_int(dim):
        return None
    if grid:
        side = grid
    elif fusion["type"] == "channel_concat":
        side = fusion["grid"]
    else:
        side = _native_grid(kind, vc, image_size, layer)
    return enc, dim, side ** 2 + (prefix if enc["cls"] == "keep" else 0)


def _removed_dims_fit(fusion, dims):
    """Whether an A2 model's removed zero blocks (``fusion.removed_dims``) agree with its layout and slots."""
    removed = fusion.get("removed_dims") or {}
    if not removed:
        return True
    layout = list(fusion.get("layout") or [])
    if fusion.get("projector") != "layernorm_first" or not isinstance(removed, dict):
        return False
    if sorted(layout) != sorted(set(dims) | set(removed)) or len(set(layout)) != len(layout):
        return False
    return all(_is_int(v) for v in removed.values())


def removal_plan(config, drop):
    """The removal plan of a native ``encslim`` model (fusion classes A1, A2, B, C).

    Args:
        config: an ``EncslimConfig`` or a :class:`PlanConfig`.
        drop: slot names to remove.

    Returns:
        a :class:`RemovalPlan`.

    Raises:
        PlanError: unknown slot or removing every slot.
    """
    slots = list(config.slot_names)
    drop = check_drop(slots, drop)
    fusion = FusionClass(config.fusion_class)
    deletes = [Delete(f"vision_towers.{s}.", s) for s in drop]
    slices, notes, exact = [], [], True
    config_patch = [{"op": "remove_items", "path": "encoders", "field": "name", "values": drop}]
    if fusion == FusionClass.A1:
        dims = {s: config.slot_feature_dim(s) for s in slots}
        keep, removed = channel_ranges(slots, dims, drop)
        slices.append(Slice("fusion.projector.0.weight", 1, sum(dims.values()), keep, removed))
    elif fusion == FusionClass.A2:
        # the LayerNorm takes its statistics over the whole concat, the zero-masked block included: the
        # block stays as constant zeros (fusion.removed_dims, in the original order fusion.layout), so the
        # LayerNorm and projector are unchanged and the pruned model computes the zero-masked one exactly
        removed_dims = dict(config.fusion.get("removed_dims") or {})
        removed_dims.update({s: config.slot_feature_dim(s) for s in drop})
        layout = list(config.fusion.get("layout") or slots)
        config_patch += [{"op": "set", "path": "fusion.layout", "value": layout},
                         {"op": "set", "path": "fusion.removed_dims", "value": removed_dims}]
        notes.append("A2 (LayerNorm-first projector): the removed slot's channels enter the LayerNorm as zeros, "
                     "as the zero mask had them, so its statistics (over the full width) and the projector are "
                     "unchanged; exact. The projector keeps those columns (they see the LayerNorm's output for "
                     "the zero block, which depends on each token's statistics)")
    elif fusion == FusionClass.B:
        deletes += [Delete(f"fusion.projectors.{s}.", s) for s in drop]
        notes.append(f"B: {sum(config.slot_num_tokens(s) for s in drop)} fewer image tokens per image")
    elif fusion == FusionClass.C:
        deletes += [Delete(f"fusion.{proj}.{s}.", s) for s in drop for proj in ("k_proj", "v_proj")]
    else:  # pragma: no cover - the config validates its fusion type
        raise PlanError(f"fusion class {fusion} has no removal rule")
    processor_ops = [{"op": "remove_items", "path": "encoders", "field": "name", "values": drop}]
    if fusion == FusionClass.B:
        processor_ops += [{"op": "delete", "path": f"image_tokens.{s}", "optional": True} for s in drop]
    return RemovalPlan(
        model_type="encslim", fusion_class=fusion.value, slots=slots, drop=drop, delete_keys=deletes,
        slices=slices, config_patch=config_patch,
        processor_patch={"processor_config.json": processor_ops}, exact=exact, notes=notes,
    )


# ---------------------------------------------------------------------------- header-shape check
TOP_LEVEL = ("vision_towers.", "fusion.", "language_model.")


def _slot_groups(shapes, prefix):
    """``{slot: [keys]}`` of the keys under ``prefix{slot}.``."""
    groups = {}
    for key in shapes:
        if key.startswith(prefix):
            groups.setdefault(key[len(prefix):].split(".", 1)[0], []).append(key)
    return groups


def header_problems(config, shapes):
    """What the checkpoint header ``shapes`` (``{key: shape}``) contradicts in ``config``: a list of phrases.

    Checks the keys the config decides without building the model: every tensor sits under a
    native module (tower, fusion, LLM); the towers (and for B the projectors, for C the K/V
    projections) are exactly the config's slots; the fusion's input width is the slots' feature
    widths (A1/A2: with the removed zero blocks; B/C: per slot).
    """
    problems = []
    slots = list(config.slot_names)
    other = sorted(k for k in shapes if not k.startswith(TOP_LEVEL))
    if other:
        problems.append(f"{len(other)} unexpected (e.g. {other[0]})")

    def same_slots(prefix, what):
        found = _slot_groups(shapes, prefix)
        missing, extra = [s for s in slots if s not in found], sorted(set(found) - set(slots))
        if missing:
            problems.append(f"no {what} for slot '{missing[0]}' (no tensor under '{prefix}{missing[0]}.')")
        if extra:
            problems.append(f"{len(found[extra[0]])} unexpected (e.g. {sorted(found[extra[0]])[0]}): "
                            f"slot '{extra[0]}' is not in config.json")

    widths = {}  # key -> expected shape, None for the sizes the config does not decide

    def width(key, dim, expected, ndim=2):
        widths[key] = tuple(expected if i == dim else None for i in range(ndim))

    same_slots("vision_towers.", "vision tower")
    fusion = FusionClass(config.fusion_class)
    if fusion in (FusionClass.A1, FusionClass.A2):
        removed = dict(config.fusion.get("removed_dims") or {})
        in_dim = sum(config.slot_feature_dim(s) for s in slots) + sum(removed.values())
        if fusion == FusionClass.A1:
            width("fusion.projector.0.weight", 1, in_dim)
        else:
            width("fusion.projector.0.weight", 0, in_dim, ndim=1)  # the LayerNorm
            width("fusion.projector.1.weight", 1, in_dim)
    elif fusion == FusionClass.B:
        same_slots("fusion.projectors.", "projector")
        for s in slots:
            if f"fusion.projectors.{s}.0.weight" in shapes:
                width(f"fusion.projectors.{s}.0.weight", 1, config.slot_feature_dim(s))
    elif fusion == FusionClass.C:
        for proj in ("k_proj", "v_proj"):
            same_slots(f"fusion.{proj}.", proj)
            for s in slots:
                if f"fusion.{proj}.{s}.weight" in shapes:
                    width(f"fusion.{proj}.{s}.weight", 1, config.slot_feature_dim(s))
    checked = key_problems(widths, {k: shapes[k] for k in widths if k in shapes})
    problems += [f"1 missing (e.g. {key})" for key in checked.missing]
    for key, got, want in checked.mismatched:
        dim = next(i for i, size in enumerate(want) if size is not None)
        problems.append(f"1 of another shape (e.g. {key}: {list(got)}, expected size {want[dim]} in dim {dim})")
    return problems


def check_header(config, shapes, where):
    """Raise ``ModelLoadError`` if the header ``shapes`` do not fit ``config`` (see :func:`header_problems`)."""
    problems = header_problems(config, shapes)
    if problems:
        raise ModelLoadError(f"checkpoint keys of {where} do not match its config.json: {', '.join(problems)}; "
                             "the weights belong to another model or config")


__all__ = ["PlanConfig", "check_header", "header_problems", "plan_config", "removal_plan"]
