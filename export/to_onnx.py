"""``--format onnx``: vision, decoder and embedding graphs, validated with onnxruntime.

The folder holds ``vision.onnx``, ``decoder.onnx``, ``embed_tokens.onnx`` (see
:mod:`encslim.export.onnx_graphs`), ``onnx_config.json`` (input/output names, slot geometry,
token ids, the validation report), the tokenizer and processor files, ``config.json`` and
``generation_config.json`` of the source, the model card and the manifest.
:mod:`encslim.export.ort_generate` runs greedy generation from it with onnxruntime alone.
"""

import json
import logging
from pathlib import Path

from ..files import atomic_output_dir, check_output_path
from ..provenance import VERIFY_TOLERANCE
from .common import fail_unless_matched, load_source, probe_batch, read_source, require_target
from .finish import check_card_inputs, finish_folder, slot_rows
from .onnx_graphs import (DECODER_FILE, EMBED_FILE, VISION_FILE, export_decoder, export_vision, graph_opset,
                          kv_geometry, past_names, write_embedding_graph)
from .onnx_validate import merge_image_embeds, validate_decoder, validate_embed, validate_vision
from .ort_generate import ONNX_CONFIG

logger = logging.getLogger(__name__)

ATOL = VERIFY_TOLERANCE
NEEDS = "a native encslim model (model_type 'encslim')"

HOW_TO_LOAD = """\
# onnxruntime, numpy, Pillow and tokenizers only (no torch):
#   python -m encslim.export.ort_generate {name} --image photo.png --prompt "What is in the image?"
from encslim.export.ort_generate import OrtVlm
vlm = OrtVlm("{name}")
print(vlm.decode(vlm.generate([image], ["What is in the image?"], max_new_tokens=16)))
"""


def onnx_config(model, processor, input_names, validation, opset):
    """The ``onnx_config.json`` dict: what a runtime needs to drive the three graphs."""
    config = model.config
    layers, kv_heads, head_dim = kv_geometry(config.text_config)
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else config.eos_token_id
    pad = model.generation_config.pad_token_id
    return {
        "format_version": 1,
        "graphs": {"vision": VISION_FILE, "decoder": DECODER_FILE, "embed_tokens": EMBED_FILE},
        "dtype": "float32", "opset": opset,
        "slots": [{"name": e["name"], "input": name, "image_size": e["image_size"],
                   "image_mean": list(e["image_mean"]), "image_std": list(e["image_std"])}
                  for e, name in zip(config.encoders, input_names)],
        "image_token": processor.image_token, "image_token_id": config.image_token_id,
        "num_image_tokens": processor.num_image_tokens(), "prompt_template": processor.prompt_template,
        "hidden_size": config.text_config.hidden_size, "vocab_size": config.text_config.vocab_size,
        "num_layers": layers, "num_kv_heads": kv_heads, "head_dim": head_dim,
        "eos_token_id": list(eos) if isinstance(eos, (list, tuple)) else [eos],
        "pad_token_id": pad if pad is not None else config.pad_token_id,
        "decoder_past_inputs": past_names(layers), "decoder_outputs": ["logits", *past_names(layers, "present")],
        "validation": validation,
    }


def write_graphs(model, folder):
    """Export the three graphs into ``folder``; return the vision input names."""
    import torch

    with torch.no_grad():
        names = export_vision(model, Path(folder) / VISION_FILE)
        export_decoder(model.language_model, Path(folder) / DECODER_FILE)
    write_embedding_graph(model.get_input_embeddings(), Path(folder) / EMBED_FILE)
    return names


def validate_graphs(model, processor, folder, atol, adapter):
    """Every graph output against PyTorch on probe images and padded prompts (``adapter``'s batch): records."""
    batch = probe_batch(adapter, processor)
    folder = Path(folder)
    image_embeds, records = validate_vision(model, folder / VISION_FILE, batch, atol)
    _, embed_records = validate_embed(model, folder / EMBED_FILE, batch["input_ids"], atol)
    embeds = merge_image_embeds(model, batch["input_ids"], image_embeds)
    decoder_records = validate_decoder(model, folder / DECODER_FILE, embeds, batch["attention_mask"], atol)
    return records + embed_records + decoder_records


