"""The Cambrian-1 family in its original checkpoint layout: the adapter and strict loading.

Slots are the encoders of ``mm_vision_tower_aux_list`` (``siglip``, ``clip``, ``dinov2``,
``convnext`` for Cambrian-8B/13B/34B). The fusion is class C (DESIGN §1): learned queries
cross-attend to every encoder's local window in the SVA connector and again in the sampler layers
inside the LLM. Two masks:

- ``removal`` (default): the encoder's keys leave every cross attention (connector and LLM
  samplers), which is exactly what the connector without it computes. Removing encoder 0 (SigLIP)
  also moves the global context (the token mean of encoder 0) to the first encoder kept, as the
  pruned connector does; the plan says so in its notes, since ``proj_context`` was trained on
  SigLIP's mean and the drop in accuracy is then larger than the keys alone explain.
- ``zero`` (the study's): the encoder's features are zeros after its ``mm_projector_aux_i``; they
  still get their position embedding and LayerNorm and still enter every attention as keys, so
  the zero-masked model is not the model without the encoder (``Slot.removal_exact`` describes the
  removal mask; rank reports which mask it used).

The encoders are not in the checkpoint: :mod:`.encoders` loads them from local folders named per slot
(``--encoder siglip=PATH``, :mod:`encslim.models.external`), else from the ones saved in ``config.json``
(``encslim_encoder_paths``, written in encslim's outputs so that later stages find them), else from the local
Hugging Face cache by the hub ids the original downloads (:mod:`.hub`, offline), in that order.
"""

import copy

import torch

from ....errors import ConfigError, ModelLoadError
from ....files import CONFIG_NAME
from ...adapter import Slot, TrainableParts
from ...external import CONFIG_KEY
from ...layout import (ROTARY_INV_FREQ, LayoutAdapter, check_keys, from_pretrained, header_shapes, make_config,
                       meta_shapes, read_config_json)
from ...masking import FusionClass, MaskError, check_mask_set
from ...tokens import TokenBudget, budget_of
from .configuration import (CAMBRIAN_KEYS, KINDS, MODEL_TYPE, IMAGE_TOKEN_INDEX, CambrianConfig, budget_grid,
                            budget_refusal, tower_kind)
from .modeling import CambrianLlamaForCausalLM, register_auto_classes
from .plan import removal_plan, sampler_prefixes
from .processing import IMAGE_PLACEHOLDER, CambrianProcessor

HOW_TO_LOAD = """\
import encslim
# the local encoder folders are saved in config.json (encslim_encoder_paths); others: encoders={{slot: folder}}
model, processor, adapter = encslim.load_model("{name}", encoders={paths})
"""


def read_cambrian_config(path, encoders=None):
    """The :class:`CambrianConfig` of a folder, with the encoder folders ``encoders`` (``{slot: folder}``,
    those of its slots) over the ones saved in its ``config.json``."""
    data = read_config_json(path)
    missing = [k for k in CAMBRIAN_KEYS if k not in data]
    if missing:
        raise ModelLoadError(f"{path}/{CONFIG_NAME} is not a Cambrian SVA config: it lacks {', '.join(missing)}")
    towers, lens = data["mm_vision_tower_aux_list"], data["mm_vision_tower_aux_token_len_list"]
    unknown = [t for t in towers if tower_kind(t) is None]
    if unknown:
        raise ModelLoadError(f"{path}/{CONFIG_NAME} names encoder(s) {', '.join(unknown)} that encslim does not know; "
                             f"Cambrian's SVA models use {', '.join(KINDS)}")
    if len(lens) != len(towers) or not towers:
        raise ModelLoadError(f"{path}/{CONFIG_NAME}: mm_vision_tower_aux_token_len_list has {len(lens)} entries for "
                             f"{len(towers)} encoders; they must match")
    config = make_config(CambrianConfig, data, path, "Cambrian")
    _widths_from_checkpoint(config, path)
    named = {k: v for k, v in dict(encoders or {}).items() if k in config.slot_names}
    paths = {**config.encoder_paths, **named}
    from .hub import resolve_missing

    paths.update(resolve_missing(config, paths))  # the rest from the local Hugging Face cache, offline
    if paths:
        setattr(config, CONFIG_KEY, paths)
    return config


