"""``--format onnx``: vision, decoder and embedding graphs, validated with onnxruntime.

The folder holds ``vision.onnx``, ``decoder.onnx``, ``embed_tokens.onnx`` (see
:mod:`encslim.export.onnx_graphs`), ``onnx_config.json`` (input/output names, slot geometry,
token ids, the validation report), the tokenizer and processor files, ``config.json`` and
``generation_config.json`` of the source, the model card and the manifest.
:mod:`encslim.export.ort_generate` runs greedy generation from it with onnxruntime alone.
"""

import gc
import json
import logging
import threading
import warnings
from pathlib import Path

from ..files import atomic_output_dir, check_output_path
from ..provenance import VERIFY_TOLERANCE
from .common import fail_unless_matched, load_source, probe_batch, read_source, require_target
from .finish import CardInputs, FormatInfo, LoadedSource, finish_folder
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


class PeakRss:
    """Samples this process's resident memory (psutil) every ``interval`` s while used as a context manager.

    :meth:`report` gives the peak so far: what the manifest records of an export's memory.
    """

    def __init__(self, interval=0.05):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="encslim-peak-rss", daemon=True)

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self):
        """``{"peak_rss_mib", "process_max_rss_mib", "how"}`` (also logged at INFO level)."""
        import resource

        self.peak = max(self.peak, self.process.memory_info().rss)
        out = {"peak_rss_mib": round(self.peak / 2 ** 20, 1),
               "process_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "how": f"RSS sampled every {self.interval * 1000:g} ms from loading the source to writing the "
                      "manifest; process_max_rss_mib is ru_maxrss, the process's peak since it started"}
        logger.info("export peak memory: %.1f MiB RSS (process peak %.1f MiB)", out["peak_rss_mib"],
                    out["process_max_rss_mib"])
        return out


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
        The manifest dict (its ``export.validation`` lists every output, matched or not; ``export.memory``
        the peak RSS of the export).

    Raises:
        ConfigError: not a native model. VerificationError: an output differs by more than ``atol``.
    """
    check_output_path(out, overwrite, inputs=[model_dir])
    card = CardInputs(ranking, bench)
    card.check()
    source = read_source(model_dir)
    require_target(source, "onnx", NEEDS, "ONNX")
    with PeakRss() as memory:
        model, processor = load_source(source, "float32")
        loaded = LoadedSource(source, model, processor)
        front = source.adapter.vision_front_end(model, processor)
        if front is not None:  # a family whose ONNX export is its vision front end only
            return export_front_end(loaded, front, out, overwrite=overwrite, atol=atol, card=card, memory=memory,
                                   release_weights=True)  # this export loaded the model: nothing else holds it
        return _export_graphs(loaded, out, overwrite, atol, card, memory)


def _export_graphs(loaded, out, overwrite, atol, card, memory):
    """The three-graph export of a native model (:func:`export_onnx`)."""
    source, model, processor = loaded.source, loaded.model, loaded.processor
    with atomic_output_dir(out, overwrite=overwrite, inputs=[source.path]) as tmp:
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
        fmt = FormatInfo("onnx", details={
            "graphs": config["graphs"], "opset": config["opset"], "validation_inputs":
            "2 probe images, 2 chat prompts (left-padded); decoder: prefill from an empty past, then "
            "one cached step; padded positions excluded", "memory": memory.report()})
        manifest = finish_folder(tmp, loaded, fmt, verification=records, how_to_load=HOW_TO_LOAD.format(name=out),
                                 parameters=sum(p.numel() for p in model.parameters()), card=card)
    logger.info("exported %s -> %s (format onnx)", source.path, out)
    return manifest


def free_weights(model):
    """Free ``model``'s parameter and buffer memory in place (they end on the ``meta`` device); its config and
    module structure stay. Only for a model nothing else will run.

    Dropping the model's own references is not enough: after ``torch.onnx.export`` (torch 2.13, onnxscript)
    module globals still reference the traced program, whose metadata holds tensors aliasing every weight.
    So each weight's storage is emptied where it is resizable, and every other live tensor on a weight's
    memory (the loader's weights are not resizable) is pointed at an empty one. The freed pages go back to
    the system (glibc's ``malloc_trim`` where the C library has it).
    """
    import ctypes
    import ctypes.util
    import itertools

    import torch

    pinned = set()
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        storage = tensor.data.untyped_storage()
        if tensor.is_meta or storage.data_ptr() == 0:
            continue
        if storage.resizable():
            storage.resize_(0)
        else:
            pinned.add(storage.data_ptr())
    gc.collect()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some torch objects warns of deprecated names
        for obj in gc.get_objects() if pinned else ():
            if isinstance(obj, torch.Tensor) and _storage_pointer(obj) in pinned:
                obj.data = torch.empty(0, dtype=obj.dtype)
    model.to("meta")
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def _storage_pointer(tensor):
    try:
        return None if tensor.is_meta else tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, fake or functional tensors: no plain storage
        return None


def _write_and_validate(module, cases, path, atol, release):
    """Export the front end to ``path``, free ``release``'s weights (a model, or ``None``), then compare the graph
    with the PyTorch ``cases`` (:func:`~encslim.export.onnx_validate.front_end_case`): the records."""
    import torch

    from .onnx_graphs import export_front_end_graph
    from .onnx_validate import compare_front_end

    with torch.no_grad():
        export_front_end_graph(module, cases[0][0], path)
    gc.collect()  # the exporter's program and ONNX model are garbage now (torch still holds a view of each weight)
    if release is not None:
        free_weights(release)
    return compare_front_end(path, module.input_names, cases, atol)


FRONT_END_HOW_TO_LOAD = """\
# onnxruntime for the graph; each tower's input comes from the model's processor (encslim, torch):
import json, encslim, onnxruntime
config = json.load(open("{name}/onnx_config.json"))
session = onnxruntime.InferenceSession("{name}/" + config["graphs"]["vision"])
_, processor, _ = encslim.load_model("{source}")   # the exported model's folder: its processor makes the inputs
feeds = {{k: v.numpy() for k, v in processor.tower_inputs(processor.pixel_values(images)).items()}}
image_embeds = session.run(None, feeds)[0]   # (B, tokens, hidden) for the LLM
"""


def export_front_end(loaded, front, out, *, overwrite=False, atol=ATOL, card=CardInputs(), memory=None,
                     release_weights=False):
    """``vision.onnx`` of a family's vision front end (per-tower inputs -> projected image embeddings), validated.

    The graph takes one input per tower, made outside it by the processor (no pixel resampling in
    the graph: onnxruntime's ``Resize`` differs from torch's by more than the tolerance at 1024 px).
    It is validated against the model's own path on the processor's ``pixel_values``.

    Memory: the PyTorch outputs come first, then the graph; with ``release_weights`` the model's weights
    are freed before onnxruntime loads its own copy, so the two copies are never resident together.

    Args:
        loaded: the :class:`~encslim.export.finish.LoadedSource` (model and processor in float32).
        front: ``(module, info)`` from :meth:`Adapter.vision_front_end`: ``module(inputs)`` (a list in
            ``module.input_names`` order, from ``module.make_inputs(pixel_values)``) returns the image
            embeddings the LLM receives; ``module.reference(pixel_values)`` is the model's own path;
            ``info`` (JSON) describes the inputs.
        memory: a running :class:`PeakRss` (recorded in the manifest), or ``None``.
        card: the model card's ``--ranking`` and ``--bench``.
        release_weights: free the model's weights (:func:`free_weights`) between export and validation: only for
            a model nothing else uses (:func:`export_onnx`'s own); a caller's model is left intact by default.
        the rest: see :func:`export_onnx`.

    Raises:
        VerificationError: the graph differs from the model's own path by more than ``atol``.
    """
    from .onnx_validate import front_end_case

    source, model, processor = loaded.source, loaded.model, loaded.processor
    module, info = front
    module = module.eval()
    pixels = probe_batch(source.adapter, processor)["pixel_values"].float()
    cases = [front_end_case(module, p) for p in (pixels, pixels[:1])]  # PyTorch first: (inputs, reference)
    parameters = sum(p.numel() for p in module.parameters())
    with atomic_output_dir(out, overwrite=overwrite, inputs=[source.path]) as tmp:
        records = _write_and_validate(module, cases, Path(tmp) / VISION_FILE, atol, model if release_weights else None)
        fail_unless_matched(records, "the ONNX export")
        config = {"format_version": 2, "graphs": {"vision": VISION_FILE}, "inputs": module.input_names,
                  "outputs": ["image_embeds"], "dtype": "float32", "vision": info, "validation": records,
                  "language_model": "not exported: only the vision front end (encoders, fusion, projector) is "
                                    "ONNX; run the LLM on image_embeds with its own runtime"}
        Path(tmp, ONNX_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        processor.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        details = {"graphs": config["graphs"], "inputs": module.input_names,
                   "validation_inputs": "2 probe images (batch 2, then batch 1); reference: the model's own "
                                        "path on pixel_values (its resizes inside), graph: the per-tower inputs"}
        if memory is not None:
            details["memory"] = memory.report()
        fmt = FormatInfo("onnx", details=details, notes=(
            "ONNX of the vision front end only (image embeddings from one input per tower); the LLM stays in PyTorch",
            "the graph resamples no pixels: each tower's input (" + ", ".join(module.input_names) + ") is "
            "made by the processor's tower_inputs(pixel_values), as the model's forward makes it "
            "(onnx_config.json vision.tower_inputs, processor_config.json tower_inputs)"))
        manifest = finish_folder(
            tmp, loaded, fmt, verification=records,
            how_to_load=FRONT_END_HOW_TO_LOAD.format(name=out, source=source.path),
            parameters=parameters, card=card,
        )
    logger.info("exported %s -> %s (format onnx, vision front end)", source.path, out)
    return manifest


__all__ = ["export_onnx", "export_front_end", "onnx_config", "write_graphs", "validate_graphs", "free_weights",
           "PeakRss"]
