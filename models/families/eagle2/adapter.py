"""The Eagle2 family (nvidia/Eagle2-9B, ``model_type: eagle_chat``) in its original checkpoint layout.

Read from NVlabs/Eagle's Eagle2 remote code (``configuration_eagle_chat.py``, ``modeling_eagle_chat.py``,
``multi_backbone_channel_concatenation_encoder.py``, ``siglip_vision_tower.py``, ``convnext_encoder.py``,
``convnext.py``; the Eagle2_5 tree of the repository keeps the same encoder files):

- Config: top level ``model_type: eagle_chat`` (``Eagle2ChatConfig``) with ``vision_config`` (``model_type:
  MOB``, ``moe_version_type: convnext_512_siglip_448``, ``vision_path: "MOB:<name>;<name>"`` whose names
  are ``palisiglip`` / ``convnext-1024``, ``grid_size``, ``convnext_img_size``, ``normalize_type``,
  ``siglip_vision_config``) and ``llm_config`` (``architectures: [Qwen2ForCausalLM]``), plus
  ``select_layer`` (-1), ``force_image_size`` (the tile size), ``downsample_ratio`` (0.5), ``template``.
- Keys: ``vision_model.vision_model.vision_towers.{i}.vision_tower.*`` with ``i`` the position of the
  tower's name in ``vision_path`` (the ModuleList order; read from the config, never assumed). SigLIP
  is ``SiglipVisionTower.vision_tower = SiglipVisionModel`` (transformers 4.37: ``vision_model.*`` inside,
  pooling ``head.*`` included); ConvNeXt is ``ConvNextVisionTower.vision_tower = convnext_xxlarge`` (Eagle's
  timm copy: layer scale ``weight``, not ``gamma``). Projector ``mlp1.0`` LayerNorm, ``mlp1.1`` Linear,
  GELU, ``mlp1.3`` Linear; Qwen2 as ``language_model.model.*`` and ``language_model.lm_head.weight``.
- Forward (``Eagle2ChatModel.extract_feature``, ``moe_version_type == convnext_512_siglip_448``): each tower
  gets the tile (B, 3, S, S), resized ``bilinear, align_corners=True`` when its input size differs
  (SigLIP 448: none; ConvNeXt ``convnext_img_size`` 512). ConvNeXt first maps SigLIP normalisation to
  CLIP's (``slip_to_clip``, ``normalize_type: siglip``) and returns its LAST stage (B, 16*16, 3072);
  SigLIP returns ``last_hidden_state`` (post-LayerNorm, B, 32*32, 1152). ONLY SigLIP is pixel-shuffled
  (``downsample_ratio`` 0.5: 2x2 neighbours into channels -> B, 16*16, 4608), then
  ``mlp1(cat([siglip, convnext], -1))``: SigLIP's block first (channels 0-4608), ConvNeXt's after
  (4608-7680), whatever the ``vision_path`` order. LayerNorm(7680) = 3072 + 1152 * 4.
- Pixel shuffle channel layout: shuffled token ``(R, C)`` of the 16x16 grid holds, in channel block
  ``q = 2 * dr + dc`` (each ``D`` wide), the SigLIP token at row ``2R + dr``, column ``2C + dc``. The
  interleave stays inside SigLIP's own block, so a removed SigLIP is one contiguous zero block.
- Image tokens: the prompt's ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` * 256 + ``</img>``; the
  features replace the ``<IMG_CONTEXT>`` embeddings (id from the tokenizer).

Class A2 (LayerNorm-first projector). The paper's mask zeroes a tower's block before ``mlp1``; the
LayerNorm statistics include those zeros. Removal deletes the tower's weights and records its width in
``config.json`` (``encslim_removed_dims``, absent from real checkpoints): the model then feeds that many
zero channels in the tower's place, so ``mlp1`` is unchanged and the pruned model computes the
zero-masked one exactly (as :mod:`.native` does for A2). A pruned folder loads with encslim only: the
original code needs both towers (``vit_hidden_size['convnext']``, ``['siglip']``).

Deviations: one tile per image (InternVL ``dynamic_preprocess`` with ``max_num=1``: a plain bicubic resize
to the tile size); Eagle2's dynamic tiling and thumbnail are not reproduced. The chat template is
``qwen2-chat`` as Eagle's ``conversation.py`` registers it.
"""

