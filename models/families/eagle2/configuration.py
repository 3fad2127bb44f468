"""Eagle2's config (nvidia/Eagle2-9B, ``model_type: eagle_chat``): the class, detection, checks and reading.

Follows Eagle2-9B's remote code ``configuration_eagle2.py`` (``Eagle2ChatConfig``,
``MultiBackboneChannelConcatenationVisionModelConfig``) and, for the vision part,
``multi_backbone_channel_concatenation_encoder.py`` (``load_vision_towers``) and ``convnext_encoder.py``
(``load_model``). Provenance: that remote code ships with the hub repository, not on GitHub; the texts
were read from the public-code index (``configuration_eagle2.py`` id 1202251200, the encoder id 1157037724,
``modeling_eagle_chat.py`` id 334094437; sha256 in ``tests/parity/eagle2/original_files.json``), the
tower files from NVlabs/Eagle 783f656 (``Eagle2_5/eaglevl/model/multimodal_encoder/``); the parity
goldens in ``tests/parity/eagle2/`` were made by that code (transformers 4.37.2):

- Config: top level ``model_type: eagle_chat`` (``Eagle2ChatConfig``) with ``vision_config`` (``model_type:
  MOB``, ``moe_version_type: convnext_512_siglip_448``, ``vision_path: "MOB:<name>;<name>"`` whose names
  are ``palisiglip`` / ``convnext-1024``, ``grid_size``, ``convnext_img_size``, ``normalize_type``,
  ``siglip_vision_config``) and ``llm_config`` (``architectures: [Qwen2ForCausalLM]``), plus
  ``select_layer`` (-1), ``force_image_size`` (the tile size), ``downsample_ratio`` (0.5), ``template``.
- Keys: ``vision_model.vision_model.vision_towers.{i}.vision_tower.*`` with ``i`` the position of the
  tower's name in ``vision_path`` (the ModuleList order; read from the config, never assumed).
- The ``mlp1`` input: SigLIP's pixel-shuffled block first (``hidden * (1 / downsample_ratio) ** 2``
  channels), ConvNeXt's last stage after, whatever the ``vision_path`` order (:meth:`fusion_layout`).
- Image tokens: ``(grid_size * downsample_ratio) ** 2`` per tile; the ``<IMG_CONTEXT>`` id comes from the
  folder's tokenizer files.

encslim-only keys (absent from real checkpoints): ``encslim_removed_dims`` (the width of each removed
tower, fed as zeros so ``mlp1`` is unchanged) and ``vision_config.encslim_convnext_spec`` (tiny ConvNeXt
sizes, optional). The original config never records ConvNeXt's sizes (``load_model`` hard-codes
``convnext_xxlarge`` and ``hidden_size`` 3072): they, the unused ConvNeXt classifier and the SigLIP
pooling head are read from the checkpoint's headers (:func:`fit_to_checkpoint`), so a folder the
original saved at other sizes loads as saved.
"""

import json
from pathlib import Path

from transformers import PretrainedConfig, Qwen2Config

from ....errors import ModelLoadError
from ....files import CONFIG_NAME
from ...layout import header_shapes, make_config, read_config_json

MODEL_TYPE = "eagle_chat"
MOE_VERSION = "convnext_512_siglip_448"
TOWER_PREFIX = "vision_model.vision_model.vision_towers."  # + "{i}." in checkpoint keys
SIGLIP, CONVNEXT = "siglip", "convnext"
FUSION_ORDER = (SIGLIP, CONVNEXT)  # the concat order of extract_feature, fixed by the code
ORIGINAL_NAMES = {SIGLIP: "palisiglip", CONVNEXT: "convnext-1024"}  # slot -> vision_path name
SLOT_OF = {v: k for k, v in ORIGINAL_NAMES.items()}
REMOVED_KEY = "encslim_removed_dims"
CONVNEXT_SPEC_KEY = "encslim_convnext_spec"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]
SIGLIP_DEFAULT = {  # siglip-so400m-patch14-448
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "image_size": 448, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}
CONVNEXT_DEFAULT = {"depths": [3, 4, 30, 3], "dims": [384, 768, 1536, 3072], "norm_eps": 1e-5}



