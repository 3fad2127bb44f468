"""The ONNX graphs of a native model, exported with ``torch.onnx.export`` (dynamo).

Three graphs make a generation pipeline that runs on onnxruntime alone:

* ``vision.onnx``: ``pixel_values_<slot>`` (one per encoder, ``(batch, 3, S, S)``) ->
  ``image_embeds`` ``(batch, image_tokens, hidden)``: every encoder plus the fusion/projector.
* ``decoder.onnx``: ``inputs_embeds (batch, seq, hidden)``, ``attention_mask (batch, past+seq)``,
  ``past_key_values.<i>.key/value (batch, kv_heads, past, head_dim)`` -> ``logits (batch, seq,
  vocab)``, ``present.<i>.key/value (batch, kv_heads, past+seq, head_dim)``. Position ids are
  computed inside from the attention mask (left padding), as transformers' ``generate`` does.
  The first step passes an empty past (``past = 0``).
* ``embed_tokens.onnx``: ``input_ids`` -> token embeddings (one Gather over the LM's table),
  so that prompts can be embedded without torch.

Batch, sequence and past lengths are dynamic axes. Graphs are exported in float32.
"""

import contextlib
import io
import logging
import warnings

from torch import nn

from ..models.layout import CACHE_KWARG

logger = logging.getLogger(__name__)

VISION_FILE = "vision.onnx"
DECODER_FILE = "decoder.onnx"
EMBED_FILE = "embed_tokens.onnx"


@contextlib.contextmanager
def quiet_export(what):
    """Keep the exporter's progress lines and warnings out of the terminal; log them at debug level."""
    buffer = io.StringIO()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision not installed"
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)
    for line in buffer.getvalue().splitlines():
        logger.debug("%s: %s", what, line)


def pixel_input(slot):
    return f"pixel_values_{slot}"


def past_names(num_layers, prefix="past_key_values"):
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


class VisionGraph(nn.Module):
    """Pixels of every slot -> fused image embeddings (``model.fuse(model.encode(...))``, then the token budget)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.slots = list(model.slot_names)

    def forward(self, pixels):
        fused = self.model.fuse(self.model.encode(dict(zip(self.slots, pixels))))
        reduce = getattr(self.model, "reduce_tokens", None)  # the config's token budget (native: models/tokens.py)
        return reduce(fused) if reduce is not None else fused


class DecoderGraph(nn.Module):
    """One LLM step on embeddings with an explicit key/value cache (flat tensors in and out)."""

    def __init__(self, language_model):
        super().__init__()
        self.language_model = language_model

    def forward(self, inputs_embeds, attention_mask, past):
        from transformers import DynamicCache

        cache = DynamicCache([(key, value) for key, value in past])
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1]:]
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=positions, use_cache=True, **{CACHE_KWARG: cache})
        present = []
        for layer in getattr(out, CACHE_KWARG).layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def kv_geometry(text_config):
    """``(num_layers, kv_heads, head_dim)`` of a causal LM config."""
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    return text_config.num_hidden_layers, kv_heads, head_dim


def example_pixels(model, batch=2):
    """Random pixel tensors, one per slot, for tracing."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 3, e["image_size"], e["image_size"], generator=generator)
            for e in model.config.encoders]


def export_vision(model, path):
    """Export :class:`VisionGraph` to ``path`` (dynamic batch); return its input names."""
    import torch

    graph = VisionGraph(model).eval()
    names = [pixel_input(s) for s in graph.slots]
    batch = torch.export.Dim("batch")
    with quiet_export("vision graph"):
        torch.onnx.export(graph, (example_pixels(model),), str(path), dynamo=True, external_data=False,
                          input_names=names, output_names=["image_embeds"],
                          dynamic_shapes={"pixels": [{0: batch} for _ in names]}, verbose=False)
    return names


def export_front_end_graph(module, inputs, path):
    """Export a family's vision front end (``module(list of per-tower inputs)``) with a dynamic batch axis.

    Args:
        module: has ``input_names`` (one per tower) and ``forward(inputs)``.
        inputs: example tensors in that order; a batch of 2 (a batch of 1 would be specialised into the
            graph's reshapes).
        path: the ``.onnx`` file to write (weights inside it).
    """
    import torch

    batch = torch.export.Dim("batch")
    with quiet_export("vision front end"):
        torch.onnx.export(module, (list(inputs),), str(path), dynamo=True, external_data=False,
                          input_names=list(module.input_names), output_names=["image_embeds"],
                          dynamic_shapes={"inputs": [{0: batch} for _ in inputs]}, verbose=False)


def example_decoder_inputs(text_config, batch=2, seq=5, past=3):
    """Random ``(inputs_embeds, attention_mask, past)`` for tracing the decoder."""
    import torch

    layers, kv_heads, head_dim = kv_geometry(text_config)
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(batch, seq, text_config.hidden_size, generator=generator)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    cache = [(torch.randn(batch, kv_heads, past, head_dim, generator=generator),
              torch.randn(batch, kv_heads, past, head_dim, generator=generator)) for _ in range(layers)]
    return embeds, mask, cache


def export_decoder(language_model, path):
    """Export :class:`DecoderGraph` to ``path`` with dynamic batch/sequence/past axes."""
    import torch

    graph = DecoderGraph(language_model).eval()
    layers = kv_geometry(language_model.config)[0]
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    past, total = torch.export.Dim("past_sequence"), torch.export.Dim("total_sequence")
    shapes = {"inputs_embeds": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
              "past": [({0: batch, 2: past}, {0: batch, 2: past}) for _ in range(layers)]}
    with quiet_export("decoder graph"):
        torch.onnx.export(graph, example_decoder_inputs(language_model.config), str(path), dynamo=True,
                          external_data=False, input_names=["inputs_embeds", "attention_mask", *past_names(layers)],
                          output_names=["logits", *past_names(layers, "present")], dynamic_shapes=shapes,
                          verbose=False)


def write_embedding_graph(embedding, path, opset=18):
    """``input_ids (batch, seq) int64 -> inputs_embeds (batch, seq, hidden)``: one Gather node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = embedding.weight.detach().float().cpu().numpy()
    node = helper.make_node("Gather", ["embed_tokens.weight", "input_ids"], ["inputs_embeds"], axis=0)
    graph = helper.make_graph(
        [node], "embed_tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", table.shape[1]])],
        initializer=[numpy_helper.from_array(table, "embed_tokens.weight")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="encslim")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def graph_opset(path):
    """The default-domain opset of an ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


__all__ = ["VisionGraph", "DecoderGraph", "export_vision", "export_decoder", "export_front_end_graph", "write_embedding_graph",
           "kv_geometry", "pixel_input", "past_names", "VISION_FILE", "DECODER_FILE", "EMBED_FILE"]