import json
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from ....errors import ConfigError, ModelLoadError
from ....files import CONFIG_NAME, atomic_output_dir
from ...adapter import Slot, TrainableParts
from ...layout import (LayoutAdapter, TokenizerMixin, check_keys, from_pretrained, header_shapes, left_pad, make_config,
                     meta_shapes, read_config_json, under_vision_model)
from ..eagle.towers import ConvNextVisionTower
from ...masking import FusionClass, check_mask_set, mask_feature
from ...plan import Delete, RemovalPlan, check_drop

MODEL_TYPE = "eagle_chat"
MOE_VERSION = "convnext_512_siglip_448"
TOWER_PREFIX = "vision_model.vision_model.vision_towers."  # + "{i}." in checkpoint keys
SIGLIP, CONVNEXT = "siglip", "convnext"
FUSION_ORDER = (SIGLIP, CONVNEXT)  # the concat order of extract_feature, fixed by the code
ORIGINAL_NAMES = {SIGLIP: "palisiglip", CONVNEXT: "convnext-1024"}  # slot -> vision_path name
SLOT_OF = {v: k for k, v in ORIGINAL_NAMES.items()}
REMOVED_KEY = "encslim_removed_dims"
CONVNEXT_SPEC_KEY = "encslim_convnext_spec"
IMAGE_PLACEHOLDER = "<image>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SYSTEM_MESSAGE = "You are a helpful assistant."
TEMPLATES = ("qwen2-chat",)
PROCESSOR_FILE = "processor_config.json"
SIGLIP_DEFAULT = {  # siglip-so400m-patch14-448
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "image_size": 448, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}
CONVNEXT_DEFAULT = {"depths": [3, 4, 30, 3], "dims": [384, 768, 1536, 3072], "norm_eps": 1e-5}


# ---------------------------------------------------------------------------------------------- config
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
        for key in ("img_context_token_id", "convnext_head_classes", "siglip_use_head"):  # in memory only
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
        return {**CONVNEXT_DEFAULT, **dict(self.vision_config.get(CONVNEXT_SPEC_KEY) or {})}

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


# ---------------------------------------------------------------------------------------------- towers
class SiglipVisionTower(nn.Module):
    """``siglip_vision_tower.SiglipVisionTower``: ``SiglipVisionModel(...).last_hidden_state`` (post-LayerNorm).

    transformers 5's ``SiglipVisionModel`` holds the transformer's modules itself; the checkpoint
    (transformers 4.37) names them under ``vision_model.``, so the model sits one level down. The
    pooling head is in the checkpoint and never used: its output is not computed here.
    """

    name = SIGLIP

    def __init__(self, spec, use_head=True):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        spec = {k: v for k, v in spec.items() if k not in ("model_type", "architectures", "transformers_version")}
        self.input_image_size = int(spec["image_size"])
        config = SiglipVisionConfig(**{**spec, "vision_use_head": use_head})
        self.vision_tower = under_vision_model(SiglipVisionModel(config))
        self.hidden_size = int(spec["hidden_size"])

    def forward(self, images):
        model = self.vision_tower.vision_model
        hidden = model.embeddings(images.to(model.embeddings.patch_embedding.weight.dtype))
        hidden = model.encoder(inputs_embeds=hidden).last_hidden_state
        return model.post_layernorm(hidden)