def parse_vision_path(value):
    """The tower names of ``vision_path`` (``MOB:palisiglip;convnext-1024`` -> [...]), empty names dropped."""
    text = str(value or "")
    text = text[4:] if text.startswith("MOB:") else text
    return [n.strip() for n in text.split(";") if n.strip()]


def is_eagle2_config(config_dict):
    """Whether a ``config.json`` dict is Eagle2 with its MOB (ConvNeXt + SigLIP) encoder, by its keys."""
    vision = config_dict.get("vision_config")
    return (isinstance(vision, dict) and str(vision.get("model_type", "")).startswith("MOB")
            and vision.get("moe_version_type") == MOE_VERSION and isinstance(config_dict.get("llm_config"), dict))


class Eagle2ChatConfig(PretrainedConfig):
    """``eagle_chat``: the original's keys (see the module docstring); ``vision_config`` stays a dict."""

    model_type = MODEL_TYPE

    def __init__(self, vision_config=None, llm_config=None, use_backbone_lora=0, use_llm_lora=0, select_layer=-1,
                 force_image_size=None, downsample_ratio=0.5, template="qwen2-chat", dynamic_image_size=False,
                 use_thumbnail=False, min_dynamic_patch=1, max_dynamic_patch=6, mlp_checkpoint=True,
                 pre_feature_reduction=False, keep_aspect_ratio=False, encslim_removed_dims=None, **kwargs):
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self.vision_config = dict(vision_config or {"model_type": "MOB", "moe_version_type": MOE_VERSION,
                                                    "vision_path": "MOB:palisiglip;convnext-1024"})
        llm = llm_config.to_dict() if isinstance(llm_config, PretrainedConfig) else dict(llm_config or {})
        llm.setdefault("architectures", ["Qwen2ForCausalLM"])
        llm.pop("model_type", None)
        self.llm_config = Qwen2Config(**llm)
        self.use_backbone_lora, self.use_llm_lora = use_backbone_lora, use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size, self.use_thumbnail = dynamic_image_size, use_thumbnail
        self.min_dynamic_patch, self.max_dynamic_patch = min_dynamic_patch, max_dynamic_patch
        self.mlp_checkpoint, self.pre_feature_reduction = mlp_checkpoint, pre_feature_reduction
        self.keep_aspect_ratio = keep_aspect_ratio
        self.encslim_removed_dims = dict(encslim_removed_dims or {})

    def to_dict(self):
        out = {k: v for k, v in super().to_dict().items() if k not in ("vision_config", "llm_config")}
        out["vision_config"] = json.loads(json.dumps(self.vision_config))
        out["llm_config"] = self.llm_config.to_dict()
        out["model_type"] = MODEL_TYPE
        if not out.get("encslim_removed_dims"):
            out.pop("encslim_removed_dims", None)
        for key in ("img_context_token_id", "convnext_head_classes", "siglip_use_head", "convnext_fitted"):  # in memory
            out.pop(key, None)
        return out

    def to_diff_dict(self):
        return self.to_dict()

    # ------------------------------------------------------------------ derived sizes
    @property
    def hidden_size(self):
        return self.llm_config.hidden_size

    @property
    def vocab_size(self):
        return self.llm_config.vocab_size

    @property
    def tower_slots(self):
        """Slots of the present towers in ``vision_path`` (checkpoint index) order."""
        return [SLOT_OF[n] for n in parse_vision_path(self.vision_config.get("vision_path"))]

    @property
    def slot_names(self):
        """Present slots in fusion (concat) order."""
        present = set(self.tower_slots)
        return [s for s in FUSION_ORDER if s in present]

    @property
    def shuffle_factor(self):
        return int(round(1 / self.downsample_ratio)) ** 2

    def siglip_spec(self):
        return {**SIGLIP_DEFAULT, **dict(self.vision_config.get("siglip_vision_config") or {})}

    def convnext_spec(self):
        """ConvNeXt sizes: xxlarge (``convnext_encoder.load_model``'s hard-coded ``convnext_xxlarge``), unless the
        checkpoint's headers say otherwise (:func:`fit_to_checkpoint`) or ``encslim_convnext_spec`` is set."""
        fitted = getattr(self, "convnext_fitted", None) or {}
        return {**CONVNEXT_DEFAULT, **fitted, **dict(self.vision_config.get(CONVNEXT_SPEC_KEY) or {})}

    @property
    def tile_size(self):
        return int(self.force_image_size or self.siglip_spec()["image_size"])

    @property
    def convnext_img_size(self):
        return int(self.vision_config.get("convnext_img_size", 512))

    @property
    def num_image_tokens(self):
        """``Eagle2ChatModel.num_image_token``: ``(grid_size * downsample_ratio) ** 2``."""
        return int((int(self.vision_config.get("grid_size", 32)) * self.downsample_ratio) ** 2)

    def slot_width(self, slot):
        """Channels the slot puts into ``mlp1`` (SigLIP after the pixel shuffle)."""
        if slot in self.encslim_removed_dims:
            return int(self.encslim_removed_dims[slot])
        if slot == SIGLIP:
            return self.siglip_spec()["hidden_size"] * self.shuffle_factor
        return self.convnext_spec()["dims"][-1]

    def slot_tokens(self, slot):
        if slot == SIGLIP:
            spec = self.siglip_spec()
            return int((spec["image_size"] // spec["patch_size"]) ** 2 // self.shuffle_factor)
        return int((self.convnext_img_size // 32) ** 2)

    def fusion_layout(self):
        """``[(slot, start, stop, removed)]``: each block of the ``mlp1.0`` input, in concat order."""
        out, start = [], 0
        for slot in FUSION_ORDER:
            if slot in self.slot_names or slot in self.encslim_removed_dims:
                width = self.slot_width(slot)
                out.append((slot, start, start + width, slot in self.encslim_removed_dims))
                start += width
        return out

    def fusion_width(self):
        return sum(stop - start for _, start, stop, _ in self.fusion_layout())


def check_config(config, where):
    """Raise ``ModelLoadError`` when ``config`` is not an Eagle2 model this family computes exactly."""
    vision = config.vision_config
    if not str(vision.get("model_type", "")).startswith("MOB") or vision.get("moe_version_type") != MOE_VERSION:
        raise ModelLoadError(f"{where}: vision_config must be model_type MOB with moe_version_type {MOE_VERSION}")
    names = parse_vision_path(vision.get("vision_path"))
    unknown = [n for n in names if n not in SLOT_OF]
    if unknown or not names or len(set(names)) != len(names):
        raise ModelLoadError(f"{where}: vision_config.vision_path {vision.get('vision_path')!r} must name "
                             f"palisiglip and/or convnext-1024 once each (unknown: {', '.join(unknown) or 'none'})")
    arch = (config.llm_config.architectures or [""])[0]
    if arch != "Qwen2ForCausalLM":
        raise ModelLoadError(f"{where}: llm_config.architectures is {arch!r}; this family supports Qwen2ForCausalLM")
    if config.select_layer != -1:
        raise ModelLoadError(f"{where}: select_layer {config.select_layer} is not supported (the MOB encoder "
                             "returns last_hidden_state only; Eagle2 uses -1)")
    if int(vision.get("mm_vision_select_layer", -1)) > 100:
        raise ModelLoadError(f"{where}: mm_vision_select_layer > 100 (ConvNeXt multi-stage features) is not "
                             "supported with convnext_512_siglip_448")
    factor = 1 / config.downsample_ratio
    if abs(factor - round(factor)) > 1e-9:
        raise ModelLoadError(f"{where}: downsample_ratio {config.downsample_ratio} must be 1/n")
    removed = set(config.encslim_removed_dims)
    if removed - set(FUSION_ORDER) or removed & set(config.slot_names):
        raise ModelLoadError(f"{where}: encslim_removed_dims {config.encslim_removed_dims} must name removed "
                             "towers (siglip, convnext) only")
    for slot in config.slot_names:
        if config.slot_tokens(slot) != config.num_image_tokens:
            raise ModelLoadError(f"{where}: the {slot} tower gives {config.slot_tokens(slot)} tokens but "
                                 f"grid_size and downsample_ratio say {config.num_image_tokens}")


def _image_context_id(folder):
    """The id of ``<IMG_CONTEXT>`` in a folder's tokenizer files (``None`` when absent)."""
    for name, field in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "added_tokens_decoder")):
        path = Path(folder, name)
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text()).get(field) or []
        except (OSError, ValueError):
            continue
        items = [{"id": int(k), **v} for k, v in data.items()] if isinstance(data, dict) else data
        for item in items:
            if item.get("content") == IMG_CONTEXT:
                return int(item["id"])
    return None


def read_eagle2_config(path):
    """The :class:`Eagle2ChatConfig` of a folder (``config.json`` only, checked)."""
    data = read_config_json(path)
    if not is_eagle2_config(data):
        raise ModelLoadError(f"{path}/{CONFIG_NAME} is not an Eagle2 MOB config (vision_config.model_type MOB, "
                             f"moe_version_type {MOE_VERSION}, llm_config)")
    config = make_config(Eagle2ChatConfig, data, path, "Eagle2")
    check_config(config, f"{path}/{CONFIG_NAME}")
    config.img_context_token_id = _image_context_id(path)
    try:
        fit_to_checkpoint(path, config)
    except ModelLoadError:
        pass  # no weights (a config alone): the real heads; strict loading reports the weights later
    return config


def _fit_to_checkpoint(shapes, config):
    """``(head_classes, siglip_head)``: the unused ConvNeXt classifier and SigLIP pooling head, as the
    checkpoint has them (absent: not built)."""
    slots = config.tower_slots
    head, siglip_head = 0, False
    if CONVNEXT in slots:
        fc = shapes.get(f"{TOWER_PREFIX}{slots.index(CONVNEXT)}.vision_tower.head.fc.weight")
        head = int(fc[0]) if fc else 0
    if SIGLIP in slots:
        siglip_head = f"{TOWER_PREFIX}{slots.index(SIGLIP)}.vision_tower.vision_model.head.probe" in shapes
    return head, siglip_head


def convnext_from_shapes(shapes, config):
    """The ConvNeXt tower's ``{depths, dims}`` as its checkpoint keys say (``stages.{i}.blocks.{j}``, the width
    of ``conv_dw``); ``None`` without a ConvNeXt tower or a stage. The original's config never records them
    (``load_model`` builds ``convnext_xxlarge``), so a checkpoint of other sizes is known by its headers."""
    if CONVNEXT not in config.tower_slots:
        return None
    prefix = f"{TOWER_PREFIX}{config.tower_slots.index(CONVNEXT)}.vision_tower.stages."
    depths, dims = [], []
    for stage in range(len(CONVNEXT_DEFAULT["depths"])):
        blocks = f"{prefix}{stage}.blocks."
        found = {k[len(blocks):].split(".", 1)[0] for k in shapes if k.startswith(blocks)}
        width = shapes.get(f"{blocks}0.conv_dw.weight")
        if not found or not width:
            return None
        depths.append(len(found))
        dims.append(int(width[0]))
    return {"depths": depths, "dims": dims}


def fit_to_checkpoint(path, config):
    """Size the unused heads and the ConvNeXt tower in ``config`` (in memory) as the folder's checkpoint has
    them; its key shapes."""
    shapes = header_shapes(path, "Eagle2")
    config.convnext_head_classes, config.siglip_use_head = _fit_to_checkpoint(shapes, config)
    config.convnext_fitted = convnext_from_shapes(shapes, config)
    return shapes