def _widths_from_checkpoint(config, path):
    """Each encoder's feature width as the checkpoint's ``mm_projector_aux_{i}`` takes it, where the config
    does not say (real configs name hub ids only; the original reads the widths off the loaded towers)."""
    try:
        shapes = header_shapes(path, "Cambrian")
    except ModelLoadError:
        return  # no weights here (a config on its own): the hub ids' real widths stand
    specs = dict(config.cambrian_encoder_specs)
    for i, slot in enumerate(config.slot_names):
        shape = shapes.get(f"model.mm_projector_aux_{i}.0.weight")
        if shape is not None and "width" not in (specs.get(slot) or {}):
            specs[slot] = {**dict(specs.get(slot) or {}), "width": int(shape[1])}
    config.cambrian_encoder_specs = specs


def strict_load(path, config, dtype=None, device_map=None):
    """``from_pretrained`` refusing any missing, unexpected or mis-shaped key (naming them)."""
    shapes = header_shapes(path, "Cambrian")
    tied = ("lm_head.weight",) if config.tie_word_embeddings else ()
    check_keys(path, shapes, meta_shapes(CambrianLlamaForCausalLM, config, skip=tied),
               f"Cambrian config ({', '.join(config.slot_names)})", tolerated=ROTARY_INV_FREQ)
    return from_pretrained(CambrianLlamaForCausalLM, path, config, dtype, device_map)


def attach_towers(model, config, path, device="cpu", dtype=None):
    """Load every slot's encoder from its folder and attach it (outside the module tree, as the original)."""
    from .encoders import build_tower
    from .folders import check_encoder_folders, folder_kind

    paths = check_encoder_folders(config, config.encoder_paths, path)
    towers = []
    for slot in config.slot_names:
        tower = build_tower(slot, folder_kind(paths[slot])[0], paths[slot], config)
        towers.append(tower.to(device=device, dtype=dtype).eval().requires_grad_(False))
    model.model.vision_tower_aux_list = towers
    setattr(model.config, CONFIG_KEY, paths)
    return {t.slot: t.preprocess for t in towers}