class Eagle2ConvNextTower(ConvNextVisionTower):
    """``convnext_encoder.ConvNextVisionTower`` (Eagle2): ``slip_to_clip`` on the float32 input
    (``normalize_type: siglip``), then stem and every stage; the last stage as ``(B, H*W, C)``."""

    name = CONVNEXT

    def __init__(self, spec, input_image_size, normalize_type="siglip"):
        super().__init__({**spec, "input_image_size": input_image_size})
        self.pre_norm = normalize_type

    def forward(self, images):
        if self.pre_norm == "siglip":  # constants, not buffers: nothing to load or re-initialise
            scale = torch.tensor([s / c for s, c in zip(SIGLIP_STD, CLIP_STD)], device=images.device).view(1, 3, 1, 1)
            shift = torch.tensor([(m - c) / s for m, c, s in zip(SIGLIP_MEAN, CLIP_MEAN, CLIP_STD)],
                                 device=images.device).view(1, 3, 1, 1)
            dtype = images.dtype
            images = (images.float() * scale + shift).to(dtype)
        return super().forward(images)


def pixel_shuffle(x, scale_factor=0.5):
    """``Eagle2ChatModel.pixel_shuffle`` on a ``(B, N, C)`` token grid, reshaped as ``extract_feature`` does."""
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], h, w, -1)
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.reshape(x.shape[0], -1, x.shape[-1])


class MultiBackboneChannelConcatenationVisionTower(nn.Module):
    """The ``vision_towers`` ModuleList in ``vision_path`` order; the per-tower input resize of ``forward``."""

    def __init__(self, config):
        super().__init__()
        # the unused ConvNeXt classifier and SigLIP pooling head, sized as the checkpoint has them
        head_classes = getattr(config, "convnext_head_classes", 1000)
        siglip_head = getattr(config, "siglip_use_head", True)
        self.slots = list(config.tower_slots)
        towers = []
        for slot in self.slots:
            if slot == SIGLIP:
                towers.append(SiglipVisionTower(config.siglip_spec(), use_head=siglip_head))
            else:
                spec = {k: v for k, v in config.convnext_spec().items() if k in ("depths", "dims", "norm_eps")}
                towers.append(Eagle2ConvNextTower({**spec, "head_classes": head_classes}, config.convnext_img_size,
                                                  config.vision_config.get("normalize_type", "siglip")))
        self.vision_towers = nn.ModuleList(towers)

    def tower(self, slot):
        return self.vision_towers[self.slots.index(slot)]

    def tower_output(self, slot, x):
        import torch.nn.functional as F

        tower = self.tower(slot)
        if tower.input_image_size != x.shape[2]:
            size = (tower.input_image_size, tower.input_image_size)
            x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True).to(dtype=x.dtype)
        return tower(x)


class MultiBackboneChannelConcatenationVisionModel(nn.Module):
    """``multi_backbone_channel_concatentation_model``: holds the tower as ``vision_model``."""

    def __init__(self, config):
        super().__init__()
        self.vision_model = MultiBackboneChannelConcatenationVisionTower(config)


class Eagle2ChatModel(PreTrainedModel):
    """``modeling_eagle_chat.Eagle2ChatModel`` (MOB path): ``vision_model``, ``language_model``, ``mlp1``.

    ``forward`` with ``pixel_values`` is the original's (features replace the ``<IMG_CONTEXT>``
    embeddings); without them it is the language model's forward (cached features, generation steps).
    """

    config_class = Eagle2ChatConfig
    base_model_prefix = "eagle2"
    main_input_name = "input_ids"
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = MultiBackboneChannelConcatenationVisionModel(config)
        self.language_model = Qwen2ForCausalLM(config.llm_config)
        width, hidden = config.fusion_width(), config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.post_init()
        self.generation_config = self.language_model.generation_config  # generation runs in language_model

    @property
    def towers(self):
        return self.vision_model.vision_model

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def slot_features(self, slot, pixel_values):
        """What ``slot`` puts into the concat: ConvNeXt tokens, or SigLIP tokens after the pixel shuffle."""
        feature = self.towers.tower_output(slot, pixel_values)
        if slot == SIGLIP:
            feature = pixel_shuffle(feature, self.config.downsample_ratio)
        return feature

    def fuse(self, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        """``mlp1(cat(...))`` in the fixed order (SigLIP, ConvNeXt); removed towers' blocks are zeros,
        masked ones zeros (or their constant)."""
        ref = next((features[s] for s in self.config.slot_names if s in features and s not in masked), None)
        ref = ref if ref is not None else next(iter(features.values()))
        parts = []
        for slot, start, stop, removed in self.config.fusion_layout():
            if removed or slot in masked:
                value = None if removed else (mask_values or {}).get(slot)
                parts.append(mask_feature(ref, stop - start, "zero" if removed else mask_mode, value))
            else:
                parts.append(features[slot])
        fused = torch.cat(parts, dim=-1)
        weight = next(self.mlp1.parameters())  # mlp1 may be wrapped (peft modules_to_save)
        return self.mlp1(fused.to(weight.dtype))

    def extract_feature(self, pixel_values):
        return self.fuse({s: self.slot_features(s, pixel_values) for s in self.config.slot_names})

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, inputs_embeds=None, image_flags=None,
                **kwargs):
        if pixel_values is not None:
            embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
            vit = self.extract_feature(pixel_values)
            if image_flags is not None:
                vit = vit[image_flags.reshape(-1) == 1]
            selected = (input_ids == self.config.img_context_token_id).unsqueeze(-1)
            inputs_embeds, input_ids = embeds.masked_scatter(selected, vit.to(embeds.dtype)), None
        return self.language_model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   **kwargs)


