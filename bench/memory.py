"""Peak memory per model, each measured in a fresh subprocess that loads only that model.

Why a separate process: the process-wide peak RSS (``ru_maxrss``) only ever grows, and the timing
loop holds every model at once, so in-process figures would mix the models. A fresh process
that loads one model and runs one full iteration (stages + ``generate``) at each batch size, in
increasing order, gives per-model figures:

* ``rss_baseline_bytes``: RSS before loading, after the imports and after building the model once
  on the ``meta`` device (which imports every module the model needs and allocates nothing), so
  the baseline is the Python + torch + transformers floor and not this model;
* ``rss_loaded_bytes``: RSS right after loading;
* per batch size ``peak_rss_bytes`` (``ru_maxrss``: the process peak so far, loading included)
  and ``peak_rss_delta_bytes`` (peak minus the baseline: what this model costs);
* on CUDA also ``max_allocated_bytes`` and ``max_reserved_bytes`` (``torch.cuda`` peak
  statistics, reset before each batch size).
"""

import contextlib
import logging
import multiprocessing
import resource
import sys

logger = logging.getLogger(__name__)

# imported once by the fork server, so that each per-model process starts warm
PRELOAD = ("torch", "transformers", "encslim.bench.latency", "encslim.models.loading")

METHOD = ("a fresh process per model (forked from a fork server) loads only that model and runs one "
          "iteration at each batch size; RSS from psutil/ru_maxrss, CUDA peaks from "
          "torch.cuda.max_memory_allocated/reserved")


class _NoRecorder:
    @contextlib.contextmanager
    def stage(self, name):
        yield


def _peak_rss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _preimport(path):
    """Import every module the model needs by building it on the meta device; ``True`` if done."""
    from ..errors import EncslimError
    from ..models.loading import adapter_for

    try:
        adapter = adapter_for(path)
        adapter.empty_model(adapter.read_config(path))
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, EncslimError) as err:
        logger.warning("meta-device build of %s failed (%s); baseline taken after imports only", path, err)
        return False
    return True


def _measure(request):
    """The child's work: load one model, run each batch size, return the figures."""
    import psutil
    import torch

    from .latency import ModelSpec, load, run_iteration

    process = psutil.Process()
    result = {"baseline_after_meta_build": _preimport(request["spec"]["path"])}
    result["rss_baseline_bytes"] = process.memory_info().rss
    spec = ModelSpec(**{k: tuple(v) if k == "masked" else v for k, v in request["spec"].items()})
    loaded = load(spec, device=request["device"], dtype=request["dtype"])
    cuda = loaded.device.type == "cuda"
    result["rss_loaded_bytes"] = process.memory_info().rss
    per_batch = {}
    for batch_size in sorted(request["batch_sizes"]):
        if cuda:
            torch.cuda.synchronize(loaded.device)
            torch.cuda.reset_peak_memory_stats(loaded.device)
        run_iteration(loaded, loaded.batch(batch_size), _NoRecorder(), request["max_new_tokens"])
        row = {"peak_rss_bytes": _peak_rss_bytes()}
        row["peak_rss_delta_bytes"] = row["peak_rss_bytes"] - result["rss_baseline_bytes"]
        if cuda:
            torch.cuda.synchronize(loaded.device)
            row["max_allocated_bytes"] = torch.cuda.max_memory_allocated(loaded.device)
            row["max_reserved_bytes"] = torch.cuda.max_memory_reserved(loaded.device)
        per_batch[str(batch_size)] = row
    result["per_batch_size"] = per_batch
    return result


def _request(spec, batch_sizes, max_new_tokens, device, dtype):
    return {"spec": {"name": spec.name, "path": str(spec.path), "masked": list(spec.masked),
                     "mask_mode": spec.mask_mode, "role": spec.role},
            "batch_sizes": list(batch_sizes), "max_new_tokens": max_new_tokens, "device": str(device), "dtype": dtype}


def measure_memories(specs, batch_sizes, max_new_tokens, device="cpu", dtype="float32", timeout=900):
    """Peak memory of each model (:class:`ModelSpec`), each in its own fresh process.

    The processes are forked from a ``forkserver`` that has imported torch, transformers and
    encslim once (fork resets the child's peak-RSS counter), so each model costs its load and
    one iteration, not the imports. CUDA is initialised only in the children.

    Returns:
        ``{name: {"method", "rss_baseline_bytes", "rss_loaded_bytes", "per_batch_size": {...}}}``;
        a failed measurement gives ``{"method", "error": "<why>"}`` and the benchmark goes on.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    results = {}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for spec in specs:
            job = pool.apply_async(_measure, (_request(spec, batch_sizes, max_new_tokens, device, dtype),))
            try:
                results[spec.name] = {"method": METHOD, **job.get(timeout)}
            except multiprocessing.TimeoutError:
                pool.terminate()
                results[spec.name] = {"method": METHOD, "error": f"timed out after {timeout} s"}
                break
            except Exception as err:  # the child's error, re-raised here: record it, go on
                why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                logger.warning("memory measurement of %s failed: %s", spec.name, why)
                results[spec.name] = {"method": METHOD, "error": why}
    for spec in specs:
        results.setdefault(spec.name, {"method": METHOD, "error": "not measured (an earlier one timed out)"})
    return results


def measure_memory(spec, batch_sizes, max_new_tokens, device="cpu", dtype="float32", timeout=900):
    """Peak memory of one model; see :func:`measure_memories`."""
    return measure_memories([spec], batch_sizes, max_new_tokens, device, dtype, timeout)[spec.name]