def export_onnx(model_dir, out, *, overwrite=False, atol=ATOL, ranking=None, bench=None):
    """Export a native model as ONNX graphs and validate them with onnxruntime.

    Args:
        model_dir: a native encslim folder.
        out: output folder (written atomically).
        overwrite: replace an existing ``out``.
        atol: tolerance of every graph output against PyTorch (fp32).
        ranking, bench: for the model card (see :func:`encslim.export.hf_folder.export_hf`).

    Returns:
        The manifest dict (its ``export.validation`` lists every output, matched or not).

    Raises:
        ConfigError: not a native model. VerificationError: an output differs by more than ``atol``.
    """
    check_output_path(out, overwrite, inputs=[model_dir])
    check_card_inputs(ranking, bench)
    source = read_source(model_dir)
    require_target(source, "onnx", NEEDS, "ONNX")
    model, processor = load_source(source, "float32")
    front = source.adapter.vision_front_end(model, processor)
    if front is not None:  # a family whose ONNX export is its vision front end only
        return export_front_end(source, model, processor, front, out, overwrite=overwrite, atol=atol,
                                ranking=ranking, bench=bench)
    with atomic_output_dir(out, overwrite=overwrite, inputs=[model_dir]) as tmp:
        names = write_graphs(model, tmp)
        records = validate_graphs(model, processor, tmp, atol, source.adapter)
        for r in records:
            logger.info("%s %s: max |diff| %.3g (atol %g) %s", r["graph"], r["output"], r["max_abs_diff"], atol,
                        "matched" if r["matched"] else "NOT matched")
        fail_unless_matched(records, "the ONNX export")
        config = onnx_config(model, processor, names, records, graph_opset(Path(tmp) / DECODER_FILE))
        Path(tmp, ONNX_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        processor.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        manifest = finish_folder(
            tmp, source, "onnx", slots=slot_rows(source.adapter, model.config),
            verification=records,
            how_to_load=HOW_TO_LOAD.format(name=out), fusion_class=source.adapter.fusion_class(model.config),
            parameters=sum(p.numel() for p in model.parameters()), ranking=ranking, bench=bench,
            details={"graphs": config["graphs"], "opset": config["opset"], "validation_inputs":
                     "2 probe images, 2 chat prompts (left-padded); decoder: prefill from an empty past, then "
                     "one cached step; padded positions excluded"},
        )
    logger.info("exported %s -> %s (format onnx)", model_dir, out)
    return manifest


FRONT_END_HOW_TO_LOAD = """\
# onnxruntime and numpy only: pixel_values as the model's processor makes them -> image embeddings
import json, onnxruntime
config = json.load(open("{name}/onnx_config.json"))
session = onnxruntime.InferenceSession("{name}/" + config["graphs"]["vision"])
image_embeds = session.run(None, {{"pixel_values": pixel_values}})[0]   # (B, tokens, hidden) for the LLM
"""


def export_front_end(source, model, processor, front, out, *, overwrite=False, atol=ATOL, ranking=None,
                     bench=None):
    """``vision.onnx`` of a family's vision front end (pixels -> projected image embeddings), validated.

    Args:
        front: ``(module, info)`` from :meth:`Adapter.vision_front_end`: ``module(pixel_values)``
            returns the image embeddings the LLM receives; ``info`` (JSON) describes its input.
        the rest: see :func:`export_onnx`.
    """
    import torch

    from .onnx_graphs import quiet_export
    from .onnx_validate import check_graph

    module, info = front
    module = module.eval()
    pixels = probe_batch(source.adapter, processor)["pixel_values"].float()
    with atomic_output_dir(out, overwrite=overwrite, inputs=[source.path]) as tmp:
        path = Path(tmp) / VISION_FILE
        with torch.no_grad(), quiet_export("vision front end"):
            # a batch of 2 as the example: a batch of 1 would be specialised into the graph's reshapes
            torch.onnx.export(module, (pixels,), str(path), dynamo=True, external_data=False,
                              input_names=["pixel_values"], output_names=["image_embeds"],
                              dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}, verbose=False)
        records = [check_graph(module, path, "vision", "image_embeds", {"pixel_values": p}, atol)
                   for p in (pixels, pixels[:1])]
        fail_unless_matched(records, "the ONNX export")
        config = {"format_version": 1, "graphs": {"vision": VISION_FILE}, "inputs": ["pixel_values"],
                  "outputs": ["image_embeds"], "dtype": "float32", "vision": info, "validation": records,
                  "language_model": "not exported: only the vision front end (encoders, fusion, projector) is "
                                    "ONNX; run the LLM on image_embeds with its own runtime"}
        Path(tmp, ONNX_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        processor.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        manifest = finish_folder(
            tmp, source, "onnx", slots=slot_rows(source.adapter, model.config), verification=records,
            how_to_load=FRONT_END_HOW_TO_LOAD.format(name=out),
            fusion_class=source.adapter.fusion_class(model.config),
            parameters=sum(p.numel() for p in module.parameters()), ranking=ranking, bench=bench,
            notes=["ONNX of the vision front end only (pixels -> image embeddings); the LLM stays in PyTorch"],
            details={"graphs": config["graphs"], "validation_inputs": "2 probe images (batch 2, then batch 1)"},
        )
    logger.info("exported %s -> %s (format onnx, vision front end)", source.path, out)
    return manifest


__all__ = ["export_onnx", "export_front_end", "onnx_config", "write_graphs", "validate_graphs"]
