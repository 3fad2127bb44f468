"""The Eagle v1 family (X2/X4/X5) in its original checkpoint layout: the adapter and strict loading.

Slots are the tower names of ``mm_vision_tower`` (``clip-448``, ``convnext-1024``, ``sam-1024``,
``det-1024``, ``pix2struct-1024``). The fusion is class A1 (DESIGN §1): every tower's 32x32 grid
is concatenated on channels and ``mm_projector.0`` is the first Linear. The paper's mask replaces
a tower's features by zeros before the concat, which is exactly deleting its columns of
``mm_projector.0.weight`` (bias unchanged): removal is exact for every tower (:mod:`.plan`). The
``mean`` mask (a constant per channel) is supported in masking; it would fold into the bias.

Strict loading: the checkpoint's keys must equal the modules' keys; a missing or unexpected key is
an error naming it. The one tolerated difference is ConvNeXt's classifier ``head.*``, which
Eagle's forward never runs: its size is read from the checkpoint (absent: no head).
"""

import re

import torch

from ....errors import ConfigError, ModelLoadError
from ....files import CONFIG_NAME
from ...adapter import Slot, TrainableParts
from ...layout import (ROTARY_INV_FREQ, LayoutAdapter, check_keys, from_pretrained, header_shapes, make_config,
                      meta_shapes, read_config_json, tolerate)
from ...masking import FusionClass, check_mask_set, mask_feature
from ...tokens import budget_of
from .configuration import (CONVNEXT, EAGLE_KEYS, IMAGE_TOKEN_INDEX, TOWER_NAMES, TOWER_PREFIX, EagleConfig,
                            parse_towers)
from .modeling import EagleVisionLlamaForCausalLM, register_auto_classes
from .plan import removal_plan
from .processing import EagleProcessor

# EVA's RoPE tables: a function of the tower's sizes. A checkpoint may hold them once (rope_win /
# rope_glb), also under every block's alias (a torch.save of the original module), or not at all.
DERIVED_KEY = re.compile(r"\.vision_tower\.(blocks\.\d+\.attn\.rope|rope_win|rope_glb)\.freqs_(cos|sin)$")
HOW_TO_LOAD = """\
import encslim
model, processor, adapter = encslim.load_model("{name}")
# with plain transformers: one line makes AutoModelForCausalLM know eagle_llama
#   encslim.register_transformers()
#   from transformers import AutoModelForCausalLM
#   model = AutoModelForCausalLM.from_pretrained("{name}")
"""


def _budget_note(budget, grid):
    """The export note of a folder whose config carries a token budget."""
    return (f"token budget {budget.label} (config.json token_budget): {budget.tokens_out((grid, grid))} of the "
            f"{grid * grid} image tokens reach the LLM; NVlabs/EAGLE's own code has no reducer (it ignores the key "
            "and splices all of them), so a folder with a token budget loads with encslim only")


def read_eagle_config(path):
    """The :class:`EagleConfig` of a folder (``model_type`` ``eagle_llama`` or ``llava_llama``)."""
    data = read_config_json(path)
    missing = [k for k in EAGLE_KEYS if k not in data]
    if missing:
        raise ModelLoadError(f"{path}/{CONFIG_NAME} is not an Eagle config: it lacks {', '.join(missing)}")
    unknown = [t for t in parse_towers(data["mm_vision_tower"]) if t not in TOWER_NAMES]
    if unknown:
        raise ModelLoadError(f"{path}/{CONFIG_NAME} names unknown Eagle tower(s) {', '.join(unknown)} in "
                             f"mm_vision_tower; known: {', '.join(TOWER_NAMES)}")
    config = make_config(EagleConfig, data, path, "Eagle")
    widths = sum(config.tower_widths())
    if config.mm_hidden_size != widths:
        raise ModelLoadError(f"{path}/{CONFIG_NAME}: mm_hidden_size is {config.mm_hidden_size} but the towers "
                             f"{config.mm_vision_tower} deliver {widths} channels; fix mm_hidden_size")
    return config


def _fit_heads(config, shapes):
    """Size each ConvNeXt tower's unused classifier head as the checkpoint has it (0: none)."""
    specs = dict(config.eagle_tower_specs)
    for i, name in enumerate(config.tower_names):
        if name == CONVNEXT:
            fc = shapes.get(f"{TOWER_PREFIX}{i}.vision_tower.head.fc.weight")
            specs[name] = {**specs.get(name, {}), "head_classes": int(fc[0]) if fc else 0}
    config.eagle_tower_specs = specs


