"""I-MoF's config (tsb0601/MMVP's LLaVA-1.5 layout): the class, detection, checks and reading.

Follows ``LLaVA/llava/model/language_model/llava_llama.py`` (``LlavaConfig``, ``model_type: llava``) of
tsb0601/MMVP and the keys ``llava_arch.LlavaMetaModel`` builds its towers and projectors from:
``mm_vision_tower`` (``openai/clip-vit-large-patch14-336``, built twice: CLIP and, in ``dino_encoder``,
DINOv2), ``mm_projector_type`` (``mlp2x_gelu``), ``mm_hidden_size`` (1024, both projectors),
``mm_vision_select_layer`` (-2, CLIP only) and ``mm_vision_select_feature`` (``patch``).

Detection (:func:`is_imof_config`): the original writes no key naming DINO (``LlavaMetaModel``
builds both towers for every config with ``mm_vision_tower``), so a ``llava`` (MMVP's own
``LlavaConfig.model_type``) or ``llava_llama`` config with LLaVA-1.5's keys and one
``openai``/``laion`` tower is taken as I-MoF; the checkpoint must then hold the DINOv2 tower
(strict loading says so otherwise). Eagle (``;`` in ``mm_vision_tower``), Cambrian
(``mm_vision_tower_aux_list``) and stock transformers LLaVA (``vision_config``) do not match.

encslim-only config keys (absent from real checkpoints; defaults are the real model):
``imof_towers`` (the towers left, ``["clip", "dinov2"]``; an unknown name is an error naming it),
``imof_clip_spec`` (CLIPVisionConfig overrides), ``imof_dino_spec`` (DINOv2 sizes) and
``imof_dino_clip_copy`` (whether the DINO tower holds its unused CLIP copy; set from the checkpoint when
loading). A config without the two specs (MMVP's) gets the sizes the checkpoint's shapes say
(:func:`fit_tower_specs`): MMVP's config names only the towers' hub id. A pruned config says
``imof_llama`` and renames ``mm_vision_tower`` (:data:`PRUNED_TOWER_PREFIX`) so that MMVP's loader refuses it.
``token_budget`` (encslim's visual-token budget, :mod:`encslim.models.tokens`) is kept as a plain attribute,
so ``config.json`` carries it through save and load; MMVP's code ignores it.
"""

import math
import re

from transformers import LlamaConfig

from ....errors import ModelLoadError
from ....files import CONFIG_NAME
from ...folder import weight_names
from ...layout import header_shapes, make_config, read_config_json

MODEL_TYPE = "imof_llama"
ORIGINAL_MODEL_TYPES = ("llava", "llava_llama")  # MMVP's LlavaConfig says "llava"; later LLaVA "llava_llama"
TOWERS = ("clip", "dinov2")  # slot names, in interleaving order (even, odd positions)
CLIP_PREFIX = "model.vision_tower."
DINO_PREFIX = "model.dino_tower."
DINO_CLIP_COPY = "model.dino_tower.clip_vision_tower."
PROJECTORS = {"clip": "model.mm_projector.", "dinov2": "model.dino_mm_projector."}
TOWER_PREFIXES = {"clip": CLIP_PREFIX, "dinov2": DINO_PREFIX}
IMOF_KEYS = ("mm_vision_tower", "mm_projector_type", "mm_hidden_size")
# a pruned I-MoF's mm_vision_tower starts with this: MMVP's build_vision_tower (LLaVA/llava/model/
# multimodal_encoder/builder.py) raises "Unknown vision tower" for a name not starting with openai/laion, so
# MMVP's loader refuses the folder instead of rebuilding the removed tower from the hub
PRUNED_TOWER_PREFIX = "encslim-imof:"
HEAD_WIDTH = 64  # every CLIP and DINOv2 has 64-wide heads: the head count of a checkpoint's width

