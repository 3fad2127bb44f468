"""The ONNX front-end export's memory order (PyTorch outputs first, one onnxruntime session, the weights freed
only when the export loaded the model itself) leaves its validation records exactly as the one-session-per-batch
comparison gives them, and never frees a model a caller passed in."""

import gc
import json
import warnings

import pytest
import torch

TOWERS = ("clip-448", "convnext-1024")


@pytest.fixture(scope="module")
def eagle_dir(tiny_eagle_dir):
    return tiny_eagle_dir(TOWERS)


def _loaded(src):
    from encslim.export.common import load_source, read_source
    from encslim.export.finish import LoadedSource

    source = read_source(src)
    model, processor = load_source(source, "float32")
    return LoadedSource(source, model, processor)


def _pointer(tensor):
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, fake or functional tensors
        return None


def test_records_equal_a_fresh_per_batch_check(eagle_dir, tmp_path):
    """export_onnx (which frees its own model before onnxruntime loads the graph) validates batch 2 then batch 1;
    each record equals check_front_end's on a freshly loaded model (reference after export, a session per batch)."""
    from encslim.export import export_onnx
    from encslim.export.common import probe_batch
    from encslim.export.onnx_validate import check_front_end

    out = tmp_path / "onnx"
    manifest = export_onnx(eagle_dir, out)
    records = manifest["verification"]["export"]
    assert json.loads((out / "onnx_config.json").read_text())["validation"] == records
    assert [r["shape"][0] for r in records] == [2, 1] and all(r["matched"] for r in records)
    loaded = _loaded(eagle_dir)
    module, _ = loaded.source.adapter.vision_front_end(loaded.model, loaded.processor)
    pixels = probe_batch(loaded.source.adapter, loaded.processor)["pixel_values"].float()
    fresh = [check_front_end(module.eval(), out / "vision.onnx", p, 1e-4) for p in (pixels, pixels[:1])]
    assert records == fresh
    assert manifest["export"]["memory"]["peak_rss_mib"] > 0


def test_a_callers_model_is_kept_unless_released(eagle_dir, tmp_path):
    """export_front_end leaves the caller's model intact by default; release_weights=True empties its weights'
    storage (even where the exporter still holds views of them) and still writes and validates the same folder."""
    from encslim.export.to_onnx import export_front_end

    loaded = _loaded(eagle_dir)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    front = loaded.source.adapter.vision_front_end(loaded.model, loaded.processor)
    kept = export_front_end(loaded, front, tmp_path / "kept")
    after = loaded.model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)

    weights = {p.data.untyped_storage().data_ptr() for p in loaded.model.parameters()}  # addresses, no references
    released = export_front_end(loaded, front, tmp_path / "released", release_weights=True)
    assert all(p.is_meta for p in loaded.model.parameters())
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some torch objects warns of deprecated names
        holding = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and not o.is_meta and o.numel()
                   and _pointer(o) in weights]
    assert holding == []  # nothing left (the exporter's leftovers included) keeps a weight's memory alive
    assert released["verification"]["export"] == kept["verification"]["export"]
    assert (tmp_path / "released" / "vision.onnx").read_bytes() == (tmp_path / "kept" / "vision.onnx").read_bytes()
