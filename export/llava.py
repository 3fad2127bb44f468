"""``--format llava``: a model whose kept structure LLaVA holds -> stock ``LlavaForConditionalGeneration``.

LLaVA (transformers ``llava``) is one vision tower, a ``Linear -> GELU -> Linear`` projector and a
causal LM. Whether a model can become one, and how its weights, config and processor map onto
LLaVA's, is its family's knowledge: the adapter's ``export_targets`` / ``export_blockers`` and its
:class:`~encslim.models.capabilities.LlavaConvertible` methods (``to_llava(model, processor) ->
(LlavaConfig, state_dict, LlavaProcessor)``). This module does the generic part: it loads the
source, converts it through the adapter, adds a chat template from the adapter's ``build_prompt``
when the converted processor has none, writes the folder, and checks the stock classes' logits
against the source's on probe images and prompts.

The weights are written in the llava-hf key layout (``vision_tower.vision_model.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``), the layout of
the llava-hf checkpoints: transformers 4.4x and 5 and vLLM all load it (transformers 5 saves its own
layout, ``model.vision_tower.embeddings.*`` ..., which vLLM refuses). The image processor is the PIL
one; a consumer that picks the torchvision one (transformers and vLLM do when torchvision is
installed) resizes differently, so the card and the manifest name the backend to ask for.
"""

import json
import logging
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_output_dir, check_output_path
from ..models.capabilities import supports_llava
from ..provenance import VERIFY_TOLERANCE
from .common import (check_logits, count_parameters, fail_unless_matched, load_source, max_abs_diff, probe_images,
                     probe_prompts, read_source, require_target)
from .finish import CardInputs, FormatInfo, LoadedSource, check_card_inputs, finish_folder

logger = logging.getLogger(__name__)

ATOL = VERIFY_TOLERANCE
NEEDS = "a model with one encoder slot and a projector that LLaVA holds"

# the image processor the folder was verified with; torchvision's resize differs by up to ~0.01 per pixel
IMAGE_BACKEND = "pil"
# weight-name prefix -> llava-hf prefix, first match wins: transformers 5's module names (model.*, lm_head.*)
# and what its save_pretrained writes (top level already llava-hf, the tower without its vision_model.)
LLAVA_HF_PREFIXES = (("model.vision_tower.vision_model.", "vision_tower.vision_model."),
                     ("model.vision_tower.", "vision_tower.vision_model."),
                     ("vision_tower.vision_model.", "vision_tower.vision_model."),
                     ("vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("multi_modal_projector.", "multi_modal_projector."),
                     ("model.language_model.", "language_model.model."),
                     ("language_model.model.", "language_model.model."),
                     ("language_model.lm_head.", "language_model.lm_head."),
                     ("lm_head.", "language_model.lm_head."))

HOW_TO_LOAD = """\
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained("{name}")
processor = AutoProcessor.from_pretrained("{name}", backend="{backend}")
batch = processor(text=["{prompt}"], images=[image], return_tensors="pt")
print(processor.batch_decode(model.generate(**batch, max_new_tokens=16)))
"""


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
    """Convert a one-encoder model to a stock ``LlavaForConditionalGeneration`` folder (its adapter converts it).

    The written folder is loaded with ``LlavaForConditionalGeneration.from_pretrained`` and its
    processor with ``AutoProcessor``; their logits on probe images and prompts must equal the
    source's within ``atol``.

    Args:
        model_dir: a model folder whose family converts it to LLaVA (one encoder slot left).
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
    if not supports_llava(source.adapter):
        raise ConfigError(f"--format llava: the {source.model_type} family allows LLaVA but cannot convert to it "
                          "(its adapter has no to_llava); export --format hf instead")
    model, processor = load_source(source, "float32")
    images, prompts = probe_images(2), probe_prompts(source.adapter, processor, 2)
    with torch.no_grad():
        reference = model(**source.adapter.prepare_batch(processor, images, prompts)).logits
    with atomic_output_dir(out, overwrite=overwrite, inputs=[model_dir]) as tmp:
        target_config, state, target_processor = source.adapter.to_llava(model, processor)
        if getattr(target_processor, "chat_template", None) is None:
            template = source.adapter.build_prompt(processor, "{prompt}", with_image=False)
            target_processor.chat_template = chat_template(template, target_processor.image_token)
        llava = LlavaForConditionalGeneration(target_config).eval()
        llava.load_state_dict(state, strict=True)
        llava.generation_config = model.generation_config
        llava.save_pretrained(tmp, max_shard_size=max_shard_size)
        write_llava_hf_layout(tmp)
        target_processor.save_pretrained(tmp)
        records = _verify(tmp, images, prompts, reference, atol)
        serve = serve_command(out)
        fmt = FormatInfo("llava", notes=(backend_note(serve),), details={
            "architecture": "LlavaForConditionalGeneration", "key_layout": "llava-hf",
            "image_processor_backend": IMAGE_BACKEND, "serve": serve})
        manifest = finish_folder(
            tmp, LoadedSource(source, model, processor), fmt, verification=records,
            how_to_load=HOW_TO_LOAD.format(name=out, prompt=prompts[0].replace("\n", "\\n"), backend=IMAGE_BACKEND),
            parameters=count_parameters(llava), card=CardInputs(ranking, bench),
        )
    logger.info("exported %s -> %s (format llava)", model_dir, out)
    return manifest


def llava_hf_key(key):
    """The llava-hf name of a ``LlavaForConditionalGeneration`` weight name (either layout). Pure.

    Raises:
        ConfigError: a name outside LLaVA's four parts.
    """
    for old, new in LLAVA_HF_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise ConfigError(f"weight '{key}' is not part of a LlavaForConditionalGeneration")


def write_llava_hf_layout(folder):
    """Rename the weights ``save_pretrained`` wrote in ``folder`` to the llava-hf layout, shard by shard.

    Every ``*.safetensors`` file is rewritten with :func:`llava_hf_key` names (same tensors, same
    shards) and the shard index's ``weight_map`` follows.
    """
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    for shard in sorted(folder.glob("*.safetensors")):
        renamed = shard.with_name(shard.name + ".renamed")
        save_file({llava_hf_key(k): v for k, v in load_file(shard).items()}, renamed, metadata={"format": "pt"})
        renamed.replace(shard)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {llava_hf_key(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def serve_command(folder):
    """The ``vllm serve`` command line for an exported LLaVA folder (its image processor backend named)."""
    kwargs = json.dumps({"backend": IMAGE_BACKEND})
    return f"vllm serve {folder} --mm-processor-kwargs '{kwargs}'"


def backend_note(serve):
    """The card's line on the image processor backend and how to serve the folder."""
    return (f"Images are prepared by the {IMAGE_BACKEND.upper()} image processor, as verified: ask for it "
            f'(`AutoProcessor.from_pretrained(..., backend="{IMAGE_BACKEND}")`; vLLM: '
            f'`mm_processor_kwargs={{"backend": "{IMAGE_BACKEND}"}}`). With torchvision installed, transformers '
            "and vLLM otherwise pick the torchvision one, whose resize differs by up to ~0.01 per normalised "
            f"pixel. Serve with vLLM: `{serve}`")


def _verify(folder, images, prompts, reference, atol):
    """Logits of the written folder (stock classes only) against the source's."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, backend=IMAGE_BACKEND)
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    records = [check_logits("logits", max_abs_diff(reference, logits) if logits.shape == reference.shape
                            else float("inf"), atol)]
    fail_unless_matched(records, "the LLaVA folder")
    return records


__all__ = ["chat_template", "export_llava", "llava_hf_key", "serve_command", "write_llava_hf_layout"]