CLIP_DEFAULT_SPEC = {  # openai/clip-vit-large-patch14-336
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
DINO_DEFAULT_SPEC = {  # dinov2_vitl14 as dinov2/hub/backbones.py builds it
    "embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0, "patch_size": 14, "img_size": 518,
    "init_values": 1.0, "num_register_tokens": 0, "interpolate_offset": 0.1, "interpolate_antialias": False,
}



def spec_over(defaults, spec, what):
    unknown = set(spec or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {what} size key(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(spec or {})}


def is_imof_config(config_dict):
    """Whether a ``config.json`` dict is I-MoF (see the module docstring): by keys, not ``model_type`` alone.

    An ``imof_llama`` config (encslim's own, e.g. a pruned one whose ``mm_vision_tower`` is renamed so that
    MMVP's loader refuses it, see :data:`PRUNED_TOWER_PREFIX`) needs no ``openai``/``laion`` tower name.
    """
    tower = str(config_dict.get("mm_vision_tower") or "")
    own = config_dict.get("model_type") == MODEL_TYPE
    return (config_dict.get("model_type") in (MODEL_TYPE, *ORIGINAL_MODEL_TYPES)
            and all(k in config_dict for k in IMOF_KEYS)
            and (own or tower.startswith(("openai", "laion"))) and ";" not in tower  # build_vision_tower's condition
            and "mm_vision_tower_aux_list" not in config_dict and "vision_config" not in config_dict)


def check_towers(towers):
    """``towers`` in interleaving order; ``ValueError`` naming any unknown one and the known ones."""
    towers = list(towers)
    unknown = [t for t in towers if t not in TOWERS]
    if unknown:
        raise ValueError(f"imof_towers names unknown tower(s) {', '.join(map(repr, unknown))}; "
                         f"I-MoF's towers are {', '.join(TOWERS)}")
    return [t for t in TOWERS if t in set(towers)]


class ImofConfig(LlamaConfig):
    """``imof_llama``: Llama plus LLaVA-1.5's vision keys and encslim's ``imof_*`` keys."""

    model_type = MODEL_TYPE

    def __init__(self, mm_vision_tower="openai/clip-vit-large-patch14-336", mm_projector_type="mlp2x_gelu",
                 mm_hidden_size=1024, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                 image_aspect_ratio="pad", imof_towers=TOWERS, imof_clip_spec=None, imof_dino_spec=None,
                 imof_dino_clip_copy=True, **kwargs):
        self.mm_vision_tower = mm_vision_tower
        self.mm_projector_type = mm_projector_type
        self.mm_hidden_size = int(mm_hidden_size)
        self.mm_vision_select_layer = int(mm_vision_select_layer)
        self.mm_vision_select_feature = mm_vision_select_feature
        self.image_aspect_ratio = image_aspect_ratio
        self.imof_towers = check_towers(imof_towers)
        self.imof_clip_spec = dict(imof_clip_spec or {})
        self.imof_dino_spec = dict(imof_dino_spec or {})
        self.imof_dino_clip_copy = bool(imof_dino_clip_copy)
        super().__init__(**kwargs)

    def clip_spec(self):
        return spec_over(CLIP_DEFAULT_SPEC, self.imof_clip_spec, "CLIP")

    def dino_spec(self):
        return spec_over(DINO_DEFAULT_SPEC, self.imof_dino_spec, "DINOv2")

    def clip_vision_config(self):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(**self.clip_spec())

    @property
    def image_size(self):
        """The one input size both towers see: the CLIP processor's crop."""
        return self.clip_spec()["image_size"]

    def tower_tokens(self, tower):
        """Tokens tower ``tower`` delivers per image (CLS kept with ``cls_patch``)."""
        spec = self.clip_spec() if tower == "clip" else self.dino_spec()
        extra = 1 if self.mm_vision_select_feature == "cls_patch" else 0
        return (self.image_size // spec["patch_size"]) ** 2 + extra

    def tower_grid(self, tower):
        """``(side, side)``: the patch grid tower ``tower`` delivers (its tokens after the projector); ``None``
        with ``cls_patch`` (the CLS token leads, so the tokens are no grid)."""
        if self.mm_vision_select_feature != "patch":
            return None
        spec = self.clip_spec() if tower == "clip" else self.dino_spec()
        side = self.image_size // spec["patch_size"]
        return side, side

    def tower_width(self, tower):
        return self.clip_spec()["hidden_size"] if tower == "clip" else self.dino_spec()["embed_dim"]


def _layers(shapes, prefix):
    return len({k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)})


def _side(table_rows, patch):
    return math.isqrt(int(table_rows) - 1) * int(patch)


def clip_sizes(shapes):
    """The CLIP tower's sizes read from checkpoint shapes (``{}`` when it holds no CLIP), as in
    :data:`CLIP_DEFAULT_SPEC`; the DINO tower's unused CLIP copy stands in when the CLIP tower is gone."""
    for prefix in (f"{CLIP_PREFIX}vision_tower.vision_model.", f"{DINO_CLIP_COPY}vision_model."):
        patch = shapes.get(f"{prefix}embeddings.patch_embedding.weight")
        if patch is None:
            continue
        width = int(patch[0])
        return {"hidden_size": width, "patch_size": int(patch[-1]), "num_attention_heads": max(1, width // HEAD_WIDTH),
                "image_size": _side(shapes[f"{prefix}embeddings.position_embedding.weight"][0], patch[-1]),
                "intermediate_size": int(shapes[f"{prefix}encoder.layers.0.mlp.fc1.weight"][0]),
                "num_hidden_layers": _layers(shapes, f"{prefix}encoder.layers.")}
    return {}


def dino_sizes(shapes):
    """The DINOv2 tower's sizes read from checkpoint shapes (``{}`` when it holds none), as in
    :data:`DINO_DEFAULT_SPEC`."""
    prefix = f"{DINO_PREFIX}vision_tower."
    patch = shapes.get(f"{prefix}patch_embed.proj.weight")
    if patch is None:
        return {}
    width, registers = int(patch[0]), shapes.get(f"{prefix}register_tokens")
    return {"embed_dim": width, "patch_size": int(patch[-1]), "num_heads": max(1, width // HEAD_WIDTH),
            "img_size": _side(shapes[f"{prefix}pos_embed"][1], patch[-1]), "depth": _layers(shapes, f"{prefix}blocks."),
            "mlp_ratio": shapes[f"{prefix}blocks.0.mlp.fc1.weight"][0] / width,
            "num_register_tokens": int(registers[1]) if registers else 0}


def fit_tower_specs(config, shapes):
    """Size the towers of a config that does not (no ``imof_clip_spec``/``imof_dino_spec``, as MMVP writes
    them) from the checkpoint's shapes: the sizes differing from the real model's are set. MMVP's config
    names only the hub id of the towers, whose sizes the hub's files decide."""
    if not config.imof_clip_spec:
        sizes = clip_sizes(shapes)
        config.imof_clip_spec = {k: v for k, v in sizes.items() if v != CLIP_DEFAULT_SPEC[k]}
    if not config.imof_dino_spec:
        sizes = dino_sizes(shapes)
        config.imof_dino_spec = {k: v for k, v in sizes.items() if v != DINO_DEFAULT_SPEC[k]}
    return config


def check_config(config, where):
    problems = []
    if not config.imof_towers:
        problems.append(f"imof_towers names none of {', '.join(TOWERS)}")
    for tower in config.imof_towers:
        if config.tower_width(tower) != config.mm_hidden_size:
            problems.append(f"mm_hidden_size is {config.mm_hidden_size} but the {tower} tower delivers "
                            f"{config.tower_width(tower)} channels (both projectors are built from mm_hidden_size)")
    if len(config.imof_towers) == 2 and config.tower_tokens("clip") != config.tower_tokens("dinov2"):
        problems.append(f"CLIP gives {config.tower_tokens('clip')} tokens but DINOv2 {config.tower_tokens('dinov2')}; "
                        "interleaving needs equal counts")
    if config.image_size % config.dino_spec()["patch_size"]:
        problems.append(f"the {config.image_size} px input is not a multiple of DINOv2's patch size")
    if config.mm_vision_select_feature not in ("patch", "cls_patch"):
        problems.append(f"mm_vision_select_feature '{config.mm_vision_select_feature}' unknown (patch, cls_patch)")
    if not re.match(r"^(linear|mlp\d+x_gelu)$", str(config.mm_projector_type)):
        problems.append(f"mm_projector_type '{config.mm_projector_type}' unknown (linear, mlp2x_gelu)")
    if problems:
        raise ModelLoadError(f"{where}: {'; '.join(problems)}")
    return config


def read_imof_config(path):
    """The :class:`ImofConfig` of a folder (``model_type`` ``imof_llama``, ``llava`` or ``llava_llama``).

    A config without ``imof_clip_spec``/``imof_dino_spec`` (MMVP's) gets its tower sizes from the checkpoint's
    headers (:func:`fit_tower_specs`); the real model's sizes are the defaults.

    Raises:
        ModelLoadError: not an I-MoF config, a config that does not make one (an unknown tower name in
            ``imof_towers``, naming it and the known ones), or sizes that do not fit together.
    """
    data = read_config_json(path)
    if not is_imof_config(data):
        missing = [k for k in IMOF_KEYS if k not in data]
        raise ModelLoadError(f"{path}/{CONFIG_NAME} is not an I-MoF config"
                             + (f": it lacks {', '.join(missing)}" if missing else ""))
    config = make_config(ImofConfig, data, path, "I-MoF")
    if not (config.imof_clip_spec and config.imof_dino_spec) and weight_names(path) != (None, []):
        fit_tower_specs(config, header_shapes(path, "I-MoF"))
    return check_config(config, f"{path}/{CONFIG_NAME}")
