"""Generation, the per-stage decode loop and the native model's own generate use the key/value cache
API of the installed transformers: no FutureWarning (``past_key_values`` -> ``cache``) is raised."""

import warnings

import torch

from encslim.bench.latency import LoadedModel, ModelSpec, run_iteration
from encslim.models.registry import get_adapter
from encslim.models.families.eagle.tiny import build_tiny_eagle
from encslim.models.families.native.tiny import build_tiny


class _Null:
    def stage(self, name):
        import contextlib

        return contextlib.nullcontext()


def _loaded(model, processor, family):
    spec = ModelSpec("m", "/nowhere/m", (), "removal")
    return LoadedModel(spec, model, processor, get_adapter(family), torch.device("cpu"))


def test_native_generation_paths_raise_no_future_warning():
    model, processor = build_tiny("A1", ("clip", "siglip"))
    loaded = _loaded(model, processor, "encslim")
    batch = loaded.batch(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        tokens = run_iteration(loaded, batch, _Null(), max_new_tokens=3, end_to_end=True)
        with torch.inference_mode():
            generated = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(tokens, generated[:, batch["input_ids"].shape[1]:])


def test_stock_llm_decode_loop_raises_no_future_warning():
    """A family whose LLM is a stock transformers causal LM (Eagle's Llama): the cached decode steps."""
    model, processor = build_tiny_eagle(("clip-448",))
    loaded = _loaded(model, processor, "eagle_llama")
    batch = loaded.batch(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        tokens = run_iteration(loaded, batch, _Null(), max_new_tokens=3, end_to_end=True)
    assert tokens.shape == (2, 3)
