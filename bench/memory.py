"""Peak memory per model, each measured in a fresh subprocess that loads only that model.

Why a subprocess: the process-wide peak RSS (``ru_maxrss``) only ever grows, and the timing
loop holds every model at once, so in-process figures would mix the models. A fresh process
that imports encslim, loads one model and runs one full iteration (stages + ``generate``) at
each batch size, in increasing order, gives per-model figures:

* ``rss_baseline_bytes``: RSS before loading, after the imports and after building the model once
  on the ``meta`` device (which imports every module the model needs and allocates nothing), so
  the baseline is the Python + torch + transformers floor and not this model;
* ``rss_loaded_bytes``: RSS right after loading;
* per batch size ``peak_rss_bytes`` (``ru_maxrss``: the process peak so far, loading included)
  and ``peak_rss_delta_bytes`` (peak minus the baseline: what this model costs);
* on CUDA also ``max_allocated_bytes`` and ``max_reserved_bytes`` (``torch.cuda`` peak
  statistics, reset before each batch size).

Run as ``python -m encslim.bench.memory '<json>'``; it prints one JSON line.
"""

import contextlib
import json
import logging
import os
import resource
import subprocess
import sys

logger = logging.getLogger(__name__)

METHOD = ("a fresh subprocess per model loads only that model and runs one iteration at each batch size; "
          "RSS from psutil/ru_maxrss, CUDA peaks from torch.cuda.max_memory_allocated/reserved")


class _NoRecorder:
    @contextlib.contextmanager
    def stage(self, name):
        yield


def _peak_rss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _preimport(path):
    """Import every module the model needs by building it on the meta device; ``True`` if done."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from ..models.loading import adapter_for

    try:
        adapter_for(path)  # registers the family's Auto classes
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            AutoModelForImageTextToText.from_config(config)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as err:
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


def measure_memory(spec, batch_sizes, max_new_tokens, device="cpu", dtype="float32", timeout=900):
    """Peak memory of one model (a :class:`ModelSpec`), measured in a subprocess.

    Returns:
        ``{"method", "rss_baseline_bytes", "rss_loaded_bytes", "per_batch_size": {...}}``, or
        ``{"method", "error": "<why>"}`` when the subprocess failed (the benchmark goes on).
    """
    request = {"spec": {"name": spec.name, "path": str(spec.path), "masked": list(spec.masked),
                        "mask_mode": spec.mask_mode, "role": spec.role},
               "batch_sizes": list(batch_sizes), "max_new_tokens": max_new_tokens,
               "device": str(device), "dtype": dtype}
    cmd = [sys.executable, "-m", "encslim.bench.memory", json.dumps(request)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"method": METHOD, "error": f"memory subprocess timed out after {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        logger.warning("memory measurement of %s failed: %s", spec.name, why)
        return {"method": METHOD, "error": why}
    return {"method": METHOD, **json.loads(lines[-1])}


def main(argv=None):
    """Subprocess entry point: read the request, print the result as one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(_measure(json.loads(argv[0]))))


if __name__ == "__main__":
    main()
