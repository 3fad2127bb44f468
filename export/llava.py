"""``--format llava``: a native model whose structure LLaVA holds -> stock ``LlavaForConditionalGeneration``.

LLaVA (transformers ``llava``) is one vision tower, ``hidden_states[vision_feature_layer]``
with the CLS token dropped (``default``) or kept (``full``), a ``Linear -> GELU -> Linear``
projector, and a causal LM. A native encslim model maps onto it exactly when:

* one encoder slot is left;
* its backbone is CLIP or SigLIP (the towers LLaVA servers load);
* the fusion is a Linear-first projector over that slot: class A1 (``channel_concat`` with
  ``linear_first``) or class B (``sequence_concat``, its one projector);
* the slot delivers its own token grid (no pooling), CLS dropped or kept whole.

Whether a model can is its adapter's call (``export_targets`` / ``export_blockers``). A family kept in
its original checkpoint layout (I-MoF without DINOv2) converts itself: an adapter with a
``to_llava(model, processor) -> (LlavaConfig, state_dict, LlavaProcessor)`` method is used instead of
the native rules below (a processor without a chat template gets one from the adapter's ``build_prompt``).

Weight layout (transformers 5): ``model.vision_tower.*`` <- the slot encoder's ``backbone.*``,
``model.multi_modal_projector.linear_{1,2}`` <- the projector's Linear layers,
``model.language_model.*`` <- the LM's ``model.*``, ``lm_head`` <- the LM's ``lm_head`` (module
names from the adapter's ``trainable_parts``).
"""

import logging

from ..errors import ConfigError
from ..files import atomic_output_dir, check_output_path
from ..provenance import VERIFY_TOLERANCE
from .common import (check_logits, count_parameters, fail_unless_matched, load_source, max_abs_diff, probe_images,
                     probe_prompts, read_source, require_target)
from .finish import check_card_inputs, finish_folder, slot_rows

logger = logging.getLogger(__name__)

ATOL = VERIFY_TOLERANCE
NEEDS = "a native encslim model whose one encoder slot and projector LLaVA holds"

HOW_TO_LOAD = """\
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained("{name}")
processor = AutoProcessor.from_pretrained("{name}")
batch = processor(text=["{prompt}"], images=[image], return_tensors="pt")
print(processor.batch_decode(model.generate(**batch, max_new_tokens=16)))
"""


def llava_config(config):
    """The ``LlavaConfig`` equal to a LLaVA-compatible native config."""
    from transformers import LlavaConfig

    from ..models.families.native.configuration import backbone_info

    slot = config.slot_names[0]
    enc = config.encoder(slot)
    vision = config.vision_config(slot)
    prefix = backbone_info(vision)[1]
    strategy = "default" if prefix == 1 and enc["cls"] == "drop" else "full"
    text = config.text_config.to_dict()
    return LlavaConfig(
        vision_config=vision.to_dict(), text_config=text, image_token_index=config.image_token_id,
        image_seq_length=config.num_image_tokens(), vision_feature_layer=enc["feature_layer"],
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
    )


def llava_state_dict(state_dict, config, parts):
    """Rename a native state dict to LLaVA's key layout (no copies). Pure.

    Args:
        state_dict: the native model's state dict.
        config: its config (one slot left).
        parts: its :class:`~encslim.models.adapter.TrainableParts` (``adapter.trainable_parts(model)``):
            the module names of the slot's encoder, the fusion and the LM.

    Raises:
        ConfigError: a key that has no place in LLaVA (the model is not LLaVA-shaped).
    """
    slot = config.slot_names[0]
    fusion = parts.fusion[0] + "."
    # one projector over the concatenated channels (A1), or the slot's own one (B)
    per_slot = f"{fusion}projectors.{slot}."
    projector = per_slot if any(k.startswith(per_slot) for k in state_dict) else f"{fusion}projector."
    lm = parts.language_model + "."
    rules = [(parts.encoders[slot] + ".backbone.", "model.vision_tower."),
             (projector + "0.", "model.multi_modal_projector.linear_1."),
             (projector + "2.", "model.multi_modal_projector.linear_2."),
             (lm + "model.", "model.language_model."),
             (lm + "lm_head.", "lm_head.")]
    out = {}
    for key, tensor in state_dict.items():
        for old, new in rules:
            if key.startswith(old):
                out[new + key[len(old):]] = tensor
                break
        else:
            raise ConfigError(f"weight '{key}' has no place in a LLaVA model; the model is not LLaVA-shaped")
    return out


