"""The measurement environment, recorded with every benchmark so figures can be compared."""

import os
import platform
import sys
from datetime import datetime, timezone


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name):
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def _threads(torch_threads):
    """How the torch thread count was chosen (:func:`encslim.runtime.configure_threads`): the count,
    its source (``requested``, ``ENCSLIM_THREADS``, ``OMP_NUM_THREADS``, ``auto``, ``not configure_threads``
    when nothing configured it), the usable CPUs and the 1-minute load average at the choice."""
    from ..runtime import available_cpus, thread_choice

    choice = thread_choice()
    if choice is None or choice["threads"] != torch_threads:  # never configured, or changed since
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        choice = {"source": "not configure_threads" if choice is None else "set directly", "cpus": available_cpus(),
                  "load_1min": None if load is None else round(load, 2)}
    return {**choice, "threads": torch_threads}


def environment(device, dtype, attn_implementations=()):
    """Device, library versions, dtype, threads and attention implementation.

    Args:
        device: the ``torch.device`` (or string) the models run on.
        dtype: the dtype name the models were loaded with.
        attn_implementations: the attention implementations the loaded LLMs use.

    Returns:
        A JSON-serialisable dict.
    """
    import torch
    import transformers

    from .. import __version__

    device = torch.device(device)
    env = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "threads": _threads(torch.get_num_threads()),
        "dtype": dtype,
        "attn_implementation": sorted(set(attn_implementations)),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "encslim": __version__,
        "numpy": _version("numpy"),
        "cuda": torch.version.cuda,
        "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        env.update(device_name=props.name, gpu_memory_bytes=props.total_memory,
                   cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   driver_capability=f"{props.major}.{props.minor}")
    return env


def attn_implementation(model):
    """The attention implementation of a loaded model's LLM (``sdpa``, ``eager``, ...)."""
    config = getattr(getattr(model, "language_model", model), "config", None)
    return getattr(config, "_attn_implementation", None) or "unknown"