def strict_load(path, config, dtype=None, device_map=None):
    """``from_pretrained`` refusing any missing, unexpected or mis-shaped key (naming them)."""
    shapes = header_shapes(path, "Eagle")
    _fit_heads(config, shapes)
    derived_missing = check_keys(path, shapes, _expected_shapes(config),
                                 f"Eagle config ({config.mm_vision_tower})",
                                 tolerated=tolerate(DERIVED_KEY, ROTARY_INV_FREQ))
    model = from_pretrained(EagleVisionLlamaForCausalLM, path, config, dtype, device_map)
    if derived_missing:
        from .eva import VisionRotaryEmbeddingFast

        for module in model.modules():
            if isinstance(module, VisionRotaryEmbeddingFast):
                module.reset_tables()
    return model


def _expected_shapes(config):
    tied = ("lm_head.weight",) if config.tie_word_embeddings else ()
    return meta_shapes(EagleVisionLlamaForCausalLM, config, skip=tied)


class EagleAdapter(LayoutAdapter):
    """Eagle v1 (``eagle_llama``, or ``llava_llama`` with Eagle's keys): one slot per tower, class A1."""

    model_type = "eagle_llama"
    model_class = EagleVisionLlamaForCausalLM

    def read_config(self, path):
        return read_eagle_config(path)

    def slots(self, config):
        from .towers import tower_input_size

        return [Slot(name, name.split("-")[0], tower_input_size(name, config.tower_spec(name)),
                     config.eagle_grid_size ** 2, config.tower_width(name), removal_exact=True)
                for name in config.tower_names]

    def fusion_class(self, config):
        return FusionClass.A1

    def token_grids(self, config, masked=frozenset(), mask_mode="removal"):
        """One ``g x g`` grid: every tower's features concatenated on channels, projected (masking keeps it)."""
        grid = config.eagle_grid_size
        return [(grid, grid)]

    def fusion_settings(self, config):
        return {"type": "channel_concat", "projector": config.mm_projector_type, "grid": config.eagle_grid_size,
                "input_image_size": config.eagle_input_image_size, "mask": "zeros before the concat"}

    # ------------------------------------------------------------------ loading and inputs
    def load(self, path, device="cpu", dtype=None, device_map=None):
        register_auto_classes()
        config = self.read_config(path)
        model = strict_load(path, config, dtype, device_map)
        if device_map is None:
            model.to(device)
        return model.eval(), EagleProcessor.from_pretrained(path, config)

    def build_prompt(self, processor, question, with_image=True):
        return processor.build_prompt(question, with_image)

    def image_token_id(self, config):
        return IMAGE_TOKEN_INDEX

    # ------------------------------------------------------------------ the split forward
    def encode(self, model, batch, slots=None):
        pixels = batch.get("pixel_values")
        if pixels is None:
            return {}
        tower = model.model.vision_tower
        pixels = pixels.to(model.device, model.dtype)
        wanted = set(tower.names if slots is None else slots)
        return {name: tower.tower_features(i, pixels) for i, name in enumerate(tower.names) if name in wanted}

    def fuse(self, model, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        """The concat of every tower's features, ``masked`` ones replaced by zeros (or constants)."""
        config = model.config
        masked = check_mask_set(config.tower_names, masked, mask_mode, mask_values)
        ref = next(v for k, v in features.items() if k not in masked) if set(features) - masked \
            else next(iter(features.values()))
        parts = []
        for name in config.tower_names:
            if name in masked:
                parts.append(mask_feature(ref, config.tower_width(name), mask_mode, (mask_values or {}).get(name)))
            else:
                parts.append(features[name])
        return torch.cat(parts, dim=-1)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        input_ids = batch["input_ids"].to(model.device)
        image = input_ids == IMAGE_TOKEN_INDEX
        embeds = model.get_input_embeddings()(input_ids.masked_fill(image, 0))
        if not features:
            return embeds
        fused = model.model.mm_projector(self.fuse(model, features, masked, mask_mode, mask_values).to(embeds.dtype))
        fused = model.reduce_image_tokens(fused)  # config.token_budget (none: every token)
        places = int(image.sum())
        if places and places != fused.shape[0] * fused.shape[1]:  # prompts without images (training) take none
            budget = budget_of(model.config)
            raise ConfigError(f"the prompts hold {places} image tokens but {fused.shape[0]} image(s) give "
                              f"{fused.shape[1]} each (token budget {budget.label if budget else '1'}): the "
                              "processor's token_budget differs from the model's")
        return embeds.masked_scatter(image.unsqueeze(-1), fused.to(embeds.dtype))

    # ------------------------------------------------------------------ modules and parameters
    def encoders(self, model):
        tower = model.model.vision_tower
        return dict(zip(tower.names, tower.vision_towers))

    def parts(self, model):
        inner = model.model
        llm = torch.nn.ModuleList([inner.embed_tokens, inner.layers, inner.norm, model.lm_head])
        return {"fusion": inner.mm_projector, "language_model": llm}

    def slot_parameters(self, model):
        hidden = model.config.hidden_size
        return {name: {"vision": sum(p.numel() for p in module.parameters()),
                       "fusion": model.config.tower_width(name) * hidden}
                for name, module in self.encoders(model).items()}

    def trainable_parts(self, model):
        names = model.config.tower_names
        return TrainableParts(language_model="model.layers", fusion=("model.mm_projector",),
                              encoders={n: f"{TOWER_PREFIX}{i}" for i, n in enumerate(names)})

    # ------------------------------------------------------------------ removal and export
    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        budget = budget_of(config)
        return ["hf"] if budget is not None and budget.method != "pool" else ["hf", "onnx"]

    def export_blockers(self, config, kept, fmt):
        budget = budget_of(config)
        if fmt == "onnx" and budget is not None and budget.method != "pool":
            return [f"the ONNX vision front end cannot hold the {budget.method} token reducer (token budget "
                    f"{budget.label}: it scores tokens with the LLM's first layer, which the graph does not hold); "
                    "a pool budget exports"]
        if fmt in self.export_targets(config, kept):
            return []
        return [f"{fmt} export is not available for Eagle; --format hf writes Eagle's own layout (loads with "
                "encslim, and with NVlabs/EAGLE's code while convnext-1024 is kept), --format onnx its vision "
                "front end"]

    def vision_front_end(self, model, processor):
        """The towers, concat and projector on one input per tower (no pixel resampling in the graph).

        Each tower's input is made outside the graph by ``processor.tower_inputs(pixel_values)``
        (:mod:`.front_end`: the model's own torch resizes, Pix2Struct's patch extraction), so the
        ONNX graph contains no ``Resize`` of pixels and matches PyTorch within 1e-4 at 1024 px.
        """
        from ...llava_processing import CLIP_MEAN, CLIP_STD
        from .front_end import EagleTowerInputsFrontEnd

        budget = budget_of(model.config)
        if budget is not None and budget.method != "pool":
            raise ConfigError(self.export_blockers(model.config, model.config.tower_names, "onnx")[0])
        module = EagleTowerInputsFrontEnd(model)
        grid = (model.config.eagle_grid_size,) * 2
        info = {"image_size": processor.image_size, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
                "expand_to_square": processor.pad,
                "num_image_tokens": budget.tokens_out(grid) if budget else processor.num_image_tokens,
                "token_budget": budget.to_dict() if budget else None,
                "token_grid": list(budget.grid_out(grid) if budget else grid),
                "hidden_size": model.config.hidden_size, "towers": model.config.tower_names,
                "tower_inputs": module.recipes,
                "make_inputs": "EagleProcessor.tower_inputs(pixel_values) (encslim, torch): each tower's input as "
                               "the model's forward makes it; the graph takes them by name"}
        return module, info

    def export_notes(self, config):
        """What a model card should say about this Eagle folder."""
        notes = ["architecture written as EagleVisionLlamaForCausalLM: EagleLlamaForCausalLM is also vLLM's "
                 "EAGLE speculative-decoding draft model"]
        if CONVNEXT not in config.tower_names:
            notes.append("without convnext-1024 this folder does not load in NVlabs/EAGLE's own code (its "
                         "multi-tower encoder takes the ConvNeXt tower's image processor); load it with encslim")
        budget = budget_of(config)
        if budget is not None:
            notes.append(_budget_note(budget, config.eagle_grid_size))
        return notes

    def how_to_load(self, folder, model):
        budget = budget_of(model.config)
        extra = f"# {_budget_note(budget, model.config.eagle_grid_size)}\n" if budget is not None else ""
        return HOW_TO_LOAD.format(name=folder) + extra


register_auto_classes()
ADAPTER = EagleAdapter()