def register_auto_classes():
    from transformers import AutoConfig

    try:
        AutoConfig.register(MODEL_TYPE, Eagle2ChatConfig)
    except ValueError:
        pass


# ---------------------------------------------------------------------------------------------- loading
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


def fit_to_checkpoint(path, config):
    """Size the unused heads in ``config`` (in memory) as the folder's checkpoint has them; its key shapes."""
    shapes = header_shapes(path, "Eagle2")
    config.convnext_head_classes, config.siglip_use_head = _fit_to_checkpoint(shapes, config)
    return shapes


def expected_shapes(config):
    return meta_shapes(Eagle2ChatModel, config)


def strict_load(path, config, dtype=None, device_map=None):
    """``from_pretrained`` refusing any missing, unexpected or mis-shaped key (naming them)."""
    shapes = fit_to_checkpoint(path, config)
    check_keys(path, shapes, expected_shapes(config), f"Eagle2 config ({config.vision_config.get('vision_path')})")
    return from_pretrained(Eagle2ChatModel, path, config, dtype, device_map)


# ---------------------------------------------------------------------------------------------- processor
def chat_prompt(template, question, with_image=True, system=SYSTEM_MESSAGE):
    """``conv_templates[template]`` (``qwen2-chat``, SeparatorStyle.CHATML) with one user turn, open assistant turn."""
    if template not in TEMPLATES:
        raise ConfigError(f"chat template '{template}' unknown; Eagle2 family knows {', '.join(TEMPLATES)}")
    text = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
            "<|im_start|>assistant\n")