class CambrianAdapter(LayoutAdapter):
    """Cambrian-1 (``llava_llama``/``cambrian_llama`` with ``mm_projector_type: sva``): one slot per encoder, class C."""

    model_type = MODEL_TYPE
    model_class = CambrianLlamaForCausalLM
    encoder_folders = {}  # {slot: folder} this adapter reads configs with (with_encoders)

    def with_encoders(self, encoders):
        """A copy of this adapter reading every config with the encoder folders ``encoders`` ({slot: folder})."""
        bound = copy.copy(self)
        bound.encoder_folders = {**self.encoder_folders, **dict(encoders or {})}
        return bound

    def read_config(self, path):
        return read_cambrian_config(path, self.encoder_folders)

    def slots(self, config):
        return [Slot(s, config.kind(s), int(config.geometry(s)["image_size"]), config.token_len(s),
                     int(config.geometry(s)["width"]), removal_exact=True) for s in config.slot_names]

    def fusion_class(self, config):
        return FusionClass.C

    def fusion_settings(self, config):
        return {"type": "sva", "queries": config.query_num_list, "depth": config.connector_depth,
                "vision_hidden_size": config.vision_hidden_size, "image_token_len": config.image_token_len,
                "sampler_layers_after": config.sampler_layer_indices, "global_context": config.slot_names[0],
                "mask": "removal: keys out of every cross attention; zero: zeros after the aux projector"}

    def check_mask(self, config, masked, mask_mode="removal", mask_values=None):
        if mask_mode == "mean":
            raise MaskError("the mean mask is not defined for Cambrian's SVA; use --mask removal or zero")
        return super().check_mask(config, masked, mask_mode, mask_values)

    def image_tokens(self, config, masked=frozenset(), mask_mode="removal"):
        """A square image's tokens: its (pooled, under a budget) grid plus one ``image_newline`` per row."""
        side = int(config.image_token_len ** 0.5)
        budget = budget_of(config)
        h, w = budget_grid((side, side), None if budget_refusal(config, budget) else budget)
        return h * (w + 1)

    def token_grids(self, config, masked=frozenset(), mask_mode="removal"):
        """The query grid after ``mm_projector`` (a square image's; others are unpadded per image first), pooled
        before the newlines go in (:func:`.modeling.reduce_image_grid`); ``None`` with sampler layers in the LLM."""
        if not config.connector_only:
            return None
        side = int(config.image_token_len ** 0.5)
        return [(side, side)]

    def token_budget_blockers(self, config):
        return [budget_refusal(config, TokenBudget("pool", 0.5))] if not config.connector_only else []

    def check_token_budget(self, config, budget):
        """As the base check; and the method must be ``pool`` (newlines end the image rows)."""
        reason = budget_refusal(config, budget)
        if reason:
            raise ConfigError(f"token budget {budget.label}: {reason}")

    # ------------------------------------------------------------------ loading and inputs
    def load(self, path, device="cpu", dtype=None, device_map=None):
        register_auto_classes()
        config = self.read_config(path)
        from .folders import check_encoder_folders

        check_encoder_folders(config, config.encoder_paths, path)  # before the LLM weights are read
        model = strict_load(path, config, dtype, device_map)
        if device_map is None:
            model.to(device)
        preprocess = attach_towers(model, config, path, model.device, model.dtype)
        return model.eval(), CambrianProcessor.from_pretrained(path, model.config, preprocess)

    def image_token_id(self, config):
        return IMAGE_TOKEN_INDEX

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        prompts = [p if images is None or IMAGE_PLACEHOLDER in p else f"{IMAGE_PLACEHOLDER}\n{p}" for p in prompts]
        sizes = None if images is None else [im.size for im in images]
        batch = processor.text_inputs(prompts, sizes)
        if images is not None:
            batch.update(self.pixel_inputs(processor, images, masked if mask_mode == "removal" else ()))
        return batch

    def pixel_inputs(self, processor, images, masked=frozenset()):
        return processor.pixel_inputs(list(images), [s for s in processor.slots if s not in set(masked)])

    # ------------------------------------------------------------------ the split forward
    def encode(self, model, batch, slots=None):
        towers = model.towers
        wanted = [s for s in model.config.slot_names if f"pixel_values_{s}" in batch and (slots is None or s in slots)]
        out = {}
        for slot in wanted:
            if slot not in towers:
                raise ConfigError(f"slot {slot} has no encoder loaded; load the model with encslim.load_model "
                                  "and its encoder folders")
            out[slot] = towers[slot](batch[f"pixel_values_{slot}"]).to(model.device, model.dtype)
        return out

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        config = model.config
        masked = check_mask_set(config.slot_names, masked, mask_mode, mask_values)
        input_ids = batch["input_ids"].to(model.device)
        if not features:
            image = input_ids == IMAGE_TOKEN_INDEX
            return model.get_input_embeddings()(input_ids.masked_fill(image, 0))
        removed = masked if mask_mode == "removal" else frozenset()
        zeroed = masked if mask_mode == "zero" else frozenset()
        sizes = batch.get("image_sizes")
        if sizes is None:
            side = int(config.image_token_len ** 0.5)
            sizes = [(side, side)] * input_ids.shape[0]
        else:
            sizes = [tuple(int(v) for v in row) for row in sizes.tolist()]
        embeds, context = model.connector(features, input_ids, sizes, removed, zeroed)
        embeds.vision_context = context  # read by lm_forward: the LLM's sampler layers need it
        return embeds

    def lm_forward(self, model, **kwargs):
        context = getattr(kwargs.get("inputs_embeds"), "vision_context", None)
        if context is not None:
            kwargs["vision_context"] = context
        return model(**kwargs)

    def generate(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None,
                 max_new_tokens=16, **generate_kwargs):
        if features is None:
            run = [s for s in self.slot_names(model.config) if not (mask_mode == "removal" and s in set(masked))]
            features = self.encode(model, batch, run)
        embeds = self.embed(model, features, batch, masked, mask_mode, mask_values)
        kwargs = {"do_sample": False, "num_beams": 1, **generate_kwargs}
        context = getattr(embeds, "vision_context", None)
        if context is not None:
            kwargs["vision_context"] = context
        return model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(embeds.device),
                              max_new_tokens=max_new_tokens, **kwargs)

    # ------------------------------------------------------------------ modules and parameters
    def encoders(self, model):
        return model.towers

    def _connector_names(self, config):
        names = ["model.mm_projector"] + [f"model.mm_projector_aux_{i}" for i in range(len(config.slot_names))]
        names += [f"model.vision_sampler_{g}" for g in range(config.num_query_group)]
        layers = 0 if config.connector_only else config.num_of_vision_sampler_layers
        return names + [f"model.vision_sampler_layers.{j}" for j in range(layers)]  # peft wraps modules, not lists

    def parts(self, model):
        inner = model.model
        modules = dict(model.named_modules())
        fusion = torch.nn.ModuleList([modules[n] for n in self._connector_names(model.config)])
        llm = torch.nn.ModuleList([inner.embed_tokens, inner.layers, inner.norm, model.lm_head])
        return {"fusion": fusion, "language_model": llm}

    def slot_parameters(self, model):
        config, inner = model.config, model.model
        out = {}
        for i, slot in enumerate(config.slot_names):
            fusion = sum(p.numel() for p in getattr(inner, f"mm_projector_aux_{i}").parameters())
            for prefix, _ in sampler_prefixes(config):
                for name, param in model.named_parameters():
                    if name.startswith(prefix) and (f".k_proj_{i}." in name or f".v_proj_{i}." in name
                                                    or name == f"{prefix}pos_embed_{i}"):
                        fusion += param.numel()
            tower = model.towers.get(slot)
            out[slot] = {"vision": sum(p.numel() for p in tower.parameters()) if tower is not None else 0,
                         "fusion": fusion}
        return out

    def trainable_parts(self, model):
        return TrainableParts(language_model="model.layers", fusion=tuple(self._connector_names(model.config)),
                              encoders={})

    # ------------------------------------------------------------------ removal and export
    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        return ["hf"]

    def export_blockers(self, config, kept, fmt):
        if fmt in self.export_targets(config, kept):
            return []
        if fmt == "onnx":
            return ["onnx export is not available for Cambrian: its SVA runs inside the LLM too (sampler layers after "
                    f"decoder layers {config.sampler_layer_indices}), so no front-end graph computes the image "
                    "embeddings alone; --format hf writes Cambrian's own layout"]
        return [f"{fmt} export is not available for Cambrian (no stock or native class has its SVA connector); "
                "--format hf writes Cambrian's own layout, with the encoder folders named in config.json"]

    def export_notes(self, config):
        notes = ["the vision encoders are not in this folder (as in Cambrian's own checkpoints); "
                 f"config.json's {CONFIG_KEY} names the local folders encslim loads them from"]
        budget = budget_of(config)
        if budget is not None and not budget_refusal(config, budget):
            notes.append(f"token budget {budget.label} (config.json token_budget): each image's query grid is pooled "
                         f"to {'x'.join(map(str, budget_grid(self.token_grids(config)[0], budget)))} (square image) "
                         "before the newlines; Cambrian's own code has no reducer (it ignores the key), so this folder "
                         "applies its budget when loaded with encslim only")
        return notes

    def how_to_load(self, folder, model):
        return HOW_TO_LOAD.format(name=folder, paths=dict(model.config.encoder_paths))


register_auto_classes()
ADAPTER = CambrianAdapter()
