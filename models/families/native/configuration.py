"""Configuration of the native encslim multi-encoder MLLM.

Self-contained (transformers only) so that ``export --format remote-code`` can ship it.

A model is ``LLM(fusion(E_1(I), ..., E_n(I)), text)``. Each encoder is a *slot* with a name; the
fusion is one of the classes of DESIGN §1:

==================  ===================================================  ======
fusion type          how a slot enters                                    class
==================  ===================================================  ======
channel_concat       a slice of the projector's input channels            A1/A2
sequence_concat      its own tokens, through its own projector            B
cross_attention      its own K/V projections under learnable queries      C
==================  ===================================================  ======
"""

import math

from transformers import AutoConfig, PretrainedConfig

from ...masking import FusionClass

FUSION_TYPES = ("channel_concat", "sequence_concat", "cross_attention")
PROJECTORS = ("linear_first", "layernorm_first")
CLS_MODES = ("drop", "keep")

# How a transformers vision backbone lays out its features. One entry per model_type:
#   kind "vit":  hidden_states[i] is (B, prefix + grid*grid, hidden_size)
#   kind "conv": hidden_states[i] is (B, C_i, H_i, W_i), stage i has stride patch*2**(i-1)
#   kind "neck": last_hidden_state is (B, C, H, W) after a neck; only feature_layer -1
BACKBONES = {
    "clip_vision_model": {"kind": "vit", "prefix": 1},
    "siglip_vision_model": {"kind": "vit", "prefix": 0},
    "dinov2": {"kind": "vit", "prefix": 1},
    "vit": {"kind": "vit", "prefix": 1},
    "convnext": {"kind": "conv"},
    "sam_vision_model": {"kind": "neck"},
}


def backbone_info(vision_config):
    """Return ``(kind, prefix_tokens)`` of a vision config, or raise ValueError listing the known types."""
    entry = BACKBONES.get(vision_config.model_type)
    if entry is None:
        raise ValueError(
            f"vision backbone '{vision_config.model_type}' is not supported; use one of "
            f"{', '.join(sorted(BACKBONES))}"
        )
    return entry["kind"], entry.get("prefix", 0)


def feature_dim(vision_config, feature_layer):
    """Channels of the features a backbone yields at ``feature_layer``."""
    kind, _ = backbone_info(vision_config)
    if kind == "vit":
        return vision_config.hidden_size
    if kind == "conv":
        stages = list(vision_config.hidden_sizes)
        index = feature_layer if feature_layer >= 0 else len(stages) + 1 + feature_layer
        return stages[max(index - 1, 0)]
    return vision_config.output_channels


def native_grid(vision_config, image_size, feature_layer):
    """Side of the square feature grid a backbone yields for a square image."""
    kind, _ = backbone_info(vision_config)
    if kind == "conv":
        stages = len(vision_config.hidden_sizes)
        index = feature_layer if feature_layer >= 0 else stages + 1 + feature_layer
        return image_size // (vision_config.patch_size * 2 ** max(index - 1, 0))
    return image_size // vision_config.patch_size