def llava_processor(processor, config):
    """A stock ``LlavaProcessor`` that prepares the same inputs as the native processor.

    Images: resized to the slot's square size (bicubic, no crop), rescaled and normalised with the
    slot's mean/std, exactly as the native processor does. Text: the same tokenizer; the chat
    template reproduces the native prompt template for a user turn.
    """
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    from ..models.families.native.configuration import backbone_info

    slot = config.slot_names[0]
    enc = config.encoder(slot)
    vision = config.vision_config(slot)
    size = enc["image_size"]
    image_processor = LlavaImageProcessorPil(
        do_resize=True, size={"height": size, "width": size}, resample=3, do_center_crop=False, do_pad=False,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(enc["image_mean"]),
        image_std=list(enc["image_std"]), do_convert_rgb=True,
    )
    prefix = backbone_info(vision)[1]  # LLaVA counts the CLS token, then 'default' drops it
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=processor.tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy=llava_config(config).vision_feature_select_strategy,
        chat_template=chat_template(processor.prompt_template, processor.image_token),
        image_token=processor.image_token, num_additional_image_tokens=prefix,
    )


def chat_template(prompt_template, image_token):
    """A Jinja chat template whose user turn renders exactly as ``prompt_template.format(prompt=...)``.

    The image placeholder comes first, on its own line, as in the native ``build_prompt``.
    """
    import json

    head, tail = (json.dumps(part) for part in prompt_template.split("{prompt}"))
    image = json.dumps(image_token + "\n")
    # text goes through {{ }} expressions: the template engine (trim_blocks) eats a newline after a tag
    user = ("{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ " + image + " }}{% endif %}"
            "{% endfor %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
            "{% endfor %}")
    return ("{% for message in messages %}{% if message['role'] == 'user' %}{{ " + head + " }}{% if "
            "message['content'] is string %}{{ message['content'] }}{% else %}" + user + "{% endif %}{{ " + tail +
            " }}{% else %}{{ ' ' }}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{% endif %}{{ eos_token }}"
            "{% endif %}{% endfor %}")


def export_llava(model_dir, out, *, overwrite=False, max_shard_size="5GB", ranking=None, bench=None, atol=ATOL):
    """Convert a one-encoder native model to a stock ``LlavaForConditionalGeneration`` folder.

    The written folder is loaded with ``LlavaForConditionalGeneration.from_pretrained`` and its
    processor with ``AutoProcessor``; their logits on probe images and prompts must equal the
    source's within ``atol``.

    Args:
        model_dir: a native encslim folder with one encoder slot left.
        out: output folder (written atomically).
        overwrite, max_shard_size, ranking, bench: as for :func:`encslim.export.hf_folder.export_hf`.
        atol: largest allowed logit difference (fp32).

    Returns:
        The manifest dict.

    Raises:
        ConfigError: the model's structure is not LLaVA's (the message names the condition).
        VerificationError: the LLaVA folder does not reproduce the source.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    check_output_path(out, overwrite, inputs=[model_dir])
    check_card_inputs(ranking, bench)
    source = read_source(model_dir)
    require_target(source, "llava", NEEDS, "LLaVA")
    model, processor = load_source(source, "float32")
    images, prompts = probe_images(2), probe_prompts(source.adapter, processor, 2)
    with torch.no_grad():
        reference = model(**source.adapter.prepare_batch(processor, images, prompts)).logits
    with atomic_output_dir(out, overwrite=overwrite, inputs=[model_dir]) as tmp:
        # a family in its own layout converts itself (adapter.to_llava); native models by the rules above
        to_llava = getattr(source.adapter, "to_llava", None)
        if to_llava is not None:
            target_config, state, target_processor = to_llava(model, processor)
            if getattr(target_processor, "chat_template", None) is None:
                template = source.adapter.build_prompt(processor, "{prompt}", with_image=False)
                target_processor.chat_template = chat_template(template, target_processor.image_token)
        else:
            state = llava_state_dict(model.state_dict(), model.config, source.adapter.trainable_parts(model))
            target_config, target_processor = llava_config(model.config), llava_processor(processor, model.config)
        llava = LlavaForConditionalGeneration(target_config).eval()
        llava.load_state_dict(state, strict=True)
        llava.generation_config = model.generation_config
        llava.save_pretrained(tmp, max_shard_size=max_shard_size)
        target_processor.save_pretrained(tmp)
        records = _verify(tmp, images, prompts, reference, atol)
        manifest = finish_folder(
            tmp, source, "llava", slots=slot_rows(source.adapter, model.config), verification=records,
            how_to_load=HOW_TO_LOAD.format(name=out, prompt=prompts[0].replace("\n", "\\n")),
            parameters=count_parameters(llava), fusion_class=source.adapter.fusion_class(model.config), ranking=ranking,
            bench=bench, details={"architecture": "LlavaForConditionalGeneration"},
        )
    logger.info("exported %s -> %s (format llava)", model_dir, out)
    return manifest


def _verify(folder, images, prompts, reference, atol):
    """Logits of the written folder (stock classes only) against the source's."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    records = [check_logits("logits", max_abs_diff(reference, logits) if logits.shape == reference.shape
                            else float("inf"), atol)]
    fail_unless_matched(records, "the LLaVA folder")
    return records


__all__ = ["export_llava", "llava_config", "llava_state_dict", "llava_processor"]
