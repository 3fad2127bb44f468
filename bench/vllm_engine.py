"""``encslim bench --engine vllm``: every model folder of the comparison measured in vLLM's offline engine.

The models are measured one after another in this process: one ``vllm.LLM`` per folder (the full
model, then each variant folder), shut down before the next one starts. vLLM runs on its build's
platform (the report names it): ``--device`` and ``--threads`` apply to the eager engine only. Run-time masked copies of
the full model (``--mask``) have no vLLM form and are left out (the report says so). Each model
answers the eager path's benchmark request (:data:`~encslim.bench.latency.BENCH_QUESTION` on its
fixed image, the prompt its processor builds). Times are wall-clock milliseconds around
``LLM.generate`` (image preprocessing in vLLM's multimodal processor included):

* ``ttft``: one request with ``max_tokens=1``;
* ``request``: one request of ``max_new_tokens`` tokens (EOS ignored, so every request generates
  them all); ``decode_tokens_per_s``: per such request, its tokens after the first over the time
  from its first token to its last, by the engine's own timestamps (``disable_log_stats=False``);
* per concurrency ``c``: ``c`` such requests submitted together in one call;
  ``requests_per_s = c / median round``, ``output_tokens_per_s = c * max_new_tokens / median round``.

Each series runs ``warmup`` discarded rounds, then at least ``min_iters`` rounds and ``min_seconds``
(at most ``max_iters``), as the eager path. Prefix caching and the multimodal processor cache are
off, so every request runs the encoders and the prefill again. ``--max-tiles`` reaches vLLM's
multimodal processor as ``mm_processor_kwargs`` (as ``vllm serve`` takes it for Eagle2).

Accuracy goes through vLLM with the eager path's prompts and scorers: a multiple-choice sample
generates one token restricted to its options' first tokens (greedy: the option whose first-token
logit is highest, the choice the eager ``logits`` mode makes); an open question generates up to
``eval_max_new_tokens`` greedy tokens, decoded by the model's tokenizer without special tokens.

vLLM is imported only in this module, and only when this engine runs.
"""

import gc
import importlib.util
import sys
import time

from ..errors import ConfigError, EncslimError, ModelLoadError
from . import stats
from .config import processor_settings
from .latency import BENCH_QUESTION, bench_image

INSTALL_FIX = ("install it with pip install 'encslim[vllm]' (vLLM's CPU build: see README 'Serving'), or run "
               "encslim from the vLLM venv that .ci/vllm_env.sh builds (.venv-vllm/bin/encslim)")
# engine settings of every measured model: see the module docstring
ENGINE_ARGS = {"seed": 0, "disable_log_stats": False, "enable_prefix_caching": False, "mm_processor_cache_gb": 0,
               "limit_mm_per_prompt": {"image": 1}}


def check_installed():
    """Refuse at once, before any work, when this Python has no vLLM (the message names the fix).

    Raises:
        ConfigError: no ``vllm`` package here.
    """
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"--engine vllm: vLLM is not installed in this Python ({sys.executable}); {INSTALL_FIX}")


def vllm_version():
    """The version of the vLLM this Python imports.

    Raises:
        ConfigError: vLLM is not installed here, or does not import (the message names the fix).
    """
    check_installed()
    try:
        import vllm
    except Exception as err:  # a broken install fails in many ways; the message says which
        raise ConfigError(f"--engine vllm: vLLM does not import here ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); {INSTALL_FIX}") from None
    return vllm.__version__


def engine_overrides(path):
    """The ``LLM`` arguments a folder needs besides :data:`ENGINE_ARGS` (as ``vllm serve`` gets them): those of
    :func:`encslim.models.vllm_plugin.engine_overrides`, the one place that decides how vLLM loads a folder.

    Raises:
        ConfigError: vLLM cannot serve the folder (the message says why and names the eager engine).
    """
    from ..models.vllm_plugin import engine_overrides as plugin_overrides

    try:
        return plugin_overrides(path)
    except ConfigError as err:
        raise ConfigError(f"--engine vllm: {path} {err}; bench it with --engine eager") from None


