"""Parameters and FLOPs per component of a loaded model.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over the very stages the
latency benchmark times (:func:`encslim.bench.latency.run_iteration`), at batch size 1, so they
are per sample. The counter covers matrix products, convolutions and attention (the ops that
dominate a transformer; on CPU not the attention kernel, aten._scaled_dot_product_flash_attention_for_cpu,
which torch's counter has no formula for); element-wise ops, norms and activations are not counted. The prefill's FLOPs
are also predicted by the analytic cost model rank uses (:func:`predicted_prefill_flops`), so that bench
sets the measured prefill time beside the prediction that chose the token budget.
"""

import contextlib

from .latency import run_iteration


class FlopRecorder:
    """A recorder for :func:`run_iteration` that counts the FLOPs of each stage."""

    def __init__(self):
        self.flops = {}

    @contextlib.contextmanager
    def stage(self, name):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            yield
        self.flops[name] = self.flops.get(name, 0) + int(counter.get_total_flops())


def count_flops(loaded, max_new_tokens):
    """FLOPs per sample of every stage of ``loaded`` (a :class:`LoadedModel`).

    Returns:
        ``{stage: flops}`` with the stages of :func:`run_iteration` plus ``vision`` (sum of the
        encoders that run) and ``total`` (vision + fusion + prefill + decode).
    """
    recorder = FlopRecorder()
    run_iteration(loaded, loaded.batch(1), recorder, max_new_tokens)
    flops = dict(recorder.flops)
    flops["vision"] = sum(v for k, v in flops.items() if k.startswith("encoder:"))
    flops["total"] = flops["vision"] + flops["fusion"] + flops["prefill"] + flops["decode"]
    return flops


def predicted_prefill_flops(loaded):
    """The analytic prefill FLOPs per sample (:func:`encslim.models.costs.prefill_flops`: ``2 P L + 2 n_layers L^2 d``)
    over the benchmark prompt as the model reads it: ``L`` = its text tokens plus the image tokens left after the
    model's token budget."""
    from ..models.costs import language_model_shape, prefill_flops

    return prefill_flops(language_model_shape(loaded.model, loaded.adapter), loaded.prompt_tokens())


def _numel(module):
    return sum(p.numel() for p in module.parameters())


def count_params(loaded):
    """Parameters per component: each encoder, ``vision``, ``fusion``, ``language_model``, ``total``.

    A model masked without surgery still holds every weight, so its counts equal the full
    model's; ``encoders_run`` in the report says which towers actually execute.
    """
    model, adapter = loaded.model, loaded.adapter
    params = {f"encoder:{slot}": _numel(encoder) for slot, encoder in adapter.encoders(model).items()}
    params["vision"] = sum(params.values())
    parts = adapter.parts(model)
    params["fusion"] = _numel(parts["fusion"])
    params["language_model"] = _numel(parts["language_model"])
    params["total"] = _numel(model)
    return params


def weight_bytes(model):
    """Bytes of all parameters and buffers of ``model``."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