class Eagle2Processor(TokenizerMixin):
    """One tile per image -> ``pixel_values`` (B, 3, S, S); prompts -> ids with ``<img><IMG_CONTEXT>*N</img>``."""

    PAD_FALLBACKS = ("pad_token_id", "eos_token_id")

    def __init__(self, tokenizer, image_size, num_image_tokens, template="qwen2-chat"):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_image_tokens = int(num_image_tokens)
        self.template = template or "qwen2-chat"
        self.image_token = IMAGE_PLACEHOLDER
        self.image_mean, self.image_std = list(SIGLIP_MEAN), list(SIGLIP_STD)

    @classmethod
    def from_config(cls, tokenizer, config):
        return cls(tokenizer, config.tile_size, config.num_image_tokens, config.template)

    @classmethod
    def from_pretrained(cls, path, config):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if tokenizer.convert_tokens_to_ids(IMG_CONTEXT) in (None, tokenizer.unk_token_id):
            raise ModelLoadError(f"{path}: the tokenizer has no {IMG_CONTEXT} token; Eagle2's tokenizer adds it")
        processor = cls.from_config(tokenizer, config)
        saved = Path(path, PROCESSOR_FILE)
        if saved.is_file():
            processor.template = json.loads(saved.read_text()).get("template") or processor.template
        return processor

    def save_pretrained(self, folder):
        self.tokenizer.save_pretrained(str(folder))
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "Eagle2Processor", "template": self.template, "image_size": self.image_size,
             "image_mean": self.image_mean, "image_std": self.image_std}, indent=2) + "\n")

    @property
    def image_token_id(self):
        return self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)

    def pixel_values(self, images):
        """InternVL ``build_transform``: RGB, resize to S x S (bicubic), to [0, 1], normalise (SigLIP mean/std)."""
        import numpy as np
        from PIL import Image

        rows = []
        for image in images:
            image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            mean = torch.tensor(self.image_mean).view(3, 1, 1)
            std = torch.tensor(self.image_std).view(3, 1, 1)
            rows.append((array - mean) / std)
        return torch.stack(rows)

    def build_prompt(self, question, with_image=True):
        return chat_prompt(self.template, question, with_image)

    def expand(self, prompt):
        return prompt.replace(IMAGE_PLACEHOLDER, IMG_START + IMG_CONTEXT * self.num_image_tokens + IMG_END)

    def text_inputs(self, prompts):
        """LEFT-padded ``input_ids``/``attention_mask``."""
        rows = [self.tokenizer(self.expand(p), add_special_tokens=False).input_ids for p in prompts]
        return left_pad(rows, self.pad_token_id)


# ---------------------------------------------------------------------------------------------- adapter
class Eagle2Adapter(LayoutAdapter):
    """Eagle2 (``eagle_chat`` with a MOB vision config): slots ``siglip`` and ``convnext``, class A2."""

    model_type = MODEL_TYPE
    model_class = Eagle2ChatModel

    def matches(self, config_dict):
        return is_eagle2_config(config_dict)

    def read_config(self, path):
        return read_eagle2_config(path)

    def slots(self, config):
        sizes = {SIGLIP: config.siglip_spec()["image_size"], CONVNEXT: config.convnext_img_size}
        return [Slot(s, s, int(sizes[s]), config.num_image_tokens, config.slot_width(s), removal_exact=True)
                for s in config.slot_names]

    def fusion_class(self, config):
        return FusionClass.A2

    def fusion_settings(self, config):
        return {"type": "channel_concat", "projector": "layernorm_first", "order": list(FUSION_ORDER),
                "pixel_shuffle": {"slot": SIGLIP, "downsample_ratio": config.downsample_ratio},
                "layout": [{"slot": s, "channels": [a, b], "removed": r} for s, a, b, r in config.fusion_layout()],
                "mask": "zeros before mlp1 (the LayerNorm counts them)"}

    def image_tokens(self, config, masked=frozenset(), mask_mode="removal"):
        return config.num_image_tokens

    # ------------------------------------------------------------------ loading and inputs
    def load(self, path, device="cpu", dtype=None, device_map=None):
        register_auto_classes()
        config = self.read_config(path)
        processor = Eagle2Processor.from_pretrained(path, config)
        config.img_context_token_id = processor.image_token_id
        model = strict_load(path, config, dtype, device_map)
        model.config.img_context_token_id = processor.image_token_id
        if device_map is None:
            model.to(device)
        return model.eval(), processor

    def image_token_id(self, config):
        token = getattr(config, "img_context_token_id", None)
        if token is None:
            raise ConfigError(f"the model's tokenizer has no {IMG_CONTEXT} token")
        return token

    # ------------------------------------------------------------------ the split forward
    def encode(self, model, batch, slots=None):
        pixels = batch.get("pixel_values")
        if pixels is None:
            return {}
        pixels = pixels.to(model.device, model.dtype)
        wanted = set(model.config.slot_names if slots is None else slots)
        return {s: model.slot_features(s, pixels) for s in model.config.slot_names if s in wanted}

    def fuse(self, model, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        masked = check_mask_set(model.config.slot_names, masked, mask_mode, mask_values)
        return model.fuse(features, masked, mask_mode, mask_values)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        input_ids = batch["input_ids"].to(model.device)
        embeds = model.get_input_embeddings()(input_ids)
        if not features:
            return embeds
        image = (input_ids == self.image_token_id(model.config)).unsqueeze(-1)
        fused = self.fuse(model, features, masked, mask_mode, mask_values)
        return embeds.masked_scatter(image, fused.to(embeds.dtype))

    def generate(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None,
                 max_new_tokens=16, **generate_kwargs):
        if features is None:
            run = [s for s in model.config.slot_names if not (mask_mode == "removal" and s in set(masked))]
            features = self.encode(model, batch, run)
        embeds = self.embed(model, features, batch, masked, mask_mode, mask_values)
        kwargs = {"do_sample": False, "num_beams": 1, **generate_kwargs}
        return model.language_model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(
            embeds.device), max_new_tokens=max_new_tokens, **kwargs)

    # ------------------------------------------------------------------ modules and parameters
    def encoders(self, model):
        return {s: model.towers.tower(s) for s in model.config.slot_names}

    def parts(self, model):
        return {"fusion": model.mlp1, "language_model": model.language_model}

    def slot_parameters(self, model):
        """A2: a removed tower's ``mlp1`` columns stay (they see the LayerNorm of its zeros): no fusion share."""
        return {s: {"vision": sum(p.numel() for p in m.parameters()), "fusion": 0}
                for s, m in self.encoders(model).items()}

    def trainable_parts(self, model):
        slots = model.config.tower_slots
        return TrainableParts(language_model="language_model", fusion=("mlp1",),
                              encoders={s: f"{TOWER_PREFIX}{slots.index(s)}" for s in model.config.slot_names})

    # ------------------------------------------------------------------ removal and export
    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        return ["hf"]

    def export_blockers(self, config, kept, fmt):
        if fmt == "hf":
            return []
        return [f"{fmt} export is not available for Eagle2; --format hf writes Eagle2's own layout (loads with "
                "encslim; with NVlabs' remote code only while both towers are kept)"]

    def export_notes(self, config):
        notes = []
        if config.encslim_removed_dims:
            removed = ", ".join(f"{s} ({w} zero channels)" for s, w in config.encslim_removed_dims.items())
            notes.append(f"tower(s) removed: {removed} before mlp1 (config.json encslim_removed_dims); this folder "
                         "loads with encslim, not with NVlabs' Eagle2 remote code (it needs both towers)")
        return notes