def check_specs(specs):
    """Check every folder of ``specs`` that vLLM will load, before any work (see :func:`engine_overrides`)."""
    for spec in specs:
        if not spec.masked:
            engine_overrides(spec.path)


def requests_of(loaded, samples):
    """What one model is asked, built with its own processor while it is loaded for the eager path.

    Returns:
        ``{"bench": prompt, "tokenizer": tokenizer, "samples": [(prompt, option token ids or None), ...]}``.
    """
    from ..data.prompts import build_question, style_for
    from .answering import option_token_ids

    adapter, processor = loaded.adapter, loaded.processor
    tokenizer = adapter.tokenizer(processor)
    asked = []
    for sample in samples or ():
        prompt = adapter.build_prompt(processor, build_question(sample, style_for(sample)),
                                      with_image=sample.image is not None)
        options = option_token_ids(tokenizer, list(sample.options)) if sample.metric == "mcq" else None
        asked.append((prompt, options))
    return {"bench": adapter.build_prompt(processor, BENCH_QUESTION), "tokenizer": tokenizer, "samples": asked}


def measure_models(specs, requests, settings, samples=None):
    """Measure each unmasked model of ``specs`` in vLLM, one engine at a time.

    Args:
        specs: the bench's ``ModelSpec`` list (masked ones are skipped).
        requests: ``{name: requests_of(...)}``.
        settings: the :class:`~encslim.bench.config.BenchConfig`.
        samples: the accuracy samples, or ``None``.

    Returns:
        ``(summary, {name: figures})``: the engine's version and settings, and per measured model its
        figures (see :func:`measure_one`).
    """
    version = vllm_version()
    release_memory()  # the eager models' memory, before the first engine starts
    figures = {}
    for spec in specs:
        if not spec.masked:
            figures[spec.name] = measure_one(spec.path, requests[spec.name], settings, samples)
    from vllm.platforms import current_platform

    summary = {"engine": "vllm", "version": version, "api": "offline LLM API, one engine per model, in turn",
               "device": current_platform.device_type,
               "engine_args": {**ENGINE_ARGS, "dtype": settings.dtype, "max_num_seqs": max(settings.concurrency),
                               "mm_processor_kwargs": processor_settings(settings) or None},
               "concurrency": list(settings.concurrency),
               "not_measured": {s.name: "a run-time mask has no vLLM form" for s in specs if s.masked}}
    return summary, figures


def measure_one(path, asked, settings, samples=None):
    """Start vLLM on one folder, measure it and shut the engine down.

    Returns:
        ``{"engine", "start_s", "ttft_ms", "request_ms", "decode_tokens_per_s" (summaries),
        "concurrency": {c: {"rounds", "round_ms", "requests_per_s", "output_tokens_per_s"}}, "accuracy"}``.
    """
    import vllm

    overrides = engine_overrides(path)
    started = time.perf_counter()
    try:
        llm = vllm.LLM(model=str(path), dtype=settings.dtype, max_num_seqs=max(settings.concurrency),
                       mm_processor_kwargs=processor_settings(settings) or None,  # --max-tiles, as the eager one
                       **ENGINE_ARGS, **overrides)
    except Exception as err:  # vLLM fails in many ways (a layer it lacks, memory): one line, not a traceback
        raise ModelLoadError(f"--engine vllm: vLLM could not start on {path} ({_first_line(err)}); "
                             "bench it with --engine eager") from None
    try:
        start_s = time.perf_counter() - started
        figures = _latency(llm, asked["bench"], settings)
        figures["accuracy"] = _accuracy(llm, asked, samples, settings) if samples else None
    except EncslimError:
        raise
    except Exception as err:
        raise ModelLoadError(f"--engine vllm: measuring {path} in vLLM failed ({_first_line(err)}); "
                             "bench it with --engine eager") from None
    finally:
        llm.llm_engine.engine_core.shutdown()  # its processes end here, before the next model's engine starts
        del llm
        release_memory()
    return {"engine": f"vllm {vllm.__version__}", "start_s": start_s, **figures}


