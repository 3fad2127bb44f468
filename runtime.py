"""The process's terminal and CPU: progress bars shown on a terminal only, and the torch thread count.

Progress: :func:`progress_bar` is a tqdm bar that draws only when stderr is a terminal (and the
caller did not turn it off); without a terminal it is silent, so logs stay line-based and short.

Threads: :func:`configure_threads` chooses torch's intra-op thread count once per process, where
a command starts. Two threads fighting over one busy core cost rank 8-10x its idle time, so the
automatic choice is the CPUs this process may run on (``os.sched_getaffinity``) less the ones other
processes keep busy (:func:`busy_cpus`: the 1-minute load average, capped by the runnable tasks
seen now), at least 1. An explicit ``requested`` count wins, then the
``ENCSLIM_THREADS`` environment variable, then ``OMP_NUM_THREADS`` (left as torch read it). The
choice is recorded (:func:`thread_choice`) and printed in the environment block of JSON outputs.

DeepSpeed's log lines: :func:`quiet_deepspeed` (the CLI, at start) hides them in commands that do not
train with DeepSpeed (accelerate imports it wherever it is installed, and the import prints a warning);
:func:`deepspeed_in_use` (a DeepSpeed run's set-up) shows them again.

CLI wiring (for a command's ``--threads`` option)::

    from encslim.runtime import configure_threads
    configure_threads(threads)   # threads: the option's value, None for the automatic choice
"""

import logging
import os
import sys

THREADS_ENV = "ENCSLIM_THREADS"

_choice = None  # the last configure_threads() result: {"threads", "source", "cpus", "load_1min"}


def available_cpus():
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _load_1min():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _running_others(samples=5, interval=0.01):
    """Runnable tasks besides this one, the most seen over a few quick looks at ``/proc/loadavg``
    (``None`` where it cannot be read)."""
    import time

    seen = []
    for k in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        seen.append(running - 1)  # this process is one of them
        if k + 1 < samples:
            time.sleep(interval)
    return max(0, max(seen))


def busy_cpus():
    """CPUs other processes keep busy: the 1-minute load average (rounded), capped by the runnable
    tasks seen now (so a job that just ended does not count); 0 where neither is known."""
    load, now = _load_1min(), _running_others()
    if load is None:
        return now or 0
    busy = int(load + 0.5)
    return busy if now is None else min(busy, now)


def _positive_int(value, what):
    from .errors import ConfigError

    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(value).strip() not in (str(number), f"+{number}"):
        raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}")
    return number


def choose_threads(requested=None, cpus=None, load=None, environ=None):
    """``(threads, source)`` for torch; pure given ``cpus``, ``load`` and ``environ``.

    Args:
        requested: an explicit count (``--threads``); ``None``: choose.
        cpus: usable CPUs (default :func:`available_cpus`).
        load: the load other processes put on the CPUs (default :func:`busy_cpus`).
        environ: the environment to read ``ENCSLIM_THREADS``/``OMP_NUM_THREADS`` from.

    Raises:
        ConfigError: ``requested`` or ``ENCSLIM_THREADS`` is not a whole number >= 1.
    """
    environ = os.environ if environ is None else environ
    cpus = available_cpus() if cpus is None else cpus
    if requested is not None:
        return _positive_int(requested, "--threads"), "requested"
    if environ.get(THREADS_ENV, "").strip():
        return _positive_int(environ[THREADS_ENV], THREADS_ENV), THREADS_ENV
    if environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    busy = busy_cpus() if load is None else int(load + 0.5)  # cores other processes keep busy
    return max(1, min(cpus, cpus - busy)), "auto"


def configure_threads(requested=None):
    """Set torch's CPU thread count once for this process and return it.

    ``requested=None`` keeps an earlier call's choice (a command that configured threads at its
    start is not overridden by the library functions it calls); otherwise it chooses as
    :func:`choose_threads` does. An explicit ``requested`` always applies.
    """
    global _choice
    import torch

    if requested is None and _choice is not None:
        return _choice["threads"]
    busy = busy_cpus()  # sampled once: the figure recorded is the one the choice used
    threads, source = choose_threads(requested, load=busy)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    load = _load_1min()
    _choice = {"threads": threads, "source": source, "cpus": available_cpus(),
               "load_1min": None if load is None else round(load, 2), "busy_cpus": busy}
    return threads


def thread_choice():
    """What :func:`configure_threads` chose (``None`` before any call): for environment blocks."""
    return dict(_choice) if _choice else None


def progress_enabled(progress=None, stream=None):
    """Whether to draw a bar: ``progress`` False turns it off; otherwise only on a terminal."""
    if progress is False:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _env_int(name):
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else 0


def _terminal_width():
    """stderr's terminal width, ``None`` when it reports none (0 columns or no terminal)."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None
    return columns or None


def progress_bar(iterable=None, total=None, desc=None, unit="it", progress=None, **options):
    """A tqdm bar on stderr, drawn only where :func:`progress_enabled` (a terminal, not turned off).

    Without a terminal the bar is disabled: nothing is printed, iteration passes through.
    """
    from tqdm.auto import tqdm

    options.setdefault("mininterval", 0.5)
    width = _terminal_width()
    if width is None:  # a terminal that reports no size (a bare pseudo-terminal): tqdm would draw nothing
        options.setdefault("ncols", _env_int("COLUMNS") or 80)
        options.setdefault("nrows", _env_int("LINES") or 24)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress_enabled(progress),
                file=sys.stderr, **options)


DEEPSPEED_LOGGER = "DeepSpeed"


class _DeepSpeedUnused(logging.Filter):
    """Drops DeepSpeed's records below ERROR (its stdout handler's "Setting accelerator to CPU"...)."""

    def filter(self, record):
        return record.levelno >= logging.ERROR


_DEEPSPEED_UNUSED = _DeepSpeedUnused()


def quiet_deepspeed():
    """Keep DeepSpeed's log lines out of a command that does not use DeepSpeed.

    accelerate imports ``deepspeed`` wherever it is installed (``save_pretrained`` unwraps the model
    through ``extract_model_from_parallel``), and the import alone prints a warning to stdout. The
    filter sits on DeepSpeed's logger by name, so it holds whether or not DeepSpeed was imported
    yet (DeepSpeed's own set-up keeps a logger's filters); :func:`deepspeed_in_use` lifts it.
    """
    logging.getLogger(DEEPSPEED_LOGGER).addFilter(_DEEPSPEED_UNUSED)


def deepspeed_in_use():
    """Show DeepSpeed's log lines again: the run is about to train with DeepSpeed."""
    logging.getLogger(DEEPSPEED_LOGGER).removeFilter(_DEEPSPEED_UNUSED)