def removal_plan(config, drop):
    """Drop towers ``drop``: delete their weights, renumber later towers, keep their ``mlp1`` input block as
    zeros (``encslim_removed_dims``). Exact (A2: the LayerNorm sees the zeros the mask gave it)."""
    slots = list(config.slot_names)
    drop = check_drop(slots, drop)
    order = list(config.tower_slots)
    kept = [s for s in order if s not in drop]
    renames = {}
    for new, slot in enumerate(kept):
        old = order.index(slot)
        if old != new:
            renames[f"{TOWER_PREFIX}{old}."] = f"{TOWER_PREFIX}{new}."
    removed = {**config.encslim_removed_dims, **{s: config.slot_width(s) for s in drop}}
    patch = [{"op": "set", "path": "vision_config.vision_path",
              "value": "MOB:" + ";".join(ORIGINAL_NAMES[s] for s in kept)},
             {"op": "set", "path": REMOVED_KEY, "value": removed}]
    if CONVNEXT in drop:
        patch.append({"op": "delete", "path": f"vision_config.{CONVNEXT_SPEC_KEY}", "optional": True})
    layout = {s: (a, b) for s, a, b, _ in config.fusion_layout()}
    notes = ["A2 (LayerNorm-first mlp1): the removed tower's channels "
             + ", ".join(f"{s} [{layout[s][0]}, {layout[s][1]})" for s in drop)
             + " enter mlp1.0 as zeros, as the zero mask had them; mlp1 is unchanged, so removal is exact",
             "the pruned folder loads with encslim only: NVlabs' Eagle2 code needs both towers"]
    return RemovalPlan(
        model_type=MODEL_TYPE, fusion_class=FusionClass.A2.value, slots=slots, drop=drop,
        delete_keys=[Delete(f"{TOWER_PREFIX}{order.index(s)}.", s) for s in drop],
        prefix_renames=renames, config_patch=patch, exact=True, notes=notes,
    )


