"""Validate exported ONNX graphs against PyTorch on real inputs (optimum style).

Real inputs: probe images through the native processor, chat prompts of different lengths
through its tokenizer (so the batch is left-padded). Each graph output is compared with the
PyTorch output and reported as ``{"graph", "output", "shape", "max_abs_diff", "atol", "matched"}``.
Decoder outputs are compared where the attention mask is 1: padded positions are masked in every
later step and never read, and their values depend on how a backend treats fully masked rows.
"""

import logging

import numpy as np

from .common import max_abs_diff
from .onnx_graphs import DecoderGraph, VisionGraph, kv_geometry, past_names, pixel_input

logger = logging.getLogger(__name__)


def _record(graph, output, reference, actual, atol, mask=None, shape=None):
    diff = max_abs_diff(reference, actual, mask)
    shape = np.shape(actual) if shape is None else shape
    return {"graph": graph, "output": output, "shape": [int(d) for d in shape], "max_abs_diff": diff,
            "atol": atol, "matched": bool(diff <= atol)}


def _session(path, threads=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_graph(module, path, graph, output, inputs, atol):
    """One record: ``module(**inputs)`` (PyTorch) against the ONNX graph at ``path`` on the same inputs."""
    import torch

    with torch.no_grad():
        reference = module(**inputs)
    actual = _session(path).run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    return _record(graph, output, reference, actual, atol)


def check_front_end(module, path, pixel_values, atol):
    """One record: the model's own path on ``pixel_values`` against the front-end graph on the per-tower inputs.

    Args:
        module: the front end (``reference``, ``make_inputs``, ``input_names``; see
            :func:`encslim.export.to_onnx.export_front_end`).
        path: the ``.onnx`` file.
        pixel_values: the processor's pixels.
        atol: tolerance.

    Returns:
        The ``vision``/``image_embeds`` record.
    """
    return compare_front_end(path, module.input_names, [front_end_case(module, pixel_values)], atol)[0]


def front_end_case(module, pixel_values):
    """``(inputs, reference)`` for :func:`compare_front_end`: the graph's per-tower inputs for ``pixel_values``
    and the model's own output on them (PyTorch, computed now, so the weights may be released before the graph
    is loaded)."""
    import torch

    with torch.no_grad():
        reference = module.reference(pixel_values)
        inputs = module.make_inputs(pixel_values)
    return inputs, reference


def compare_front_end(path, input_names, cases, atol):
    """One ``vision``/``image_embeds`` record per case: the front-end graph (one onnxruntime session for all
    cases) against PyTorch outputs computed beforehand.

    Args:
        path: the ``.onnx`` file.
        input_names: the graph's inputs, in the order of each case's inputs.
        cases: ``(inputs, reference)`` pairs from :func:`front_end_case`.
        atol: tolerance.
    """
    session = _session(path)
    records = []
    for inputs, reference in cases:
        actual = session.run(None, {n: t.numpy() for n, t in zip(input_names, inputs)})[0]
        records.append(_record("vision", "image_embeds", reference, actual, atol))
    return records


def validate_vision(model, path, batch, atol):
    """Compare ``vision.onnx`` with the PyTorch encoders + fusion on the batch's pixels."""
    import torch

    slots = list(model.slot_names)
    pixels = [batch[pixel_input(s)] for s in slots]
    with torch.no_grad():
        reference = VisionGraph(model)(pixels)
    actual = _session(path).run(None, {pixel_input(s): p.numpy() for s, p in zip(slots, pixels)})[0]
    return reference, [_record("vision", "image_embeds", reference, actual, atol)]


def validate_embed(model, path, input_ids, atol):
    """Compare ``embed_tokens.onnx`` with the LM's embedding table."""
    import torch

    with torch.no_grad():
        reference = model.get_input_embeddings()(input_ids)
    actual = _session(path).run(None, {"input_ids": input_ids.numpy()})[0]
    return reference, [_record("embed_tokens", "inputs_embeds", reference, actual, atol)]


def validate_decoder(model, path, inputs_embeds, attention_mask, atol):
    """Compare ``decoder.onnx`` with PyTorch: a prefill from an empty past, then one cached step.

    Args:
        model: the native model (its ``language_model`` is run).
        path: the decoder graph.
        inputs_embeds: prompt embeddings with the image embeddings merged in, ``(B, S, H)``.
        attention_mask: ``(B, S)`` left-padded mask.
        atol: tolerance.
    """
    import torch

    lm = model.language_model
    layers, kv_heads, head_dim = kv_geometry(lm.config)
    graph, session = DecoderGraph(lm).eval(), _session(path)
    batch = inputs_embeds.shape[0]
    past = [(torch.zeros(batch, kv_heads, 0, head_dim),) * 2 for _ in range(layers)]
    records = []
    for step in ("prefill", "decode"):
        with torch.no_grad():
            reference = graph(inputs_embeds, attention_mask, past)
        feed = {"inputs_embeds": inputs_embeds.numpy(), "attention_mask": attention_mask.numpy()}
        feed.update({name: t.numpy() for name, t in zip(past_names(layers), [t for kv in past for t in kv])})
        actual = session.run(None, feed)
        seq_mask = attention_mask[:, -inputs_embeds.shape[1]:].bool().numpy()
        kv_mask = attention_mask.bool().numpy()
        names = ["logits", *past_names(layers, "present")]
        for name, ref, act in zip(names, reference, actual):
            if name == "logits":
                records.append(_record(f"decoder ({step})", name, ref, act, atol, seq_mask))
            else:
                records.append(_record(f"decoder ({step})", name, _kv_select(ref, kv_mask), _kv_select(act, kv_mask),
                                       atol, shape=act.shape))
        next_token = reference[0][:, -1].argmax(-1)
        inputs_embeds = lm.get_input_embeddings()(next_token[:, None]).detach()
        attention_mask = torch.cat([attention_mask, torch.ones(batch, 1, dtype=attention_mask.dtype)], dim=1)
        past = [(reference[1 + 2 * i], reference[2 + 2 * i]) for i in range(layers)]
    return records


def _kv_select(tensor, kv_mask):
    """``(B, heads, T, D)`` -> the attended positions only, as ``(n, heads, D)``."""
    array = tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)
    return array.transpose(0, 2, 1, 3)[kv_mask]


def merge_image_embeds(model, input_ids, image_embeds):
    """Token embeddings with the image embeddings at the ``<image>`` positions (as the model does)."""
    import torch

    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)
        positions = (input_ids == model.config.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(positions, image_embeds.to(embeds.dtype))


__all__ = ["check_front_end", "front_end_case", "compare_front_end", "validate_vision", "validate_embed",
           "validate_decoder", "merge_image_embeds"]