def _first_line(err):
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def release_memory():
    """Free what this process no longer references, and on a GPU hand torch's cached blocks back, so that vLLM
    (which sizes itself from the device's free memory when it starts) sees the memory the eager models used."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _latency(llm, prompt, settings):
    from vllm import SamplingParams

    request = {"prompt": prompt, "multi_modal_data": {"image": bench_image()}}
    first = SamplingParams(temperature=0.0, max_tokens=1)
    full = SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens, min_tokens=settings.max_new_tokens,
                          ignore_eos=True)
    ttft, _ = _rounds(lambda: llm.generate([request], first, use_tqdm=False), settings)
    whole, outputs = _rounds(lambda: llm.generate([request], full, use_tqdm=False), settings)
    rates = [decode_rate(out[0].metrics) for out in outputs]
    concurrency = {}
    for c in settings.concurrency:
        times, _ = _rounds(lambda: llm.generate([request] * c, full, use_tqdm=False), settings)
        median = stats.percentile(times, 50)
        concurrency[str(c)] = {"rounds": len(times), "round_ms": stats.summarize(times),
                               "requests_per_s": c * 1000.0 / median,
                               "output_tokens_per_s": c * settings.max_new_tokens * 1000.0 / median}
    return {"ttft_ms": stats.summarize(ttft), "request_ms": stats.summarize(whole),
            "decode_tokens_per_s": stats.summarize(rates) if rates and None not in rates else None,
            "concurrency": concurrency}


def decode_rate(metrics):
    """Tokens per second after the first one, from the engine's own timestamps of one request (``None`` when it
    generated one token or recorded no times)."""
    if metrics is None or metrics.num_generation_tokens < 2 or metrics.last_token_ts <= metrics.first_token_ts:
        return None
    return (metrics.num_generation_tokens - 1) / (metrics.last_token_ts - metrics.first_token_ts)


def _rounds(run, settings):
    """Wall times (ms) and results of ``run()``: ``warmup`` rounds discarded, then at least ``min_iters`` rounds
    and ``min_seconds``, at most ``max_iters``."""
    for _ in range(settings.warmup):
        run()
    times, results, began = [], [], time.perf_counter()
    while len(times) < settings.max_iters and (len(times) < settings.min_iters
                                               or time.perf_counter() - began < settings.min_seconds):
        start = time.perf_counter()
        results.append(run())
        times.append((time.perf_counter() - start) * 1000.0)
    return times, results


def _accuracy(llm, asked, samples, settings):
    """Accuracy per category through vLLM (module docstring), aggregated as the eager path aggregates."""
    from vllm import SamplingParams

    from ..data.scorers import score
    from .results import EvalResult

    tokenizer, requests, params = asked["tokenizer"], [], []
    for sample, (prompt, options) in zip(samples, asked["samples"]):
        request = {"prompt": prompt}
        if sample.image is not None:
            request["multi_modal_data"] = {"image": sample.image}
        requests.append(request)
        params.append(SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=sorted(set(options.values())))
                      if options else SamplingParams(temperature=0.0, max_tokens=settings.eval_max_new_tokens))
    outputs = []
    for start in range(0, len(requests), settings.eval_batch_size):
        stop = start + settings.eval_batch_size
        outputs += llm.generate(requests[start:stop], params[start:stop], use_tqdm=False)
    scores, predictions = {}, {}
    for sample, (_, options), out in zip(samples, asked["samples"], outputs):
        tokens = list(out.outputs[0].token_ids)
        if options:
            prediction = next(letter for letter, token in options.items() if token == tokens[0])
        else:
            prediction = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        predictions[sample.id] = prediction
        scores[sample.id] = float(score(sample.metric, prediction, sample.answers, sample.options, sample.category))
    result = EvalResult(mask_sets=[frozenset()], scores={frozenset(): scores},
                        predictions={frozenset(): predictions},
                        categories={s.id: s.category for s in samples}, encoder_passes=0)
    return result.accuracy()


__all__ = ["ENGINE_ARGS", "INSTALL_FIX", "check_installed", "check_specs", "decode_rate", "engine_overrides",
           "measure_models", "measure_one", "requests_of", "vllm_version"]