class EncslimConfig(PretrainedConfig):
    r"""Configuration of :class:`EncslimForConditionalGeneration`.

    Args:
        text_config (`dict` or `PretrainedConfig`): any causal LM config (Llama, Qwen2, ...).
        encoders (`list[dict]`): one dict per slot, in fusion order, with keys
            ``name`` (unique slot name), ``vision_config`` (a transformers vision config dict with
            ``model_type``), ``image_size`` (square input side), ``feature_layer`` (index into the
            backbone's hidden states, default -1), ``cls`` (``"drop"`` prefix tokens, default, or
            ``"keep"`` them; only without pooling and not with channel_concat), ``grid`` (pool the
            feature map to ``grid x grid`` tokens; default: the fusion grid for channel_concat,
            else the native grid), ``image_mean`` / ``image_std`` (normalisation).
        fusion (`dict`): ``type`` (one of ``FUSION_TYPES``), ``projector`` (channel_concat only:
            ``"linear_first"`` = Eagle's mlp2x_gelu, class A1; ``"layernorm_first"`` = Eagle2's
            LN-Linear-GELU-Linear, class A2), ``grid`` (channel_concat: the common token grid),
            ``num_queries`` and ``num_heads`` (cross_attention); after an A2 removal ``removed_dims``
            (``{slot: channels}`` of removed slots, fed as zeros) and ``layout`` (the concat order).
        image_token_id (`int`): id of the ``<image>`` placeholder in the tokenizer.
        token_budget (`dict`, optional): the visual-token budget the model applies after fusion,
            ``{"method": "pool" | "attention", "budget": 0.25}`` (``tokens.py``; absent: every token).
            Kept as a plain attribute, so ``config.json`` carries it through save and load.
    """

    model_type = "encslim"
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, text_config=None, encoders=None, fusion=None, image_token_id=None,
                 initializer_range=0.02, **kwargs):
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "llama"), **text_config)
        self.text_config = text_config
        self.encoders = [self._normalise_encoder(e) for e in (encoders or [])]
        self.fusion = dict(fusion or {"type": "channel_concat"})
        self.fusion.setdefault("type", "channel_concat")
        if self.fusion["type"] == "channel_concat":
            self.fusion.setdefault("projector", "linear_first")
            self.fusion.setdefault("grid", 4)
        if self.fusion["type"] == "cross_attention":
            self.fusion.setdefault("num_queries", 16)
            self.fusion.setdefault("num_heads", 4)
        self.image_token_id = image_token_id
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        if self.encoders and text_config is not None:
            self.validate()

    @staticmethod
    def _normalise_encoder(enc):
        enc = dict(enc)
        vc = enc.get("vision_config")
        if isinstance(vc, PretrainedConfig):
            vc = vc.to_dict()
        vc = dict(vc or {})
        if "image_size" in enc and "image_size" in _config_defaults(vc):
            vc["image_size"] = enc["image_size"]
        enc["vision_config"] = vc
        enc.setdefault("feature_layer", -1)
        enc.setdefault("cls", "drop")
        enc.setdefault("grid", None)
        enc.setdefault("image_mean", [0.5, 0.5, 0.5])
        enc.setdefault("image_std", [0.5, 0.5, 0.5])
        return enc

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Check cross-field rules; raise one ValueError listing every problem."""
        problems = []
        names = [e.get("name") for e in self.encoders]
        if len(set(names)) != len(names):
            problems.append(f"encoder names must be unique, got {names}")
        fusion = self.fusion["type"]
        if fusion not in FUSION_TYPES:
            problems.append(f"fusion type '{fusion}' unknown; use one of {', '.join(FUSION_TYPES)}")
        if fusion == "channel_concat" and self.fusion.get("projector") not in PROJECTORS:
            problems.append(f"fusion projector must be one of {', '.join(PROJECTORS)}")
        removed = self.fusion.get("removed_dims") or {}
        if removed:  # A2 after removal: the removed slots' zero blocks, in the original concat order
            layout = list(self.fusion.get("layout") or [])
            if self.fusion.get("projector") != "layernorm_first":
                problems.append("fusion removed_dims needs the layernorm_first projector (class A2)")
            if sorted(layout) != sorted(set(names) | set(removed)) or len(set(layout)) != len(layout):
                problems.append(f"fusion layout {layout} must list every slot {names} and every removed slot "
                                f"{sorted(removed)} once")
        for enc in self.encoders:
            name = enc.get("name")
            if not isinstance(name, str) or not name.isidentifier():
                problems.append(f"encoder name {name!r} must be a Python identifier (e.g. 'siglip')")
                continue
            if "image_size" not in enc:
                problems.append(f"encoder '{name}' needs an image_size")
                continue
            if enc["cls"] not in CLS_MODES:
                problems.append(f"encoder '{name}': cls must be one of {', '.join(CLS_MODES)}")
            try:
                vc = self.vision_config(name)
                kind, prefix = backbone_info(vc)
            except (ValueError, KeyError) as err:
                problems.append(f"encoder '{name}': {err}")
                continue
            if enc["cls"] == "keep" and (fusion == "channel_concat" or enc["grid"] or not prefix):
                problems.append(f"encoder '{name}': cls 'keep' needs a ViT with a CLS token, no pooling"
                                " and a fusion other than channel_concat")
            if kind == "neck" and enc["feature_layer"] != -1:
                problems.append(f"encoder '{name}': {vc.model_type} only offers feature_layer -1")
        if problems:
            raise ValueError("; ".join(problems))

    # ------------------------------------------------------------------ slot geometry
    @property
    def slot_names(self):
        return [e["name"] for e in self.encoders]

    @property
    def fusion_class(self):
        """DESIGN §1 class: :class:`FusionClass` A1, A2, B or C."""
        fusion = self.fusion["type"]
        if fusion == "channel_concat":
            return FusionClass.A1 if self.fusion.get("projector") == "linear_first" else FusionClass.A2
        return FusionClass.B if fusion == "sequence_concat" else FusionClass.C

    def encoder(self, name):
        for enc in self.encoders:
            if enc["name"] == name:
                return enc
        raise KeyError(f"unknown slot '{name}'; slots are {', '.join(self.slot_names)}")

    def vision_config(self, name):
        vc = dict(self.encoder(name)["vision_config"])
        return AutoConfig.for_model(vc.pop("model_type"), **vc)

    def slot_feature_dim(self, name):
        enc = self.encoder(name)
        return feature_dim(self.vision_config(name), enc["feature_layer"])

    def slot_grid(self, name):
        """Side of the token grid the slot delivers to the fusion (after pooling)."""
        enc = self.encoder(name)
        if enc["grid"]:
            return enc["grid"]
        if self.fusion["type"] == "channel_concat":
            return self.fusion["grid"]
        return native_grid(self.vision_config(name), enc["image_size"], enc["feature_layer"])

    def slot_num_tokens(self, name):
        """Feature tokens the slot delivers (grid tokens, plus prefix tokens when cls='keep')."""
        enc = self.encoder(name)
        extra = backbone_info(self.vision_config(name))[1] if enc["cls"] == "keep" else 0
        return self.slot_grid(name) ** 2 + extra

    def num_image_tokens(self, kept=None):
        """Image placeholder tokens in the LLM sequence when only ``kept`` slots are present."""
        kept = self.slot_names if kept is None else [s for s in self.slot_names if s in set(kept)]
        fusion = self.fusion["type"]
        if fusion == "sequence_concat":
            return sum(self.slot_num_tokens(s) for s in kept)
        if fusion == "cross_attention":
            return self.fusion["num_queries"]
        return self.fusion["grid"] ** 2

    def token_grids(self, kept=None):
        """The ``(h, w)`` token grids of one image after fusion and projection, in LLM order (token budgets,
        ``tokens.py``), when only ``kept`` slots are present; ``None`` when the model takes no budget.

        channel_concat: the fused ``grid x grid``. sequence_concat: each kept slot's grid (``None`` when a
        slot keeps its CLS token: its tokens are no grid). cross_attention: the queries as a square grid when
        ``num_queries`` is a square, else one row ``(1, num_queries)`` (the attention method's top-k is the
        same either way; pooling a row would merge along it only, so the adapter refuses ``pool`` there).
        """
        kept = self.slot_names if kept is None else [s for s in self.slot_names if s in set(kept)]
        fusion = self.fusion["type"]
        if fusion == "sequence_concat":
            if any(e["cls"] == "keep" for e in self.encoders):
                return None
            return [(self.slot_grid(s), self.slot_grid(s)) for s in kept]
        if fusion == "cross_attention":
            return [square_grid(self.fusion["num_queries"])]
        return [(self.fusion["grid"], self.fusion["grid"])]


def square_grid(tokens):
    """``(s, s)`` when ``tokens == s * s``, else the row ``(1, tokens)``."""
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else (1, tokens)


def _config_defaults(vision_config_dict):
    """The field names of the config class a vision config dict would build."""
    model_type = vision_config_dict.get("model_type")
    if not model_type:
        return {}
    try:
        return AutoConfig.for_model(model_type).to_dict()
    except ValueError:
        return {}


__all__ = ["EncslimConfig", "BACKBONES", "FUSION_TYPES"]