# ---------------------------------------------------------------------------------------------- tiny
TINY_SIGLIP = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 112, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
               "model_type": "siglip_vision_model"}
TINY_CONVNEXT = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False}
TINY_ORDER = ("palisiglip", "convnext-1024")
TINY_HEAD_CLASSES = 10


def tiny_eagle2_config(tokenizer, order=TINY_ORDER):
    """Eagle2-9B's config keys at tiny sizes: 112 px tiles (SigLIP 8x8 -> 4x4 after the shuffle), ConvNeXt
    at 128 px (4x4), 16 image tokens."""
    vision = {
        "model_type": "MOB", "moe_version_type": MOE_VERSION, "vision_path": "MOB:" + ";".join(order),
        "grid_size": 8, "input_image_size": 112, "image_size": 112, "convnext_img_size": 128,
        "mm_vision_select_layer": -2, "hidden_size": "lazy_calculation", "normalize_type": "siglip",
        "freeze_backbones": None, "delay_load": True, "vision_tower_convnext_path": "convnext_xxlarge.clip_laion2b_soup",
        "vision_tower_siglip_path": "siglip-so400m-patch14-448", "siglip_vision_config": dict(TINY_SIGLIP),
        CONVNEXT_SPEC_KEY: dict(TINY_CONVNEXT),
    }
    llm = {**TINY_TEXT, "vocab_size": len(tokenizer), "architectures": ["Qwen2ForCausalLM"],
           "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    return Eagle2ChatConfig(vision_config=vision, llm_config=llm, select_layer=-1, force_image_size=112,
                            downsample_ratio=0.5, template="qwen2-chat", dynamic_image_size=True, use_thumbnail=True,
                            max_dynamic_patch=12, architectures=["Eagle2ChatModel"])


def tiny_tokenizer():
    from ...tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["You are a helpful assistant. system user assistant"])
    tokenizer.add_tokens([IMG_START, IMG_END, IMG_CONTEXT, "<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tokenizer


def build_tiny_eagle2(seed=0, order=TINY_ORDER):
    """``(model, processor)``: a tiny random Eagle2, seeded; tower weights get seeded noise so each tower
    visibly changes the output."""
    register_auto_classes()
    tokenizer = tiny_tokenizer()
    config = tiny_eagle2_config(tokenizer, order)
    config.convnext_head_classes = TINY_HEAD_CLASSES
    torch.manual_seed(seed)
    model = Eagle2ChatModel(config).eval()
    with torch.no_grad():
        for param in model.vision_model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for param in model.mlp1[0].parameters():  # a LayerNorm affine that is not the identity
            param.add_(torch.randn_like(param) * 0.1)
    config.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    model.language_model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.language_model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, Eagle2Processor.from_config(tokenizer, config)


def _save(model, folder):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(folder, "model.safetensors")), metadata={"format": "pt"})
    Path(folder, CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")


def create_tiny_eagle2(out, seed=0, overwrite=False):
    """Write a tiny random Eagle2 folder (safetensors with the real key names, config.json, tokenizer) to ``out``."""
    return _create(out, seed, overwrite)


def _create(out, seed=0, overwrite=False, order=TINY_ORDER):
    model, processor = build_tiny_eagle2(seed, order)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        _save(model, tmp)
        processor.save_pretrained(tmp)
    return out


register_auto_classes()
ADAPTER = Eagle2Adapter()

__all__ = ["Eagle2Adapter", "Eagle2ChatConfig", "Eagle2ChatModel", "Eagle2Processor", "build_tiny_eagle2",
           "create_tiny_eagle2", "is_eagle2_config", "pixel_shuffle", "read_eagle2_config", "removal_plan",
           "strict_load", "tiny_eagle2_config"]
